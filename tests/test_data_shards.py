"""Shard format: round trips, dtypes, and clear errors for corrupt or truncated files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_course.data import shards
from nanogpt_course.data.shards import HEADER_BYTES, ShardError


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(0, 2**16 - 1), max_size=300), wide=st.booleans())
def test_round_trip_tokens_in_equal_tokens_out(tmp_path_factory, values, wide):
    path = tmp_path_factory.mktemp("shard") / "s.bin"
    dtype = np.uint32 if wide else np.uint16
    info = shards.write_shard(path, np.array(values, dtype=np.int64), dtype)
    assert info["count"] == len(values)
    back = shards.read_shard(path)
    assert back.dtype == np.dtype(dtype)
    assert back.tolist() == values
    assert shards.open_shard(path, verify=False).tolist() == values
    assert path.stat().st_size == HEADER_BYTES + len(values) * np.dtype(dtype).itemsize


def test_uint32_holds_large_ids_and_masks_use_uint8(tmp_path):
    ids = np.array([0, 65535, 65536, 2**32 - 1], dtype=np.uint64)
    shards.write_shard(tmp_path / "big.bin", ids, np.uint32)
    assert shards.read_shard(tmp_path / "big.bin").tolist() == ids.tolist()
    shards.write_shard(tmp_path / "m.bin", np.array([0, 1, 1, 0]), np.uint8)
    header = shards.read_header(tmp_path / "m.bin")
    assert header["dtype"] == np.uint8 and header["count"] == 4


def test_token_dtype_picks_the_smallest_that_fits():
    assert shards.token_dtype(50259) == np.uint16
    assert shards.token_dtype(65536) == np.uint16
    assert shards.token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        shards.token_dtype(0)


def test_values_that_do_not_fit_are_refused(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        shards.write_shard(tmp_path / "x.bin", np.array([70000]), np.uint16)
    with pytest.raises(ValueError, match="do not fit"):
        shards.write_shard(tmp_path / "x.bin", np.array([-1]), np.uint16)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_write_is_atomic_no_temp_left(tmp_path):
    shards.write_shard(tmp_path / "a.bin", np.arange(10), np.uint16)
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def _write(tmp_path, n=1000):
    path = tmp_path / "train_000000.bin"
    shards.write_shard(path, np.arange(n) % 50000, np.uint16)
    return path


def test_truncated_shard_error_names_the_file(tmp_path):
    path = _write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ShardError, match="train_000000.bin.*truncated"):
        shards.open_shard(path, verify=False)
    path.write_bytes(data[:20])  # shorter than the header
    with pytest.raises(ShardError, match="train_000000.bin.*truncated"):
        shards.read_header(path)


def test_corrupt_payload_is_caught_by_the_checksum(tmp_path):
    path = _write(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    shards.open_shard(path, verify=False)  # the header alone looks fine
    with pytest.raises(ShardError, match="train_000000.bin.*corrupt"):
        shards.open_shard(path)
    with pytest.raises(ShardError, match="train_000000.bin"):
        shards.verify_shard(path)


def test_not_a_shard_and_trailing_bytes(tmp_path):
    other = tmp_path / "notes.bin"
    other.write_bytes(b"hello world, this is not a shard at all" * 4)
    with pytest.raises(ShardError, match="notes.bin.*not a token shard"):
        shards.read_header(other)
    path = _write(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ShardError, match="trailing bytes"):
        shards.read_header(path)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        shards.read_header(tmp_path / "missing.bin")


def test_empty_shard(tmp_path):
    shards.write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.uint16))
    assert shards.read_shard(tmp_path / "e.bin").size == 0


def test_verify_once_stamps_and_rechecks_a_changed_file(tmp_path):
    path = _write(tmp_path)
    shards.verify_once(path)
    stamp = tmp_path / "train_000000.bin.ok"
    assert stamp.is_file()
    shards.open_shard(path)  # verified before: only the header is read
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES] ^= 0x01
    path.write_bytes(bytes(raw))  # new modification time: the stamp no longer applies
    with pytest.raises(ShardError, match="train_000000.bin.*corrupt"):
        shards.open_shard(path)
