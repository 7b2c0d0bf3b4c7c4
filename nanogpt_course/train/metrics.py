"""Training metrics: one plain line per logged step, the same as JSON in ``metrics.jsonl``.

MFU (model FLOPs utilization) = achieved training FLOPs/s ÷ (peak dense bf16 FLOPs/s of
one GPU × number of GPUs). The peaks are the vendors' dense (no sparsity) bf16 tensor-core
numbers; on an unknown GPU or a CPU, MFU is left out rather than guessed.

Optional sinks: Weights & Biases (``NANOGPT_COURSE_WANDB=project``) and TensorBoard
(``NANOGPT_COURSE_TENSORBOARD=1``), both imported lazily and only on rank 0.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

# Dense bf16 peaks (FLOP/s), from the vendors' datasheets. Matched as substrings of
# torch.cuda.get_device_name(), most specific first.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM (also "H100 80GB HBM3")
    ("H800", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 6000 Ada", 364e12),
    ("RTX 4090", 165e12),  # fp32 accumulate
    ("RTX 3090", 71e12),
    ("MI300X", 1307e12),
]


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s for a GPU name, or None when it is not in the table."""
    for key, value in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def device_peak_flops(device) -> float | None:
    """Peak for a torch device (None on CPU/MPS or an unknown GPU)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device))


def peak_memory_bytes(device) -> tuple[int | None, str]:
    """This process's peak memory and what it measures: on CUDA the allocator's peak
    (``torch.cuda.max_memory_allocated``, tensors only), elsewhere the peak resident set
    size of the process (``ru_maxrss``: tensors plus Python, torch and the allocator's
    slack). ``(None, "none")`` where neither is available."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024), "max_rss"
    except (ImportError, OSError):  # Windows: no resource module
        return None, "none"


def mfu(tokens_per_second: float, flops_per_token: float, peak: float | None,
        world_size: int = 1) -> float | None:
    """Model FLOPs utilization in percent, or None without a known peak."""
    if peak is None or peak <= 0:
        return None
    return 100.0 * tokens_per_second * flops_per_token / (peak * world_size)


class StepTimer:
    """Average step time for the ETA, skipping the first ``skip`` steps (compile, warmup)."""

    def __init__(self, skip: int = 3):
        self.skip, self.seen, self.total = skip, 0, 0.0

    def add(self, seconds: float) -> None:
        self.seen += 1
        if self.seen > self.skip:
            self.total += seconds

    @property
    def mean(self) -> float | None:
        counted = self.seen - self.skip
        return self.total / counted if counted > 0 else None

    def eta(self, steps_left: int) -> float | None:
        mean = self.mean
        return None if mean is None else mean * max(0, steps_left)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_line(rec: dict, num_steps: int) -> str:
    """The plain progress line: ``step 00012/00100 | loss 4.1234 | lrm 1.00 | ...``."""
    width = max(5, len(str(num_steps)))
    parts = [f"step {rec['step']:0{width}d}/{num_steps:0{width}d}"]
    if "loss" in rec:
        parts.append(f"loss {rec['loss']:.4f}")
    if "val_bpb" in rec:
        parts.append(f"val bpb {rec['val_bpb']:.4f}")
    if "lrm" in rec:
        parts.append(f"lrm {rec['lrm']:.3f}")
    if "tok_per_sec" in rec:
        parts.append(f"{rec['tok_per_sec']:,.0f} tok/s")
    if rec.get("mfu") is not None:
        parts.append(f"MFU {rec['mfu']:.1f}%")
    if "dt_ms" in rec:
        parts.append(f"{rec['dt_ms']:.0f} ms")
    if "eta_s" in rec:
        parts.append(f"ETA {format_duration(rec['eta_s'])}")
    return " | ".join(parts)


class MetricsLogger:
    """Appends JSON records to ``<out>/metrics.jsonl`` and prints lines; inert off rank 0."""

    def __init__(self, out: Path | str, *, rank: int = 0, num_steps: int = 0,
                 config: dict | None = None, echo: bool = True):
        self.active = rank == 0
        self.num_steps, self.echo = num_steps, echo
        self.path = Path(out) / "metrics.jsonl"
        self._sinks = []
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sinks = _optional_sinks(Path(out), config or {})

    def log(self, record: dict, *, line: bool = True) -> None:
        """Write one record (must hold ``step``); print it as a plain line when asked."""
        if not self.active:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()
        for sink in self._sinks:
            sink(record)
        if line and self.echo:
            print(format_line(record, self.num_steps), flush=True)

    def note(self, text: str) -> None:
        """A free-form message on rank 0 (not written to metrics.jsonl)."""
        if self.active and self.echo:
            print(text, flush=True)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records past ``step`` (written after the checkpoint we resume from),
        so metrics.jsonl reads like one uninterrupted run."""
        if not self.active or not self.path.exists():
            return
        kept = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and json.loads(ln).get("step", -1) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        os.replace(tmp, self.path)


def read_metrics(path: Path | str) -> list[dict]:
    """All records of a run's metrics.jsonl (``path`` = the file or the run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _optional_sinks(out: Path, config: dict) -> list:
    sinks = []
    project = os.environ.get("NANOGPT_COURSE_WANDB")
    if project:
        import wandb  # optional dependency

        run = wandb.init(project=project, name=out.name, config=config)
        sinks.append(lambda rec: run.log({k: v for k, v in rec.items() if k != "time"},
                                         step=rec["step"]))
    if os.environ.get("NANOGPT_COURSE_TENSORBOARD"):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        writer = SummaryWriter(str(out / "tensorboard"))

        def to_tb(rec: dict) -> None:
            for key, value in rec.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, rec["step"])
            writer.flush()

        sinks.append(to_tb)
    return sinks
