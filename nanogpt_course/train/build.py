"""Everything a run needs before its first step, resolved in a cheap-first order so that a
mistake fails fast: the settings (config + checkpoint + depth rules) are worked out and
checked on the meta device, and only then are data, weights and optimizer state allocated.

- :func:`resolve_run` → :class:`RunPlan`: the tokenizer, the model config, the depth plan,
  the schedule, gradient accumulation, where the run lives and what it resumes from.
- :func:`build_model`, :func:`build_optimizer`: weights and optimizer on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import checkpoint as ck
from .. import paths
from . import scaling
from .config import FINETUNE_SCHEDULE, ConfigError, TrainConfig, check_batch, validate
from .schedule import Schedule

DEFAULT_DEPTH = 12
DEFAULT_SEQ_LEN = 2048
# Settings that define the model or the data stream: a resumed run must keep them.
FIXED_ON_RESUME = ("mode", "depth", "data", "tokenizer", "seq_len", "total_batch_size",
                   "matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay",
                   "target_flops", "tokens_per_param", "seed", "aspect_ratio", "head_dim",
                   "window_pattern", "short_window", "orthogonalizer", "cautious_weight_decay",
                   "packing",
                   "warmup_steps", "warmdown_ratio", "final_lr_frac")


@dataclass
class RunPlan:
    """The resolved settings of one run (one mode; ``all`` makes two)."""

    cfg: TrainConfig
    out: Path
    kind: str  # "base" | "chat" (what the checkpoints will say)
    tokenizer: object
    model_config: object  # GPTConfig
    plan: scaling.DepthPlan
    schedule: Schedule
    grad_accum: int
    world_size: int
    init_from: Path | None = None  # step folder whose weights start a fine-tuning run
    resume_from: Path | None = None  # step folder this run continues
    resume_meta: dict = field(default_factory=dict)
    loaders: object = None  # the batch streams (see .data)

    @property
    def data(self) -> str:
        return self.cfg.data


def model_stats(config) -> scaling.ModelStats:
    """Parameter and FLOP counts of a GPT config, measured on the meta device (free)."""
    from ..model import GPT

    with torch.device("meta"):
        model = GPT(config)
    counts = model.param_counts()
    return scaling.ModelStats(num_params=counts["total"],
                              scaling_params=counts["matrices"] + counts["lm_head"],
                              flops_per_token=float(model.estimate_flops()))


def default_out(cfg: TrainConfig, depth: int) -> Path:
    return paths.runs_dir(f"{cfg.mode}-d{depth}", create=False)


def _load_tokenizer(spec: str):
    from ..tokenizer import Tokenizer

    try:
        return Tokenizer.from_spec(spec)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err


def _merge_resume(cfg: TrainConfig, saved: TrainConfig) -> TrainConfig:
    """The saved run's settings, with this invocation's run-time knobs; a different value
    for a setting that defines the model or the data is a mismatch."""
    diffs = []
    for name in FIXED_ON_RESUME:
        mine, theirs = getattr(cfg, name), getattr(saved, name)
        defaults = TrainConfig()
        if mine is not None and mine != getattr(defaults, name) and mine != theirs:
            diffs.append(f"--{name.replace('_', '-')} {mine} (checkpoint: {theirs})")
    if diffs:
        raise ConfigError("--resume continues a run with its own settings; these differ from "
                          "the checkpoint's: " + "; ".join(diffs) + ". Drop them, or start a "
                          "new run with another --out.")
    runtime_knobs = ("device_batch_size", "compile", "fp8", "embedding_dtype",
                     "stochastic_rounding", "eval_every", "core_every",
                     "chatcore_every", "sample_every", "save_every", "keep_last", "eval_tokens",
                     "log_every", "device", "stop_at", "out")
    merged = saved.replace(**{k: getattr(cfg, k) for k in runtime_knobs}, resume=True,
                           checkpoint=None)
    if cfg.max_steps is not None:
        merged = merged.replace(max_steps=cfg.max_steps)
    return merged


def resolve_run(cfg: TrainConfig, *, world_size: int = 1, loaders=None,
                runtime=None) -> RunPlan:
    """Work out every setting of a single-mode run (``cfg.mode != "all"``). Raises
    :class:`ConfigError` on mistakes. Nothing is allocated beyond the tokenizer and
    meta-device models, except the data: ``loaders(cfg, tokenizer, runtime)`` (see
    :mod:`.data`) is called once the settings are known to be consistent, and may prepare
    the dataset."""
    validate(cfg)
    if cfg.mode == "all":
        raise ValueError("resolve_run() takes one mode; train() splits 'all' into two runs")
    resume_from, resume_meta = None, {}
    if cfg.resume:  # the run in --out, or in the default folder for this mode and depth
        out = Path(cfg.out).expanduser() if cfg.out else default_out(
            cfg, cfg.depth or DEFAULT_DEPTH)
        resume_from = ck.latest(out)
        if resume_from is None:
            raise ConfigError(f"--resume: {out} holds no complete checkpoint to continue "
                              "(drop --resume to start a new run there)")
        resume_meta = ck.read_meta(resume_from)
        # a run saved before --cautious-weight-decay existed decayed every entry
        saved = {"cautious_weight_decay": False, **resume_meta.get("train_config", {})}
        cfg = _merge_resume(cfg, TrainConfig.from_dict(saved))
    init_from = ck.resolve(cfg.checkpoint) if cfg.checkpoint else None
    source = resume_from or init_from
    if source is not None:
        tokenizer, model_config = _from_checkpoint(cfg, source, resume=resume_from is not None)
    else:
        tokenizer = _load_tokenizer(cfg.tokenizer or "gpt2")
        from ..model import GPTConfig

        model_config = GPTConfig.from_depth(cfg.depth or DEFAULT_DEPTH,
                                            vocab_size=tokenizer.vocab_size,
                                            sequence_len=cfg.seq_len or DEFAULT_SEQ_LEN,
                                            aspect_ratio=cfg.aspect_ratio, head_dim=cfg.head_dim,
                                            window_pattern=cfg.window_pattern.upper(),
                                            short_window=cfg.short_window)
    depth = model_config.n_layer
    seq_len = cfg.seq_len or model_config.sequence_len
    cfg = cfg.replace(depth=depth, seq_len=seq_len,
                      tokenizer=cfg.tokenizer or (None if source is not None else "gpt2"))
    finetune = cfg.mode in ("mid-training", "sft")
    if cfg.data is None:
        from .config import DEFAULT_DATA

        cfg = cfg.replace(data=DEFAULT_DATA[cfg.mode])

    from ..model import GPTConfig

    def stats(d: int) -> scaling.ModelStats:
        if d == depth:
            return model_stats(model_config)
        return model_stats(GPTConfig.from_depth(d, vocab_size=tokenizer.vocab_size,
                                                sequence_len=model_config.sequence_len,
                                                aspect_ratio=cfg.aspect_ratio,
                                                head_dim=cfg.head_dim,
                                                window_pattern=model_config.window_pattern,
                                                short_window=model_config.short_window))

    lrs = {k: getattr(cfg, k) for k in scaling.REF_LRS}
    wd = cfg.weight_decay if cfg.weight_decay is not None else (0.0 if finetune else None)
    kwargs = dict(tokens_per_param=cfg.tokens_per_param, target_flops=cfg.target_flops,
                  total_batch_size=cfg.total_batch_size, lrs=lrs, weight_decay=wd)
    plan = scaling.plan(depth, stats, max_steps=cfg.max_steps, **kwargs)
    if finetune and cfg.weight_decay is None:
        plan.weight_decay_from = "fine-tuning default"
    accum = check_batch(plan.total_batch_size, cfg.device_batch_size, seq_len, world_size)
    out = Path(cfg.out).expanduser() if cfg.out else default_out(cfg, depth)
    if resume_from is None and ck.latest(out) is not None:
        raise ConfigError(f"{out} already holds checkpoints of another run: pass --resume to "
                          "continue it, or choose another --out")
    run_loaders = None
    if loaders is not None:  # prepares the data if needed: after the cheap checks above
        run_loaders = loaders(cfg, tokenizer, runtime)
    one_epoch = finetune and cfg.max_steps is None and cfg.target_flops is None \
        and cfg.tokens_per_param is None
    if one_epoch:  # fine-tuning: one pass over the training split
        epoch = getattr(run_loaders, "epoch_tokens", None)
        if not epoch:
            raise ConfigError(f"--mode {cfg.mode}: say how long to train with --max-steps")
        wd_from = plan.weight_decay_from
        plan = scaling.plan(depth, stats, max_steps=max(1, epoch // plan.total_batch_size),
                            **kwargs)
        plan.weight_decay_from = wd_from
        plan.steps_from = f"one pass over {epoch:,} training tokens"
    sched_kw = dict(FINETUNE_SCHEDULE) if finetune else {}
    for name in ("warmup_steps", "warmdown_ratio", "final_lr_frac"):
        if getattr(cfg, name) is not None:
            sched_kw[name] = getattr(cfg, name)
    if "warmup_steps" not in sched_kw:  # a short run still reaches its peak LR
        sched_kw["warmup_steps"] = min(40, max(1, plan.num_steps // 10))
    schedule = Schedule(num_steps=plan.num_steps, weight_decay=plan.weight_decay, **sched_kw)
    return RunPlan(cfg=cfg.replace(out=str(out)), out=out,
                   kind="chat" if finetune else "base", tokenizer=tokenizer,
                   model_config=model_config, plan=plan, schedule=schedule, grad_accum=accum,
                   world_size=world_size, init_from=init_from, resume_from=resume_from,
                   resume_meta=resume_meta, loaders=run_loaders)


def _from_checkpoint(cfg: TrainConfig, folder: Path, *, resume: bool):
    """Tokenizer and model config of a checkpoint, checked against the flags."""
    from ..model import GPTConfig

    try:  # a broken checkpoint fails here, before any data or weights: one error: line
        meta = ck.validate(folder, hashes=True, optimizer=resume)
    except ck.CheckpointError as err:
        raise ConfigError(str(err)) from err
    tokenizer = ck.read_tokenizer(folder)
    model_config = GPTConfig.from_dict(meta["model_config"])
    if cfg.tokenizer is not None and not resume:
        wanted = _load_tokenizer(cfg.tokenizer)
        if wanted != tokenizer:
            raise ConfigError(f"--tokenizer {cfg.tokenizer} ({wanted.identity}) does not match "
                              f"the checkpoint's tokenizer {tokenizer.identity} ({folder}): "
                              "a model only understands the ids it was trained on. Drop "
                              "--tokenizer to use the checkpoint's.")
    if cfg.depth is not None and cfg.depth != model_config.n_layer:
        raise ConfigError(f"--depth {cfg.depth} does not match the checkpoint's depth "
                          f"{model_config.n_layer} ({folder}); drop --depth")
    if cfg.seq_len is not None and cfg.seq_len > model_config.sequence_len:
        raise ConfigError(f"--seq-len {cfg.seq_len} is longer than the checkpoint's context "
                          f"({model_config.sequence_len}); use at most that")
    if tokenizer.vocab_size != model_config.vocab_size:
        raise ConfigError(f"{folder}: the tokenizer has {tokenizer.vocab_size} ids but the model "
                          f"expects {model_config.vocab_size}; the checkpoint is inconsistent")
    return tokenizer, model_config


def depth_table(depths=(4, 6, 12, 20, 26), *, vocab_size: int = 50259, sequence_len: int = 2048,
                tokens_per_param: float | None = None, aspect_ratio: int = 64,
                head_dim: int = 128) -> str:
    """What the depth rules give at each depth (default: our defaults, GPT-2 tokenizer with
    the chat tokens = 50,259 ids, sequence 2048), as a Markdown table."""
    from ..model import GPTConfig

    def stats(d: int) -> scaling.ModelStats:
        return model_stats(GPTConfig.from_depth(d, vocab_size=vocab_size,
                                                sequence_len=sequence_len,
                                                aspect_ratio=aspect_ratio, head_dim=head_dim))

    rows = ["| depth | width | heads | params | scaling params | FLOPs/token | tokens | "
            "batch (tokens) | LR scale | Muon LR | Muon WD | steps | FLOPs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in depths:
        cfg = GPTConfig.from_depth(d, vocab_size=vocab_size, sequence_len=sequence_len,
                                   aspect_ratio=aspect_ratio, head_dim=head_dim)
        p = scaling.plan(d, stats, tokens_per_param=tokens_per_param)
        rows.append(f"| {d} | {cfg.n_embd} | {cfg.n_head} | {p.num_params / 1e6:.1f}M | "
                    f"{p.scaling_params / 1e6:.1f}M | {p.flops_per_token:.3g} | "
                    f"{p.target_tokens / 1e9:.2f}B | 2^{p.total_batch_size.bit_length() - 1} | "
                    f"{p.lr_scale:.3f} | {p.lrs['matrix_lr']:.4f} | {p.weight_decay:.3f} | "
                    f"{p.num_steps:,} | {p.total_flops:.2e} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------- allocation
def build_model(run: RunPlan, device: torch.device):
    """The GPT on ``device``: freshly initialized under the run's seed (the same on every
    rank, so no broadcast is needed), or with the start/resume checkpoint's weights."""
    from ..model import GPT

    with torch.device("meta"):
        model = GPT(run.model_config)
    model.to_empty(device=device)
    torch.manual_seed(run.cfg.seed)
    model.init_weights()
    source = run.resume_from or run.init_from
    if source is not None:
        model.load_state_dict(ck.read_model_state(source, device), strict=True)
    return model


def build_optimizer(run: RunPlan, model, runtime):
    """MuonAdamW (one process) or DistMuonAdamW (several) with the plan's LRs and decay,
    the run's Muon orthogonalizer and decay rule and its rounding of bf16 embeddings."""
    from .. import optim

    lrs = run.plan.lrs
    return optim.build_optimizer(model, distributed=runtime.distributed,
                                 matrix_lr=lrs["matrix_lr"], embedding_lr=lrs["embedding_lr"],
                                 unembedding_lr=lrs["unembedding_lr"],
                                 scalar_lr=lrs["scalar_lr"],
                                 weight_decay=run.plan.weight_decay,
                                 orthogonalizer=run.cfg.orthogonalizer,
                                 cautious_weight_decay=run.cfg.cautious_weight_decay,
                                 stochastic_rounding=run.cfg.stochastic_rounding)


def load_optimizer_state(optimizer, folder: Path, runtime) -> None:
    """Load the optimizer shards of ``folder``, resharding when the world size changed."""
    from .. import optim

    saved_world = ck.optimizer_world_size(folder)
    layout = ck.read_optimizer_layout(folder)
    if saved_world == runtime.world_size:
        shards = [None] * saved_world
        shards[runtime.rank] = ck.read_optimizer_state(folder, runtime.rank, runtime.device)
    else:
        shards = [ck.read_optimizer_state(folder, r, "cpu") for r in range(saved_world)]
    if saved_world == runtime.world_size and layout["params"] == optimizer.shard_layout()["params"]:
        optimizer.load_shard_state_dict(shards[runtime.rank], layout)
    else:
        shards = [s if s is not None else ck.read_optimizer_state(folder, r, "cpu")
                  for r, s in enumerate(shards)]
        optim.load_sharded(optimizer, shards, layout)
