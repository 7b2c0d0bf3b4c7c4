"""Chat front-ends: the shared session, the terminal CLI (through a pipe) and the widget."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from nanogpt_course import chat
from nanogpt_course.chat import cli
from nanogpt_course.chat.session import Conversation, Sampling, fit_context, load_chat_model
from nanogpt_course.engine import stream_text

GREEDY = ["--temperature", "0", "--max-tokens", "24"]


@pytest.fixture(scope="module")
def chat_model(tiny_chat_checkpoint):
    return load_chat_model(tiny_chat_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def base_model(tiny_checkpoint):
    return load_chat_model(tiny_checkpoint, device="cpu")


def _greedy_reply(cm, messages, max_tokens=24) -> str:
    """Reference: the template rendered by the tokenizer, greedy, stop at <|im_end|>."""
    tok = cm.tokenizer
    ids = tok.render_for_completion(messages)
    stop = [tok.encode_special("<|im_end|>"), tok.bos_id]
    return "".join(stream_text(cm.model, tok, ids, max_tokens, temperature=0, stop=stop))


def _pipe(checkpoint, lines: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nanogpt_course.chat", "--checkpoint",
                           str(checkpoint), *args], input=lines, capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


# -- session ---------------------------------------------------------------------------------
def test_kinds_are_read_from_the_checkpoint(chat_model, base_model):
    assert chat_model.kind == "chat" and chat_model.is_chat
    assert base_model.kind == "base" and not base_model.is_chat
    info = chat_model.info()
    assert info["depth"] == 2 and info["parameters"] == chat_model.model.num_params()
    im_end = chat_model.tokenizer.encode_special("<|im_end|>")
    assert im_end in chat_model.stop_ids() and im_end not in base_model.stop_ids()


def test_fit_context_drops_oldest_turns_and_keeps_the_system_message(chat_model):
    tok = chat_model.tokenizer
    system = {"role": "system", "content": "Be brief."}
    turns = []
    for k in range(8):
        turns += [{"role": "user", "content": f"question number {k} about things"},
                  {"role": "assistant", "content": f"answer number {k} about stuff"}]
    messages = [system] + turns + [{"role": "user", "content": "last one"}]
    ids, dropped = fit_context(tok, messages, context=128, max_tokens=32)
    assert dropped > 0 and dropped % 2 == 0  # whole question/answer pairs
    kept = [system] + turns[dropped:] + [messages[-1]]
    assert ids == tok.render_for_completion(kept)  # exactly the template of what is kept
    assert len(ids) + 32 <= 128
    # one message fewer dropped would not fit
    more = [system] + turns[dropped - 2:] + [messages[-1]]
    assert len(tok.render_for_completion(more)) + 32 > 128
    with pytest.raises(chat.PromptTooLong, match="context of 128"):
        fit_context(tok, [{"role": "user", "content": "word " * 400}], 128, 32)


def test_conversation_keeps_turns_and_notices_dropping(chat_model):
    conv = Conversation(chat_model, system="Be brief.",
                        sampling=Sampling(temperature=0, max_tokens=8))
    first = "".join(conv.reply("Hello!"))
    assert first == _greedy_reply(chat_model, [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Hello!"}], 8)
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]
    for k in range(12):
        "".join(conv.reply(f"What is {k} plus {k}? Please answer it quickly"))
    assert conv.messages[0]["role"] == "system"
    assert any("dropped" in n for n in conv.notices)
    assert len(conv.messages) < 1 + 2 * 13


def test_base_model_continues_without_memory(base_model):
    conv = Conversation(base_model, sampling=Sampling(temperature=0, max_tokens=12))
    text = "def main("
    reply = "".join(conv.reply(text))
    tok = base_model.tokenizer
    expected = "".join(stream_text(base_model.model, tok, [tok.bos_id] + tok.encode(text), 12,
                                   temperature=0, stop=[tok.bos_id]))
    assert reply == expected and reply
    assert conv.messages == []


def test_cancel_stops_a_reply(chat_model):
    import threading

    cancel = threading.Event()
    conv = Conversation(chat_model, sampling=Sampling(temperature=1.0, top_k=None,
                                                      max_tokens=100, seed=0))
    pieces = []
    for piece in conv.reply("Hello!", cancel=cancel):
        pieces.append(piece)
        cancel.set()
    assert len(pieces) == 1
    assert conv.messages[-1] == {"role": "assistant", "content": pieces[0]}


def test_default_checkpoint_names_the_missing_path(monkeypatch, tmp_path):
    monkeypatch.setattr(chat, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "models" / "chat")):
        chat.default_checkpoint()
    with pytest.raises(ValueError):
        chat.default_checkpoint("instruct")


# -- CLI ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_chat_model_answers_in_the_template_and_clear_resets(chat_model,
                                                                 tiny_chat_checkpoint):
    result = _pipe(tiny_chat_checkpoint, "Hello!\nWhat is 2 plus 3?\n/clear\nHello!\n", *GREEDY)
    assert result.returncode == 0, result.stderr
    first = _greedy_reply(chat_model, [{"role": "user", "content": "Hello!"}])
    second = _greedy_reply(chat_model, [{"role": "user", "content": "Hello!"},
                                        {"role": "assistant", "content": first},
                                        {"role": "user", "content": "What is 2 plus 3?"}])
    banner, body = result.stdout.split("chat model: multi-turn, ChatML roles\n", 1)
    assert "d2, 196,676 parameters" in banner
    # after /clear the same question gets the same answer as in a fresh conversation
    assert body == f"{first}\n{second}\n[new conversation]\n{first}\n"


@pytest.mark.slow
def test_cli_base_model_continues_text(base_model, tiny_checkpoint):
    result = _pipe(tiny_checkpoint, "def main(\n", *GREEDY)
    assert result.returncode == 0, result.stderr
    tok = base_model.tokenizer
    expected = "".join(stream_text(base_model.model, tok, [tok.bos_id] + tok.encode("def main("),
                                   24, temperature=0, stop=[tok.bos_id]))
    assert result.stdout.endswith("base model: plain text continuation, no memory between "
                                  f"lines\n{expected}\n")


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--max-tokens", "0"], "max-tokens must be a positive integer"),
    (["--top-k", "many"], "invalid int value"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--checkpoint", "/nonexistent/run"], "no checkpoint at /nonexistent/run"),
])
def test_cli_bad_flags_give_one_error_line(args, message, capsys, tiny_chat_checkpoint):
    if "--checkpoint" not in args:
        args = ["--checkpoint", str(tiny_chat_checkpoint), *args]
    try:
        code = cli.main(args)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_cli_without_a_checkpoint_names_the_shipped_path(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(chat, "MODELS_DIR", tmp_path / "none")
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the shipped chat model is not at") and "--checkpoint" in err


def test_cli_commands_in_process(chat_model):
    import io

    conv = Conversation(chat_model, sampling=Sampling(temperature=0, max_tokens=4))
    out = io.StringIO()
    cli.run(conv, iter(["/help\n", "Hi\n", "/quit\n", "never read\n"]), out, interactive=False)
    text = out.getvalue()
    assert text.startswith(cli.HELP) and len(conv.turns()) == 2


def test_cli_ctrl_c_stops_the_reply_not_the_program(chat_model):
    import io

    class Interrupting(io.StringIO):
        """Raises KeyboardInterrupt (as Ctrl-C would) when the first reply piece is printed."""

        armed = True

        def write(self, text):
            if self.armed and text not in ("", "\n") and not text.startswith("["):
                self.armed = False
                raise KeyboardInterrupt
            return super().write(text)

    conv = Conversation(chat_model, sampling=Sampling(temperature=0, max_tokens=24))
    out = Interrupting()
    cli.run(conv, iter(["Hello!\n", "Hello!\n"]), out, interactive=False)
    first, second = out.getvalue().split("\n")[:2]
    assert first == " [stopped]"
    assert second and len(conv.turns()) == 4  # the program went on to the next line
    full = _greedy_reply(chat_model, [{"role": "user", "content": "Hello!"}])
    kept = conv.messages[1]["content"]  # what was generated before the interrupt
    assert full.startswith(kept) and len(kept) < len(full)


# -- widget ------------------------------------------------------------------------------------
def test_widget_say_streams_and_matches_the_template(chat_model, capsys):
    pytest.importorskip("ipywidgets")
    from nanogpt_course.chat.widget import ChatUI

    ui = ChatUI(chat_model, temperature=0, max_tokens=24)
    box = ui.widget()  # built headless: no front-end needed
    reply = ui.say("Hello!")
    assert reply == _greedy_reply(chat_model, [{"role": "user", "content": "Hello!"}])
    assert capsys.readouterr().out == f"you: Hello!\nmodel: {reply}\n"
    transcript = ui._widgets["transcript"].value
    assert "Hello!" in transcript and "model:" in transcript
    ui.new_chat()
    assert ui.messages == [] and len(ui.history) == 1
    assert ui._widgets["history"].options == (("1. Hello!", 0),)
    assert box.children  # the layout exists
    ui._widgets["history"].value = 0
    assert "earlier chat" in ui._widgets["transcript"].value


def test_widget_takes_a_model_in_memory(chat_model):
    pytest.importorskip("ipywidgets")
    from nanogpt_course.chat.widget import ChatUI

    with pytest.raises(TypeError, match="tokenizer"):
        ChatUI(chat_model.model)
    ui = ChatUI(chat_model.model, tokenizer=chat_model.tokenizer, kind="chat", temperature=0,
                max_tokens=24)
    assert ui.say("Hello!", echo=False) == _greedy_reply(chat_model,
                                                         [{"role": "user", "content": "Hello!"}])
    base = ChatUI(chat_model.model, tokenizer=chat_model.tokenizer)  # kind defaults to base
    assert not base.chat_model.is_chat


def test_widget_stop_ends_a_reply(chat_model):
    pytest.importorskip("ipywidgets")
    from nanogpt_course.chat.widget import ChatUI

    ui = ChatUI(chat_model, temperature=1.0, top_k=None, max_tokens=100, seed=0)
    seen = []

    def on_piece(piece):
        seen.append(piece)
        ui.stop()

    reply = ui._reply("Hello!", on_piece)
    assert seen == [reply]
