"""Loaders over prepared shards: BOS rows, no lost tokens, disjoint ranks, exact resume,
seeds, mixtures, SFT masks, and clear errors."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest
import torch

from nanogpt_course import paths
from nanogpt_course.data import ByteTokenizer, make_loader, prepare
from nanogpt_course.data.shards import ShardError

BOS = ByteTokenizer.bos_id


def _texts(n: int, seed: int, lo: int = 5, hi: int = 400) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_lowercase + " ") for _ in range(rng.randint(lo, hi)))
            for _ in range(n)]


def _conversations(n: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "pi"]
    out = []
    for _ in range(n):
        turns = []
        for _turn in range(rng.randint(1, 3)):
            turns.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 12)))})
            turns.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 12)))})
        out.append(turns)
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Three prepared folders (bytes tokenizer): two text sets and one chat set."""
    root = tmp_path_factory.mktemp("loaders")
    folders = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOGPT_COURSE_CACHE", str(root / "cache"))
        for name, rows in {"a": [{"text": t} for t in _texts(300, 0)],
                           "b": [{"text": t} for t in _texts(200, 1)],
                           "chat": _conversations(150, 2)}.items():
            src = root / name
            src.mkdir()
            (src / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
            folders[name] = prepare(src, "bytes", workers=0, progress=False,
                                    val_fraction=0.1)
            folders[name + "_rows"] = rows
    return folders


def _batches(loader, n):
    return [tuple(t.clone() for t in next(loader)) for _ in range(n)]


def test_shapes_dtypes_and_shifted_targets(datasets):
    loader = make_loader(datasets["a"], batch_size=4, seq_len=32, seed=0)
    x, y = next(loader)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    full = torch.cat([x, y[:, -1:]], dim=1)  # no padding in pretraining rows
    assert torch.equal(full[:, 1:], y)
    assert loader.meta["tokenizer"] == "bytes"


def test_every_token_reaches_training_once_none_cropped_none_padded(datasets):
    from nanogpt_course.data.sources import hash_split

    train = [r["text"].encode() for n, r in enumerate(datasets["a_rows"])
             if hash_split(f"docs.jsonl:{n}", 0.1) == "train"]
    meta = json.loads((datasets["a"] / "meta.json").read_text())
    assert meta["splits"]["train"]["tokens"] == sum(len(d) + 1 for d in train)
    loader = make_loader(datasets["a"], batch_size=1, seq_len=127, seed=0, epochs=1,
                         buffer_size=16)
    targets = [t for _, y in loader for t in y.flatten().tolist() if t not in (-1, BOS)]
    # every token but a document's BOS is a target exactly once
    assert sorted(targets) == sorted(b for d in train for b in d)
    stats = loader.stats()
    assert stats["cropped"] == 0 and stats["splits"] > 0
    assert stats["padded"] < 128  # only the very last row of the epoch may be short


@pytest.fixture(scope="module")
def long_documents(tmp_path_factory):
    """Five documents of 1,500 to 5,000 bytes each: far longer than a row of 64."""
    root = tmp_path_factory.mktemp("long")
    texts = _texts(5, 9, lo=1500, hi=5000)
    src = root / "src"
    src.mkdir()
    for i, text in enumerate(texts):
        (src / f"doc{i}.txt").write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOGPT_COURSE_CACHE", str(root / "cache"))
        folder = prepare(src, "bytes", workers=0, progress=False, val_fraction=0.0)
    return folder, texts


def test_a_long_documents_tokens_all_reach_training(long_documents):
    folder, texts = long_documents
    loader = make_loader(folder, batch_size=1, seq_len=63, seed=0, epochs=1, buffer_size=4)
    got = []
    for x, y in loader:
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            got += [(tuple(row_x), tuple(row_y))]
    targets = [t for _, ys in got for t in ys if t not in (-1, BOS)]
    assert len(targets) == sum(len(t) for t in texts)  # counted: not one token lost
    assert sorted(targets) == sorted(b for t in texts for b in t.encode())
    # long documents fill whole rows of uninterrupted context (no BOS inside the row)
    full = [xs for xs, _ in got if BOS not in xs[1:]]
    assert len(full) >= sum(len(t) for t in texts) // 64 - 10
    assert loader.stats()["cropped"] == 0


def test_ranks_get_disjoint_rows_that_together_equal_one_rank(datasets):
    kw = dict(seq_len=64, seed=7)
    single = make_loader(datasets["a"], batch_size=6, **kw)
    ranks = [make_loader(datasets["a"], batch_size=2, rank=r, world_size=3, **kw)
             for r in range(3)]
    for _ in range(4):
        x1, y1 = next(single)
        parts = [next(loader) for loader in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x1)
        assert torch.equal(torch.cat([p[1] for p in parts]), y1)
        rows = [tuple(r) for p in parts for r in p[0].tolist()]
        assert len(set(rows)) == len(rows)  # no row shared between ranks


@pytest.mark.parametrize("kind", ["bos", "windows", "sft", "mixture"])
def test_resume_gives_the_identical_next_batch(datasets, kind):
    def build():
        if kind == "mixture":
            return make_loader({datasets["a"]: 0.6, datasets["b"]: 0.4}, batch_size=3,
                               seq_len=48, seed=1, buffer_size=8)
        if kind == "sft":
            return make_loader(datasets["chat"], batch_size=3, seq_len=48, seed=1, mode="sft")
        return make_loader(datasets["a"], batch_size=3, seq_len=48, seed=1, packing=kind,
                           buffer_size=8)

    reference = build()
    expected = _batches(reference, 60)  # long enough to wrap an epoch for every kind
    first = build()
    _batches(first, 25)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = build()
    resumed.load_state_dict(state)
    for want, got in zip(expected[25:], _batches(resumed, 35)):
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_resume_with_a_different_world_size_continues_the_same_stream(datasets):
    one = make_loader(datasets["a"], batch_size=4, seq_len=40, seed=2)
    expected = _batches(one, 6)
    two = [make_loader(datasets["a"], batch_size=2, seq_len=40, seed=2, rank=r, world_size=2)
           for r in range(2)]
    for loader in two:
        _batches(loader, 3)
    state = two[0].state_dict()
    assert state == two[1].state_dict()  # the same on every rank
    again = make_loader(datasets["a"], batch_size=4, seq_len=40, seed=2)
    again.load_state_dict(state)
    assert torch.equal(next(again)[0], expected[3][0])


def test_seed_determinism(datasets):
    a, b, c = (make_loader(datasets["a"], batch_size=2, seq_len=32, seed=s) for s in (5, 5, 6))
    xa, xb, xc = (_batches(loader, 3) for loader in (a, b, c))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(xa, xb))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(xa, xc))


def test_mixture_proportions_within_tolerance(datasets):
    a_text = "\0".join(r["text"] for r in datasets["a_rows"])
    loader = make_loader({datasets["a"]: 0.75, datasets["b"]: 0.25}, batch_size=50,
                         seq_len=16, seed=3)
    from_a = total = 0
    for _ in range(80):
        x, _ = next(loader)
        for row in x.tolist():  # the row's longest stretch between BOS tokens names its source
            text = max(bytes(t if t != BOS else 0 for t in row).split(b"\0"), key=len).decode()
            from_a += text in a_text
            total += 1
    assert abs(from_a / total - 0.75) < 0.03  # 4000 rows: sd 0.007
    assert loader.stats()["count"] == 4000


def test_sft_targets_only_on_assistant_tokens(datasets):
    tok = ByteTokenizer()
    rendered = {}
    for conv in datasets["chat_rows"]:
        ids, mask = tok.render_chat(conv)
        rendered[tuple(ids[:40])] = (ids, mask)
    loader = make_loader(datasets["chat"], batch_size=4, seq_len=200, seed=0, mode="sft")
    checked = 0
    for _ in range(5):
        x, y = next(loader)
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            starts = [i for i, t in enumerate(row_x) if t == BOS]
            assert starts[0] == 0  # conversations shorter than a row start at its BOS
            ids, mask = rendered[tuple(row_x[:40])]  # the first conversation of the row
            n = min(len(ids), 200) - 1
            expected = [t if m else -1 for t, m in zip(ids[1:n + 1], mask[1:n + 1])]
            assert row_y[:n] == expected
            checked += 1
    assert checked == 20
    stats = loader.stats()
    assert stats["cropped"] == 0


def test_validation_epoch_ends(datasets):
    loader = make_loader(datasets["a"], "val", batch_size=2, seq_len=32, seed=0, epochs=1)
    n = sum(1 for _ in loader)
    assert n >= 1
    assert loader.stats()["epoch"] == pytest.approx(1.0)


def test_clear_errors(datasets, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="SFT needs chat data"):
        make_loader(datasets["a"], batch_size=1, seq_len=8, mode="sft")
    with pytest.raises(ValueError, match="rank 2 is outside"):
        make_loader(datasets["a"], batch_size=1, seq_len=8, rank=2, world_size=2)
    loader = make_loader(datasets["a"], batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="seq_len 8"):
        make_loader(datasets["a"], batch_size=1, seq_len=9).load_state_dict(loader.state_dict())
    with pytest.raises(FileNotFoundError, match="not a prepared dataset.*prepare"):
        make_loader(tmp_path, batch_size=1, seq_len=8)
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NANOGPT_COURSE_DATA", raising=False)
    with pytest.raises(paths.MissingDataError,
                       match="python -m nanogpt_course.data prepare tinyshakespeare"):
        prepare("tinyshakespeare", "bytes", download=False)


def test_corrupt_shard_in_a_prepared_folder_names_the_file(datasets, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(datasets["b"], copy)
    shard = copy / "train_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x55
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="train_000000.bin"):
        make_loader(copy, batch_size=1, seq_len=8)
    shard.write_bytes(bytes(raw[:-7]))
    with pytest.raises(ShardError, match="train_000000.bin.*truncated"):
        make_loader(copy, batch_size=1, seq_len=8, verify=False)


def test_windows_mode_reads_contiguous_token_windows(datasets):
    from nanogpt_course.data import open_shard

    stream = np.asarray(open_shard(datasets["a"] / "train_000000.bin"))
    loader = make_loader(datasets["a"], batch_size=4, seq_len=30, packing="windows", seed=0)
    x, y = next(loader)
    for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
        starts = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(stream, 31)
                                .__eq__(row).all(axis=1))
        assert len(starts) >= 1
