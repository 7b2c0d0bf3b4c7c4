"""The web chat server on a random local port: streaming, limits, queueing, disconnects."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import REPO

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from nanogpt_course.chat.server import Limits, create_app  # noqa: E402
from nanogpt_course.chat.session import ChatModel, load_chat_model  # noqa: E402

HELLO = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16, "seed": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(predicate, seconds: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + seconds  # a guard against hanging, not a timing assertion
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


@contextlib.contextmanager
def serving(chat_model, limits=None):
    """The app under uvicorn in a thread of this process; yields its port."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(chat_model, limits), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_until(lambda: server.started, what="the server to start")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def request(port, method, path, body=None, *, raw: bytes | None = None, timeout=60):
    """(status, headers, body text) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, dict(response.getheaders()), text


def events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


def health(port) -> dict:
    return json.loads(request(port, "GET", "/health")[2])


class Scripted(ChatModel):
    """A stand-in model streaming ``n`` numbered pieces, ``delay`` seconds apart, through the
    server's real path (threads, queueing, cancel); counts what it produced per request."""

    def __init__(self, base: ChatModel, n: int = 40, delay: float = 0.02):
        super().__init__(base.model, base.tokenizer, "chat", name="scripted", meta={})
        self.n, self.delay = n, delay
        self.produced: list[int] = []
        self.lock = threading.Lock()

    def stream(self, ids, sampling, cancel=None):
        with self.lock:
            self.produced.append(0)
            k = len(self.produced) - 1
        for i in range(min(self.n, sampling.max_tokens)):
            if cancel is not None and cancel.is_set():
                return
            time.sleep(self.delay)
            self.produced[k] += 1
            yield f"t{i} "


@pytest.fixture(scope="module")
def chat_model(tiny_chat_checkpoint):
    return load_chat_model(tiny_chat_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def default_server(chat_model):
    with serving(chat_model) as port:
        yield port


def test_page_and_health(default_server):
    status, headers, page = request(default_server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for needle in ('id="send"', 'id="stop"', 'id="temperature"', 'id="top-k"', 'id="new"',
                   'name="viewport"', "api/chat", "getReader"):
        assert needle in page
    info = health(default_server)
    assert info["status"] == "ok" and info["model"]["kind"] == "chat"
    assert info["model"]["depth"] == 2 and info["limits"]["concurrency"] == 1
    assert info["limits"]["queue"] >= 32


def test_a_reply_streams_as_several_events_ending_in_done(default_server, chat_model):
    status, headers, text = request(default_server, "POST", "/api/chat",
                                    {**HELLO, "temperature": 0})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    data = events(text)
    assert data[-1] == "[DONE]" and len(data) >= 3
    tokens = [json.loads(d)["token"] for d in data[:-1]]
    from nanogpt_course.engine import stream_text

    tok = chat_model.tokenizer
    ids = tok.render_for_completion(HELLO["messages"])
    expected = list(stream_text(chat_model.model, tok, ids, 16, temperature=0,
                                stop=[tok.bos_id, tok.encode_special("<|im_end|>")]))
    assert tokens == expected  # the template's greedy reply, piece by piece


def test_twenty_concurrent_clients_are_all_answered(default_server):
    results = [None] * 20
    barrier = threading.Barrier(20)

    def client(k):
        barrier.wait()
        results[k] = request(default_server, "POST", "/api/chat",
                             {**HELLO, "seed": k, "max_tokens": 12})

    threads = [threading.Thread(target=client, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and r[0] == 200 for r in results), [r and r[0] for r in results]
    assert all(events(r[2])[-1] == "[DONE]" for r in results)
    assert health(default_server)["active"] == 0


def test_concurrent_generations_do_not_mix(chat_model):
    """Three replies generated at once in three threads equal the same replies one by one."""
    bodies = [{"messages": [{"role": "user", "content": q}], "max_tokens": 20, "temperature": 0}
              for q in ("Hello!", "What is 4 plus 9?", "Thanks!")]
    with serving(chat_model, Limits(concurrency=3, queue=0)) as port:
        alone = [request(port, "POST", "/api/chat", b)[2] for b in bodies]
        together = [None] * 3
        barrier = threading.Barrier(3)

        def client(k):
            barrier.wait()
            together[k] = request(port, "POST", "/api/chat", bodies[k])[2]

        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert together == alone
    assert len({tuple(events(a)) for a in alone}) == 3


@pytest.mark.parametrize("body, status, message", [
    ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "roles are"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     422, "last message must have role 'user'"),
    ({"messages": []}, 422, "non-empty list"),
    ({"messages": "hello"}, 422, "non-empty list"),
    ({"messages": [{"role": "user", "content": 5}]}, 422, "must be a string"),
    ({"messages": [{"role": "user"}]}, 422, "exactly 'role' and 'content'"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 422, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 422, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 422, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_k": 0}, 422, "top_k"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, 422, "unknown field"),
    ([1, 2], 422, "JSON object"),
    ({"messages": [{"role": "user", "content": "hi"}] * 65}, 413, "at most 64"),
    ({"messages": [{"role": "user", "content": "x" * 17000}]}, 413, "characters"),
    ({"messages": [{"role": "user", "content": "tokens " * 300}]}, 413, "context of 128"),
])
def test_bad_requests_get_4xx_with_a_message(default_server, body, status, message):
    got, _, text = request(default_server, "POST", "/api/chat", body)
    assert got == status, text
    assert message in json.loads(text)["error"]


def test_malformed_and_oversized_bodies(default_server):
    status, _, text = request(default_server, "POST", "/api/chat", raw=b'{"messages": [')
    assert status == 400 and "not valid JSON" in json.loads(text)["error"]
    status, _, text = request(default_server, "POST", "/api/chat", raw=b"\xff\xfe")
    assert status == 400
    status, _, text = request(default_server, "POST", "/api/chat", raw=b" " * (65 * 1024))
    assert status == 413 and "at most 65536" in json.loads(text)["error"]
    assert request(default_server, "GET", "/api/chat")[0] == 405
    # still healthy and still answering
    assert health(default_server)["status"] == "ok"
    status, _, text = request(default_server, "POST", "/api/chat", HELLO)
    assert status == 200 and events(text)[-1] == "[DONE]"


def test_full_queue_gets_503_and_every_other_reply_completes(chat_model):
    model = Scripted(chat_model, n=25, delay=0.02)
    results = [None] * 20
    barrier = threading.Barrier(20)
    with serving(model, Limits(concurrency=1, queue=4)) as port:
        def client(k):
            barrier.wait()
            try:
                results[k] = request(port, "POST", "/api/chat", HELLO, timeout=60)
            except Exception as err:  # a hang or a reset would land here
                results[k] = (None, {}, repr(err))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        statuses = [r[0] for r in results]
        assert set(statuses) <= {200, 503}, statuses
        busy = [r for r in results if r[0] == 503]
        done = [r for r in results if r[0] == 200]
        assert busy and len(done) >= 5, statuses
        assert all("busy" in json.loads(r[2])["error"] for r in busy)
        for r in done:
            data = events(r[2])
            assert data[-1] == "[DONE]" and len(data) == 17  # 16 tokens (max_tokens) + DONE
        after = health(port)
        assert after["active"] == 0 and after["waiting"] == 0
        assert after["rejected"] == len(busy) and after["served"] == len(done)


def test_health_answers_during_a_reply_and_a_disconnect_frees_the_slot(chat_model):
    model = Scripted(chat_model, n=400, delay=0.02)  # an 8-second reply unless stopped
    with serving(model, Limits(concurrency=1, queue=4)) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/chat", body=json.dumps({**HELLO, "max_tokens": 400}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.read(6) == b"data: "  # the first event has arrived
        info = health(port)  # answered while the reply is being generated
        assert info["active"] == 1
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        _wait_until(lambda: health(port)["active"] == 0, what="the slot to be freed")
        assert model.produced[0] < 400  # the generation stopped early
        stopped_at = model.produced[0]
        time.sleep(0.2)
        assert model.produced[0] == stopped_at  # and stays stopped
        status, _, text = request(port, "POST", "/api/chat", {**HELLO, "max_tokens": 5})
        assert status == 200 and len(events(text)) == 6


def test_a_client_leaving_the_queue_frees_its_place(chat_model):
    model = Scripted(chat_model, n=400, delay=0.02)
    with serving(model, Limits(concurrency=1, queue=1)) as port:
        body = json.dumps({**HELLO, "max_tokens": 400})
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        first.request("POST", "/api/chat", body=body, headers={"Content-Type": "application/json"})
        assert first.getresponse().read(6) == b"data: "  # generating
        waiting = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        waiting.request("POST", "/api/chat", body=body,
                        headers={"Content-Type": "application/json"})
        _wait_until(lambda: health(port)["waiting"] == 1, what="the second request to queue")
        assert request(port, "POST", "/api/chat", HELLO)[0] == 503  # line full
        waiting.sock.shutdown(socket.SHUT_RDWR)
        waiting.close()
        _wait_until(lambda: health(port)["waiting"] == 0, what="the queue place to be freed")
        first.sock.shutdown(socket.SHUT_RDWR)
        first.close()
        _wait_until(lambda: health(port)["active"] == 0, what="the slot to be freed")
        assert len(model.produced) == 1  # the request that left never generated


def _non_loopback_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = s.getsockname()[0]
        if not address.startswith("127."):
            return address
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            if not info[4][0].startswith("127."):
                return info[4][0]
    return None


@pytest.mark.slow
def test_cli_server_listens_on_loopback_only_by_default(tiny_chat_checkpoint):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nanogpt_course.chat.server", "--checkpoint",
                             str(tiny_chat_checkpoint), "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                return True
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                return False

        _wait_until(up, seconds=90, what="the server to start")
        body = json.dumps(HELLO).encode()
        reply = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/api/chat", data=body,
            headers={"Content-Type": "application/json"}), timeout=60).read().decode()
        assert events(reply)[-1] == "[DONE]"
        address = _non_loopback_address()
        if address is None:
            pytest.skip("this machine has no non-loopback IPv4 address to probe")
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(3)
            s.connect((address, port))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_server_flags_give_one_error_line(capsys):
    from nanogpt_course.chat import server

    with pytest.raises(SystemExit) as exit_:
        server.main(["--port", "http"])
    assert exit_.value.code == 2
    assert server.main(["--concurrency", "0"]) == 2
    assert server.main(["--checkpoint", "/nonexistent/run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert server.build_parser().parse_args([]).host == "127.0.0.1"
