"""How runs end badly: SIGTERM saves and exits, a NaN loss stops cleanly keeping the last
good checkpoint, out-of-memory names the flag to lower."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train_helpers import cli_args, tiny_cfg

from nanogpt_course import checkpoint as ck
from nanogpt_course.model import GPT
from nanogpt_course.train import TrainingDiverged, TrainingOOM, read_metrics, train


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigterm_saves_and_exits(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nanogpt_course.train",
           *cli_args(tiny_cfg(out, max_steps=100_000, save_every=-1))]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and sum(1 for _ in metrics.open()) >= 2:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, text
    assert "SIGTERM" in text and "--resume" in text
    last = max(r["step"] for r in read_metrics(out))
    meta = ck.read_meta(out)
    assert meta["step"] == last >= 2 and meta["finished"] is False
    assert ck.latest(out).name == f"step_{last:06d}"


def _nan_after(monkeypatch, calls: int):
    real = GPT.forward
    seen = {"n": 0}

    def forward(self, idx, targets=None, **kw):
        out = real(self, idx, targets, **kw)
        if targets is not None:
            seen["n"] += 1
            if seen["n"] > calls:
                return out * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", forward)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_after(monkeypatch, calls=4 * 3)  # 4 micro-batches per step: step 4 goes bad
    with pytest.raises(TrainingDiverged, match="loss is nan at step 4") as err:
        train(tiny_cfg(out, max_steps=8, save_every=2), echo=False)
    assert "step_000002" in str(err.value)
    assert [s for s, _ in ck.complete_steps(out)] == [2]
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == [1, 2, 3]  # nothing logged or saved for the bad step
    monkeypatch.undo()
    # the kept checkpoint is good: the run resumes from it and finishes
    res = train(tiny_cfg(out, max_steps=8, save_every=2, resume=True), echo=False)
    assert res.status == "finished" and res.step == 8


NAN_SCRIPT = """
import sys
from nanogpt_course.model import GPT
real = GPT.forward
def forward(self, idx, targets=None, **kw):
    out = real(self, idx, targets, **kw)
    return out * float("nan") if targets is not None else out
GPT.forward = forward
from nanogpt_course.train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_nan_exit_code_and_message_from_the_cli(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", NAN_SCRIPT,
                           *cli_args(tiny_cfg(out, max_steps=3))],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "loss is nan at step 1" in proc.stderr and "no checkpoint was saved" in proc.stderr
    assert ck.latest(out) is None


def test_out_of_memory_names_the_flag(tmp_path, monkeypatch):
    def boom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(GPT, "forward", boom)
    with pytest.raises(TrainingOOM, match="--device-batch-size") as err:
        train(tiny_cfg(tmp_path / "run", device_batch_size=2), echo=False)
    assert "e.g. 1" in str(err.value) and "gradient accumulation grows" in str(err.value)


def test_metrics_file_and_lines(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_cfg(out, max_steps=3, eval_every=2, sample_every=3), echo=True)
    text = capsys.readouterr().out
    assert "depth rules (reference: nanochat d12" in text
    assert "step 00001/00003 | loss " in text and "tok/s" in text
    assert "sample: 'The capital of France is' ->" in text
    recs = read_metrics(out)
    assert recs[0] == {"time": recs[0]["time"], "step": 0, "val_bpb": recs[0]["val_bpb"]}
    train_recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3]
    for key in ("lrm", "tok_per_sec", "dt_ms", "tokens", "flops", "momentum", "weight_decay"):
        assert key in train_recs[0], key
    assert "val_bpb" in train_recs[1] and "val_bpb" in train_recs[2]
    assert train_recs[2]["tokens"] == 3 * 256
    json.dumps(recs)


def test_step_times_leave_out_evaluation_and_saving(tmp_path, monkeypatch):
    """Steps are timed from one loss read to the next (no device sync in between), minus
    the evaluation and the checkpoint of the step before: a 0.4 s pause in each must show
    in no step's time, while a pause inside a step does."""
    from nanogpt_course.train.loop import Trainer

    pause = 0.4
    real_eval, real_save, real_step = Trainer.evaluate, Trainer.save, Trainer.train_step

    def slow_eval(self, step, last):
        time.sleep(pause)
        return real_eval(self, step, last)

    def slow_save(self, step, **kw):
        time.sleep(pause)
        return real_save(self, step, **kw)

    def slow_step(self, step):
        if step == 4:
            time.sleep(pause)
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "evaluate", slow_eval)
    monkeypatch.setattr(Trainer, "save", slow_save)
    monkeypatch.setattr(Trainer, "train_step", slow_step)
    out = tmp_path / "run"
    train(tiny_cfg(out, max_steps=6, save_every=1, log_every=1), echo=False)
    dts = {r["step"]: r["dt_ms"] for r in read_metrics(out) if "loss" in r}
    assert sorted(dts) == [1, 2, 3, 4, 5, 6]
    assert dts[5] >= 1e3 * pause  # the 5th step (index 4) paused inside
    assert all(dt < 1e3 * pause for s, dt in dts.items() if s != 5), dts
