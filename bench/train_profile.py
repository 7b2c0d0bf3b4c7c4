"""Where a training step's time goes: ``bench_train.py --profile DIR`` (issue #18's method).

Two views of the same trainer, with nothing in the step changed:

- **phases**, every step: marks on the device's stream (CUDA events; a host clock on a CPU,
  where every op is synchronous) when the step's first forward is called, when
  ``optimizer.step()`` is called and when it returns. Per step: forward + backward (first
  forward to the optimizer call), optimizer (its kernels, queued while the backward runs),
  and the stream's time between the optimizer's end and the next step's first forward (the
  device is idle there unless the host launched nothing else: data, logging, the schedule).
- **kernels**, the last ``count`` steps: ``torch.profiler`` with device activity; every
  kernel's time summed into a few categories by its name (matrix multiplies, attention,
  Triton-fused elementwise/reduction kernels, ATen's own elementwise kernels, copies) and
  the busy fraction: kernel time over the profiled steps' wall time.

Files written to DIR: ``profile_ops.txt`` (torch's operator table, the top 60 by device
time) and ``profile.json`` (the two views; also returned and put in bench_train's report).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

# kernel name (lower case) -> category; the first pattern that matches wins
CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "cudnn")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_", "sm80_", "_mm_",
                "scaled_mm", "triton_tem", "::mm", "bmm", "addmm", "matmul_epilogue")),
    ("nccl", ("nccl",)),
    ("triton fused", ("triton_",)),
    ("copy / memset", ("memcpy", "memset", "copy")),
    ("aten elementwise / reduce", ("elementwise", "reduce", "vectorized", "at::native")),
)


def category(name: str) -> str:
    low = name.lower()
    for label, patterns in CATEGORIES:
        if any(p in low for p in patterns):
            return label
    return "other"


def is_annotation(ev) -> bool:
    """A user range shown on the device's timeline (``Optimizer.step#MuonAdamW.step``,
    ``record_function`` names), not a kernel: it spans kernels counted on their own."""
    return bool(getattr(ev, "is_user_annotation", False)) or ev.name.startswith(
        ("Optimizer.", "ProfilerStep"))


class StreamClock:
    """Timestamps on the device's stream (CUDA events) or the host's clock (CPU)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, a, b) -> float:
        """Milliseconds from mark ``a`` to mark ``b`` (both recorded; syncs on ``b``)."""
        if not self.cuda:
            return 1000 * (b - a)
        b.synchronize()
        return a.elapsed_time(b)


class StepProfiler:
    """Installs itself on a :class:`Trainer` before ``fit()``: wraps the compiled forward
    and ``optimizer.step`` once ``setup()`` has built them, and runs ``torch.profiler``
    over steps ``first .. first + count - 1`` (0-based)."""

    def __init__(self, trainer, out: Path, *, first: int, count: int):
        self.trainer, self.out, self.first, self.count = trainer, Path(out), first, count
        self.marks: list[dict] = []  # per step: forward, opt_start, opt_end
        self.prof = None
        self.kernels: dict = {}
        self.profiled_wall_ms: float | None = None
        setup = trainer.setup

        def setup_then_wrap():
            setup()
            self._wrap(trainer)

        trainer.setup = setup_then_wrap

    def _wrap(self, trainer) -> None:
        clock = StreamClock(trainer.rt.device)
        forward, opt_step, train_step = trainer.forward, trainer.optimizer.step, trainer.train_step
        state = {"new_step": True}

        def timed_forward(*args, **kwargs):
            if state["new_step"]:
                self.marks.append({"forward": clock.mark()})
                state["new_step"] = False
            return forward(*args, **kwargs)

        def timed_optimizer_step(*args, **kwargs):
            self.marks[-1]["opt_start"] = clock.mark()
            result = opt_step(*args, **kwargs)
            self.marks[-1]["opt_end"] = clock.mark()
            return result

        def profiled_train_step(step: int):
            state["new_step"] = True
            if step == self.first:
                self._start(trainer.rt.device)
            loss = train_step(step)
            if step == self.first + self.count - 1 and self.prof is not None:
                self._stop(trainer.rt.device)
            return loss

        self.clock = clock
        trainer.forward, trainer.optimizer.step = timed_forward, timed_optimizer_step
        trainer.train_step = profiled_train_step

    def _start(self, device) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(device)
        self.prof = torch.profiler.profile(activities=activities)
        self.prof.start()
        self._t0 = time.perf_counter()

    def _stop(self, device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.profiled_wall_ms = 1000 * (time.perf_counter() - self._t0)
        self.prof.stop()
        self.kernels = self._kernel_table(device)

    def _kernel_table(self, device) -> dict:
        """Device time per category (ms per profiled step) from the profiler's events."""
        cuda = device.type == "cuda"
        totals: dict[str, float] = {}
        for ev in self.prof.events():
            if cuda and ev.device_type != torch.autograd.DeviceType.CUDA:
                continue
            if cuda and is_annotation(ev):  # a range over kernels counted on their own
                continue
            # a CPU op's self time: its children (the mm under a linear) are counted apart
            us = ev.device_time if cuda else ev.self_cpu_time_total
            totals[category(ev.name)] = totals.get(category(ev.name), 0.0) + us / 1000
        busy = sum(totals.values())
        self.out.mkdir(parents=True, exist_ok=True)
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        table = self.prof.key_averages().table(sort_by=sort, row_limit=150, max_name_column_width=120)
        (self.out / "profile_ops.txt").write_text(table)
        per_step = {k: round(v / self.count, 3) for k, v in
                    sorted(totals.items(), key=lambda kv: -kv[1])}
        return {"steps": self.count, "ms_per_step": per_step,
                "kernel_ms_per_step": round(busy / self.count, 3),
                "wall_ms_per_step": round(self.profiled_wall_ms / self.count, 3),
                "busy_fraction": round(busy / self.profiled_wall_ms, 4)
                if cuda and self.profiled_wall_ms else None}

    def phases(self, skip: int) -> dict:
        """Median milliseconds of each phase over the steps after ``skip`` (not the
        profiled ones: the profiler slows them)."""
        fb, opt, gap = [], [], []
        for i in range(skip, min(self.first, len(self.marks))):
            m = self.marks[i]
            if "opt_end" not in m:
                continue
            fb.append(self.clock.ms(m["forward"], m["opt_start"]))
            opt.append(self.clock.ms(m["opt_start"], m["opt_end"]))
            if i + 1 < len(self.marks):
                gap.append(self.clock.ms(m["opt_end"], self.marks[i + 1]["forward"]))
        med = lambda v: round(statistics.median(v), 3) if v else None  # noqa: E731
        return {"steps": len(fb), "forward_backward_ms": med(fb), "optimizer_ms": med(opt),
                "between_steps_ms": med(gap)}

    def report(self, skip: int) -> dict:
        result = {"phases": self.phases(skip), "kernels": self.kernels}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "profile.json").write_text(json.dumps(result, indent=1))
        return result
