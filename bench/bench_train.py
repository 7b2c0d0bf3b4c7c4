"""Throughput of the real trainer (``nanogpt_course.train.loop.Trainer``) on random tokens.

Measures what a run's log shows (tok/s, MFU, step time) plus peak GPU memory, through the
whole training step: gradient accumulation, bf16 autocast on CUDA, optional torch.compile,
the per-step loss all-reduce, the schedules and the optimizer. Random tokens and a stub
tokenizer keep data and tokenization out of the measurement (as in DESIGN.md's targets).

    python bench/bench_train.py --depth 12 --compile                     # one GPU
    torchrun --nproc_per_node=8 bench/bench_train.py --depth 20 --compile  # several
    python bench/bench_train.py --dry-run                                # CPU, seconds
    python bench/bench_train.py --depth 12 --compile --profile $OUT/prof  # + where time goes
    python bench/bench_train.py --depth 12 --compile --optimizer zero2     # ZeRO-2 hooks, 1 GPU
    python bench/bench_train.py --depth 12 --compile --compile-mode max-autotune-no-cudagraphs
    python bench/bench_train.py --depth 12 --compile --coordinate-tuning 1  # tuned Triton kernels
    python bench/bench_train.py --depth 12 --compile --gemm-autotune 1  # Triton matmuls + epilogues
    python bench/bench_train.py --depth 12 --compile --mlp fused  # relu² in the matmuls' epilogues
    python bench/bench_train.py --depth 12 --compile --nanochat .nanochat \
        --merge-summary docs/results/perf_summary.json                     # + nanochat, 1 GPU

``--optimizer``: ``auto`` (the trainer's choice: MuonAdamW on one GPU, DistMuonAdamW with
gradients sharded in backward on several), ``zero2`` (DistMuonAdamW, gradients sharded in
backward by hooks; ``--compile`` then compiles block by block) or ``zero1`` (DistMuonAdamW,
gradients reduce-scattered in ``step()``, whole-model compile). On one GPU the two
DistMuonAdamW choices run on a one-rank NCCL group, so the collectives are real calls: the
hooks' overhead against today's path.

``--nanochat PATH`` (one process only): after ours, in the same process, nanochat's model
and MuonAdamW at commit 92d63d4 (``bench/nanochat_ref.py``: window pattern "L", its SDPA
attention) at the same depth, vocabulary, sequence length and micro-batch, on the same
random tokens, with ``torch.compile(model, dynamic=False)`` under ``--compile`` and one
optimizer step per ``--accum`` micro-batches, timed over the same steps with the same
warm-up steps left out. Its precision is its own, as base_train.py runs it: nanochat
92d63d4 has no autocast; its ``Linear`` casts the fp32 master weights to ``COMPUTE_DTYPE``
(bf16 on CUDA from SM 80, fp32 on a CPU) and it stores its embeddings in that dtype, so
its matmuls run in bf16 as ours do under autocast. Our model and optimizer are freed and
the CUDA cache emptied first, so each side's peak memory is its own. Both MFUs use one
FLOPs-per-token count, ours (``GPT.estimate_flops``, the depth rules' number): the MFU
ratio is the throughput ratio; nanochat's own count is reported beside it.
A CPU ``--dry-run`` runs nanochat eagerly in fp32 (dynamo off, as bench_quality's dry run),
so its compiled optimizer steps need no compiler.

``--profile DIR`` (issue #18's "profile first"): every step's phases on the device's
stream (forward + backward, optimizer, the gap before the next step) and, over
``--profile-steps`` extra steps after the timed ones, torch.profiler's kernels by category
(``bench/train_profile.py``); files in DIR, the summary in the report's ``profile``.

``--loss standard|chunked|fused`` (or ``NANOGPT_COURSE_LOSS``) measures our model with that
loss instead of the default ``auto`` (the fused loss on CUDA with Triton, the readable one
elsewhere: ``nanogpt_course/fused_loss.py``, ``nanogpt_course/chunked_loss.py``); the
report's ``loss_impl`` says which one ran.

Prints one JSON object (and writes it to ``--json`` when given). ``--merge-summary [PATH]``
(default docs/results/perf_summary.json) also writes the ``train`` section's entry for this
depth into that file, keeping its other sections and depths (``bench/perf_summary.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]  # this checkout's package, then bench/

import nanochat_ref  # noqa: E402  (bench/ is not a package)
import perf_summary  # noqa: E402
import torch  # noqa: E402
import train_profile  # noqa: E402

from nanogpt_course import chunked_loss, fused_loss, fused_mlp  # noqa: E402
from nanogpt_course.model import GPTConfig  # noqa: E402
from nanogpt_course.train import scaling  # noqa: E402
from nanogpt_course.train.build import RunPlan, model_stats  # noqa: E402
from nanogpt_course.train.compiling import (  # noqa: E402
    COMPILE_MODES,
    GEMM_AUTOTUNE_CHOICES,
    compile_mode_from_env,
    coordinate_tuning_from_env,
    gemm_autotune_from_env,
)
from nanogpt_course.train.config import TrainConfig, check_batch  # noqa: E402
from nanogpt_course.train.data import MemoryLoaders  # noqa: E402
from nanogpt_course.train.loop import Trainer  # noqa: E402
from nanogpt_course.train.metrics import device_peak_flops, mfu, read_metrics  # noqa: E402
from nanogpt_course.train.runtime import init_runtime  # noqa: E402
from nanogpt_course.train.schedule import Schedule  # noqa: E402


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
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                   help="torch.compile mode for our forward (NANOGPT_COURSE_COMPILE_MODE; "
                        "nanochat's side keeps its default)")
    p.add_argument("--coordinate-tuning", choices=("0", "1"), default=None,
                   help="Inductor's coordinate-descent tuning of our Triton kernels "
                        "(NANOGPT_COURSE_COORDINATE_TUNING; nanochat's side keeps torch's "
                        "default)")
    p.add_argument("--gemm-autotune", choices=GEMM_AUTOTUNE_CHOICES, default=None,
                   help="Inductor's Triton matmul templates timed against cuBLAS, with fused "
                        "epilogues (NANOGPT_COURSE_GEMM_AUTOTUNE; tma: and Hopper's TMA "
                        "templates; nanochat's side keeps torch's default)")
    p.add_argument("--mlp", choices=fused_mlp.IMPLS, default=None,
                   help="the MLP's implementation (sets NANOGPT_COURSE_MLP; default: that "
                        "variable, else standard)")
    p.add_argument("--loss", choices=chunked_loss.IMPLS, default=None,
                   help="the model's loss implementation (sets NANOGPT_COURSE_LOSS; default: "
                        "that variable, else auto: fused on CUDA with Triton, else standard)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--optimizer", choices=("auto", "zero2", "zero1"), default="auto")
    p.add_argument("--window-pattern", default="L", help="e.g. SSSL (the trainer's flag)")
    p.add_argument("--short-window", type=int, default=None,
                   help="tokens an S layer sees (the trainer's flag; default half the context)")
    p.add_argument("--fp8", action="store_true", help="the trainer's --fp8 (Hopper GPUs)")
    p.add_argument("--embedding-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="the trainer's --embedding-dtype")
    p.add_argument("--stochastic-rounding", action="store_true",
                   help="the trainer's --stochastic-rounding (with --embedding-dtype bf16)")
    p.add_argument("--nanochat", metavar="PATH",
                   help="also measure nanochat (a checkout at commit 92d63d4) in this process")
    p.add_argument("--merge-summary", nargs="?", const=perf_summary.DEFAULT_PATH, type=Path,
                   metavar="PATH", help="write this depth's train entry into PATH "
                   "(default docs/results/perf_summary.json)")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="also time each step's phases and profile its kernels "
                   "(bench/train_profile.py); files go to DIR, the summary into the report")
    p.add_argument("--profile-steps", type=int, default=3,
                   help="steps run under torch.profiler after the timed ones (default 3)")
    args = p.parse_args(argv)
    args.window_pattern = args.window_pattern.upper()
    args.loss = args.loss or chunked_loss.loss_impl_from_env()
    if args.dry_run:
        args.depth, args.vocab, args.seq_len, args.device_batch_size, args.steps = 2, 512, 64, 2, 6
    ref = load_nanochat(args.nanochat, eager=args.dry_run) if args.nanochat else None
    rt = init_runtime("cpu" if args.dry_run else None)
    if ref is not None and rt.world_size > 1:
        raise SystemExit("--nanochat measures one process (nanochat's single-GPU path): run "
                         "it without torchrun")
    total = args.device_batch_size * args.seq_len * rt.world_size * args.accum
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (total * 4 + args.seq_len + 1,), generator=g)
    report = measure_ours(args, rt, tokens)
    if rt.is_main and ref is not None:
        free_memory(rt.device)
        side = measure_nanochat(ref, args, rt.device, tokens,
                                flops_per_token=report["flops_per_token"])
        report["nanochat"] = side
        report["ratio"] = report["tok_per_sec"] / side["tok_per_sec"]
        if report["peak_mem_gib"] and side["peak_mem_gib"]:
            report["peak_mem_ratio"] = report["peak_mem_gib"] / side["peak_mem_gib"]
    if rt.is_main:
        print(json.dumps(report, indent=1), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        if args.merge_summary:
            meta = perf_summary.run_meta(report["device"])
            perf_summary.merge_section(args.merge_summary, "train",
                                       {summary_key(args): summary_entry(report, meta)}, meta,
                                       replace=False)
            print(f"train section ({summary_key(args)}) written to {args.merge_summary}",
                  flush=True)
    rt.close()
    return report


def steady(values: list) -> list:
    """The steps that count: the first ``max(2, n // 3)`` (compile, warm-up) are left out,
    at least one is kept. Used for both sides."""
    skip = min(len(values) - 1, max(2, len(values) // 3))
    return values[skip:]


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def peak_gib(device) -> float | None:
    """Allocator peak since the last reset (CUDA), None elsewhere."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure_ours(args, rt, tokens: torch.Tensor) -> dict:
    """Our trainer on ``tokens``: the report's project side (empty on ranks other than 0).
    The trainer, its model and optimizer are dropped before returning."""
    total = args.device_batch_size * args.seq_len * rt.world_size * args.accum
    shape = dict(vocab_size=args.vocab, sequence_len=args.seq_len,
                 window_pattern=args.window_pattern, short_window=args.short_window)
    # the profiled steps come after the timed ones (the profiler slows them)
    steps = args.steps + (args.profile_steps if args.profile else 0)
    config = GPTConfig.from_depth(args.depth, **shape)
    stats = lambda d: model_stats(GPTConfig.from_depth(d, **shape))  # noqa: E731
    plan = scaling.plan(args.depth, stats, max_steps=steps, total_batch_size=total)
    out = Path(tempfile.mkdtemp(prefix="bench-train-")) if rt.is_main else Path("/nonexistent")
    out = Path(rt.broadcast_object(str(out)))
    cfg = TrainConfig(depth=args.depth, seq_len=args.seq_len, total_batch_size=total,
                      device_batch_size=args.device_batch_size, max_steps=steps,
                      compile=args.compile, eval_every=-1, sample_every=-1, out=str(out),
                      data="random", tokenizer="random", fp8=args.fp8,
                      window_pattern=args.window_pattern, short_window=args.short_window,
                      embedding_dtype=args.embedding_dtype,
                      stochastic_rounding=args.stochastic_rounding)
    loaders = MemoryLoaders(tokens)
    run = RunPlan(cfg=cfg, out=out, kind="base", tokenizer=RandomTokenizer(args.vocab),
                  model_config=config, plan=plan,
                  schedule=Schedule(num_steps=steps, warmup_steps=min(5, args.steps)),
                  grad_accum=check_batch(total, args.device_batch_size, args.seq_len,
                                         rt.world_size),
                  world_size=rt.world_size, loaders=loaders)
    if args.optimizer != "auto":
        _force_dist_optimizer(args.optimizer, rt)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    # the trainer reads these when it builds its GPT (the MLP and the loss) and compiles
    for value, var in ((args.compile_mode, "NANOGPT_COURSE_COMPILE_MODE"),
                       (args.coordinate_tuning, "NANOGPT_COURSE_COORDINATE_TUNING"),
                       (args.gemm_autotune, "NANOGPT_COURSE_GEMM_AUTOTUNE"),
                       (args.mlp, fused_mlp.ENV_VAR), (args.loss, chunked_loss.ENV_VAR)):
        if value is not None:
            os.environ[var] = value
    start = time.perf_counter()
    trainer = Trainer(run, rt, loaders, echo=rt.is_main)
    profiler = None
    if args.profile and rt.is_main:
        profiler = train_profile.StepProfiler(trainer, args.profile, first=args.steps,
                                              count=args.profile_steps)
    result = trainer.fit()
    wall = time.perf_counter() - start
    peak = peak_gib(rt.device)
    mlp_impl = trainer.model.blocks[0].mlp.impl  # what the trained model ran
    del trainer  # its model, optimizer and compiled forward: nanochat's peak is its own
    report = {}
    if rt.is_main:
        recs = steady([r for r in read_metrics(out) if "loss" in r][:args.steps])
        tok_s = statistics.median(r["tok_per_sec"] for r in recs)
        mfus = [r["mfu"] for r in recs if r.get("mfu") is not None]
        report = {
            "device": device_name(rt.device), "torch": torch.__version__,
            "world_size": rt.world_size,
            "depth": args.depth, "width": config.n_embd, "vocab": args.vocab,
            "seq_len": args.seq_len, "device_batch_size": args.device_batch_size,
            "grad_accum": run.grad_accum, "compile": args.compile,
            "compile_mode": compile_mode_from_env() if args.compile else None,
            "coordinate_tuning": coordinate_tuning_from_env() if args.compile else None,
            "gemm_autotune": gemm_autotune_from_env() if args.compile else None,
            "mlp_impl": mlp_impl,
            "optimizer": args.optimizer, "loss_impl": resolved_loss(args.loss, rt.device),
            "window_pattern": config.window_pattern, "short_window": config.short_window,
            "fp8": args.fp8,
            "embedding_dtype": args.embedding_dtype,
            "stochastic_rounding": args.stochastic_rounding, "params": plan.num_params,
            "scaling_params": plan.scaling_params,
            "flops_per_token": plan.flops_per_token, "steps": args.steps,
            "tok_per_sec": tok_s, "tok_per_sec_per_gpu": tok_s / rt.world_size,
            "mfu_percent": statistics.median(mfus) if mfus else None,
            "step_ms": statistics.median(r["dt_ms"] for r in recs),
            "peak_mem_gib": peak, "final_loss": result.final_loss, "wall_s": wall,
        }
        if profiler is not None:
            report["profile"] = profiler.report(skip=args.steps - len(recs))
        shutil.rmtree(out, ignore_errors=True)
    return report


def free_memory(device) -> None:
    """Drop what the last side left (compiled graphs included) and restart the CUDA peak."""
    import torch.distributed as dist

    if dist.is_initialized():  # --optimizer zero1/zero2's one-rank group: nanochat's
        dist.destroy_process_group()  # MuonAdamW would run its collectives on it
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def token_batches(tokens: torch.Tensor, rows: int, seq_len: int):
    """Endless (x, y) pairs of int64 (rows, seq_len) CPU batches: consecutive windows of
    ``tokens`` (each ``seq_len + 1`` long, y = x shifted by one), cycled."""
    windows = (tokens.numel() - 1) // seq_len
    i = 0
    while True:
        starts = [(i + r) % windows * seq_len for r in range(rows)]
        batch = torch.stack([tokens[s:s + seq_len + 1] for s in starts])
        i += rows
        yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # nanochat .view()s y


def load_nanochat(path, *, eager: bool):
    """``nanochat_ref.load`` (checks the pinned commit: fails before our side runs).

    ``eager`` (the CPU dry run): ``TORCHDYNAMO_DISABLE=1`` while nanochat's modules are
    imported, as bench_quality's dry run sets it, so its ``@torch.compile(fullgraph=True)``
    optimizer functions stay plain functions (a CPU compile of them takes longer than the
    run; dynamo's ``disable`` flag at call time makes fullgraph raise instead)."""
    if not eager:
        return nanochat_ref.load(path)
    # read by torch.compile when it decorates; restored afterwards
    with mock.patch.dict(os.environ, {"TORCHDYNAMO_DISABLE": "1"}):
        return nanochat_ref.load(path)


def measure_nanochat(ref, args, device, tokens: torch.Tensor, *,
                     flops_per_token: float) -> dict:
    """nanochat's model and optimizer on ``tokens``, timed like ours (see the docstring)."""
    B, T, accum = args.device_batch_size, args.seq_len, args.accum
    compile_model = args.compile and not args.dry_run
    model, rules, optimizer = nanochat_ref.build_recipe(
        ref, args.depth, vocab_size=args.vocab, sequence_len=T, device=device, seed=0,
        total_batch_size=B * T * accum)
    forward = torch.compile(model, dynamic=False) if compile_model else model
    batches = token_batches(tokens, B, T)
    seconds, loss_value = [], None
    start = time.perf_counter()
    for step in range(args.steps):  # base_train.py's step, with our timing
        t0 = time.perf_counter()
        nanochat_ref.apply_schedule(optimizer, step, args.steps, rules["weight_decay"])
        for _ in range(accum):
            x, y = next(batches)
            loss = forward(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            (loss / accum).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        loss_value = loss.item()  # a sync point each step, as in base_train.py and ours
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    tok_s = statistics.median(B * T * accum / dt for dt in steady(seconds))
    return {"commit": nanochat_ref.PINNED, "compute_dtype": str(ref.gpt.COMPUTE_DTYPE),
            "compile": compile_model, "window_pattern": model.config.window_pattern,
            "params": sum(p.numel() for p in model.parameters()),
            "flops_per_token": float(model.estimate_flops()),
            "tok_per_sec": tok_s,
            "mfu_percent": mfu(tok_s, flops_per_token, device_peak_flops(device)),
            "step_ms": 1000 * statistics.median(steady(seconds)),
            "peak_mem_gib": peak_gib(device), "final_loss": loss_value, "wall_s": wall}


def summary_key(args) -> str:
    """The ``train`` section's key: ``d12``, ``d12_SSSL``, ``d12_SSSL_w512`` (a short window
    of 512 tokens), ``d12_fp8`` (issue #19's names), ``d12_bf16emb`` (embeddings stored in
    bf16), ``d12_bf16emb_sr`` (and their updates rounded stochastically), ``d12_autotune``
    and ``d12_coord`` (a compile mode with max-autotune, coordinate-descent tuning asked
    for), ``d12_gemmtune`` / ``d12_gemmtma`` (``--gemm-autotune 1`` / ``tma``),
    ``d12_fusedmlp`` (``--mlp fused``), ``d12_standardloss`` (``--loss standard``: the
    readable loss where the default would fuse it; ``_fusedloss``, ``_chunkedloss``
    likewise)."""
    pattern = args.window_pattern
    window = getattr(args, "short_window", None)
    return (f"d{args.depth}" + ("" if pattern == "L" else f"_{pattern}")
            + (f"_w{window}" if window and pattern != "L" else "") + ("_fp8" * args.fp8)
            + ("_bf16emb" if getattr(args, "embedding_dtype", "fp32") == "bf16" else "")
            + ("_sr" if getattr(args, "stochastic_rounding", False) else "")
            + ("_autotune" if "autotune" in (getattr(args, "compile_mode", None) or "") else "")
            + ("_coord" if getattr(args, "coordinate_tuning", None) == "1" else "")
            + {"1": "_gemmtune", "tma": "_gemmtma"}.get(getattr(args, "gemm_autotune", None), "")
            + ("_fusedmlp" if getattr(args, "mlp", None) == "fused" else "")
            + (f"_{args.loss}loss" if getattr(args, "loss", None) not in (None, "auto")
               else ""))


def resolved_loss(impl: str, device: torch.device) -> str:
    """The loss implementation that ran: ``auto`` resolved as ``GPT.loss`` resolves it."""
    return fused_loss.auto_impl(device) if impl == "auto" else impl


def summary_entry(report: dict, meta: dict) -> dict:
    """One depth's entry of perf_summary.json's ``train`` section (nanochat's fields None
    without ``--nanochat``). It names its own device, date and commit: the section's
    other depths may come from other runs."""
    side = report.get("nanochat") or {}
    r = lambda v, n: None if v is None else round(v, n)  # noqa: E731
    return {"tok_per_sec": r(report["tok_per_sec"], 1),
            "mfu_percent": r(report["mfu_percent"], 2),
            "peak_mem_gib": r(report["peak_mem_gib"], 2),
            "flops_per_token": report["flops_per_token"], "params": report["params"],
            "device_batch_size": report["device_batch_size"],
            "nanochat_tok_per_sec": r(side.get("tok_per_sec"), 1),
            "nanochat_peak_mem_gib": r(side.get("peak_mem_gib"), 2),
            "ratio": r(report.get("ratio"), 3),
            "nanochat_mfu_percent": r(side.get("mfu_percent"), 2),
            "nanochat_flops_per_token": side.get("flops_per_token"),
            "nanochat_params": side.get("params"),
            "seq_len": report["seq_len"], "grad_accum": report["grad_accum"],
            "compile": report["compile"], "loss_impl": report["loss_impl"],
            "window_pattern": report["window_pattern"], "fp8": report["fp8"],
            "embedding_dtype": report.get("embedding_dtype", "fp32"),
            **{key: meta[key] for key in ("device", "date", "commit")}}


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
