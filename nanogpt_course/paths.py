"""Where things live: the read-only data mirror, the writable cache, and training runs.

Three environment variables steer everything (DESIGN.md, "Locations"):

- ``NANOGPT_COURSE_DATA``: optional, read-only folder of raw datasets (a local mirror).
  Raw sources are looked up there first and never written to.
- ``NANOGPT_COURSE_CACHE`` (default ``~/.cache/nanogpt_course``): writable; downloads,
  prepared shards, trained tokenizers, small cached checkpoints for the lessons.
- ``NANOGPT_COURSE_RUNS`` (default ``runs/`` in the repository, else in the working
  directory): training runs and papermill outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "NANOGPT_COURSE_DATA"
CACHE_ENV = "NANOGPT_COURSE_CACHE"
RUNS_ENV = "NANOGPT_COURSE_RUNS"


class MissingDataError(FileNotFoundError):
    """A raw data file is not in the data mirror nor in the cache."""


def repo_root() -> Path | None:
    """The checkout this package was installed from (editable install), or None."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() and (here / "lessons").is_dir() else None


COMMIT_ENV = "NANOGPT_COURSE_GIT_COMMIT"


def git_commit() -> str:
    """The code's commit for a result's record: ``$NANOGPT_COURSE_GIT_COMMIT`` when set (a
    copied tree, e.g. a GPU machine's, may carry a stale ``.git``), else the checkout's
    short commit with ``+dirty`` for local changes to tracked files, else ``unknown``."""
    import subprocess

    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    root = Path(__file__).resolve().parent.parent
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=root, capture_output=True,  # noqa: E731
                                           text=True, timeout=10).stdout.strip()
        sha = run("rev-parse", "--short=10", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def data_dir() -> Path | None:
    """The read-only raw-data mirror, or None when ``NANOGPT_COURSE_DATA`` is unset."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser().resolve() if value else None


def cache_dir(*parts: str, create: bool = True) -> Path:
    """A folder inside the writable cache (created on demand)."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nanogpt_course")
    path = base.expanduser().joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(*parts: str, create: bool = True) -> Path:
    """A folder inside the runs folder (created on demand)."""
    value = os.environ.get(RUNS_ENV)
    if value:
        base = Path(value).expanduser()
    else:
        root = repo_root()
        base = (root / "runs") if root is not None else Path("runs")
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def find_raw(relpath: str) -> Path | None:
    """Look a raw file or folder up: the data mirror first, then ``<cache>/raw``."""
    candidates = []
    mirror = data_dir()
    if mirror is not None:
        candidates.append(mirror / relpath)
    candidates.append(cache_dir("raw", create=False) / relpath)
    for path in candidates:
        if path.exists():
            return path
    return None


def require_raw(relpath: str, *, what: str, how: str) -> Path:
    """Like :func:`find_raw`, but a missing file raises an error that says what to do.

    ``what`` names the data ("GPT-2 BPE files"), ``how`` says how to get it
    ("run: python -m nanogpt_course.data prepare tinyshakespeare").
    """
    path = find_raw(relpath)
    if path is not None:
        return path
    mirror = data_dir()
    places = [f"{mirror / relpath}" if mirror else f"${DATA_ENV}/{relpath} (${DATA_ENV} is unset)"]
    places.append(str(cache_dir("raw", create=False) / relpath))
    raise MissingDataError(
        f"{what} not found. Looked in:\n  " + "\n  ".join(places) + f"\nTo fix: {how}"
    )
