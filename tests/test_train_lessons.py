"""lessons/09_pretrain under papermill at PRESET=smoke with NPROC=2 (2 gloo ranks on CPU),
and the cached tiny checkpoints lessons and tests share."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from nanogpt_course import checkpoint as ck


@pytest.mark.notebook
@pytest.mark.distributed
@pytest.mark.slow
def test_papermill_runs_09_at_smoke_with_two_ranks(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("NANOGPT_COURSE_RUNS", str(tmp_path / "runs"))
    out = tmp_path / "09_out.ipynb"
    papermill.execute_notebook(str(REPO / "lessons" / "09_pretrain.ipynb"), str(out),
                               parameters={"PRESET": "smoke", "NPROC": 2},
                               cwd=str(REPO / "lessons"), kernel_name="python3",
                               progress_bar=False)
    nb = json.loads(out.read_text())
    text = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                   for c in nb["cells"] for o in c.get("outputs", []))
    assert "x 2 rank(s) = 512 tokens per step" in text
    assert "[launch] 2 rank(s) on cpu finished" in text
    run = tmp_path / "runs" / "09_pretrain" / "smoke-pretraining-d2"
    meta = ck.read_meta(run)
    assert meta["world_size"] == 2 and meta["finished"] and meta["step"] == 10
    assert f"checkpoint: {run / 'step_000010'}" in text
    assert "step      5  val bpb" in text and "step     10  val bpb" in text  # samples across the run
    # the committed GPU reference curve is drawn, with its last samples
    assert "reference run, step 120:" in text and "no reference curve yet" not in text


def test_tiny_checkpoints_are_cached_and_load():
    from nanogpt_course.train import tiny_checkpoint

    base = tiny_checkpoint()
    assert tiny_checkpoint() == base  # cached: the same folder, not rebuilt
    c = ck.load(base, device="cpu")
    assert c.kind == "base" and c.meta["finished"] and c.tokenizer.vocab_size == 512
    chat = ck.load(tiny_checkpoint("chat"), device="cpu")
    assert chat.kind == "chat" and chat.meta["init_from"].startswith(str(base))
    with pytest.raises(ValueError, match="kind"):
        tiny_checkpoint("large")
