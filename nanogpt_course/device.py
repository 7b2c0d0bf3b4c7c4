"""Device selection: CUDA, then Apple MPS when asked for, then CPU.

MPS is opt-in (``NANOGPT_COURSE_DEVICE=mps`` or ``pick_device("mps")``): some ops the
model uses fall back to the CPU there, so it is not always faster. ``NANOGPT_COURSE_DEVICE``
also accepts ``cpu`` and ``cuda``/``cuda:N``.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "NANOGPT_COURSE_DEVICE"


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(prefer: str | None = None) -> torch.device:
    """The device to compute on.

    ``prefer`` (or ``$NANOGPT_COURSE_DEVICE``) forces a choice and fails clearly when that
    device is missing; otherwise CUDA when present, else CPU.
    """
    prefer = prefer or os.environ.get(ENV_VAR) or None
    if prefer is not None:
        kind = prefer.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} asked for, but torch sees no CUDA GPU")
        if kind == "mps" and not mps_available():
            raise RuntimeError(f"device {prefer!r} asked for, but Apple MPS is not available")
        if kind not in ("cuda", "mps", "cpu"):
            raise ValueError(f"unknown device {prefer!r}: use cuda, cuda:N, mps or cpu")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 autocast on CUDA, fp32 elsewhere (CPU bf16 is slow and MPS bf16 is patchy)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def describe(device: torch.device | str) -> str:
    """A one-line human description: ``cuda (NVIDIA H100 80GB HBM3)``, ``cpu (2 threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
