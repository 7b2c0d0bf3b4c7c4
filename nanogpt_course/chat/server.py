"""Web chat: ``python -m nanogpt_course.chat.server [--checkpoint CKPT] [--port 8003]``.

HTTP interface (DESIGN.md, "Chat over HTTP"):

- ``GET /``: the chat page (one self-contained HTML file, :mod:`.page`);
- ``GET /health``: ``{"status": "ok", "model": {...}, "active": n, "waiting": n, ...}``;
- ``POST /api/chat`` with ``{"messages": [{"role": "user", "content": "..."}],
  "temperature": 0.8, "top_k": 50, "top_p": null, "max_tokens": 256, "seed": null}`` →
  ``text/event-stream`` of ``data: {"token": "..."}`` events and a final ``data: [DONE]``
  (a failure mid-reply sends ``data: {"error": "..."}`` before ``[DONE]``).

Limits (:class:`Limits`): request body, number of messages and characters → 413; bad JSON
→ 400; wrong roles, types or out-of-range settings → 422; all with ``{"error": message}``.
At most ``concurrency`` replies are generated at once; up to ``queue`` more wait in order;
beyond that a request gets 503 with a message. Generation runs in a worker thread (the event
loop keeps answering ``/health``); a client that disconnects stops its generation after the
current token and frees its slot. Binds 127.0.0.1 unless ``--host`` says otherwise.

FastAPI and uvicorn (the ``server`` extra) are imported only when the app is built.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from dataclasses import dataclass

from .session import ChatModel, PromptTooLong, Sampling, check_messages, load_chat_model

FIELDS = {"messages", "temperature", "top_k", "top_p", "max_tokens", "seed"}


@dataclass
class Limits:
    """Bounds on what one request may ask for, and on concurrent generations."""

    concurrency: int = 1  # replies generated at once (1 per GPU is right for one model)
    queue: int = 32  # replies waiting for a slot; beyond that: 503
    max_body_bytes: int = 64 * 1024
    max_messages: int = 64
    max_chars: int = 16_000  # all message contents together
    max_tokens: int = 1024  # the largest max_tokens a client may ask for


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Slots:
    """At most ``concurrency`` holders at once, at most ``queue`` waiting (event-loop only)."""

    def __init__(self, concurrency: int, queue: int):
        self.concurrency, self.queue = concurrency, queue
        self._free = asyncio.Semaphore(concurrency)
        self.active = self.waiting = 0
        self.served = self.rejected = 0

    def reserve(self) -> Ticket:
        """A place in line, or RequestError(503) when the line is full."""
        if self.active + self.waiting >= self.concurrency + self.queue:
            self.rejected += 1
            raise RequestError(503, f"the server is busy: {self.active} replies are being "
                                    f"generated and {self.waiting} are waiting (the limit); "
                                    "try again in a moment")
        self.waiting += 1
        return Ticket(self)


class Ticket:
    """One request's place: waiting → active → done (``release`` is idempotent)."""

    def __init__(self, slots: Slots):
        self.slots, self.state = slots, "waiting"

    async def acquire(self) -> None:
        await self.slots._free.acquire()  # cancelled when the client leaves while waiting
        self.slots.waiting -= 1
        self.slots.active += 1
        self.state = "active"

    def release(self) -> None:
        if self.state == "waiting":
            self.slots.waiting -= 1
        elif self.state == "active":
            self.slots.active -= 1
            self.slots.served += 1
            self.slots._free.release()
        self.state = "done"


def _number(body: dict, key: str, default, lo, hi, *, integer: bool = False, none_ok=False):
    value = body.get(key, default)
    if value is None and none_ok:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise RequestError(422, f"'{key}' must be {what} in [{lo}, {hi}]"
                                f"{' or null' if none_ok else ''}, got {value!r}")
    return value


def parse_request(raw: bytes, limits: Limits, vocab_size: int) -> tuple[list[dict], Sampling]:
    """Validate a ``POST /api/chat`` body; raise :class:`RequestError` (400/413/422)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON ({err})") from err
    if not isinstance(body, dict):
        raise RequestError(422, "the body must be a JSON object with a 'messages' list")
    unknown = set(body) - FIELDS
    if unknown:
        raise RequestError(422, f"unknown field(s) {sorted(unknown)}; allowed: {sorted(FIELDS)}")
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise RequestError(413, f"{len(messages)} messages; at most {limits.max_messages} "
                                "per request: start a new chat")
    try:
        check_messages(messages)
    except ValueError as err:
        raise RequestError(422, str(err)) from err
    chars = sum(len(m["content"]) for m in messages)
    if chars > limits.max_chars:
        raise RequestError(413, f"the messages hold {chars} characters; at most "
                                f"{limits.max_chars} per request")
    sampling = Sampling(
        temperature=_number(body, "temperature", 0.8, 0, 2),
        top_k=_number(body, "top_k", 50, 1, vocab_size, integer=True, none_ok=True),
        top_p=_number(body, "top_p", None, 0.01, 1, none_ok=True),
        max_tokens=_number(body, "max_tokens", 256, 1, limits.max_tokens, integer=True),
        seed=_number(body, "seed", None, 0, 2**63 - 1, integer=True, none_ok=True))
    return messages, sampling


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _event(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _reply_events(chat_model: ChatModel, ids: list[int], sampling: Sampling,
                        ticket: Ticket):
    """SSE text of one reply. The model runs in a thread that hands pieces to the loop."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def work():
        try:
            for piece in chat_model.stream(ids, sampling, cancel):
                loop.call_soon_threadsafe(pieces.put_nowait, ("token", piece))
        except Exception as err:  # reported to the client; the server keeps serving
            loop.call_soon_threadsafe(pieces.put_nowait, ("error", f"{type(err).__name__}: {err}"))
        finally:
            try:
                loop.call_soon_threadsafe(ticket.release)
                loop.call_soon_threadsafe(pieces.put_nowait, ("end", None))
            except RuntimeError:  # the server shut down while this reply was running
                pass

    started = False
    try:
        await ticket.acquire()
        threading.Thread(target=work, name="chat-reply", daemon=True).start()
        started = True  # from here the thread releases the slot when it stops
        while True:
            kind, value = await pieces.get()
            if kind == "end":
                break
            yield _event({kind: value})
        yield "data: [DONE]\n\n"
    finally:  # normal end, or the client disconnected (Starlette cancels this generator)
        cancel.set()
        if not started:
            ticket.release()


def create_app(chat_model: ChatModel, limits: Limits | None = None):
    """The FastAPI app serving ``chat_model`` (imports FastAPI here, not at module import)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    from .page import PAGE

    limits = limits or Limits()
    app = FastAPI(title="nanogpt-course chat", docs_url=None, redoc_url=None,
                  openapi_url=None)
    state: dict = {}
    info = chat_model.info()

    def slots() -> Slots:  # created inside the running loop (its semaphore belongs there)
        if "slots" not in state:
            state["slots"] = Slots(limits.concurrency, limits.queue)
        return state["slots"]

    class SSE(StreamingResponse):
        """Releases the request's place in line even if the stream never started."""

        def __init__(self, content, ticket: Ticket):
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.ticket = ticket

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                if self.ticket.state == "waiting":
                    self.ticket.release()

    # Plain Starlette routes (the endpoint gets the request): no dependency injection needed.
    async def page(request):
        return HTMLResponse(PAGE)

    async def health(request):
        s = slots()
        return JSONResponse({"status": "ok", "model": info, "active": s.active, "waiting": s.waiting,
                "served": s.served, "rejected": s.rejected,
                "limits": {"concurrency": limits.concurrency, "queue": limits.queue,
                           "max_tokens": limits.max_tokens,
                           "max_messages": limits.max_messages, "max_chars": limits.max_chars}})

    async def chat(request):
        try:
            raw = await _read_body(request, limits.max_body_bytes)
            messages, sampling = parse_request(raw, limits, chat_model.model.config.vocab_size)
            try:
                ids, _ = chat_model.prompt_ids(messages, sampling.max_tokens)
            except PromptTooLong as err:
                raise RequestError(413, str(err)) from err
            ticket = slots().reserve()
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        return SSE(_reply_events(chat_model, ids, sampling, ticket), ticket)

    app.add_route("/", page, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/api/chat", chat, methods=["POST"])
    return app


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see python -m nanogpt_course.chat.server --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nanogpt_course.chat.server",
                description="Serve a checkpoint as a streaming web chat.")
    p.add_argument("--checkpoint", help="step or run folder (default: the shipped chat model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; "
                        "0.0.0.0 exposes the model to your network)")
    p.add_argument("--port", type=int, default=8003)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--concurrency", type=int, default=Limits.concurrency,
                   help="replies generated at once (default 1)")
    p.add_argument("--queue", type=int, default=Limits.queue,
                   help="replies that may wait for a slot before 503 (default 32)")
    p.add_argument("--max-tokens", type=int, default=Limits.max_tokens,
                   help="largest max_tokens a request may ask for (default 1024)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1 or args.queue < 0 or args.max_tokens < 1:
        print("error: --concurrency and --max-tokens must be >= 1, --queue >= 0",
              file=sys.stderr)
        return 2
    if not 0 <= args.port < 65536:
        print(f"error: --port {args.port} is not a TCP port (0-65535)", file=sys.stderr)
        return 2
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401  (fail before loading the model)
    except ImportError as err:
        print(f"error: the web chat needs FastAPI and uvicorn ({err}); run: "
              "pip install -e '.[server]'", file=sys.stderr)
        return 2
    try:
        if args.checkpoint is None:
            from . import default_checkpoint

            args.checkpoint = default_checkpoint("chat")
        chat_model = load_chat_model(args.checkpoint, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    limits = Limits(concurrency=args.concurrency, queue=args.queue, max_tokens=args.max_tokens)
    return serve(chat_model, host=args.host, port=args.port, limits=limits)


def serve(chat_model: ChatModel, *, host: str = "127.0.0.1", port: int = 8003,
          limits: Limits | None = None) -> int:
    """Run the server until Ctrl-C."""
    import uvicorn

    info = chat_model.info()
    print(f"serving {info['name']} ({info['kind']}, d{info['depth']}, "
          f"{info['parameters']:,} parameters) on http://{host}:{port}  (Ctrl-C stops)",
          flush=True)
    uvicorn.run(create_app(chat_model, limits), host=host, port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
