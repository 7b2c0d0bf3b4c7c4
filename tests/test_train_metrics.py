"""MFU from the per-GPU peak table, ETA, plain lines, metrics.jsonl truncation on resume."""

from __future__ import annotations

import pytest

from nanogpt_course.train import metrics


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A10G", 70e12),
    ("NVIDIA A10", 125e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA B200", 2.25e15),
])
def test_peak_table(name, peak):
    assert metrics.peak_flops(name) == peak


def test_unknown_gpu_and_cpu_have_no_mfu():
    assert metrics.peak_flops("Some Future GPU") is None
    assert metrics.device_peak_flops("cpu") is None
    assert metrics.mfu(1e5, 1e9, None) is None


def test_mfu_formula():
    # d12-like: 0.49M tok/s x 8.87e8 FLOPs/token on one H100 = 44% (DESIGN.md's figure)
    assert metrics.mfu(0.49e6, 8.871e8, 989e12) == pytest.approx(43.95, abs=0.01)
    assert metrics.mfu(8 * 0.49e6, 8.871e8, 989e12, world_size=8) == pytest.approx(43.95, abs=0.01)


def test_eta_skips_warmup_steps():
    t = metrics.StepTimer(skip=2)
    for dt in (10.0, 5.0, 1.0, 3.0):
        t.add(dt)
    assert t.mean == 2.0 and t.eta(10) == 20.0
    assert metrics.StepTimer(skip=3).eta(5) is None
    assert metrics.format_duration(3725) == "1h02m" and metrics.format_duration(75) == "1m15s"


def test_line_and_truncate(tmp_path):
    log = metrics.MetricsLogger(tmp_path, num_steps=100, echo=False)
    for step in range(1, 6):
        log.log({"step": step, "loss": 5.0 / step})
    log.truncate_after(3)
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3]
    line = metrics.format_line({"step": 7, "loss": 3.14159, "tok_per_sec": 12345.6, "mfu": 41.25,
                                "eta_s": 90, "lrm": 1.0}, 100)
    assert line == "step 00007/00100 | loss 3.1416 | lrm 1.000 | 12,346 tok/s | MFU 41.2% | ETA 1m30s"
    silent = metrics.MetricsLogger(tmp_path / "r1", rank=1)
    silent.log({"step": 1})
    assert not (tmp_path / "r1" / "metrics.jsonl").exists()
