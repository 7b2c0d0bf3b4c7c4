"""Running model-written code (HumanEval) without letting it hurt the machine.

Threat model: *careless* code (an infinite loop, a huge allocation, a stray file write, a
runaway fork), not a determined attacker. Each program runs under several layers; each is
reported by :func:`layers` and tested on its own:

- ``process``: a fresh interpreter (``python -I``, started by exec, not a fork of the
  trainer that would inherit its memory and GPU context), in a new session/process group;
- ``env``: a cleared environment (only ``LC_ALL``) and isolated mode (no PYTHON* variables,
  no user site-packages, the working directory not on ``sys.path``);
- ``tempdir``: a fresh temporary working directory, removed afterwards;
- ``rlimits``: CPU seconds, address space, file size and number of processes;
- ``timeout``: a wall-clock limit after which the whole process group is killed (and it is
  killed after every run anyway, so stray children do not survive their parent);
- ``uid``: when running as root (root ignores the process limit and can write anywhere),
  the child runs as an unprivileged uid (65534, ``nobody``) that owns only its temp dir;
- ``guard``: a Python-level guard that replaces destructive calls (``os.remove``,
  ``os.fork``, ``subprocess.Popen``, ``shutil.rmtree``, ...) with one that raises, and
  refuses ``open`` for writing outside the temp dir (uid 65534 could still write to
  world-writable places such as ``/tmp``; the guard covers those for Python-level writes).

A program passes when it exits 0 *and* ran to its end (a marker printed after the program,
so ``sys.exit(0)`` half-way does not count). :func:`run_many` runs programs on a small
thread pool (each thread waits on its own child process).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

NOBODY = 65534
LAYERS = ("process", "env", "tempdir", "rlimits", "timeout", "uid", "guard")


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds
    cpu_seconds: int = 10
    memory_bytes: int = 2 << 30  # address space
    file_bytes: int = 16 << 20
    processes: int = 32  # beyond what the uid already runs (0 extra when it is `nobody`)
    guard: bool = True
    drop_uid: bool = True


@dataclass
class Outcome:
    status: str  # passed | failed | timeout | error
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The child's first code: limits, then the guard, then the program, then the marker.
BOOTSTRAP = r'''
import json, sys
program, marker, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    import resource
    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
except ImportError:
    pass
if cfg["guard"]:
    import builtins, os, shutil, subprocess
    def _blocked(*args, **kwargs):
        raise PermissionError("blocked by the sandbox guard")
    for mod, names in ((os, ("kill", "killpg", "system", "putenv", "unsetenv", "remove",
                             "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
                             "truncate", "fork", "forkpty", "setuid", "setgid", "chmod",
                             "chown", "lchown", "fchmod", "fchown", "chroot", "execv",
                             "execve", "execvp", "execvpe", "spawnv", "spawnve", "popen",
                             "posix_spawn", "posix_spawnp", "link", "symlink")),
                       (shutil, ("rmtree", "move", "chown", "copyfile", "copytree")),
                       (subprocess, ("Popen", "run", "call", "check_call", "check_output",
                                     "getoutput", "getstatusoutput"))):
        for n in names:
            if hasattr(mod, n):
                setattr(mod, n, _blocked)
    builtins.exit = builtins.quit = _blocked
    import io
    _home, _open, _os_open = os.path.realpath(os.getcwd()), builtins.open, os.open
    def _inside(path):
        full = os.path.realpath(os.fspath(path)) if not isinstance(path, int) else _home
        return full == _home or full.startswith(_home + os.sep)
    def _guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not _inside(file):
            raise PermissionError(f"blocked by the sandbox guard: writing {file!r}")
        return _open(file, mode, *args, **kwargs)
    def _guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and not _inside(path):
            raise PermissionError(f"blocked by the sandbox guard: writing {path!r}")
        return _os_open(path, flags, *args, **kwargs)
    builtins.open = io.open = _guarded_open
    os.open = _guarded_os_open
with open(program, encoding="utf-8") as f:
    source = f.read()
exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
sys.stdout.flush()
print(marker)
'''


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _own_processes() -> int:
    """How many processes this uid runs now (Linux /proc), so a process limit above it
    still lets the child start."""
    uid, n = os.getuid(), 0
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == uid:
                        n += 1
                except OSError:
                    pass
    except OSError:
        return 256
    return n


def _rlimits(limits: Limits, as_nobody: bool) -> dict:
    try:
        import resource  # noqa: F401
    except ImportError:
        return {}
    base = 0 if as_nobody else _own_processes()
    return {"RLIMIT_CPU": limits.cpu_seconds, "RLIMIT_AS": limits.memory_bytes,
            "RLIMIT_FSIZE": limits.file_bytes, "RLIMIT_NPROC": base + limits.processes,
            "RLIMIT_CORE": 0}


def _drop_possible(limits: Limits) -> bool:
    return limits.drop_uid and _is_root() and _probe_nobody()


def _candidates() -> list[str]:
    """Interpreters to try, the running one first (HumanEval needs only the stdlib, so a
    system Python serves when the running one lives where uid 65534 cannot read, /root)."""
    found = [sys.executable, getattr(sys, "_base_executable", sys.executable),
             "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""]
    return list(dict.fromkeys(p for p in found if p and os.path.exists(p)))


@functools.lru_cache(maxsize=1)
def _nobody_python() -> str | None:
    """The first interpreter that runs as uid 65534 here, or None."""
    for exe in _candidates():
        try:
            done = subprocess.run([exe, "-I", "-c", "print(42)"], user=NOBODY, group=NOBODY,
                                  extra_groups=[], env={"LC_ALL": "C.UTF-8"}, cwd="/",
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip() == b"42":
            return exe
    return None


def _probe_nobody() -> bool:
    return _nobody_python() is not None


def layers(limits: Limits = Limits()) -> dict[str, tuple[bool, str]]:
    """``{layer: (active, why)}`` on this machine."""
    try:
        import resource  # noqa: F401
        have_rlimits = True
    except ImportError:
        have_rlimits = False
    posix = os.name == "posix"
    root = _is_root()
    drop = _drop_possible(limits)
    nproc_ok = drop or not root
    out = {
        "process": (True, "fresh `python -I` process in its own session"),
        "env": (True, "cleared environment, isolated mode"),
        "tempdir": (True, "temporary working directory, removed afterwards"),
        "rlimits": (have_rlimits and nproc_ok,
                    "CPU, address space, file size, processes" if have_rlimits and nproc_ok
                    else ("no `resource` module" if not have_rlimits else
                          "root without the uid drop ignores the process limit")),
        "timeout": (posix, "wall clock, kills the process group" if posix else "POSIX only"),
        "uid": (drop, f"runs as uid {NOBODY}" if drop else
                ("not root: runs as the current user, who can write where that user can"
                 if not root else "root, but no Python that uid 65534 can run was found")),
        "guard": (limits.guard, "destructive os/shutil/subprocess calls and writes outside the temp dir raise" if limits.guard
                  else "switched off"),
    }
    return out


def describe_layers(limits: Limits = Limits()) -> str:
    """``process, env, tempdir, rlimits, timeout, uid, guard active`` (+ what is not)."""
    found = layers(limits)
    on = [k for k, (a, _) in found.items() if a]
    off = [f"{k} ({why})" for k, (a, why) in found.items() if not a]
    return ", ".join(on) + " active" + (f"; inactive: {'; '.join(off)}" if off else "")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Run Python ``source`` under every available layer; never raises for what it does."""
    as_nobody = _drop_possible(limits)
    work = tempfile.mkdtemp(prefix="nanogpt-sandbox-")
    logs = tempfile.mkdtemp(prefix="nanogpt-sandbox-logs-")  # parent-only: outputs
    marker = "sandbox-finished-" + secrets.token_hex(8)
    t0 = time.perf_counter()
    try:
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        extra = {}
        if as_nobody:
            os.chown(work, NOBODY, NOBODY)
            os.chown(program, NOBODY, NOBODY)
            os.chmod(work, 0o700)
            extra = dict(user=NOBODY, group=NOBODY, extra_groups=[])
        cfg = {"rlimits": _rlimits(limits, as_nobody), "guard": limits.guard}
        with open(os.path.join(logs, "out"), "wb") as out, \
                open(os.path.join(logs, "err"), "wb") as err:
            proc = subprocess.Popen(
                [_nobody_python() if as_nobody else sys.executable, "-I", "-c", BOOTSTRAP, program, marker, json.dumps(cfg)],
                cwd=work, env={"LC_ALL": "C.UTF-8"}, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err, start_new_session=True, close_fds=True, **extra)
            try:
                rc = proc.wait(timeout=limits.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                rc = proc.wait()
                timed_out = True
            _kill_group(proc.pid)  # children left behind die with the group
        stdout = _tail(os.path.join(logs, "out"))
        stderr = _tail(os.path.join(logs, "err"))
        finished = stdout.rstrip().endswith(marker)
        if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL) and not finished:
            status = "timeout"
        elif rc == 0 and finished:
            status = "passed"
        else:
            status = "failed"
        stdout = stdout.replace(marker, "").rstrip()
        return Outcome(status, rc, time.perf_counter() - t0, stdout, stderr)
    except OSError as err:
        return Outcome("error", None, time.perf_counter() - t0, "", f"{type(err).__name__}: {err}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def _tail(path: str, limit: int = 4000) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read().decode("utf-8", errors="replace")


def run_many(sources: Sequence[str], limits: Limits = Limits(), workers: int = 4) -> list[Outcome]:
    """Run programs on a pool of ``workers`` threads (each waits on its own child)."""
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(sources)))) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))
