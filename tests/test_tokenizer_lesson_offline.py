"""Lesson 01 runs as a newcomer runs it: no data mirror (``NANOGPT_COURSE_DATA`` unset), an
empty cache, and no way to download anything (every non-loopback connection refused, proxies
pointing nowhere). GPT-2's tokenizer comes from the files shipped in the package and the
text falls back to the embedded passage, saying so in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

# Loaded by every Python process started with this folder on PYTHONPATH (the papermill
# runner and the notebook's kernel): refuses any connection that leaves the machine.
NO_NETWORK = textwrap.dedent('''
    import socket

    _connect = socket.socket.connect

    def _local_only(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"network disabled by the test: {address}")
        return _connect(self, address)

    socket.socket.connect = _local_only
''')


@pytest.mark.slow
@pytest.mark.notebook
def test_lesson01_offline_without_data_mirror(tmp_path):
    pytest.importorskip("papermill")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_NETWORK)
    env = {k: v for k, v in os.environ.items() if k not in ("NANOGPT_COURSE_DATA",)}
    env.update(
        PYTHONPATH=str(tmp_path / "site"),
        NANOGPT_COURSE_CACHE=str(tmp_path / "cache"),
        NANOGPT_COURSE_RUNS=str(tmp_path / "runs"),
        NANOGPT_COURSE_PRESET="smoke",
        TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"),
        HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1",
    )
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection("
                            "('1.1.1.1', 80), timeout=5)"], env=env, capture_output=True, text=True)
    assert "network disabled by the test" in probe.stderr  # the block is really in place
    out = tmp_path / "01_offline.ipynb"
    run = subprocess.run(
        [sys.executable, "-m", "papermill", str(REPO / "lessons" / "01_tokenizer.ipynb"),
         str(out), "-p", "PRESET", "smoke", "-k", "python3", "--cwd", str(REPO / "lessons")],
        env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    cells = json.loads(out.read_text())["cells"]
    printed = "".join(
        "".join(o.get("text", "")) for c in cells if c["cell_type"] == "code"
        for o in c.get("outputs", []))
    assert "tiny Shakespeare not found: using the embedded passage" in printed
    assert "'Hello world' -> [15496, 995]" in printed  # GPT-2 from the shipped files
    assert "Traceback" not in printed
    assert not (tmp_path / "tiktoken").exists()  # tiktoken never tried a download
