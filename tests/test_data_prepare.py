"""Preparation: tokens decode back to the text, skip-if-present, resume after a crash,
parallel workers, uint32 vocabularies, the read-only mirror, the CLI, and real GPT-2."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nanogpt_course.data import ByteTokenizer, preparation, read_meta, read_shard
from nanogpt_course.data.__main__ import main as cli
from nanogpt_course.data.sources import split_tail

BOS = ByteTokenizer.bos_id


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _corpus(folder, n_files=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["data", "shard", "token", "loader", "pack", "bos", "epoch", "é", "日本"]
    for i in range(n_files):
        paras = ["\n".join(" ".join(rng.choice(words, size=rng.integers(3, 15)))
                           for _ in range(rng.integers(1, 6))) for _ in range(rng.integers(3, 30))]
        (folder / f"f{i}.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return folder


def _split_tokens(folder, split):
    meta = read_meta(folder)
    return [read_shard(folder / s["file"]) for s in meta["splits"][split]["shards"]]


def _docs(folder, split):
    """Decode a prepared split back into its documents (bytes tokenizer)."""
    tok = ByteTokenizer()
    out = []
    for tokens in _split_tokens(folder, split):
        starts = np.flatnonzero(tokens == BOS).tolist() + [len(tokens)]
        out += [tok.decode(tokens[a + 1:b]) for a, b in zip(starts, starts[1:])]
    return out


def test_tokens_decode_back_to_the_documents(tmp_path, cache):
    src = _corpus(tmp_path / "src")
    folder = preparation.prepare(src, "bytes", workers=0, progress=False, val_fraction=0.3)
    meta = read_meta(folder)
    assert meta["kind"] == "text" and meta["dtype"] == "uint16" and meta["tokenizer"] == "bytes"
    docs = _docs(folder, "train") + _docs(folder, "val")
    # one document per file, whole: never cut by characters, however long
    expected = [f.read_text(encoding="utf-8") for f in sorted(src.glob("*.txt"))]
    assert max(len(d) for d in expected) > 2000
    assert sorted(docs) == sorted(expected)
    total = sum(s["tokens"] for s in meta["splits"].values())
    assert total == sum(len(d.encode()) + 1 for d in expected)
    assert sum(s["text_bytes"] for s in meta["splits"].values()) == sum(len(d.encode()) for d in expected)
    assert meta["splits"]["val"]["docs"] > 0
    assert str(folder).startswith(str(cache))  # written under the cache, per tokenizer
    assert folder.parent.name == "bytes"


def test_skip_if_present_and_rebuild_when_the_source_changes(tmp_path, cache):
    src = _corpus(tmp_path / "src")
    folder = preparation.prepare(src, "bytes", workers=0, progress=False)
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert preparation.prepare(src, "bytes", workers=0, progress=False) == folder
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    assert preparation.prepare(folder) == folder  # a prepared folder is accepted as is
    (src / "f0.txt").write_text("changed text\n")
    preparation.prepare(src, "bytes", workers=0, progress=False)
    assert "changed text\n" in _docs(folder, "train") + _docs(folder, "val")


def test_resume_after_a_crash_writes_the_same_shards(tmp_path, cache, monkeypatch):
    src = _corpus(tmp_path / "src", n_files=12)
    kw = dict(workers=0, progress=False, shard_tokens=300)
    clean = preparation.prepare(src, "bytes", **kw)
    expected = {p.name: p.read_bytes() for p in clean.iterdir() if p.name != "meta.json"}
    assert len([n for n in expected if n.startswith("train_")]) >= 9  # several chunks

    import shutil

    shutil.rmtree(clean)
    calls = {"n": 0}
    original = preparation._Writer._flush

    def crashing_flush(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        original(self)

    monkeypatch.setattr(preparation._Writer, "_flush", crashing_flush)
    with pytest.raises(KeyboardInterrupt):
        preparation.prepare(src, "bytes", **kw)
    assert not (clean / "meta.json").exists()  # an interrupted folder is never "prepared"
    progress = json.loads((clean / "progress.json").read_text())
    assert len(progress["chunks"]) == 2
    monkeypatch.setattr(preparation._Writer, "_flush", original)
    resumed = preparation.prepare(src, "bytes", **kw)
    got = {p.name: p.read_bytes() for p in resumed.iterdir() if p.name != "meta.json"}
    assert got == expected


@pytest.mark.slow
def test_parallel_workers_give_identical_shards(tmp_path, cache):
    src = _corpus(tmp_path / "src", n_files=12)
    kw = dict(progress=False, shard_tokens=5000)
    serial = preparation.prepare(src, "bytes", workers=0, **kw)
    a = {p.name: p.read_bytes() for p in serial.iterdir() if p.suffix != ".json"}
    parallel = preparation.prepare(src, "bytes", workers=2, force=True, **kw)
    b = {p.name: p.read_bytes() for p in parallel.iterdir() if p.suffix != ".json"}
    assert a == b and read_meta(parallel)["workers"] == 2


class WideTokenizer(ByteTokenizer):
    """Byte ids plus a BOS above 65,535: its shards must be uint32."""

    identity = "wide"
    vocab_size = 70_000
    bos_id = 69_999


def test_large_vocabularies_use_uint32(tmp_path, cache):
    src = _corpus(tmp_path / "src", n_files=2)
    folder = preparation.prepare(src, WideTokenizer(), workers=0, progress=False)
    assert read_meta(folder)["dtype"] == "uint32"
    tokens = np.concatenate(_split_tokens(folder, "train"))
    assert tokens.dtype == np.uint32 and tokens[0] == 69_999


def test_the_data_mirror_is_never_written(tmp_path, cache, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "tinyshakespeare").mkdir(parents=True)
    (mirror / "tinyshakespeare" / "input.txt").write_text("First Citizen:\nHi.\nHo.\n\n" * 100)
    before = sorted((p.relative_to(mirror), p.stat().st_mtime_ns) for p in mirror.rglob("*"))
    monkeypatch.setenv("NANOGPT_COURSE_DATA", str(mirror))
    folder = preparation.prepare("tinyshakespeare", "bytes", workers=0, progress=False)
    assert folder.is_relative_to(cache)
    assert sorted((p.relative_to(mirror), p.stat().st_mtime_ns) for p in mirror.rglob("*")) == before
    meta = read_meta(folder)
    # one file: one training document and one contiguous validation tail (10%)
    assert meta["splits"]["train"]["docs"] == 1 and meta["splits"]["val"]["docs"] == 1
    assert meta["splits"]["val"]["text_bytes"] == 10 * len("First Citizen:\nHi.\nHo.\n\n")


def test_tokenizer_mismatch_is_a_clear_error(tmp_path, cache):
    folder = preparation.prepare(_corpus(tmp_path / "src", 2), "bytes", workers=0, progress=False)
    with pytest.raises(ValueError, match="prepared with tokenizer 'bytes' but 'wide'"):
        preparation.prepare(folder, WideTokenizer())


def test_cli_prepare_info_verify(tmp_path, cache, capsys):
    src = _corpus(tmp_path / "src", 3)
    assert cli(["prepare", str(src), "--tokenizer", "bytes", "--workers", "0", "--quiet"]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert preparation.is_prepared(folder)
    assert cli(["info", folder]) == 0
    assert "bytes/token" in capsys.readouterr().out
    assert cli(["verify", folder]) == 0
    shard = os.path.join(folder, "train_000000.bin")
    raw = bytearray(open(shard, "rb").read())
    raw[-1] ^= 1
    open(shard, "wb").write(bytes(raw))
    assert cli(["verify", folder]) == 1
    assert "train_000000.bin" in capsys.readouterr().err
    assert cli(["prepare", "no_such_dataset", "--tokenizer", "bytes"]) == 1
    assert "unknown dataset" in capsys.readouterr().err


def test_gpt2_tinyshakespeare_matches_tiktoken(shared_data, cache):
    from nanogpt_course.tokenizer import Tokenizer

    tok = Tokenizer.from_spec("gpt2")
    folder = preparation.prepare("tinyshakespeare", tok, progress=False)
    meta = read_meta(folder)
    assert meta["tokenizer"] == "gpt2" and meta["dtype"] == "uint16"
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    head, tail = split_tail(text, 0.1)
    assert head + tail == text and 0.09 < len(tail) / len(text) < 0.11
    val = [tail]  # one contiguous tail, never speeches interleaved with training text
    expected = np.concatenate([[tok.bos_id] + tok.encoding.encode_ordinary(s) for s in val])
    got = np.concatenate(_split_tokens(folder, "val"))
    assert np.array_equal(got, expected)
    assert meta["splits"]["val"]["text_bytes"] == sum(len(s.encode()) for s in val)


def test_concurrent_prepare_builds_once(tmp_path, cache, monkeypatch):
    import threading

    src = _corpus(tmp_path / "src", 4)
    runs = []
    original = preparation._Writer.run

    def counting_run(self, workers):
        runs.append(1)
        return original(self, workers)

    monkeypatch.setattr(preparation._Writer, "run", counting_run)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        preparation.prepare(src, "bytes", workers=0, progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1 and len(set(results)) == 1 and len(results) == 3


def test_an_unguarded_script_prepares_with_workers(tmp_path):
    """A script with no ``if __name__ == "__main__":`` (a lesson run as ``python lesson.py``)
    prepares data with worker processes: the spawned workers must not re-run the script
    (they used to, each waiting for the parent's lock: a hang)."""
    import subprocess
    import sys

    (tmp_path / "doc.txt").write_text(("a line of text for the tokenizer. " * 30 + "\n\n") * 200)
    (tmp_path / "run.py").write_text(
        "from nanogpt_course import data\n"
        "print('top level ran', flush=True)\n"
        "out = data.prepare('doc.txt', 'gpt2', workers=2, progress=False)\n"
        "print('prepared', flush=True)\n")
    env = dict(os.environ, NANOGPT_COURSE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("top level ran") == 1 and "prepared" in done.stdout
