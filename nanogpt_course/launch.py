"""Run a script on several processes with ``torchrun``, from a notebook or a terminal.

In a notebook, ``!torchrun ...`` hides failures (the cell "succeeds" whatever the exit code)
and interleaves every rank's output. :func:`launch` instead::

    from nanogpt_course.launch import launch
    result = launch("nanogpt_course.optim.demo", "--steps", "10", nproc=2, out="runs/demo")

- runs ``python -m torch.distributed.run`` as a subprocess on a free port;
- streams rank 0's output live into the cell (or terminal); every rank's stdout/stderr
  also goes to ``<log_dir>/.../<rank>/{stdout,stderr}.log``;
- raises :class:`LaunchError` with the tail of the output (and of the failing ranks' logs)
  when the run exits non-zero or times out;
- picks the backend: NCCL on GPUs, gloo on CPU, and sets ``OMP_NUM_THREADS=1`` per rank
  on CPU so N ranks do not fight over the cores;
- returns a :class:`LaunchResult` (a ``subprocess.CompletedProcess``) with ``stdout``, the
  ``log_dir`` and the ``run_dir`` (the ``out`` folder, when given).

Scripts read the choice with :func:`init_distributed`, which also works without torchrun
(one process, no process group).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["launch", "LaunchError", "LaunchResult", "free_port", "torchrun_command",
           "init_distributed", "DistInfo", "BACKEND_ENV"]

BACKEND_ENV = "NANOGPT_COURSE_DIST_BACKEND"
DEVICE_ENV = "NANOGPT_COURSE_DEVICE"  # read by nanogpt_course.device.pick_device
_RANK_PREFIX = re.compile(r"^\[default\d+\]:")


class LaunchError(RuntimeError):
    """A torchrun launch exited non-zero or timed out; the message ends with its output."""

    def __init__(self, message: str, *, returncode: int | None, output: str,
                 log_dir: Path | None):
        super().__init__(message)
        self.returncode = returncode
        self.output = output
        self.log_dir = log_dir


class LaunchResult(subprocess.CompletedProcess):
    """A finished launch: ``args``, ``returncode`` (0), ``stdout`` (rank 0's output),
    ``log_dir`` (every rank's logs) and ``run_dir`` (``out``, if one was given)."""

    def __init__(self, args, returncode, stdout, *, log_dir: Path, run_dir: Path | None):
        super().__init__(args, returncode, stdout, None)
        self.log_dir = log_dir
        self.run_dir = run_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_module(target: str) -> bool:
    return not target.endswith(".py") and not Path(target).exists()


def torchrun_command(target: str, args: list[str], *, nproc: int, port: int,
                     log_dir: Path | None = None, all_ranks: bool = False,
                     module: bool | None = None) -> list[str]:
    """The ``python -m torch.distributed.run`` command line for one node.

    ``target``: a script path, or a module name (``module=None`` guesses: a name that is not
    an existing path and does not end in ``.py`` is a module).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={port}"]
    if log_dir is not None:
        cmd += [f"--log-dir={log_dir}", "--tee=3"]
    if not all_ranks:
        cmd += ["--local-ranks-filter=0"]
    if module if module is not None else _is_module(target):
        cmd += ["-m"]
    return cmd + [str(target), *map(str, args)]


def _pick_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LaunchError(f"launch(device={device!r}) but torch sees no CUDA GPU; "
                          "use device='cpu' (gloo)", returncode=None, output="", log_dir=None)
    return device.split(":")[0]


def _rank_logs_tail(log_dir: Path, lines: int) -> str:
    """The last ``lines`` of every rank's stderr (where tracebacks go) and the last few of
    its stdout, for those that have any. (torchrun's console copy of rank 0's output is
    polled from its log file, so after a crash the console can miss the final lines.)"""
    parts = []
    for rank_dir in sorted({p.parent for p in log_dir.glob("*/attempt_*/*/std*.log")}):
        for name, keep in (("stdout", min(lines, 10)), ("stderr", lines)):
            path = rank_dir / f"{name}.log"
            text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
            if text:
                parts.append(f"--- rank {rank_dir.name} {name} (last {keep} lines) ---\n"
                             + "\n".join(text[-keep:]))
    return "\n".join(parts)


def _stop(proc: subprocess.Popen) -> None:
    """End the launch and its ranks: they share the process group we started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def launch(target: str, *args, nproc: int | None = None, device: str | None = None,
           out: str | Path | None = None, env: dict[str, str] | None = None,
           cwd: str | Path | None = None, timeout: float | None = None,
           all_ranks: bool = False, module: bool | None = None, log_dir: str | Path | None = None,
           on_line: Callable[[str], None] | None = print, tail_lines: int = 40) -> LaunchResult:
    """Run ``target`` (a script path or a module name) with ``args`` on ``nproc`` ranks.

    nproc: default the number of GPUs on CUDA, 2 on CPU. device: "cuda" or "cpu"
    (default: CUDA when available); sets ``NANOGPT_COURSE_DIST_BACKEND`` (nccl / gloo) and
    ``NANOGPT_COURSE_DEVICE`` for the ranks. out: appended as ``--out OUT`` and returned as
    ``run_dir``. env: extra environment variables. timeout: seconds, then the ranks are
    stopped and :class:`LaunchError` raised. all_ranks: show every rank's output, not only
    rank 0's. on_line: called with each output line (default ``print``; None = silent).
    """
    device = _pick_device(device)
    if nproc is None:
        nproc = max(1, torch.cuda.device_count()) if device == "cuda" else 2
    if out is not None:
        args = (*args, "--out", str(out))
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="launch-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = torchrun_command(target, list(args), nproc=nproc, port=free_port(), log_dir=log_dir,
                           all_ranks=all_ranks, module=module)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", DEVICE_ENV: device,
                 BACKEND_ENV: "nccl" if device == "cuda" else "gloo"}
    if device == "cpu":
        child_env["OMP_NUM_THREADS"] = "1"
    child_env.update(env or {})
    output, tail = [], deque(maxlen=tail_lines)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, env=child_env, cwd=cwd, start_new_session=True,
                            errors="replace")

    def pump():  # a thread, so the main thread can enforce the timeout
        for line in proc.stdout:
            line = _RANK_PREFIX.sub("", line.rstrip("\n"))
            output.append(line)
            tail.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        reader.join(timeout=5)
        raise LaunchError(_failure(f"timed out after {timeout:g} s", cmd, tail, log_dir,
                                   tail_lines), returncode=None, output="\n".join(output),
                          log_dir=log_dir) from None
    except BaseException:  # KeyboardInterrupt in a notebook: do not leave ranks running
        _stop(proc)
        raise
    reader.join(timeout=30)
    if returncode != 0:
        raise LaunchError(_failure(f"exited with code {returncode}", cmd, tail, log_dir,
                                   tail_lines), returncode=returncode,
                          output="\n".join(output), log_dir=log_dir)
    elapsed = time.monotonic() - started
    if on_line is not None:
        on_line(f"[launch] {nproc} rank(s) on {device} finished in {elapsed:.1f} s")
    return LaunchResult(cmd, returncode, "\n".join(output), log_dir=log_dir,
                        run_dir=Path(out) if out is not None else None)


def _failure(what: str, cmd: list[str], tail, log_dir: Path, lines: int) -> str:
    ranks = _rank_logs_tail(log_dir, lines)
    return (f"torchrun {what}: {' '.join(cmd)}\n"
            f"--- output (last {len(tail)} lines) ---\n" + "\n".join(tail)
            + (f"\n{ranks}" if ranks else "") + f"\nAll ranks' logs: {log_dir}")


# ----------------------------------------------------------------------------- in the ranks
@dataclass
class DistInfo:
    """Where this process stands: its rank, local rank, world size and device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun set up (env ``RANK``, ``WORLD_SIZE``, ...).

    Backend: ``backend``, else ``$NANOGPT_COURSE_DIST_BACKEND``, else NCCL when CUDA is
    available and gloo otherwise. On NCCL each rank takes GPU ``LOCAL_RANK``. Without
    torchrun (no ``RANK`` in the environment) it returns rank 0 of 1 and initializes nothing.
    """
    from .device import pick_device

    if "RANK" not in os.environ:
        return DistInfo(0, 0, 1, pick_device())
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ["WORLD_SIZE"])
    backend = backend or os.environ.get(BACKEND_ENV) or (
        "nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(os.environ.get(DEVICE_ENV, "cpu").split(":")[0])
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(rank, local_rank, world, device)


def finish_distributed(*, together: bool = True) -> None:
    """Leave the process group, if one is initialized (the end of :func:`init_distributed`).

    ``together``: wait for every rank first. A rank that tears gloo down while another still
    works (rank 0 writing its report, say) can abort at exit with "terminate called without
    an active exception". Pass ``False`` after an error, where the others may never arrive.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
