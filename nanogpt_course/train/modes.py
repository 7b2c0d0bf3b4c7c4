"""``train(config)``: the Python entry point behind ``python -m nanogpt_course.train``.

Modes:

- ``pretraining``: random weights, a text corpus (default ``fineweb_edu``), kind ``base``.
- ``mid-training``: from ``--checkpoint``, chat data (default ``task_mixture``), kind
  ``chat``; a fine-tuning schedule (no warmup, short warmdown to zero, no weight decay).
- ``sft``: the same machinery on your own chat ``.jsonl`` (``--data``).
- ``all``: pretraining into ``<out>/pretraining`` then mid-training from its last step into
  ``<out>/mid-training``; ``--resume`` picks up whichever stage was interrupted.

Fine-tuning runs train for ``--max-steps``, or one pass over the training split.
"""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint as ck
from .. import paths
from .build import resolve_run
from .config import TrainConfig
from .loop import Trainer, TrainResult
from .runtime import init_runtime


def _default_loaders(cfg, tokenizer, runtime):
    from .data import DatasetLoaders

    return DatasetLoaders(cfg, tokenizer, runtime)


def run_one(cfg: TrainConfig, runtime, *, loaders=None, echo: bool = True) -> TrainResult:
    """One single-mode run on this rank (the process group is already up)."""
    if loaders is None:
        make = _default_loaders
    elif callable(loaders):
        make = loaders
    else:
        make = lambda cfg, tokenizer, runtime: loaders  # noqa: E731
    run = resolve_run(cfg, world_size=runtime.world_size, loaders=make, runtime=runtime)
    return Trainer(run, runtime, run.loaders, echo=echo).fit()


def _stage_done(folder: Path) -> bool:
    last = ck.latest(folder)
    return last is not None and bool(ck.read_meta(last).get("finished"))


def run_all(cfg: TrainConfig, runtime, *, loaders=None, echo: bool = True) -> list[TrainResult]:
    """Pretraining then mid-training, in ``<out>/pretraining`` and ``<out>/mid-training``."""
    root = Path(cfg.out).expanduser() if cfg.out else paths.runs_dir(
        f"all-d{cfg.depth or 12}", create=False)
    pre_out, mid_out = root / "pretraining", root / "mid-training"
    results = []
    if not _stage_done(pre_out):
        pre = cfg.replace(mode="pretraining", out=str(pre_out),
                          resume=cfg.resume and ck.latest(pre_out) is not None)
        results.append(run_one(pre, runtime, loaders=loaders, echo=echo))
        if results[-1].status != "finished":
            return results
    elif runtime.is_main and echo:
        print(f"pretraining already finished in {pre_out}; going on to mid-training", flush=True)
    resume_mid = cfg.resume and ck.latest(mid_out) is not None
    mid = cfg.replace(mode="mid-training", out=str(mid_out), data=None, depth=None,
                      tokenizer=None, resume=resume_mid,
                      checkpoint=None if resume_mid else str(pre_out),
                      target_flops=None, tokens_per_param=None, weight_decay=None)
    results.append(run_one(mid, runtime, loaders=loaders, echo=echo))
    return results


def train(cfg: TrainConfig | None = None, *, loaders=None, echo: bool = True, **overrides):
    """Train as configured; returns a :class:`TrainResult` (a list of two for ``all``).

    ``train(TrainConfig(...))`` or ``train(depth=4, data="offline", ...)``. ``loaders``
    replaces the dataset pipeline: an object, or a ``(cfg, tokenizer, runtime) -> loaders``
    callable (see :mod:`.data`). Under torchrun every rank calls this.
    """
    cfg = (cfg or TrainConfig()).replace(**overrides) if overrides else (cfg or TrainConfig())
    runtime = init_runtime(cfg.device)
    try:
        run = run_all if cfg.mode == "all" else run_one
        result = run(cfg, runtime, loaders=loaders, echo=echo)
    except BaseException:
        runtime.close(together=False)
        raise
    runtime.close()
    return result
