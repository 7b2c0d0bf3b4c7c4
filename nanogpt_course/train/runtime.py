"""Process setup for training: torchrun's environment, the process group, the device, the
autocast context, and small collective helpers that also work on a single process.

Under ``torchrun`` the variables ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` are set; we
then join a process group (NCCL on CUDA, gloo on CPU) and each rank uses ``cuda:LOCAL_RANK``.
Alone, everything is a no-op and ``world_size == 1``. There is no DDP wrapper: the
distributed optimizer reduce-scatters the gradients itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import compute_dtype, pick_device
from ..launch import finish_distributed


@dataclass
class Runtime:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.device)

    def autocast(self):
        """bf16 autocast on CUDA; nothing (fp32) elsewhere."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over ranks (fp64, so a loss survives bitwise on one rank)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        return self.all_reduce_sum_(t).tolist()

    def all_reduce_sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place, without a host synchronization on CUDA (NCCL queues
        the reduction behind the kernels that produce ``t``). Returns ``t``."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (JSON-able data), on every rank. Rank order."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self, *, together: bool = True) -> None:
        """Leave the process group this runtime created (see
        :func:`nanogpt_course.launch.finish_distributed` for ``together``)."""
        if self.owns_group:
            finish_distributed(together=together)
            self.owns_group = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory instead of returning it to the OS.

    PyTorch's CPU allocator is plain malloc: every large activation is a fresh ``mmap``, its
    pages are zero-filled on first touch (~200,000 page faults per step of the quickstart
    model, 0.3 s of kernel time per ~0.9 s step on 2 cores) and unmapped again when freed.
    Raising the mmap and trim thresholds makes the next step reuse the same memory. The cost:
    the process keeps its peak memory. Linux/glibc only; returns whether it applied. Called by
    the command line (``python -m nanogpt_course.train``) on CPU runs, not by ``train()``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters (malloc.h)
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)
                    and libc.mallopt(m_mmap_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def init_runtime(device: str | None = None) -> Runtime:
    """Join torchrun's process group when launched by it; pick the device."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1 and not dist.is_initialized():
        return Runtime(device=pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    base = pick_device(device)
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = base, "gloo"
    owns = False
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kwargs)
        owns = True
    return Runtime(rank=rank, local_rank=local_rank, world_size=world, device=dev,
                   owns_group=owns)
