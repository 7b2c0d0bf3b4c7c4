"""Several gloo ranks on CPU: 2 ranks x accumulation 2 = 1 rank x accumulation 4 (gradients
sharded during backward, ZeRO-2), and a run saved on 2 ranks resumes on 1 and on 4 (the
optimizer state is resharded) with the same continuation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_train_helpers import cli_args, tiny_cfg

from nanogpt_course import checkpoint as ck
from nanogpt_course.train import read_metrics, train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def torchrun(nproc: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "nanogpt_course.train", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / a[k].norm().clamp(min=1e-12)) for k in a)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """Two pretraining steps from scratch: the runs below start from a generic point.

    From scratch, the first step of the residual scalars (resid/x0 lambdas) is driven by
    rounding noise: every block starts as the identity and the final RMSNorm is scale
    invariant, so their gradient is exactly 0 in exact arithmetic and ~1e-11 in floats, which
    Adam (eps 1e-10) turns into updates of a sizeable fraction of the LR, with a sign that
    depends on the summation order. Starting after that keeps the comparison about the math.
    """
    out = tmp_path_factory.mktemp("start") / "run"
    train(tiny_cfg(out, max_steps=2), echo=False)
    return out


def test_two_ranks_equal_one_rank_with_accumulation_and_resume_elsewhere(tmp_path, start):
    steps = 4
    # the depth rules' LRs (not the tiny runs' large explicit ones): Adam turns rounding
    # noise in near-cancelled gradient coordinates into updates proportional to the LR
    common = dict(mode="mid-training", checkpoint=str(start), depth=None, tokenizer=None,
                  max_steps=steps, matrix_lr=None, embedding_lr=None, unembedding_lr=None,
                  scalar_lr=None, weight_decay=None)
    # 1 rank: 4 micro-batches of 2 x 32 tokens per step
    one = tmp_path / "one"
    res = train(tiny_cfg(one, **common), echo=False)
    assert res.status == "finished"
    # 2 ranks: 2 micro-batches each, the same 256 tokens per step
    two = tmp_path / "two"
    proc = torchrun(2, cli_args(tiny_cfg(two, save_every=2, **common)))
    assert "2 micro-step(s) of 2 x 32 tokens per rank x 2 rank(s) = 256 tokens" in proc.stdout
    assert ck.read_meta(two)["world_size"] == 2
    assert sorted(p.name for p in ck.latest(two).glob("optimizer_rank*")) == [
        "optimizer_rank0.safetensors", "optimizer_rank1.safetensors"]

    w0, w1, w2 = (ck.read_model_state(p) for p in (start, one, two))
    assert rel_diff(w1, w0) > 1e-3  # training moved the weights: the comparison has teeth
    assert rel_diff(w1, w2) <= 1e-5
    l1 = [r["loss"] for r in read_metrics(one) if "loss" in r]
    l2 = [r["loss"] for r in read_metrics(two) if "loss" in r]
    assert len(l1) == steps and l1 == pytest.approx(l2, rel=1e-6)

    # resume the 2-rank run's step 2 on 1 rank: the sharded optimizer state is consolidated
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(two / "step_000002", moved / "step_000002")
    res = train(tiny_cfg(moved, resume=True, **{k: v for k, v in common.items()
                                                   if k not in ("checkpoint", "mode")}),
                echo=False)
    assert res.status == "finished" and res.step == steps
    assert rel_diff(w2, ck.read_model_state(moved)) <= 1e-5
    l3 = {r["step"]: r["loss"] for r in read_metrics(moved) if "loss" in r}
    assert [l3[s] for s in (3, 4)] == pytest.approx(l2[2:], rel=1e-6)
    assert torch.isfinite(torch.cat([v.flatten() for v in w2.values()])).all()

    # and on 4 ranks (accumulation 1): the 2 shards are consolidated and cut in 4
    moved4 = tmp_path / "moved4"
    moved4.mkdir()
    shutil.copytree(two / "step_000002", moved4 / "step_000002")
    resume4 = {k: v for k, v in common.items() if k not in ("checkpoint", "mode")}
    proc = torchrun(4, cli_args(tiny_cfg(moved4, resume=True, **resume4)))
    assert "1 micro-step(s) of 2 x 32 tokens per rank x 4 rank(s) = 256 tokens" in proc.stdout
    assert rel_diff(w2, ck.read_model_state(moved4)) <= 1e-5
    l4 = {r["step"]: r["loss"] for r in read_metrics(moved4) if "loss" in r}
    assert [l4[s] for s in (3, 4)] == pytest.approx(l2[2:], rel=1e-6)
    assert len(list(ck.latest(moved4).glob("optimizer_rank*"))) == 4


def test_sigterm_to_torchrun_saves_every_rank(tmp_path):
    """torchrun forwards SIGTERM to its ranks: they agree on the step (the stop flag is
    all-reduced with the loss), save one complete checkpoint with both shards, and exit."""
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "nanogpt_course.train", *cli_args(tiny_cfg(out, max_steps=100_000))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and sum(1 for _ in metrics.open()) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert "(SIGTERM); continue with --resume" in text, text[-3000:]
    meta = ck.read_meta(out)
    last = max(r["step"] for r in read_metrics(out))
    assert meta["step"] == last and meta["world_size"] == 2 and not meta["finished"]
    assert sorted(p.name for p in ck.latest(out).glob("optimizer_rank*")) == [
        "optimizer_rank0.safetensors", "optimizer_rank1.safetensors"]
