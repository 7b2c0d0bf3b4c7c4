"""The training configuration and its command line (``python -m nanogpt_course.train``).

The flags are DESIGN.md's ("Training CLI"); a handful of advanced ones (schedule shape,
evaluation size, device, width) follow in their own group. ``None`` means "let the depth
rules decide" (see :mod:`.scaling`). :func:`validate` checks everything that can be checked
without building a model or touching data, so mistakes fail in a second, not after minutes.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MODES = ("pretraining", "mid-training", "sft", "all")
DEFAULT_DATA = {"pretraining": "fineweb_edu", "mid-training": "task_mixture", "all": "fineweb_edu",
                "sft": None}
# Fine-tuning from a checkpoint: no warmup, a short final warmdown to zero, no weight decay
# (nanochat's mid-training and SFT settings); pretraining uses the Schedule defaults.
EMBEDDING_DTYPES = ("fp32", "bf16")
ORTHOGONALIZERS = ("newton_schulz", "polar_express")  # optim.muon.ORTHOGONALIZERS
PACKINGS = ("bos", "windows")  # data.loaders.PACKINGS
FINETUNE_SCHEDULE = {"warmup_steps": 0, "warmdown_ratio": 0.2, "final_lr_frac": 0.0}


class ConfigError(ValueError):
    """An impossible or inconsistent setting; the message says what to change."""


@dataclass
class TrainConfig:
    """Every knob of a run. Field names are the CLI flags with ``_`` for ``-``."""

    mode: str = "pretraining"
    depth: int | None = None  # None: 12, or the checkpoint's depth when starting from one
    data: str | None = None  # dataset name or path; None: the mode's default
    tokenizer: str | None = None  # "gpt2" or a path; None: gpt2, or the checkpoint's
    target_flops: float | None = None
    tokens_per_param: float | None = None
    max_steps: int | None = None
    device_batch_size: int = 32
    seq_len: int | None = None  # None: 2048, or the checkpoint's sequence length
    total_batch_size: int | None = None
    matrix_lr: float | None = None
    embedding_lr: float | None = None
    unembedding_lr: float | None = None
    scalar_lr: float | None = None
    weight_decay: float | None = None
    checkpoint: str | None = None
    resume: bool = False
    out: str | None = None
    seed: int = 42
    compile: bool = False
    eval_every: int = 250
    core_every: int = -1
    chatcore_every: int = -1
    sample_every: int = 1000
    save_every: int = -1
    keep_last: int | None = None
    # ---- advanced
    warmup_steps: int | None = None
    warmdown_ratio: float | None = None
    final_lr_frac: float | None = None
    eval_tokens: int | None = None
    log_every: int = 1
    device: str | None = None
    aspect_ratio: int = 64
    head_dim: int = 128
    window_pattern: str = "L"  # per layer, repeated: L = full context, S = short window
    short_window: int | None = None  # tokens an S layer sees; None = seq_len // 2
    fp8: bool = False  # the blocks' linear layers in FP8 while training (Hopper GPUs)
    embedding_dtype: str = "fp32"  # "bf16": token/value embeddings stored in bf16 (memory)
    stochastic_rounding: bool = False  # bf16 embeddings: round their updates at random
    orthogonalizer: str = "newton_schulz"  # Muon's iteration: or "polar_express"
    cautious_weight_decay: bool = True  # Muon decays only where the update agrees in sign
    packing: str = "bos"  # training rows: whole documents from BOS, or "windows" (random)
    # ---- Python API only (tests, lessons): stop after this many steps as if preempted
    stop_at: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _every(text: str) -> int:
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"use a step count, or -1/0 to disable; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nanogpt_course.train",
        description="Train a GPT. --depth sets width, batch size, learning rates, weight decay "
                    "and the horizon (docs/DEPTH.md); explicit flags override those rules. "
                    "Run alone or under torchrun --nproc_per_node=N.")
    a = p.add_argument
    a("--mode", choices=MODES, default="pretraining",
      help="pretraining (random init) | mid-training (from --checkpoint, chat data) | sft (from "
           "--checkpoint, your chat .jsonl) | all (pretraining then mid-training, two folders "
           "under --out)")
    a("--depth", type=int, help="number of layers; sets everything else (default 12)")
    a("--data", help="dataset name (fineweb_edu, openwebtext, tinyshakespeare, task_mixture, "
                     "offline, ...) or a path; default depends on --mode")
    a("--tokenizer", help="gpt2 (default) or a trained tokenizer folder / tokenizer.json")
    a("--target-flops", type=float, help="horizon from a FLOP budget (e.g. 1e18)")
    a("--tokens-per-param", type=float, help="horizon as tokens per scaling parameter "
                                             "(default 12)")
    a("--max-steps", type=_positive_int, help="number of optimizer steps (overrides the horizon)")
    a("--device-batch-size", type=_positive_int, default=32,
      help="sequences per forward pass per GPU; lower it on out-of-memory (default 32)")
    a("--seq-len", type=_positive_int, help="context length in tokens (default 2048)")
    a("--total-batch-size", type=_positive_int, help="tokens per optimizer step, all ranks")
    for name in ("matrix-lr", "embedding-lr", "unembedding-lr", "scalar-lr"):
        a(f"--{name}", type=float, help="explicit LR (overrides the depth rule)")
    a("--weight-decay", type=float, help="explicit Muon weight decay (overrides the depth rule)")
    a("--checkpoint", help="start from this checkpoint (step or run folder)")
    a("--resume", action="store_true", help="continue the run in --out from its latest step")
    a("--out", help="run folder (default: $NANOGPT_COURSE_RUNS/<mode>-d<depth>)")
    a("--seed", type=int, default=42)
    a("--compile", action="store_true", help="torch.compile the model (CUDA)")
    a("--eval-every", type=_every, default=250, help="val bits-per-byte every N steps (-1: off)")
    a("--core-every", type=_every, default=-1, help="CORE eval every N steps (-1: off)")
    a("--chatcore-every", type=_every, default=-1, help="ChatCORE eval every N steps (-1: off)")
    a("--sample-every", type=_every, default=1000, help="print samples every N steps (-1: off)")
    a("--save-every", type=_every, default=-1, help="checkpoint every N steps (-1: at the end)")
    a("--keep-last", type=_positive_int, help="keep only the newest N checkpoints")
    adv = p.add_argument_group("advanced")
    b = adv.add_argument
    b("--warmup-steps", type=int, help="LR warmup steps (pretraining default 40)")
    b("--warmdown-ratio", type=float, help="fraction of steps in the final LR warmdown")
    b("--final-lr-frac", type=float, help="LR at the end, as a fraction of the peak")
    b("--eval-tokens", type=_positive_int, help="tokens per validation (default: 10 batches)")
    b("--log-every", type=_positive_int, default=1, help="print/log every N steps")
    b("--device", help="cuda | cuda:N | mps | cpu (default: CUDA when present)")
    b("--aspect-ratio", type=_positive_int, default=64, help="width = depth x this (rounded)")
    b("--head-dim", type=_positive_int, default=128, help="attention head size")
    b("--window-pattern", default="L",
      help="sliding-window attention per layer, repeated over the depth: L = full context, "
           "S = --short-window tokens (e.g. SSSL); the last layer always sees everything")
    b("--short-window", type=_positive_int,
      help="tokens an S layer attends to (default: half the sequence length)")
    b("--fp8", action="store_true",
      help="FP8 matmuls in the blocks' linear layers while training (H100/H200 only; "
           "see nanogpt_course/fp8.py for the scaling recipe)")
    b("--embedding-dtype", choices=EMBEDDING_DTYPES, default="fp32",
      help="storage of the token and value embeddings: bf16 halves their weights, gradients "
           "and Adam moments (1.3 GiB less at d12), as nanochat stores them")
    b("--stochastic-rounding", action="store_true",
      help="with --embedding-dtype bf16: round the embeddings' updates to bf16 at random "
           "(unbiased) instead of to nearest, so updates below half a bf16 step survive on "
           "average (see nanogpt_course/optim/adamw.py)")
    b("--orthogonalizer", choices=ORTHOGONALIZERS, default="newton_schulz",
      help="Muon's orthogonalization: Keller Jordan's Newton-Schulz quintic (default) or "
           "Polar Express (a tighter polynomial per step; see docs/QUALITY.md)")
    b("--cautious-weight-decay", action=argparse.BooleanOptionalAction, default=True,
      help="Muon's weight decay only on the entries whose update already pushes toward zero "
           "(sign(update) == sign(weight)), so decay never fights the gradient; on by "
           "default since the d6 A/B (docs/QUALITY.md), --no-cautious-weight-decay decays "
           "every entry")
    b("--packing", choices=PACKINGS, default="bos",
      help="how training rows are cut from the data: bos = whole documents packed best-fit "
           "from BOS, long ones continued over rows (default); windows = random windows of "
           "the token stream, as nanochat's quality benchmark feeds it (pretraining only; "
           "validation always uses bos)")
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    return TrainConfig.from_dict(vars(args))


def validate(cfg: TrainConfig) -> None:
    """Cheap checks that need no model and no data. Raises :class:`ConfigError`."""
    if cfg.mode not in MODES:
        raise ConfigError(f"--mode {cfg.mode!r} is unknown; choose one of {', '.join(MODES)}")
    if cfg.depth is not None and cfg.depth < 1:
        raise ConfigError(f"--depth must be >= 1 (the number of transformer blocks), got "
                          f"{cfg.depth}")
    for name in ("device_batch_size", "seq_len", "total_batch_size", "max_steps", "keep_last",
                 "eval_tokens", "log_every", "aspect_ratio", "head_dim"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if cfg.weight_decay is not None and cfg.weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    pattern = cfg.window_pattern or ""
    if not pattern or set(pattern.upper()) - {"S", "L"}:
        raise ConfigError(f"--window-pattern {cfg.window_pattern!r}: use the letters S (short "
                          "window) and L (full context), e.g. L or SSSL")
    if cfg.orthogonalizer not in ORTHOGONALIZERS:
        raise ConfigError(f"--orthogonalizer {cfg.orthogonalizer!r}: choose one of "
                          f"{', '.join(ORTHOGONALIZERS)}")
    if cfg.stochastic_rounding and cfg.embedding_dtype != "bf16":
        raise ConfigError("--stochastic-rounding rounds bf16 embeddings' updates: it needs "
                          "--embedding-dtype bf16 (fp32 parameters are never rounded)")
    if cfg.packing not in PACKINGS:
        raise ConfigError(f"--packing {cfg.packing!r}: choose one of {', '.join(PACKINGS)}")
    if cfg.packing == "windows" and cfg.mode == "sft":
        raise ConfigError("--packing windows cuts conversations anywhere, so SFT could not "
                          "keep its loss on the assistant's turns: use it for pretraining or "
                          "mid-training only")
    if cfg.embedding_dtype not in EMBEDDING_DTYPES:
        raise ConfigError(f"--embedding-dtype {cfg.embedding_dtype!r}: choose one of "
                          f"{', '.join(EMBEDDING_DTYPES)}")
    if cfg.short_window is not None and cfg.short_window < 1:
        raise ConfigError(f"--short-window must be >= 1, got {cfg.short_window}")
    if cfg.target_flops is not None and cfg.tokens_per_param is not None:
        raise ConfigError("--target-flops and --tokens-per-param both set the horizon; give one")
    if cfg.target_flops is not None and not cfg.target_flops > 0:
        raise ConfigError(f"--target-flops must be > 0, got {cfg.target_flops}")
    if cfg.tokens_per_param is not None and not cfg.tokens_per_param > 0:
        raise ConfigError(f"--tokens-per-param must be > 0, got {cfg.tokens_per_param}")
    if cfg.warmdown_ratio is not None and not 0 <= cfg.warmdown_ratio <= 1:
        raise ConfigError(f"--warmdown-ratio must be in [0, 1], got {cfg.warmdown_ratio}")
    if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
        raise ConfigError(f"--warmup-steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.mode in ("mid-training", "sft") and not cfg.checkpoint and not cfg.resume:
        raise ConfigError(f"--mode {cfg.mode} starts from a trained model: pass --checkpoint "
                          "RUN_OR_STEP_FOLDER (e.g. the output of --mode pretraining)")
    if cfg.mode == "sft" and not cfg.data and not cfg.resume:
        raise ConfigError("--mode sft needs --data PATH: a .jsonl file with one "
                          '{"messages": [{"role": "user", "content": ...}, ...]} per line')
    if cfg.mode in ("pretraining", "all") and cfg.checkpoint:
        raise ConfigError(f"--mode {cfg.mode} starts from random weights; use --mode "
                          "mid-training or sft to start from --checkpoint, or --resume to "
                          "continue a pretraining run")
    if cfg.checkpoint and cfg.resume:
        raise ConfigError("--checkpoint starts a new run from a model, --resume continues the "
                          "run in --out: give one")
    if cfg.checkpoint and not Path(cfg.checkpoint).expanduser().exists():
        raise ConfigError(f"--checkpoint {cfg.checkpoint}: no such file or folder")
    if cfg.tokenizer not in (None, "gpt2") and not Path(cfg.tokenizer).expanduser().exists():
        raise ConfigError(f"--tokenizer {cfg.tokenizer}: not 'gpt2' and no such path. Train "
                          "one with: python -m nanogpt_course.tokenizer train ...")


def check_batch(total_batch_size: int, device_batch_size: int, seq_len: int,
                world_size: int) -> int:
    """Gradient accumulation steps = total / (device batch × seq × world); must divide."""
    per_pass = device_batch_size * seq_len * world_size
    if total_batch_size % per_pass != 0:
        lower = max(per_pass, total_batch_size // per_pass * per_pass)
        raise ConfigError(
            f"--total-batch-size {total_batch_size:,} tokens is not divisible by device batch "
            f"× seq len × ranks = {device_batch_size} × {seq_len} × {world_size} = "
            f"{per_pass:,} tokens per forward pass. Use a multiple, e.g. --total-batch-size "
            f"{lower:,} or {lower + per_pass:,}, or change --device-batch-size/--seq-len.")
    return total_batch_size // per_pass
