"""CORE: 22 in-context tasks scored as centered accuracy (DCLM's "core" set, as in nanochat).

The task list (label, file, shots, type, delimiter, random baseline in percent) is the
bundle's ``core.yaml`` + ``eval_meta_data.csv`` (column ``Random baseline``), kept here as a
table; a test checks it against the bundle files. How one example is rendered and scored
lives in :mod:`.icl`. Per task: the records are shuffled with ``random.Random(1337)`` and
cut to ``max_per_task`` (few-shot examples are drawn from that same cut list), scored in
batches of whole examples, and the batches are dealt to the ranks round-robin.

Missing task files are reported and left out; the score is then labelled partial
(``CORE (20/22 tasks)``). The SQuAD task, absent from the public mirrors in bundle form, is
built from the official SQuAD v1.1 dev set when that is available (:mod:`.datasets`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import datasets, icl
from .ranks import all_max, all_sum, mine, rank_and_world
from .results import Report, TaskResult

SHUFFLE_SEED = 1337


@dataclass(frozen=True)
class CoreTask:
    label: str
    uri: str  # path under eval_bundle/eval_data/
    shots: int
    kind: str  # multiple_choice | schema | language_modeling
    delimiter: str
    baseline_percent: float  # eval_meta_data.csv "Random baseline"

    @property
    def baseline(self) -> float:
        return self.baseline_percent / 100.0


_A = "\nAnswer: "
_T = [  # label, file, shots, type, delimiter, random baseline (%)
    ("hellaswag_zeroshot", "language_understanding/hellaswag.jsonl", 0, "multiple_choice", " ", 25),
    ("jeopardy", "world_knowledge/jeopardy_all.jsonl", 10, "language_modeling", _A, 0),
    ("bigbench_qa_wikidata", "world_knowledge/bigbench_qa_wikidata.jsonl", 10, "language_modeling", " ", 0),
    ("arc_easy", "world_knowledge/arc_easy.jsonl", 10, "multiple_choice", _A, 25),
    ("arc_challenge", "world_knowledge/arc_challenge.jsonl", 10, "multiple_choice", _A, 25),
    ("copa", "commonsense_reasoning/copa.jsonl", 0, "multiple_choice", " ", 50),
    ("commonsense_qa", "commonsense_reasoning/commonsense_qa.jsonl", 10, "multiple_choice", " ", 20),
    ("piqa", "commonsense_reasoning/piqa.jsonl", 10, "multiple_choice", _A, 50),
    ("openbook_qa", "commonsense_reasoning/openbook_qa.jsonl", 0, "multiple_choice", " ", 25),
    ("lambada_openai", "language_understanding/lambada_openai.jsonl", 0, "language_modeling", " ", 0),
    ("hellaswag", "language_understanding/hellaswag.jsonl", 10, "multiple_choice", " ", 25),
    ("winograd", "language_understanding/winograd_wsc.jsonl", 0, "schema", " ", 50),
    ("winogrande", "language_understanding/winogrande.jsonl", 0, "schema", " ", 50),
    ("bigbench_dyck_languages", "symbolic_problem_solving/bigbench_dyck_languages.jsonl", 10, "language_modeling", " ", 0),
    ("agi_eval_lsat_ar", "symbolic_problem_solving/agi_eval_lsat_ar.jsonl", 3, "multiple_choice", " ", 20),
    ("bigbench_cs_algorithms", "symbolic_problem_solving/bigbench_cs_algorithms.jsonl", 10, "language_modeling", " ", 0),
    ("bigbench_operators", "symbolic_problem_solving/bigbench_operators.jsonl", 10, "language_modeling", " ", 0),
    ("bigbench_repeat_copy_logic", "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl", 10, "language_modeling", " ", 0),
    ("squad", "reading_comprehension/squad.jsonl", 10, "language_modeling", " ", 0),
    ("coqa", "reading_comprehension/coqa.jsonl", 0, "language_modeling", " ", 0),
    ("boolq", "reading_comprehension/boolq.jsonl", 10, "multiple_choice", _A, 62),
    ("bigbench_language_identification", "language_understanding/bigbench_language_identification.jsonl", 10, "multiple_choice", " ", 9.1),
]
CORE_TASKS: tuple[CoreTask, ...] = tuple(CoreTask(*t) for t in _T)
TASKS_BY_LABEL = {t.label: t for t in CORE_TASKS}


def select_tasks(names: str | list[str] | None) -> list[CoreTask]:
    """Tasks by label (comma-separated string or list); all 22 when ``names`` is empty."""
    if not names:
        return list(CORE_TASKS)
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in TASKS_BY_LABEL]
    if unknown:
        raise ValueError(f"unknown CORE task(s) {unknown}; tasks are: {', '.join(TASKS_BY_LABEL)}")
    return [TASKS_BY_LABEL[n] for n in names]


def task_source(task: CoreTask) -> tuple[object, str]:
    """``(path or None, how)``: the bundle file; for squad without it, the conversion."""
    path = datasets.find(f"{datasets.BUNDLE}/{task.uri}")
    if path is not None:
        return path, "bundle"
    if task.label == "squad":
        converted = datasets.converted_squad()
        if converted is not None:
            return converted, "converted from SQuAD v1.1 dev"
    return None, "missing"


def bundle_status(tasks: list[CoreTask] | None = None) -> dict[str, str]:
    """``{label: "bundle" | "converted ..." | "missing"}`` without reading the records."""
    return {t.label: task_source(t)[1] for t in (tasks or CORE_TASKS)}


def load_examples(task: CoreTask, max_per_task: int | None = None) -> list[dict] | None:
    """The task's records, shuffled with seed 1337, cut to ``max_per_task`` (None: missing)."""
    path, _ = task_source(task)
    if path is None:
        return None
    data = datasets.read_jsonl(path)
    random.Random(SHUFFLE_SEED).shuffle(data)
    if max_per_task is not None and max_per_task > 0:
        data = data[:max_per_task]
    return data


def _device(model) -> torch.device:
    return next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")


def _defaults(device: torch.device) -> tuple[int, int]:
    """``(examples per batch, padded tokens per forward)``: big on a GPU, small on a CPU."""
    return (64, 32768) if device.type == "cuda" else (16, 4096)


def evaluate_task(model, tokenizer, task: CoreTask, data: list[dict], *, autocast=None,
                  chunk: int | None = None, max_tokens: int | None = None) -> tuple[float, int]:
    """``(credit summed over all ranks, number of examples)`` for one task.

    Batches of ``chunk`` consecutive examples are built by every rank the same way and dealt
    round-robin, so the result does not depend on the number of ranks.
    """
    device = _device(model)
    d_chunk, d_tokens = _defaults(device)
    chunk, max_tokens = chunk or d_chunk, max_tokens or d_tokens
    limit = model.config.sequence_len
    bos = tokenizer.bos_id
    batches = [list(range(i, min(i + chunk, len(data)))) for i in range(0, len(data), chunk)]
    credit = 0.0
    for batch in mine(batches):
        rows = [row for i in batch for row in icl.example_rows(
            task.kind, data[i], i, data, task.shots, task.delimiter, tokenizer.encode, bos, limit)]
        scores = icl.score_rows(model, rows, pad=bos, autocast=autocast, max_tokens=max_tokens)
        per_example: dict[int, list] = {}
        for row, score in zip(rows, scores):
            per_example.setdefault(row.example, []).append(score)
        for i, s in per_example.items():
            credit += icl.example_credit(task.kind, s, data[i].get("gold"))
    total, = all_sum([credit], device)
    return total, len(data)


def evaluate_core(model, tokenizer, *, device=None, max_per_task: int | None = None,
                  tasks: str | list[str] | None = None, log: Callable[[str], None] | None = None,
                  autocast=None) -> dict:
    """Run CORE on ``model`` (every rank calls it; results are summed over ranks).

    Returns a dict with ``core`` (the score), ``label`` (``CORE (20/22 tasks)`` when tasks
    are missing) and ``report`` (a :class:`.results.Report`: per-task n, accuracy, centered
    accuracy, seconds; ``.write(out)`` makes the CSV, JSON and chart). ``device`` is accepted
    for the trainer's hook; the model's own device is used. ``log`` gets one line per task
    (default: print on rank 0).
    """
    rank, world = rank_and_world()
    if log is None:
        log = (lambda line: print(line, flush=True)) if rank == 0 else (lambda line: None)
    dev = _device(model)
    if autocast is None:
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                    else contextlib.nullcontext())
    chosen = select_tasks(tasks)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    results, missing, notes = [], [], []
    try:
        for k, task in enumerate(chosen):
            t0 = time.perf_counter()
            data = load_examples(task, max_per_task)
            if data is None:
                missing.append(task.label)
                log(f"CORE {k + 1:2d}/{len(chosen)} {task.label:<34} missing (no task file)")
                continue
            source = task_source(task)[1]
            if source != "bundle":
                notes.append(f"{task.label}: {source}")
            credit, n = evaluate_task(model, tokenizer, task, data, autocast=autocast)
            seconds = all_max(time.perf_counter() - t0, dev)
            r = TaskResult(task.label, n, credit, task.baseline, seconds, task.kind, task.shots)
            results.append(r)
            log(f"CORE {k + 1:2d}/{len(chosen)} {task.label:<34} {task.shots:2d}-shot "
                f"{task.kind:<17} n={n:<5d} acc {r.accuracy:.4f}  centered {r.centered:+.4f}  "
                f"{seconds:6.1f} s")
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    report = Report("CORE", results, expected=len(CORE_TASKS),
                    missing=missing, notes=notes,
                    meta={"max_per_task": max_per_task, "world_size": world,
                          "device": str(dev)})
    log(report.summary() + (f"  (missing: {', '.join(missing)})" if missing else ""))
    return {"core": report.score, "label": report.label, "report": report}
