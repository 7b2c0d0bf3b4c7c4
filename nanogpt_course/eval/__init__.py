"""Evaluation: validation bits per byte (:mod:`.bpb`), CORE for base models (:mod:`.core`,
22 in-context tasks scored by :mod:`.icl`), ChatCORE for chat models (:mod:`.chatcore`:
ARC-Easy/Challenge, MMLU, GSM8K, HumanEval run in :mod:`.sandbox`), their data
(:mod:`.datasets`), reports (:mod:`.results`) and the CLI ``python -m nanogpt_course.eval``.

The trainer calls :func:`evaluate_core` / :func:`evaluate_chatcore` for ``--core-every`` /
``--chatcore-every`` with :func:`training_examples_per_task` examples per task.
"""

from __future__ import annotations

import torch

from .bpb import evaluate_bpb

__all__ = ["evaluate_bpb", "evaluate_core", "evaluate_chatcore", "training_examples_per_task",
           "training_plan"]


def evaluate_core(model, tokenizer, **kwargs) -> dict:
    """CORE of a base model; see :func:`.core.evaluate_core`."""
    from .core import evaluate_core as run

    return run(model, tokenizer, **kwargs)


def evaluate_chatcore(model, tokenizer, **kwargs) -> dict:
    """ChatCORE of a chat model; see :func:`.chatcore.evaluate_chatcore`."""
    from .chatcore import evaluate_chatcore as run

    return run(model, tokenizer, **kwargs)


def training_examples_per_task(device) -> int:
    """Examples per task when CORE/ChatCORE run during training: 500 on a GPU (nanochat's
    choice), 40 on a CPU (a periodic check, not a measurement)."""
    return 500 if torch.device(device).type == "cuda" else 40


def training_plan(name: str, device, *, every: int) -> str:
    """One line for the start of a run; raises ``datasets.EvalDataError`` when no data."""
    from . import datasets

    n = training_examples_per_task(device)
    if name == "core":
        from .core import CORE_TASKS, bundle_status

        status = bundle_status()
        missing = [k for k, v in status.items() if v == "missing"]
        if len(missing) == len(CORE_TASKS):
            raise datasets.EvalDataError(
                "--core-every needs the CORE eval bundle, which was not found in "
                "$NANOGPT_COURSE_DATA nor the cache. To fix: run `python -m nanogpt_course.eval "
                "download core` (needs internet), point NANOGPT_COURSE_DATA at a data mirror, "
                "or leave --core-every off")
        ran = len(CORE_TASKS) - len(missing)
        extra = f" (missing: {', '.join(missing)})" if missing else ""
        return (f"CORE every {every} steps: {ran}/{len(CORE_TASKS)} tasks{extra}, up to {n} "
                f"examples per task")
    if name == "chatcore":
        from .chatcore import data_status
        from .sandbox import describe_layers

        status = data_status()
        missing = [k for k, v in status.items() if v is None]
        if len(missing) == len(status):
            raise datasets.EvalDataError(
                "--chatcore-every needs ARC (CORE bundle), MMLU, GSM8K and HumanEval, none of "
                "which was found. To fix: run `python -m nanogpt_course.eval download all`, "
                "point NANOGPT_COURSE_DATA at a data mirror, or leave --chatcore-every off")
        extra = f" (missing: {', '.join(missing)})" if missing else ""
        return (f"ChatCORE every {every} steps: {len(status) - len(missing)}/{len(status)} "
                f"tasks{extra}, up to {n} examples per task; sandbox: {describe_layers()}")
    raise ValueError(f"unknown evaluation {name!r}")
