"""Downloads that survive flaky networks and never leave a half-written file behind.

- bytes stream into ``<dest>.part``; only a complete file whose sha256 matches is renamed to
  ``dest`` (a mismatch deletes the partial file and raises :class:`ChecksumError`);
- network errors and 5xx/429 answers are retried with exponential backoff; an interrupted
  download resumes from the partial file when the server supports ranges;
- a destination that already exists (with the right checksum) is not downloaded again;
- :func:`estimate` asks the server for sizes (HEAD) and :func:`check_space` refuses to start
  when the disk cannot hold the files, before anything large is fetched.

Only the standard library is used (``urllib``), so this works on a bare install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20
USER_AGENT = "nanogpt-course/0.1 (+https://github.com/nanogpt-course/nanogpt-course)"
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
ASSUMED_MB_PER_S = 50.0  # for the time estimate before a large download


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or with an error retrying cannot fix)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _request(url: str, method: str = "GET", start: int = 0) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.Request(url, method=method, headers=headers)


def _retryable(err: BaseException) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code in RETRY_STATUS
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, socket.gaierror):
        return False  # the host name does not resolve: offline, retrying will not help
    return isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError, OSError))


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (resuming when the server honours a Range)."""
    start = part.stat().st_size if part.exists() else 0
    try:
        response = urllib.request.urlopen(_request(url, start=start), timeout=timeout)
    except urllib.error.HTTPError as err:
        if start and err.code == 416:  # "range not satisfiable": the part file is complete
            return
        raise
    with response:
        if start and response.status != 206:  # the server ignored the range: start over
            start = 0
        total = response.headers.get("Content-Length")
        total = int(total) + start if total is not None else None
        done, last = start, time.perf_counter()
        with open(part, "ab" if start else "wb") as f:
            while block := response.read(CHUNK):
                f.write(block)
                done += len(block)
                if progress and time.perf_counter() - last > 5:
                    of = f" of {total / 1e6:,.0f}" if total else ""
                    print(f"  {part.name[:-5]}: {done / 1e6:,.0f}{of} MB", flush=True)
                    last = time.perf_counter()
    if total is not None and done != total:
        raise ConnectionError(f"connection closed after {done:,} of {total:,} bytes")


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
             progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` (temp-then-rename) and return ``dest``.

    ``sha256``: the expected hex digest; checked before the rename. ``retries``: extra
    attempts after a retryable failure, waiting ``backoff * 2**k`` seconds (at most 60).
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if progress:
        print(f"downloading {url}\n  -> {dest}", flush=True)
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except Exception as err:  # noqa: BLE001 - sorted into retryable / fatal below
            if not _retryable(err) or attempt == retries:
                part.unlink(missing_ok=True)
                raise DownloadError(f"could not download {url} ({type(err).__name__}: {err}) "
                                    f"after {attempt + 1} attempt(s); check the URL and your "
                                    f"connection, then run the same command again") from err
            wait = min(60.0, backoff * 2**attempt)
            print(f"  attempt {attempt + 1} failed ({err}); retrying in {wait:.1f} s",
                  file=sys.stderr, flush=True)
            time.sleep(wait)
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: checksum mismatch (expected sha256 {sha256}, got "
                                f"{actual}); the partial file was deleted. The file on the "
                                f"server changed or the transfer was corrupted: run again")
    os.replace(part, dest)
    return dest


def remote_size(url: str, timeout: float = 30.0) -> int | None:
    """Size in bytes from a HEAD request, or None when the server does not say."""
    try:
        with urllib.request.urlopen(_request(url, method="HEAD"), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length is not None else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def estimate(urls: list[str], sizes: list[int | None] | None = None) -> dict:
    """Total bytes and a rough time for downloading ``urls`` (known sizes, else HEAD)."""
    sizes = list(sizes) if sizes is not None else [None] * len(urls)
    sizes = [s if s is not None else remote_size(u) for u, s in zip(urls, sizes)]
    known = sum(s for s in sizes if s)
    return {"files": len(urls), "bytes": known, "unknown": sum(1 for s in sizes if not s),
            "seconds": known / (ASSUMED_MB_PER_S * 1e6)}


def check_space(folder: str | os.PathLike, needed_bytes: int, *, margin: float = 1.1) -> None:
    """Raise when ``folder``'s disk has less than ``needed_bytes * margin`` free."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes * margin:
        raise DownloadError(f"not enough disk space in {folder}: need about "
                            f"{needed_bytes * margin / 1e9:.1f} GB, {free / 1e9:.1f} GB free. "
                            f"Free some space, point NANOGPT_COURSE_CACHE elsewhere, or "
                            f"download fewer files (--max-files)")


def describe(plan: dict) -> str:
    """One line for the user: ``3 files, 6.5 GB, about 2 min at 50 MB/s``."""
    minutes = plan["seconds"] / 60
    unknown = f" (+{plan['unknown']} of unknown size)" if plan["unknown"] else ""
    return (f"{plan['files']} file(s), {plan['bytes'] / 1e9:.2f} GB{unknown}, about "
            f"{minutes:.0f} min at {ASSUMED_MB_PER_S:.0f} MB/s")
