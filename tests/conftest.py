"""Shared pytest setup: offline, deterministic, small thread counts, a shared tiny checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Nothing in the suite may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests never write into the user's cache: `make test` points this at .test-cache/, and a
# bare `pytest` gets a folder under the repo too.
os.environ.setdefault("NANOGPT_COURSE_CACHE", str(REPO / ".test-cache" / "cache"))
os.environ.setdefault("NANOGPT_COURSE_RUNS", str(REPO / ".test-cache" / "runs"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def load_bench(name: str):
    """Import ``bench/<name>.py`` (bench/ is not a package) as the module ``name``, yield
    it, then drop it from ``sys.modules``; for a fixture: ``yield from load_bench(...)``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look it up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def run_interpreted(script: str, **env: str):
    """Run ``python -c script`` under Triton's CPU interpreter (``TRITON_INTERPRET=1`` and
    ``env`` added to this environment) and return the JSON it prints."""
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1", **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data mirror (../shared/data in CI); skips the test when it is absent."""
    from nanogpt_course import paths

    mirror = paths.data_dir()
    if mirror is None or not mirror.is_dir():
        pytest.skip("real-data test: set NANOGPT_COURSE_DATA to the data mirror (CI uses ../shared/data)")
    return mirror


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """A tiny trained base model (run folder), built once and cached in NANOGPT_COURSE_CACHE."""
    from nanogpt_course.train import tiny_checkpoint as build

    return build()


@pytest.fixture(scope="session")
def tiny_chat_checkpoint():
    """The same tiny model after a few chat (mid-training) steps."""
    from nanogpt_course.train import tiny_checkpoint as build

    return build("chat")
