"""Chat in a notebook: ``ChatUI(checkpoint_or_model)``, an ipywidgets chat.

The widget has a transcript that updates as tokens stream, a text box, Send and Stop,
temperature and top-k sliders, New chat, and a history list of earlier chats (pick one to
read it again). ``ChatUI.say(text)`` sends a message from code, prints the exchange as it
streams and returns the reply: it needs no front-end, so a scripted conversation runs under
papermill and nbval, where nobody renders widgets. ipywidgets is imported lazily; without
it ``say`` still works and displaying the object prints a hint.
"""

from __future__ import annotations

import html
import sys
import threading

from .session import Conversation, PromptTooLong, Sampling, load_chat_model

__all__ = ["ChatUI"]

STYLE = ("font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.45; "
         "max-height: 420px; overflow-y: auto; border: 1px solid #ccd; border-radius: 6px; "
         "padding: 6px 10px; white-space: pre-wrap;")


def _render(messages: list[dict], notices: list[str], streaming: str | None = None) -> str:
    rows = []
    for m in messages:
        if m["role"] == "system":
            rows.append(f"<div style='color:#667'><i>system: {html.escape(m['content'])}</i></div>")
            continue
        who, color = ("you", "#1d4ed8") if m["role"] == "user" else ("model", "#047857")
        rows.append(f"<div><b style='color:{color}'>{who}:</b> {html.escape(m['content'])}</div>")
    if streaming is not None:
        rows.append(f"<div><b style='color:#047857'>model:</b> {html.escape(streaming)}"
                    f"<span style='color:#999'>&#9609;</span></div>")
    rows += [f"<div style='color:#888'><i>[{html.escape(n)}]</i></div>" for n in notices]
    return f"<div style='{STYLE}'>{''.join(rows) or '<i>(empty conversation)</i>'}</div>"


class ChatUI:
    """A chat with ``checkpoint_or_model`` (a checkpoint folder, a loaded Checkpoint, a
    ChatModel, or a GPT in memory with ``tokenizer=`` and ``kind=``; default: the shipped
    chat model).

    ``say(text)`` → the reply (str); ``stop()`` ends the reply being generated;
    ``new_chat()`` archives the conversation into ``history`` and starts afresh.
    """

    def __init__(self, checkpoint_or_model=None, *, system: str | None = None,
                 temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                 max_tokens: int = 256, seed: int | None = None, device=None,
                 tokenizer=None, kind: str = "base"):
        if checkpoint_or_model is None:
            from . import default_checkpoint

            checkpoint_or_model = default_checkpoint("chat")
        self.chat_model = load_chat_model(checkpoint_or_model, device=device,
                                          tokenizer=tokenizer, kind=kind)
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p,
                            max_tokens=max_tokens, seed=seed)
        self.conversation = Conversation(self.chat_model, system=system, sampling=sampling)
        self.history: list[list[dict]] = []  # earlier conversations, oldest first
        self.last_prompt: list[dict] = []  # the last exchange (shown for a base model)
        self._cancel = threading.Event()
        self._busy = threading.Lock()
        self._widgets = None

    # -- scripted use --------------------------------------------------------------------
    def say(self, text: str, *, echo: bool = True, **overrides) -> str:
        """Send ``text``, stream the reply (printed when ``echo``), return it."""
        if echo:
            print(f"you: {text}\nmodel: ", end="", flush=True)
        reply = self._reply(text, lambda piece: echo and print(piece, end="", flush=True),
                            **overrides)
        if echo:
            print(flush=True)
            for notice in self.conversation.notices:
                print(f"[{notice}]", flush=True)
        return reply

    def stop(self) -> None:
        """Stop the reply being generated (it keeps what was said so far)."""
        self._cancel.set()

    def new_chat(self) -> None:
        """Archive the conversation into ``history`` and start a new one."""
        self.stop()
        if self.conversation.turns():
            self.history.append(list(self.conversation.messages))
        self.conversation.clear()
        self._refresh()

    @property
    def messages(self) -> list[dict]:
        return self.conversation.messages

    def _reply(self, text: str, on_piece, **overrides) -> str:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("a reply is already being generated: stop() it first")
        try:
            self._cancel.clear()
            if "temperature" not in overrides and self._widgets is not None:
                overrides["temperature"] = self._widgets["temperature"].value
                overrides["top_k"] = self._widgets["top_k"].value
            pieces, so_far = [], ""
            self.last_prompt = [{"role": "user", "content": text}]
            try:
                for piece in self.conversation.reply(text, cancel=self._cancel, **overrides):
                    pieces.append(piece)
                    so_far += piece
                    on_piece(piece)
                    self._refresh(streaming=so_far)
            except PromptTooLong as err:
                self.conversation.notices = [str(err)]
            reply = "".join(pieces)
            self.last_prompt.append({"role": "assistant", "content": reply})
            self._refresh()
            return reply
        finally:
            self._busy.release()

    # -- the widget ----------------------------------------------------------------------
    def _refresh(self, streaming: str | None = None) -> None:
        if self._widgets is None:
            return
        messages = list(self.conversation.messages)
        if not self.chat_model.is_chat:  # a base model keeps no turns: show the last exchange
            messages = self.last_prompt
        self._widgets["transcript"].value = _render(messages, self.conversation.notices,
                                                    streaming)
        self._widgets["history"].options = [
            (f"{k + 1}. {self._title(c)}", k) for k, c in enumerate(self.history)]

    @staticmethod
    def _title(messages: list[dict]) -> str:
        first = next((m["content"] for m in messages if m["role"] == "user"), "")
        return first[:40] + ("..." if len(first) > 40 else "")

    def widget(self):
        """The ipywidgets box (built on first use)."""
        if self._widgets is None:
            self._build()
        return self._widgets["box"]

    def _build(self) -> None:
        import ipywidgets as w

        info = self.chat_model.info()
        s = self.conversation.sampling
        mode = "chat model (roles)" if self.chat_model.is_chat else "base model (continues text)"
        parts = {
            "info": w.HTML(f"<b>{html.escape(info['name'])}</b>: {mode}, depth {info['depth']}, "
                           f"{info['parameters']:,} parameters, context {info['context']}"),
            "transcript": w.HTML(),
            "text": w.Textarea(placeholder="Type a message, then Send",
                               layout=w.Layout(width="100%", height="60px")),
            "send": w.Button(description="Send", button_style="primary"),
            "stop": w.Button(description="Stop", disabled=True),
            "new": w.Button(description="New chat"),
            "temperature": w.FloatSlider(value=s.temperature, min=0.0, max=2.0, step=0.05,
                                         description="temperature"),
            "top_k": w.IntSlider(value=s.top_k or 50, min=1, max=200, description="top-k"),
            "history": w.Select(options=[], rows=4, description="history"),
        }
        parts["send"].on_click(lambda _: self._send_from_box())
        parts["stop"].on_click(lambda _: self.stop())
        parts["new"].on_click(lambda _: self.new_chat())
        parts["history"].observe(self._show_history, names="value")
        parts["box"] = w.VBox([
            parts["info"], parts["transcript"], parts["text"],
            w.HBox([parts["send"], parts["stop"], parts["new"]]),
            w.HBox([parts["temperature"], parts["top_k"]]), parts["history"]])
        self._widgets = parts
        self._refresh()

    def _send_from_box(self) -> None:
        text = self._widgets["text"].value.strip()
        if not text or self._busy.locked():
            return
        self._widgets["text"].value = ""
        send, stop = self._widgets["send"], self._widgets["stop"]

        def work():  # a thread: the kernel stays free to deliver the Stop click
            send.disabled, stop.disabled = True, False
            try:
                self._reply(text, lambda piece: None)
            except Exception as err:  # shown in the transcript, never lost in a thread
                self.conversation.notices = [f"error: {err}"]
                self._refresh()
            finally:
                send.disabled, stop.disabled = False, True

        threading.Thread(target=work, name="chatui-reply", daemon=True).start()

    def _show_history(self, change) -> None:
        k = change["new"]
        if k is not None and 0 <= k < len(self.history):
            self._widgets["transcript"].value = _render(self.history[k], ["an earlier chat"])

    def _ipython_display_(self):
        try:
            box = self.widget()
        except ImportError:
            print("ChatUI needs ipywidgets for its widget (pip install ipywidgets); "
                  "chat.say('...') works without it", file=sys.stderr)
            return
        from IPython.display import display

        display(box)
