"""An exclusive file lock, so that several processes (ranks under torchrun, two notebooks)
asking for the same dataset at once prepare it once: the first one works, the others wait
and then find it done."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: str | Path):
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block.

    Where ``fcntl`` does not exist (Windows) this is a no-op: concurrent preparation of the
    same dataset is then not protected.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
