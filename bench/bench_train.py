"""Throughput of the real trainer (``nanogpt_course.train.loop.Trainer``) on random tokens.

Measures what a run's log shows (tok/s, MFU, step time) plus peak GPU memory, through the
whole training step: gradient accumulation, bf16 autocast on CUDA, optional torch.compile,
the per-step loss all-reduce, the schedules and the optimizer. Random tokens and a stub
tokenizer keep data and tokenization out of the measurement (as in DESIGN.md's targets).

    python bench/bench_train.py --depth 12 --compile                     # one GPU
    torchrun --nproc_per_node=8 bench/bench_train.py --depth 20 --compile  # several
    python bench/bench_train.py --dry-run                                # CPU, seconds
    python bench/bench_train.py --depth 12 --compile --optimizer zero2     # ZeRO-2 hooks, 1 GPU

``--optimizer``: ``auto`` (the trainer's choice: MuonAdamW on one GPU, DistMuonAdamW with
gradients sharded in backward on several), ``zero2`` (DistMuonAdamW, gradients sharded in
backward by hooks; ``--compile`` then compiles block by block) or ``zero1`` (DistMuonAdamW,
gradients reduce-scattered in ``step()``, whole-model compile). On one GPU the two
DistMuonAdamW choices run on a one-rank NCCL group, so the collectives are real calls: the
hooks' overhead against today's path.

Prints one JSON object (and writes it to ``--json`` when given).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from nanogpt_course.model import GPTConfig
from nanogpt_course.train import scaling
from nanogpt_course.train.build import RunPlan, model_stats
from nanogpt_course.train.config import TrainConfig, check_batch
from nanogpt_course.train.data import MemoryLoaders
from nanogpt_course.train.loop import Trainer
from nanogpt_course.train.metrics import read_metrics
from nanogpt_course.train.runtime import init_runtime
from nanogpt_course.train.schedule import Schedule


class RandomTokenizer:
    """Just enough of a tokenizer for the trainer: sizes, byte counts and a save()."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.bos_id = vocab_size, 0
        self.identity = f"random-{vocab_size}"
        self.token_bytes = torch.ones(vocab_size, dtype=torch.int32)

    def save(self, folder) -> None:
        (Path(folder) / "tokenizer.json").write_text(json.dumps({"random": self.vocab_size}))

    def encode(self, text: str) -> list[int]:
        return [1 + b % (self.vocab_size - 1) for b in text.encode()]

    def decode(self, ids) -> str:
        return " ".join(map(str, ids))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--device-batch-size", type=int, default=32)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step per rank")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--optimizer", choices=("auto", "zero2", "zero1"), default="auto")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.dry_run:
        args.depth, args.vocab, args.seq_len, args.device_batch_size, args.steps = 2, 512, 64, 2, 6
    rt = init_runtime("cpu" if args.dry_run else None)
    total = args.device_batch_size * args.seq_len * rt.world_size * args.accum
    config = GPTConfig.from_depth(args.depth, vocab_size=args.vocab, sequence_len=args.seq_len)
    stats = lambda d: model_stats(config if d == args.depth else GPTConfig.from_depth(  # noqa: E731
        d, vocab_size=args.vocab, sequence_len=args.seq_len))
    plan = scaling.plan(args.depth, stats, max_steps=args.steps, total_batch_size=total)
    out = Path(tempfile.mkdtemp(prefix="bench-train-")) if rt.is_main else Path("/nonexistent")
    out = Path(rt.broadcast_object(str(out)))
    cfg = TrainConfig(depth=args.depth, seq_len=args.seq_len, total_batch_size=total,
                      device_batch_size=args.device_batch_size, max_steps=args.steps,
                      compile=args.compile, eval_every=-1, sample_every=-1, out=str(out),
                      data="random", tokenizer="random")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (total * 4 + args.seq_len + 1,), generator=g)
    loaders = MemoryLoaders(tokens)
    run = RunPlan(cfg=cfg, out=out, kind="base", tokenizer=RandomTokenizer(args.vocab),
                  model_config=config, plan=plan,
                  schedule=Schedule(num_steps=args.steps, warmup_steps=min(5, args.steps)),
                  grad_accum=check_batch(total, args.device_batch_size, args.seq_len,
                                         rt.world_size),
                  world_size=rt.world_size, loaders=loaders)
    if args.optimizer != "auto":
        _force_dist_optimizer(args.optimizer, rt)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    start = time.perf_counter()
    result = Trainer(run, rt, loaders, echo=rt.is_main).fit()
    wall = time.perf_counter() - start
    report = {}
    if rt.is_main:
        recs = [r for r in read_metrics(out) if "loss" in r]
        skip = min(len(recs) - 1, max(2, len(recs) // 3))  # compile / warmup steps
        steady = recs[skip:]
        tok_s = statistics.median(r["tok_per_sec"] for r in steady)
        mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
        report = {
            "device": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda"
            else "cpu", "torch": torch.__version__, "world_size": rt.world_size,
            "depth": args.depth, "width": config.n_embd, "vocab": args.vocab,
            "seq_len": args.seq_len, "device_batch_size": args.device_batch_size,
            "grad_accum": run.grad_accum, "compile": args.compile,
            "optimizer": args.optimizer,
            "params": plan.num_params, "scaling_params": plan.scaling_params,
            "flops_per_token": plan.flops_per_token, "steps": args.steps,
            "tok_per_sec": tok_s, "tok_per_sec_per_gpu": tok_s / rt.world_size,
            "mfu_percent": statistics.median(mfus) if mfus else None,
            "step_ms": statistics.median(r["dt_ms"] for r in steady),
            "peak_mem_gib": torch.cuda.max_memory_allocated(rt.device) / 2**30
            if rt.device.type == "cuda" else None,
            "final_loss": result.final_loss, "wall_s": wall,
        }
        print(json.dumps(report, indent=1), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    rt.close()
    return report


def _force_dist_optimizer(kind: str, rt) -> None:
    """Make the trainer build DistMuonAdamW (``zero2``: hooks; ``zero1``: no hooks), on a
    one-rank process group when not launched on several."""
    import torch.distributed as dist

    from nanogpt_course.train import build as train_build
    from nanogpt_course.train import loop

    if not dist.is_initialized():
        store = dist.FileStore(tempfile.mktemp(prefix="bench_train_store"), 1)
        dist.init_process_group("nccl" if rt.device.type == "cuda" else "gloo", store=store,
                                rank=0, world_size=1)

    def build(run, model, runtime):
        opt = train_build.build_optimizer(run, model, SimpleNamespace(distributed=True))
        if kind == "zero1":
            opt.remove_hooks()
        return opt

    loop.build_optimizer = build


if __name__ == "__main__":
    main()
    sys.exit(0)
