"""Environment check: ``python -m nanogpt_course.env`` prints OK / WARN / FAIL per requirement.

FAIL means the course cannot run (exit code 1); WARN means an optional part is missing
(a data mirror, the notebook tooling, a GPU) and says what it costs.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from dataclasses import dataclass

from . import paths


@dataclass
class Check:
    name: str
    status: str  # "OK" | "WARN" | "FAIL"
    detail: str


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", "OK" if ok else "FAIL", f"{platform.python_version()} (need >= 3.10)")


def check_torch() -> Check:
    try:
        import torch
    except ImportError:
        return Check("torch", "FAIL", "not installed: run `make setup`")
    ok = _version_tuple(torch.__version__) >= (2, 5)
    return Check("torch", "OK" if ok else "FAIL", f"{torch.__version__} (need >= 2.5)")


def check_device() -> Check:
    from .device import describe, mps_available, pick_device

    device = pick_device()
    extra = " (Apple MPS available: opt in with NANOGPT_COURSE_DEVICE=mps)" if mps_available() else ""
    status = "OK" if device.type == "cuda" else "WARN"
    note = "" if device.type == "cuda" else "; no GPU: lessons run at the laptop/smoke presets"
    return Check("device", status, describe(device) + extra + note)


def check_packages() -> Check:
    needed = ["numpy", "tiktoken", "regex", "safetensors", "matplotlib", "tqdm"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return Check("packages", "FAIL", f"missing {', '.join(missing)}: run `make setup`")
    return Check("packages", "OK", ", ".join(needed))


def check_data() -> Check:
    mirror = paths.data_dir()
    if mirror is None:
        return Check("data mirror", "WARN",
                     f"${paths.DATA_ENV} unset: datasets download on first use (needs internet)")
    if not mirror.is_dir():
        return Check("data mirror", "FAIL", f"${paths.DATA_ENV}={mirror} is not a folder")
    return Check("data mirror", "OK", f"{mirror} ({len(list(mirror.iterdir()))} entries)")


def check_cache() -> Check:
    try:
        path = paths.cache_dir()
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        return Check("cache", "FAIL", f"not writable ({err}); set ${paths.CACHE_ENV}")
    return Check("cache", "OK", str(path))


def check_kernel() -> Check:
    if importlib.util.find_spec("jupyter_client") is None:
        return Check("jupyter kernel", "WARN", "notebook tooling not installed: `make setup`")
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if "python3" not in specs:
        return Check("jupyter kernel", "FAIL", "no 'python3' kernel: pip install ipykernel")
    return Check("jupyter kernel", "OK", f"python3 -> {specs['python3']}")


CHECKS = [check_python, check_torch, check_packages, check_device, check_data, check_cache,
          check_kernel]


def run_checks() -> list[Check]:
    results = []
    for fn in CHECKS:
        try:
            results.append(fn())
        except Exception as err:  # a check must never crash the report
            results.append(Check(fn.__name__.removeprefix("check_"), "FAIL", repr(err)))
    return results


def main() -> int:
    results = run_checks()
    for c in results:
        print(f"{c.status:<4}  {c.name:<15} {c.detail}")
    failed = [c for c in results if c.status == "FAIL"]
    print("environment OK" if not failed else f"{len(failed)} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
