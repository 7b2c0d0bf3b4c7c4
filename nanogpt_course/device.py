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


class HostRead:
    """Reads a small device tensor on the host without waiting for the work queued after it.

    ``tensor.tolist()`` copies on the stream, so it waits for *every* kernel queued before
    the copy, including ones queued after the tensor was computed. :meth:`start` queues the
    copy into pinned host memory and records an event; work queued after it (the trainer's
    optimizer step, the decoder's next step) runs on; :meth:`values` waits for that event
    only. On CUDA. Elsewhere :meth:`start` reads at once.

    The trainer reads its loss this way (without it the GPU sat idle while the host logged,
    built the next batch and launched the next forward: 1.2 ms per d12 step on an H100,
    docs/PERFORMANCE.md), and ``engine.generate`` its sampled tokens.
    """

    def __init__(self, device: torch.device, size: int, dtype: torch.dtype):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.host = torch.empty(size, dtype=dtype, pin_memory=True)
            self.copied = torch.cuda.Event()

    def start(self, tensor: torch.Tensor) -> None:
        if self.cuda:
            self.host.copy_(tensor, non_blocking=True)
            self.copied.record()
        else:
            self._values = tensor.tolist()

    def values(self) -> list:
        if self.cuda:
            self.copied.synchronize()
            return self.host.tolist()
        return self._values
