"""Optional fused kernels for Muon's elementwise work (``torch.compile`` on CUDA).

A batched Muon step on a GPU is mostly big matmuls plus a few passes over every matrix
before them: the gradient scale (clipping), momentum, Nesterov, the Frobenius norm and the
bf16 cast. Eagerly each pass is its own kernel that reads and writes all of it; compiled,
they become two kernels (at d12: ~0.6 ms of a ~6 ms step, see docs/PERFORMANCE.md). The
math is the same function either way (:func:`~nanogpt_course.optim.muon.muon_direction`
calls it eagerly or through :func:`compiled`).

When the fused path is used: on CUDA, for tensors of at least :data:`FUSED_MIN_NUMEL`
elements. Below that a step is bound by kernel launches, not memory, and a compiled call
costs ~50 us of host time against ~5 us per eager kernel, so small tensors (one matrix at a
time, a small rank's slab) stay eager. On the CPU everything is eager.

Turn it off with ``NANOGPT_COURSE_MUON_FUSED=0`` (or ``fused.ENABLED = False``). If
``torch.compile`` fails (no Triton, no compiler), a warning is printed once and every
later call runs eagerly, with the same results.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["FUSED_MIN_NUMEL", "ENABLED", "use_fused", "compiled"]

FUSED_MIN_NUMEL = 1 << 23  # 8.4M elements: d12's 48 x 768 x 768 bucket is 28M
ENABLED = os.environ.get("NANOGPT_COURSE_MUON_FUSED", "1") not in ("0", "false", "no")

_compiled: dict = {}
_broken: list[str] = []  # the compile error, once one happened


def use_fused(t: torch.Tensor) -> bool:
    """True when work on ``t`` should run through the compiled kernels."""
    return ENABLED and not _broken and t.is_cuda and t.numel() >= FUSED_MIN_NUMEL


def compiled(fn):
    """``fn`` compiled with ``torch.compile`` (once per function; shapes become dynamic
    when a second shape is seen). Pass tensors, not floats, for values that change: a
    float is baked into the compiled code. If compiling fails, the returned callable warns
    once and runs ``fn`` eagerly from then on (``fn`` must be a plain torch function)."""
    if fn not in _compiled:
        fast = torch.compile(fn, fullgraph=True)

        def call(*args):
            if not _broken:
                try:
                    return fast(*args)
                except torch.OutOfMemoryError:
                    raise  # a run-time failure, not a compile problem: eager would too
                except Exception as err:  # noqa: BLE001 - no Triton, no compiler, ...
                    _broken.append(f"{type(err).__name__}: {err}"[:300])
                    warnings.warn(f"Muon's fused kernels are off for this process "
                                  f"(torch.compile failed: {_broken[0]}); running eagerly, "
                                  "same results, slower", RuntimeWarning, stacklevel=2)
            return fn(*args)

        _compiled[fn] = call
    return _compiled[fn]
