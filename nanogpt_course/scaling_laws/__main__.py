"""``python -m nanogpt_course.scaling_laws {sweep,fit,flops}``.

Examples::

    python -m nanogpt_course.scaling_laws sweep            # the tiny CPU sweep (about 10 minutes)
    python -m nanogpt_course.scaling_laws sweep --preset gpu-offline \
        --results data/scaling/gpu_offline.csv
    python -m nanogpt_course.scaling_laws sweep --depths 6,8,10,12,14 \
        --budgets 1e18,2e18,6e18 --nproc 8
    python -m nanogpt_course.scaling_laws fit --results data/scaling/cpu_offline.csv \
        --out docs/scaling
    python -m nanogpt_course.scaling_laws flops --depths 2,4,6

Presets (explicit flags override them): ``cpu`` (the default without CUDA), ``gpu-offline``
(the committed GPU sweep: offline corpus, an 8k tokenizer) and ``seed`` (the default with
CUDA: the seed's depths 6-14 x 1e18-6e18 FLOPs on FineWeb-Edu).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .. import paths

REPO = Path(__file__).resolve().parents[2]

# Explicit batch and LRs at CPU scale: the depth rules are anchored at 2^19-token batches,
# and their sqrt(B) LR and decay rules extrapolated ~100x below that give runs that barely
# learn in a few hundred steps (see nanogpt_course/train/tiny.py). Width 16 per layer (heads
# of 16) and a 512-token vocabulary give a fine ladder of sizes (11k to 425k scaling params
# for d1-d5) around the compute-optimal size of budgets a CPU can afford (1e11-1e12 FLOPs:
# about 7e12 FLOPs in all, roughly ten minutes of an idle 2-core CPU).
CPU_TRAIN_ARGS = ("--seq-len 128 --aspect-ratio 16 --head-dim 16 --device-batch-size 32 "
                  "--total-batch-size 4096 --matrix-lr 0.02 --embedding-lr 0.3 "
                  "--unembedding-lr 0.008 --scalar-lr 0.5 --weight-decay 0 "
                  "--eval-tokens 131072 --device cpu")
PRESETS = {
    "cpu": dict(depths="1,2,3,4,5", budgets="1e11,3e11,1e12", data="offline", data_mb=24.0,
                vocab_size=512, tokenizer_mb=2.0, train_args=CPU_TRAIN_ARGS, name="cpu_offline"),
    # The tokenizer is committed (8,192 ids trained on the CPU machine's 24 MB offline
    # corpus) so the GPU machine needs no BPE trainer. Heads of 64 make the width grow by 64
    # per layer (a smooth ladder of sizes); the depth rules set batch, LRs and weight decay.
    # The GPU machine's offline corpus is ~136M GPT-2 tokens = ~300 MB = ~80M tokens of this
    # tokenizer (3.6 bytes/token vs GPT-2's 2.2 here). At ~10-20 tokens per parameter a
    # budget's optimum needs a smaller neighbour trained on ~2x its tokens within one epoch,
    # which caps the budgets near 1e15; runs past one epoch are refused and recorded.
    "gpu-offline": dict(depths="1,2,3,4,5", budgets="1e14,3e14,1e15", data="offline",
                        data_mb=None, tokenizer="data/scaling/tokenizer-offline-8k",
                        train_args="--seq-len 2048 --head-dim 64 --device-batch-size 16 "
                                   "--eval-tokens 1048576",
                        name="gpu_offline"),
    "seed": dict(depths="6,8,10,12,14", budgets="1e18,2e18,6e18", data="fineweb_edu",
                 data_mb=None, tokenizer="gpt2", train_args="--compile", name="seed"),
}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nanogpt_course.scaling_laws",
                                description="Scaling-law sweeps (depth x FLOP budget), "
                                            "isoFLOP fits and plots, FLOPs accounting.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="train every depth x budget pair, one CSV row per run")
    s.add_argument("--preset", choices=sorted(PRESETS),
                   help="cpu (default without CUDA) | gpu-offline | seed (default with CUDA)")
    s.add_argument("--depths", help="comma-separated depths, e.g. 6,8,10")
    s.add_argument("--budgets", help="comma-separated FLOP budgets, e.g. 1e18,2e18")
    s.add_argument("--data", help="dataset name or folder (offline, fineweb_edu, ...)")
    s.add_argument("--data-mb", type=float, help="offline: cap the corpus (MB)")
    s.add_argument("--tokenizer", help="gpt2 or a tokenizer folder")
    s.add_argument("--vocab-size", type=int,
                   help="train a BPE tokenizer of this size on the offline corpus instead")
    s.add_argument("--tokenizer-mb", type=float, default=None,
                   help="MB of the offline corpus the tokenizer is trained on")
    s.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    s.add_argument("--parallel", type=int, default=1,
                   help="runs at once on one device (small models; wall_s is then shared)")
    s.add_argument("--results", help="CSV to append to (default runs/scaling/<preset>.csv)")
    s.add_argument("--runs", help="folder of the run folders (default runs/scaling/<name>)")
    s.add_argument("--max-epochs", type=float, default=1.0,
                   help="refuse runs needing more passes over the training split")
    s.add_argument("--core", action="store_true", help="CORE at the end of each run")
    s.add_argument("--retry-failed", action="store_true", help="run failed rows again")
    s.add_argument("--time-budget-s", type=float,
                   help="start no run predicted to end more than this many seconds after "
                        "the command started (data preparation included)")
    s.add_argument("--keep-checkpoints", action="store_true")
    s.add_argument("--train-args", help="extra trainer flags, quoted (replace the preset's)")
    s.add_argument("--dry-run", action="store_true",
                   help="print each run's plan (steps, tokens, epochs) and train nothing")
    s.add_argument("--quiet", action="store_true", help="no trainer output on the console")
    f = sub.add_parser("fit", help="isoFLOP parabolas, power laws, frontier, plots")
    f.add_argument("--results", required=True, help="a sweep's CSV")
    f.add_argument("--out", required=True, help="folder for the plots and summary")
    f.add_argument("--name", help="file name stem (default: the CSV's)")
    f.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    f.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("flops", help="estimate_flops() vs FlopCounterMode vs 6N")
    c.add_argument("--depths", default="2,4,6")
    c.add_argument("--vocab-size", type=int, default=8192)
    c.add_argument("--seq-len", type=int, default=512)
    c.add_argument("--aspect-ratio", type=int, default=64)
    c.add_argument("--head-dim", type=int, default=128)
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def resolve_sweep_args(args) -> dict:
    """The preset's values with the explicit flags on top."""
    import torch

    name = args.preset or ("seed" if torch.cuda.is_available() else "cpu")
    out = dict(PRESETS[name], preset=name)
    for key in ("depths", "budgets", "data", "data_mb", "tokenizer", "vocab_size",
                "tokenizer_mb", "train_args"):
        value = getattr(args, key)
        if value is not None:
            out[key] = value
    if args.tokenizer is not None:
        out.pop("vocab_size", None)
    elif args.vocab_size is not None:
        out.pop("tokenizer", None)
    return out


def _check_train_args(text: str) -> str | None:
    """The trainer's parser on ``--train-args`` (before any data work): a message, or None."""
    import contextlib
    import io

    from ..train.config import build_parser

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            _, unknown = build_parser().parse_known_args(shlex.split(text))
    except SystemExit:
        last = captured.getvalue().strip().splitlines()[-1:] or ["invalid value"]
        reason = last[0].split("error: ", 1)[-1]
        return f"--train-args: {reason} (see python -m nanogpt_course.train --help)"
    if unknown:
        return (f"--train-args: the trainer has no flag(s) {' '.join(unknown)} "
                "(see python -m nanogpt_course.train --help)")
    return None


def cmd_sweep(args) -> int:
    import time

    from . import sweep

    started = time.perf_counter()  # --time-budget-s counts data preparation too
    opts = resolve_sweep_args(args)
    try:
        depths, budgets = _ints(opts["depths"]), _floats(opts["budgets"])
    except ValueError as err:
        return _fail(f"--depths/--budgets: {err} (use e.g. --depths 2,4 --budgets 1e12,3e12)")
    if not depths or not budgets or min(depths) < 1 or min(budgets) <= 0:
        return _fail("--depths needs positive integers and --budgets positive numbers")
    if args.nproc < 1:
        return _fail(f"--nproc must be >= 1, got {args.nproc}")
    if args.parallel < 1 or (args.parallel > 1 and args.nproc > 1):
        return _fail(f"--parallel {args.parallel}: use >= 1, and 1 with --nproc > 1")
    problem = _check_train_args(opts["train_args"])
    if problem:
        return _fail(problem)
    tokenizer = opts.get("tokenizer")
    if tokenizer is None:
        from ..train.tiny import corpus_tokenizer

        mb = opts.get("tokenizer_mb") or 2.0
        print(f"[sweep] tokenizer: {opts['vocab_size']} ids trained on {mb:g} MB of the "
              "offline corpus (cached)", flush=True)
        tokenizer = str(corpus_tokenizer(opts["vocab_size"], int(mb * 1e6)))
    elif tokenizer != "gpt2" and not Path(tokenizer).exists() and (REPO / tokenizer).exists():
        tokenizer = str(REPO / tokenizer)  # a preset's committed tokenizer, from any folder
    if tokenizer != "gpt2" and not Path(tokenizer).exists():
        return _fail(f"--tokenizer {tokenizer}: no such folder (train one with --vocab-size N)")
    data_opts = {"max_bytes": int(opts["data_mb"] * 1e6)} if opts.get("data_mb") else {}
    try:
        folder, digest, epoch_tokens = sweep.prepare_data(opts["data"], tokenizer, **data_opts)
    except (FileNotFoundError, ValueError, KeyError) as err:
        return _fail(f"--data {opts['data']}: {err}")
    name = opts["name"]
    results = Path(args.results) if args.results else paths.runs_dir(
        "scaling", create=False) / f"{name}.csv"
    runs = Path(args.runs) if args.runs else paths.runs_dir("scaling", name, create=False)
    cfg = sweep.SweepConfig(depths=depths, budgets=budgets, data=folder, tokenizer=tokenizer,
                            results=results, runs=runs, corpus=opts["data"],
                            corpus_hash=digest, train_args=shlex.split(opts["train_args"]),
                            nproc=args.nproc, max_epochs=args.max_epochs, core=args.core,
                            retry_failed=args.retry_failed, time_budget_s=args.time_budget_s,
                            started_at=started,
                            keep_checkpoints=args.keep_checkpoints, echo=not args.quiet,
                            parallel=args.parallel)
    print(f"[sweep] preset {opts['preset']}: depths {depths} x budgets {budgets}; data "
          f"{folder} ({epoch_tokens:,} training tokens, corpus sha256 {digest[:12]}); "
          f"results {results}", flush=True)
    if args.dry_run:
        print(sweep.dry_run_table(cfg, epoch_tokens))
        return 0
    rows = sweep.run_sweep(cfg, epoch_tokens=epoch_tokens)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"[sweep] {len(rows)} run(s) this call, {len(failed)} failed; fit with: python -m "
          f"nanogpt_course.scaling_laws fit --results {results} --out DIR", flush=True)
    return 0


def cmd_fit(args) -> int:
    from . import fit, plot
    from .sweep import numeric, read_results

    rows = read_results(args.results)
    if not rows:
        return _fail(f"--results {args.results}: no such file or no rows; run a sweep first")
    try:
        result = fit.fit_sweep(numeric(rows), n_boot=args.bootstrap, seed=args.seed)
    except ValueError as err:
        return _fail(f"{args.results}: {err}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or Path(args.results).stem
    text = fit.summary(result, source=str(args.results))
    (out / f"{stem}_summary.txt").write_text(text + "\n", encoding="utf-8")
    files = plot.plot_all(result, out, stem)
    print(text)
    print("wrote " + ", ".join(str(p) for p in [out / f"{stem}_summary.txt", *files]))
    return 0


def cmd_flops(args) -> int:
    from .flops import accounting_table, format_table

    rows = accounting_table(_ints(args.depths), vocab_size=args.vocab_size,
                            sequence_len=args.seq_len, aspect_ratio=args.aspect_ratio,
                            head_dim=args.head_dim)
    print(format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"sweep": cmd_sweep, "fit": cmd_fit, "flops": cmd_flops}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
