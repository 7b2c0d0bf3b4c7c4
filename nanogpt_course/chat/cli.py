"""Terminal chat: ``python -m nanogpt_course.chat [--checkpoint CKPT] [options]``.

Tokens are printed as they are generated. A chat model keeps the conversation (oldest turns
dropped, with a notice, when it outgrows the context); a base model continues each line as
plain text. Commands: ``/clear`` (new conversation), ``/help``, ``/quit``. Ctrl-C stops the
current reply (not the program). With stdin from a pipe, every line gets one reply and the
program exits at the end of input.

Exit codes: 0 done, 2 bad arguments or checkpoint (one ``error:`` line on stderr).
"""

from __future__ import annotations

import argparse
import sys

from .session import Conversation, PromptTooLong, Sampling, load_chat_model

HELP = """commands:
  /clear   start a new conversation
  /help    this help
  /quit    leave (Ctrl-D too)
Ctrl-C stops the current reply."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage first)
        self.exit(2, f"error: {message} (see python -m nanogpt_course.chat --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nanogpt_course.chat",
                description="Chat with a checkpoint in the terminal (tokens stream as they "
                            "are generated).")
    p.add_argument("--checkpoint", help="step or run folder (default: the shipped chat model)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely "
                   "tokens (default 50; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (0, 1]")
    p.add_argument("--max-tokens", type=int, default=256, help="longest reply (default 256)")
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    p.add_argument("--system", default=None, help="system message (chat models)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    return p


def _sampling(args) -> Sampling:
    top_k = None if args.top_k == 0 else args.top_k
    return Sampling(temperature=args.temperature, top_k=top_k, top_p=args.top_p,
                    max_tokens=args.max_tokens, seed=args.seed).check()


def _banner(chat_model, interactive: bool) -> str:
    info = chat_model.info()
    mode = ("chat model: multi-turn, ChatML roles" if chat_model.is_chat
            else "base model: plain text continuation, no memory between lines")
    text = (f"{info['name']}: d{info['depth']}, {info['parameters']:,} parameters, context "
            f"{info['context']}, tokenizer {info['tokenizer']}, on {info['device']}\n{mode}")
    if interactive:
        text += "\n/help for commands, Ctrl-C stops a reply, Ctrl-D quits"
    return text


def _say(conversation: Conversation, text: str, out) -> None:
    """Stream one reply to ``out``; Ctrl-C ends the reply and returns."""
    try:
        pieces = conversation.reply(text)
        try:
            for piece in pieces:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            pieces.close()
            out.write(" [stopped]")
    except PromptTooLong as err:
        out.write(f"[{err}]")
    out.write("\n")
    for notice in conversation.notices:
        out.write(f"[{notice}]\n")
    out.flush()


def run(conversation: Conversation, lines, out, *, interactive: bool) -> None:
    """The read-reply loop over ``lines`` (an iterator of input lines)."""
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        try:
            line = next(lines)
        except KeyboardInterrupt:
            if not interactive:
                return
            out.write("\n(Ctrl-D or /quit leaves)\n")  # Ctrl-C at the prompt: a fresh line
            continue
        except (StopIteration, EOFError):
            if interactive:
                out.write("\n")
            return
        text = line.rstrip("\n")
        command = text.strip()
        if command in ("/quit", "/exit"):
            return
        if command == "/help":
            out.write(HELP + "\n")
            continue
        if command == "/clear":
            conversation.clear()
            out.write("[new conversation]\n")
            continue
        if not command:
            continue
        if interactive:
            out.write("model> ")
        _say(conversation, text, out)


class _StdinLines:
    """Lines of stdin; an iterator class (not a generator) so Ctrl-C during a read does not
    end it."""

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = sys.stdin.readline()
        if not line:
            raise StopIteration
        return line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sampling = _sampling(args)
        if args.checkpoint is None:
            from . import default_checkpoint

            args.checkpoint = default_checkpoint("chat")
        chat_model = load_chat_model(args.checkpoint, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    if args.system and not chat_model.is_chat:
        print("note: --system is ignored by a base model (it has no roles)", file=sys.stderr)
    interactive = sys.stdin.isatty()
    print(_banner(chat_model, interactive), flush=True)
    conversation = Conversation(chat_model, system=args.system, sampling=sampling)
    run(conversation, _StdinLines(), sys.stdout, interactive=interactive)
    return 0
