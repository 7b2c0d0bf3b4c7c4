"""Exact resume: stop at step k, resume, and the losses and final weights equal an
uninterrupted run bitwise (CPU, fp32, the real dataset loader)."""

from __future__ import annotations

import torch
from test_train_helpers import tiny_cfg

from nanogpt_course import checkpoint as ck
from nanogpt_course.train import read_metrics, train


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def test_resume_is_bitwise_exact(tmp_path):
    full = tmp_path / "full"
    cut = tmp_path / "cut"
    steps = 7
    res = train(tiny_cfg(full, max_steps=steps, eval_every=3), echo=False)
    assert res.status == "finished" and res.step == steps

    first = train(tiny_cfg(cut, max_steps=steps, eval_every=3, stop_at=3), echo=False)
    assert first.status == "stopped" and first.step == 3
    assert ck.latest(cut).name == "step_000003"
    second = train(tiny_cfg(cut, max_steps=steps, eval_every=3, resume=True), echo=False)
    assert second.status == "finished" and second.step == steps

    a, b = _losses(full), _losses(cut)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert a == b  # every per-step loss, bit for bit
    # val bpb at steps 3 and 6 (and the end) too
    va = {r["step"]: r["val_bpb"] for r in read_metrics(full) if "val_bpb" in r}
    vb = {r["step"]: r["val_bpb"] for r in read_metrics(cut) if "val_bpb" in r}
    assert va == vb and set(va) == {0, 3, 6, 7}
    wa, wb = ck.read_model_state(full), ck.read_model_state(cut)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    oa, ob = ck.read_optimizer_state(full, 0), ck.read_optimizer_state(cut, 0)
    for name in oa:
        assert torch.equal(oa[name], ob[name]), name
    # the step count, the loader position and the horizon came back
    meta = ck.read_meta(cut)
    assert meta["step"] == steps and meta["finished"] and meta["loader"] == ck.read_meta(full)["loader"]


def test_resume_refuses_changed_settings(tmp_path):
    import pytest

    from nanogpt_course.train import ConfigError

    run = tmp_path / "run"
    train(tiny_cfg(run, max_steps=2), echo=False)
    with pytest.raises(ConfigError, match="--depth 3"):
        train(tiny_cfg(run, max_steps=4, depth=3, resume=True), echo=False)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(tiny_cfg(run, max_steps=4), echo=False)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        train(tiny_cfg(tmp_path / "empty", resume=True), echo=False)
