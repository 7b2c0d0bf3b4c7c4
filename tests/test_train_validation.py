"""Validation scores a fixed set of tokens whatever the number of ranks: the row sets of 1
and 2 ranks are equal (in process), and bits per byte on 2 gloo ranks equals 1 rank."""

from __future__ import annotations

import json
import os
import random
import string
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanogpt_course.data import ByteTokenizer, prepare
from nanogpt_course.eval.bpb import evaluate_bpb
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.train.data import DatasetLoaders, MemoryLoaders, val_batch_count
from nanogpt_course.train.runtime import Runtime

BATCH, SEQ = 3, 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    rng = random.Random(0)
    rows = [{"text": "".join(rng.choice(string.ascii_lowercase + " ")
                             for _ in range(rng.randint(20, 300)))} for _ in range(300)]
    (root / "src").mkdir()
    (root / "src" / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("NANOGPT_COURSE_CACHE", str(root / "cache"))
        return prepare(root / "src", "bytes", workers=0, progress=False, val_fraction=0.2)


def _run(folder, eval_tokens=None, batch=BATCH):
    cfg = SimpleNamespace(data=str(folder), mode="pretraining", seq_len=SEQ, seed=0,
                          device_batch_size=batch, eval_tokens=eval_tokens)
    return SimpleNamespace(cfg=cfg)


def _rows(loaders, run, world):
    """Every scored (input row, target row) of one evaluation, over all ranks."""
    seen = Counter()
    for rank in range(world):
        rt = Runtime(rank=rank, world_size=world)
        batches = loaders.val(run, rt)
        n = 0
        for x, y in batches:
            if n == val_batch_count(run, rt):
                break
            n += 1
            for xr, yr in zip(x.tolist(), y.tolist()):
                if any(t >= 0 for t in yr):
                    seen[(tuple(xr), tuple(yr))] += 1
    return seen


@pytest.mark.parametrize("eval_tokens", [None, 7 * SEQ, 100 * SEQ])
def test_dataset_validation_rows_do_not_depend_on_the_world_size(prepared, eval_tokens):
    run = _run(prepared, eval_tokens)
    loaders = DatasetLoaders(run.cfg, ByteTokenizer(), Runtime())
    one, two, three = (_rows(loaders, run, w) for w in (1, 2, 3))
    assert one == two == three
    expected = 10 * BATCH if eval_tokens is None else eval_tokens // SEQ
    assert sum(one.values()) <= expected  # a small val split may end first (no repeats)
    if eval_tokens != 100 * SEQ:
        assert sum(one.values()) == expected


def test_memory_validation_rows_do_not_depend_on_the_world_size():
    tokens = torch.randint(0, 256, (5000,))
    run = _run(None, 7 * SEQ)
    loaders = MemoryLoaders(tokens, tokens)
    one, two = (_rows(loaders, run, w) for w in (1, 2))
    assert one == two and sum(one.values()) == 7


def _tiny_model():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=SEQ, vocab_size=257, n_layer=2, n_head=2, n_kv_head=2,
                    n_embd=32)
    model = GPT(cfg)
    with torch.no_grad():  # a non-trivial model: the zero-initialized projections too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _token_bytes():
    return torch.tensor([1] * 256 + [0])


def _worker(rank, world, folder, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rt = Runtime(rank=rank, world_size=world)
        run = _run(folder, 11 * SEQ)
        loaders = DatasetLoaders(run.cfg, ByteTokenizer(), rt)
        bpb = evaluate_bpb(_tiny_model(), loaders.val(run, rt), _token_bytes(), runtime=rt,
                           max_batches=val_batch_count(run, rt))
        if rank == 0:
            torch.save(bpb, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_bits_per_byte_on_two_gloo_ranks_equals_one_rank(prepared, tmp_path):
    run = _run(prepared, 11 * SEQ)
    rt = Runtime()
    loaders = DatasetLoaders(run.cfg, ByteTokenizer(), rt)
    one = evaluate_bpb(_tiny_model(), loaders.val(run, rt), _token_bytes(), runtime=rt,
                       max_batches=val_batch_count(run, rt))
    out = tmp_path / "bpb.pt"
    port = 29500 + random.Random(os.getpid()).randint(0, 2000)
    mp.spawn(_worker, args=(2, prepared, port, out), nprocs=2, join=True)
    two = torch.load(out)
    assert 1.0 < one < 12.0  # a real score (random weights: about log2(257) bits a byte)
    assert two == pytest.approx(one, rel=1e-9)
