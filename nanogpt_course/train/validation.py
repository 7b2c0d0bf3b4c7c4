"""What the trainer measures besides the training loss: validation bits per byte (computed
by :mod:`nanogpt_course.eval.bpb`, re-exported here), text samples, and the hooks for the
evaluation module (CORE, ChatCORE)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable

from ..eval.bpb import evaluate_bpb

__all__ = ["evaluate_bpb", "sample_texts", "eval_hook", "eval_hooks_plan", "run_eval_hook"]

BASE_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time,",
    "The most important thing to remember is",
)
CHAT_PROMPTS = ("Hello! Who are you?", "What is 12 plus 30?")


def sample_texts(model, tokenizer, *, kind: str = "base", max_new_tokens: int = 24,
                 prompts: Iterable[str] | None = None) -> list[str]:
    """Greedy continuations of a few prompts (greedy: uses no RNG, so sampling during a run
    never changes what an uninterrupted run would do next)."""
    from ..engine import generate

    was_training = model.training
    model.eval()
    out = []
    limit = model.config.sequence_len
    for prompt in prompts or (CHAT_PROMPTS if kind == "chat" else BASE_PROMPTS):
        if kind == "chat":
            ids = tokenizer.render_for_completion([{"role": "user", "content": prompt}])
            stop = [tokenizer.encode_special("<|im_end|>")]
        else:
            ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
            stop = [tokenizer.bos_id]
        ids = ids[-max(1, limit - 1):]
        new = list(generate(model, ids, max_new_tokens, temperature=0.0, stop=stop))
        new = [t for t in new if t not in stop]
        out.append(f"{prompt!r} -> {tokenizer.decode(new)!r}")
    if was_training:
        model.train()
    return out


def eval_hook(name: str):
    """The evaluation module's ``evaluate_<name>`` function (``evaluate_core``,
    ``evaluate_chatcore``), or None if this install lacks it."""
    if importlib.util.find_spec("nanogpt_course.eval") is None:
        return None
    module = importlib.import_module("nanogpt_course.eval")
    return getattr(module, f"evaluate_{name}", None)


def eval_hooks_plan(cfg, device) -> list[str]:
    """Lines saying what ``--core-every`` / ``--chatcore-every`` will run, checked at the
    start of a run: raises :class:`nanogpt_course.eval.datasets.EvalDataError` (with the
    command that fetches it) when the evaluation data is missing, before any training."""
    from ..eval import training_plan

    lines = []
    for name in ("core", "chatcore"):
        if getattr(cfg, f"{name}_every", -1) > 0:
            lines.append(training_plan(name, device, every=getattr(cfg, f"{name}_every")))
    return lines


def run_eval_hook(name: str, model, tokenizer, *, runtime, log, announced: set) -> dict:
    """Run CORE (``name="core"``) or ChatCORE (``"chatcore"``) on every rank.

    Calls ``nanogpt_course.eval.evaluate_<name>(model, tokenizer, device=...,
    max_per_task=...)`` with the per-task cap used during training (see
    :func:`nanogpt_course.eval.training_examples_per_task`); the score is returned as
    ``{name: score}`` for metrics.jsonl and a one-line summary is logged.
    """
    from ..eval import training_examples_per_task

    fn = eval_hook(name)
    if fn is None:
        if name not in announced:
            announced.add(name)
            log(f"nanogpt_course.eval.evaluate_{name} is not available; skipping --{name}-every")
        return {}
    was_training = model.training
    model.eval()
    try:
        result = fn(model, tokenizer, device=runtime.device,
                    max_per_task=training_examples_per_task(runtime.device),
                    log=log)
    finally:
        if was_training:
            model.train()
    if isinstance(result, (int, float)):
        return {name: float(result)}
    if isinstance(result, dict):
        for key in (name, f"{name}_metric", "score"):
            if isinstance(result.get(key), (int, float)):
                label = result.get("label", name)
                log(f"{label}: {float(result[key]):.4f}")
                return {name: float(result[key])}
    return {}
