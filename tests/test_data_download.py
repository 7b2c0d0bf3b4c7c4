"""Downloads against a local HTTP server on 127.0.0.1: retry after failures, resume,
checksum mismatch, no partial file left behind, no retry on 404, skip when present."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nanogpt_course.data import download as dl

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """``/ok``; ``/flaky`` (two 503s first); ``/cut`` (first answer stops half-way, ranges
    honoured afterwards); ``/missing`` (404). Every request is logged on the server."""

    def log_message(self, *args):
        pass

    def _send(self, body: bytes, status=200, headers=None, length=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        log = self.server.log
        log.append((self.path, self.headers.get("Range")))
        hits = sum(1 for p, _ in log if p == self.path)
        if self.path == "/ok":
            self._send(PAYLOAD)
        elif self.path == "/flaky":
            if hits <= 2:
                self._send(b"busy", status=503)
            else:
                self._send(PAYLOAD)
        elif self.path == "/cut":
            rng = self.headers.get("Range")
            if hits == 1:  # promise everything, deliver half, hang up
                self._send(PAYLOAD[: len(PAYLOAD) // 2], length=len(PAYLOAD))
                self.close_connection = True
            elif rng:
                start = int(rng.split("=")[1].rstrip("-"))
                self._send(PAYLOAD[start:], status=206,
                           headers={"Content-Range": f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"})
            else:
                self._send(PAYLOAD)
        else:
            self._send(b"not found", status=404)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.log = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_and_skip_when_present(server, tmp_path):
    httpd, url = server
    dest = dl.download(f"{url}/ok", tmp_path / "f.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and _leftovers(tmp_path) == ["f.bin"]
    dl.download(f"{url}/ok", dest, sha256=SHA, progress=False)
    assert len(httpd.log) == 1  # present with the right checksum: not fetched again


def test_retry_after_server_errors(server, tmp_path):
    httpd, url = server
    dest = dl.download(f"{url}/flaky", tmp_path / "f.bin", sha256=SHA, backoff=0.01,
                       progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in httpd.log] == ["/flaky"] * 3


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    httpd, url = server
    dest = dl.download(f"{url}/cut", tmp_path / "f.bin", sha256=SHA, backoff=0.01,
                       progress=False)
    assert dest.read_bytes() == PAYLOAD and _leftovers(tmp_path) == ["f.bin"]
    assert httpd.log[1] == ("/cut", f"bytes={len(PAYLOAD) // 2}-")


def test_checksum_mismatch_leaves_no_partial_file(server, tmp_path):
    _, url = server
    with pytest.raises(dl.ChecksumError, match="checksum mismatch"):
        dl.download(f"{url}/ok", tmp_path / "f.bin", sha256="0" * 64, progress=False)
    assert _leftovers(tmp_path) == []


def test_404_is_not_retried_and_leaves_nothing(server, tmp_path):
    httpd, url = server
    with pytest.raises(dl.DownloadError, match="404"):
        dl.download(f"{url}/missing", tmp_path / "f.bin", backoff=0.01, progress=False)
    assert len(httpd.log) == 1 and _leftovers(tmp_path) == []


def test_gives_up_after_the_retries(server, tmp_path):
    httpd, url = server
    with pytest.raises(dl.DownloadError, match="after 2 attempt"):
        dl.download(f"{url}/flaky", tmp_path / "f.bin", retries=1, backoff=0.01, progress=False)
    assert _leftovers(tmp_path) == []


def test_estimate_and_disk_space(server, tmp_path):
    _, url = server
    plan = dl.estimate([f"{url}/ok", f"{url}/ok"])
    assert plan["bytes"] == 2 * len(PAYLOAD) and plan["unknown"] == 0
    assert "2 file(s)" in dl.describe(plan)
    dl.check_space(tmp_path, 1)
    with pytest.raises(dl.DownloadError, match="not enough disk space"):
        dl.check_space(tmp_path / "not" / "yet", 10**18)
