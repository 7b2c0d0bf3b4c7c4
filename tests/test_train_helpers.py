"""Shared by the training tests (no tests here): tiny settings, a 2-layer, 64-wide GPT on the
offline corpus with a 512-token tokenizer (both cached in NANOGPT_COURSE_CACHE)."""

from __future__ import annotations

import functools

from nanogpt_course.train import TrainConfig
from nanogpt_course.train import tiny as tiny_mod


@functools.lru_cache(maxsize=1)
def tiny_assets() -> tuple[str, str]:
    """(tokenizer folder, prepared data folder), built once per cache."""
    folder = tiny_mod.corpus_tokenizer()
    return str(folder), str(tiny_mod.tiny_data(tiny_mod.tiny_tokenizer()))


def tiny_cfg(out, **overrides) -> TrainConfig:
    tok, data = tiny_assets()
    base = dict(depth=2, aspect_ratio=32, head_dim=32, seq_len=32, device_batch_size=2,
                total_batch_size=2 * 32 * 4, max_steps=6, data=data, tokenizer=tok,
                out=str(out), eval_every=-1, sample_every=-1, seed=0, device="cpu",
                warmup_steps=2, **tiny_mod.LRS)
    base.update(overrides)
    return TrainConfig(**base)


def optimizer_groups(cfg: TrainConfig, kind: str) -> list[dict]:
    """The param groups of ``kind`` ("muon" or "adamw") the trainer would build for ``cfg``
    (one process, no data loaded beyond what ``resolve_run`` prepares)."""
    from types import SimpleNamespace

    from nanogpt_course.model import GPT
    from nanogpt_course.train.build import build_optimizer, resolve_run

    run = resolve_run(cfg)
    opt = build_optimizer(run, GPT(run.model_config), SimpleNamespace(distributed=False))
    return [g for g in opt.param_groups if g["kind"] == kind]


def cli_args(cfg: TrainConfig) -> list[str]:
    """The command-line flags equivalent to ``cfg`` (for subprocess runs)."""
    args, defaults = [], TrainConfig().to_dict()
    for key, value in cfg.to_dict().items():
        flag = "--" + key.replace("_", "-")
        if value is False and defaults[key] is True:  # a switch that is on by default
            args.append("--no-" + flag[2:])
            continue
        if value is None or value is False or key == "stop_at":
            continue
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args
