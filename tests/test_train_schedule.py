"""LR / momentum / weight-decay schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from nanogpt_course.train.schedule import Schedule, apply


def test_lr_warmup_constant_warmdown():
    s = Schedule(num_steps=100, warmup_steps=10, warmdown_ratio=0.5, final_lr_frac=0.1)
    assert s.lr_multiplier(0) == pytest.approx(0.1)
    assert s.lr_multiplier(9) == pytest.approx(1.0)
    assert s.lr_multiplier(10) == 1.0 and s.lr_multiplier(50) == 1.0
    # warmdown: 50 steps from 1.0 at step 50 to 0.1 at step 100, linear
    assert s.lr_multiplier(75) == pytest.approx(0.5 * 1.0 + 0.5 * 0.1)
    assert s.lr_multiplier(99) == pytest.approx(0.02 + 0.98 * 0.1)
    assert s.lr_multiplier(100) == pytest.approx(0.1)
    values = [s.lr_multiplier(i) for i in range(50, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_warmdown_means_constant():
    s = Schedule(num_steps=10, warmup_steps=0, warmdown_ratio=0.0)
    assert [s.lr_multiplier(i) for i in range(10)] == [1.0] * 10


def test_muon_momentum():
    s = Schedule(num_steps=1000, warmdown_ratio=0.5)
    assert s.muon_momentum(0) == pytest.approx(0.85)
    assert s.muon_momentum(200) == pytest.approx(0.91)
    assert s.muon_momentum(400) == pytest.approx(0.97)
    assert s.muon_momentum(499) == pytest.approx(0.97)
    assert s.muon_momentum(750) == pytest.approx(0.935)
    assert s.muon_momentum(1000) == pytest.approx(0.90)


def test_weight_decay_cosine_to_zero():
    s = Schedule(num_steps=100, weight_decay=0.2)
    assert s.weight_decay_at(0) == pytest.approx(0.2)
    assert s.weight_decay_at(50) == pytest.approx(0.1)
    assert s.weight_decay_at(100) == pytest.approx(0.0, abs=1e-12)
    assert s.weight_decay_at(25) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert Schedule(num_steps=100, weight_decay=0.2,
                    weight_decay_schedule="constant").weight_decay_at(70) == 0.2


def test_apply_writes_groups():
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a], "kind": "muon", "initial_lr": 0.02},
                           {"params": [b], "kind": "adamw", "initial_lr": 0.3}], lr=1.0)
    s = Schedule(num_steps=10, warmup_steps=4, weight_decay=0.5)
    values = apply(opt, s, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.3 * 0.5)
    assert opt.param_groups[0]["momentum"] == pytest.approx(values["momentum"])
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(s.weight_decay_at(1))
    assert "momentum" not in opt.param_groups[1] or opt.param_groups[1]["momentum"] == 0


def test_bad_schedule_raises():
    with pytest.raises(ValueError, match="at least 1 step"):
        Schedule(num_steps=0)
    with pytest.raises(ValueError, match="warmdown_ratio"):
        Schedule(num_steps=5, warmdown_ratio=1.5)
