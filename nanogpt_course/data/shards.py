"""Token shards: one flat array of token ids per file, behind a small fixed header.

Layout of a shard (little-endian), 64 header bytes then the payload::

    offset  size  field
    0       8     magic  b"NGCSHARD"
    8       4     format version (1)
    12      4     item size in bytes: 1 (uint8, loss masks), 2 (uint16) or 4 (uint32)
    16      8     number of items in the payload
    24      32    sha256 of the payload bytes
    56      8     reserved (zero)
    64      ...   payload: ``count * itemsize`` bytes

Token ids use uint16 when the vocabulary fits (GPT-2's 50,259 ids do; 2 bytes per token) and
uint32 otherwise. A shard is written to a temporary file and renamed into place, so a reader
never sees half a shard. Reading checks the magic, the version, the size (a truncated file
is caught at once) and, unless ``verify=False``, the checksum; every error names the file.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"NGCSHARD"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQ32s8x")  # magic, version, itemsize, count, sha256, reserved
_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}
assert _HEADER.size == HEADER_BYTES


class ShardError(ValueError):
    """A shard file is corrupt, truncated, or not a shard; the message names the file."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds ids ``0 .. vocab_size-1``: uint16 up to 65,536."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


def _as_payload(array: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """``array`` as a 1-D little-endian uint8/16/32 array, refusing values that do not fit."""
    array = np.asarray(array)
    if array.ndim != 1:
        raise ValueError(f"a shard holds a 1-D array, got shape {array.shape}")
    dtype = np.dtype(dtype or array.dtype).newbyteorder("<")
    if dtype.itemsize not in _DTYPES or dtype.kind not in "ui":
        raise ValueError(f"shards hold uint8, uint16 or uint32, got {dtype}")
    dtype = _DTYPES[dtype.itemsize]
    if array.size and array.dtype != dtype:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > np.iinfo(dtype).max:
            raise ValueError(f"values in [{lo}, {hi}] do not fit in {dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def write_shard(path: str | os.PathLike, array: np.ndarray, dtype=None) -> dict:
    """Write ``array`` (1-D ints) to ``path`` atomically; returns ``{"file", "count", "sha256"}``.

    ``dtype`` (uint8/uint16/uint32) defaults to the array's own dtype.
    """
    path = Path(path)
    payload = _as_payload(array, dtype)
    digest = hashlib.sha256(payload.data).digest()
    header = _HEADER.pack(MAGIC, VERSION, payload.itemsize, payload.size, digest)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(payload.data)
        f.flush()
        os.fsync(f.fileno())  # the rename below must never publish unwritten bytes
    os.replace(tmp, path)
    return {"file": path.name, "count": int(payload.size), "sha256": digest.hex()}


def read_header(path: str | os.PathLike) -> dict:
    """Parse and check a shard's header against its file size.

    Returns ``{"version", "dtype", "count", "sha256"}``; raises :class:`ShardError` naming
    the file when it is not a shard, has an unknown version or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: truncated shard ({size} bytes, shorter than the "
                         f"{HEADER_BYTES}-byte header); delete it and prepare the dataset again")
    magic, version, itemsize, count, digest = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a token shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ShardError(f"{path}: shard format version {version}, this library reads "
                         f"version {VERSION}; prepare the dataset again")
    if itemsize not in _DTYPES:
        raise ShardError(f"{path}: corrupt header (item size {itemsize})")
    expected = HEADER_BYTES + count * itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise ShardError(f"{path}: {what}: header says {count:,} items of {itemsize} bytes "
                         f"({expected:,} bytes in all), file has {size:,}; delete it and "
                         f"prepare the dataset again")
    return {"version": version, "dtype": _DTYPES[itemsize], "count": count, "sha256": digest.hex()}


def _sha256_of_payload(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_shard(path: str | os.PathLike) -> dict:
    """Check header, size and checksum; returns the header dict or raises :class:`ShardError`."""
    header = read_header(path)
    actual = _sha256_of_payload(Path(path))
    if actual != header["sha256"]:
        raise ShardError(f"{path}: corrupt shard: payload sha256 {actual[:16]}... does not "
                         f"match the header's {header['sha256'][:16]}...; delete it and "
                         f"prepare the dataset again")
    return header


def verify_once(path: str | os.PathLike) -> dict:
    """:func:`verify_shard`, skipped when a ``<file>.ok`` stamp says this very file (same
    size and modification time) was verified before; the stamp is written after a pass.

    Hashing a 20 GB dataset takes ~10 s, so loaders check each file once, not at every start.
    """
    path = Path(path)
    st = path.stat()
    stamp, key = path.with_name(path.name + ".ok"), f"{st.st_size} {st.st_mtime_ns}"
    try:
        if stamp.read_text() == key:
            return read_header(path)
    except OSError:
        pass
    header = verify_shard(path)
    try:  # a read-only cache simply verifies every time
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(key)
        os.replace(tmp, stamp)
    except OSError:
        pass
    return header


def open_shard(path: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
    """Memory-map a shard read-only: a 1-D numpy array of uint8/16/32 backed by the file.

    Nothing is read until it is indexed, so opening a 10 GB shard is instant when
    ``verify=False`` (the header and the file size are still checked) or when the file was
    verified before (see :func:`verify_once`).
    """
    header = verify_once(path) if verify else read_header(path)
    if header["count"] == 0:
        return np.zeros(0, dtype=header["dtype"])
    return np.memmap(path, dtype=header["dtype"], mode="r", offset=HEADER_BYTES,
                     shape=(header["count"],))


def read_shard(path: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
    """Load a whole shard into memory (a regular numpy array)."""
    return np.array(open_shard(path, verify=verify))
