"""ChatCORE: how well a *chat* model answers, on five tasks, as centered accuracy.

- **ARC-Easy / ARC-Challenge** (questions, choices and gold answers from the CORE bundle's
  ARC files, whose gold is used rather than the separate answer keys) and **MMLU** (test
  split) are *categorical*: the question and lettered choices are rendered as a user turn in
  the chat template (the same layout mid-training uses, :func:`nanogpt_course.data.tasks.
  mmlu_messages`), followed by ``<|im_start|>assistant\\n``; the answer is the letter whose
  token has the highest logit at that position, among the letters of the choices.
  Baseline 0.25.
- **GSM8K** (test) is *generative*: greedy decoding up to ``<|im_end|>``; the number after
  the last ``####`` is compared numerically with the gold one. Baseline 0.
- **HumanEval** is generative: the completion (its first fenced code block, if any) plus
  the problem's tests run in :mod:`.sandbox`; it passes when the tests do. Baseline 0.

ChatCORE is the mean of the five centered accuracies. Work is split over ranks like CORE's.
Generation goes through :func:`nanogpt_course.engine.generate`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import torch

from . import datasets, sandbox
from .ranks import all_max, all_sum, mine, rank_and_world
from .results import Report, TaskResult

LETTERS = "ABCDE"
CHAT_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval")
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0,
             "HumanEval": 0.0}
KINDS = {"ARC-Easy": "categorical", "ARC-Challenge": "categorical", "MMLU": "categorical",
         "GSM8K": "generative", "HumanEval": "generative"}
RELPATHS = {"ARC-Easy": f"{datasets.BUNDLE}/world_knowledge/arc_easy.jsonl",
            "ARC-Challenge": f"{datasets.BUNDLE}/world_knowledge/arc_challenge.jsonl",
            "MMLU": "mmlu/test", "GSM8K": "gsm8k/test.jsonl",
            "HumanEval": "humaneval/HumanEval.jsonl"}
MAX_NEW_TOKENS = {"GSM8K": 256, "HumanEval": 512}


# ---------------------------------------------------------------------------- data
def data_status() -> dict[str, object]:
    """``{task: path or None}``."""
    return {t: datasets.find(rel) for t, rel in RELPATHS.items()}


def load_task(task: str) -> list[dict] | None:
    """Records of a ChatCORE task in file order (None when its data is missing).

    Categorical records are ``{"question", "choices", "gold"}``; GSM8K ``{"question",
    "answer"}``; HumanEval the original records.
    """
    path = datasets.find(RELPATHS[task])
    if path is None:
        return None
    if task.startswith("ARC"):
        rows = datasets.read_jsonl(path)
        return [{"question": re.sub(r"^Question:\s*", "", r["query"]).strip(),
                 "choices": r["choices"], "gold": int(r["gold"])} for r in rows]
    if task == "MMLU":
        tasks = _data_tasks()
        MMLU_LETTERS, mmlu_csv_rows = tasks.LETTERS, tasks.mmlu_csv_rows

        out = []
        for r in mmlu_csv_rows(path):
            a = str(r["answer"]).strip()
            gold = MMLU_LETTERS.index(a.upper()) if a.upper() in MMLU_LETTERS else int(a)
            out.append({"question": r["question"], "choices": list(r["choices"]), "gold": gold})
        return out
    return datasets.read_jsonl(path)


# ---------------------------------------------------------------------------- prompts
def _data_tasks():
    """``nanogpt_course.data.tasks`` (imported through ``data.sources``, which must load first)."""
    from ..data import sources, tasks  # noqa: F401  (sources first: it imports tasks)

    return tasks


def categorical_messages(item: dict) -> list[dict]:
    """The user turn of a multiple-choice item (mid-training's MMLU layout)."""
    mmlu_messages = _data_tasks().mmlu_messages

    return mmlu_messages(item["question"], item["choices"], item["gold"])[:1]


def letter_ids(tokenizer, n: int) -> list[int]:
    """Token id of each answer letter ``A``, ``B``, ... (the first token if it splits)."""
    return [tokenizer.encode(letter)[0] for letter in LETTERS[:n]]


def extract_number(text: str) -> float | None:
    """The number after the last ``####`` (commas, ``$`` and a trailing ``.`` allowed)."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1]
    match = re.search(r"-?\$?\s*[\d,]*\.?\d+", tail)
    if match is None:
        return None
    try:
        return float(match.group(0).replace(",", "").replace("$", "").replace(" ", ""))
    except ValueError:
        return None


def gsm8k_correct(completion: str, gold_answer: str) -> bool:
    got, want = extract_number(completion), extract_number(gold_answer)
    return got is not None and want is not None and abs(got - want) < 1e-6 * max(1, abs(want))


def extract_code(completion: str) -> str:
    """The first fenced code block of a completion, else the whole completion."""
    match = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", completion, re.S)
    return (match.group(1) if match else completion).rstrip()


def humaneval_program(problem: dict, completion: str) -> str:
    """The program that tests a completion. The prompt always comes first (its imports and
    helper functions; its stub, a function holding only a docstring, is valid Python): a
    completion that writes the whole function redefines the stub after it, a bare body is
    appended to the stub's header."""
    code = extract_code(completion)
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.M):
        head = problem["prompt"].rstrip() + "\n\n\n" + code
    else:
        head = problem["prompt"] + code
    return f"{head}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


# ---------------------------------------------------------------------------- scoring
def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def letter_logits(model, prompts: list[list[int]], *, pad: int, autocast=None) -> torch.Tensor:
    """Logits (N, vocab) at the last position of each prompt (right-padded batch)."""
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    from .icl import _bucket

    width = _bucket(max(len(p) for p in prompts), _device(model), model.config.sequence_len)
    idx = torch.full((len(prompts), width), pad, dtype=torch.long)
    for b, p in enumerate(prompts):
        idx[b, :len(p)] = torch.tensor(p, dtype=torch.long)
    idx = idx.to(_device(model))
    last = torch.tensor([len(p) - 1 for p in prompts], device=idx.device)
    with autocast:
        if hasattr(model, "hidden") and hasattr(model, "head"):
            logits = model.head(model.hidden(idx)[torch.arange(len(prompts), device=idx.device), last])
        else:
            logits = model(idx)[torch.arange(len(prompts), device=idx.device), last]
    return logits.float()


def letter_credit(scores: list[float], gold: int) -> float:
    """1 when the gold letter has the highest score; a k-way exact tie with it scores 1/k."""
    best = max(scores)
    tied = [i for i, s in enumerate(scores) if s == best]
    return 1.0 / len(tied) if gold in tied else 0.0


def _prompt(tokenizer, messages, limit: int, room: int = 0) -> list[int]:
    ids = tokenizer.render_for_completion(messages)
    keep = max(1, limit - room)
    return ids[-keep:]


def run_categorical(model, tokenizer, items: list[dict], *, autocast=None,
                    chunk: int | None = None) -> float:
    """Summed credit (over ranks) of categorical items, in batches of ``chunk`` prompts
    dealt round-robin to the ranks (64 on a GPU, 16 on a CPU)."""
    limit = model.config.sequence_len
    chunk = chunk or (64 if _device(model).type == "cuda" else 16)
    batches = [list(range(i, min(i + chunk, len(items)))) for i in range(0, len(items), chunk)]
    credit = 0.0
    for batch in mine(batches):
        prompts = [_prompt(tokenizer, categorical_messages(items[i]), limit) for i in batch]
        logits = letter_logits(model, prompts, pad=tokenizer.bos_id, autocast=autocast)
        for row, i in zip(logits, batch):
            ids = letter_ids(tokenizer, len(items[i]["choices"]))
            credit += letter_credit(row[ids].tolist(), items[i]["gold"])
    return all_sum([credit], _device(model))[0]


def generate_text(model, tokenizer, messages, max_new_tokens: int) -> str:
    """Greedy chat completion (stops at ``<|im_end|>`` or BOS) through the engine."""
    from ..engine import generate

    limit = model.config.sequence_len
    ids = _prompt(tokenizer, messages, limit, room=min(max_new_tokens, limit // 2))
    stop = {tokenizer.encode_special("<|im_end|>"), tokenizer.bos_id}
    out = []
    for token in generate(model, ids, max_new_tokens, temperature=0.0, stop=stop):
        if token in stop:
            break
        out.append(token)
    return tokenizer.decode(out)


def run_generative(model, tokenizer, task: str, items: list[dict], *, workers: int = 4,
                   limits: sandbox.Limits | None = None) -> float:
    """Summed number (over ranks) of GSM8K answers / HumanEval programs that are correct."""
    mine_idx = mine(list(range(len(items))))
    n_new = MAX_NEW_TOKENS[task]
    if task == "GSM8K":
        ok = sum(gsm8k_correct(generate_text(model, tokenizer,
                                             [{"role": "user", "content": items[i]["question"].strip()}],
                                             n_new), items[i]["answer"]) for i in mine_idx)
    else:
        programs = [humaneval_program(items[i], generate_text(
            model, tokenizer, [{"role": "user", "content": items[i]["prompt"]}], n_new))
            for i in mine_idx]
        outcomes = sandbox.run_many(programs, limits or sandbox.Limits(), workers=workers)
        ok = sum(o.passed for o in outcomes)
    return all_sum([float(ok)], _device(model))[0]


def select_tasks(names: str | list[str] | None) -> list[str]:
    if not names:
        return list(CHAT_TASKS)
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    lower = {t.lower(): t for t in CHAT_TASKS}
    unknown = [n for n in names if n.lower() not in lower]
    if unknown:
        raise ValueError(f"unknown ChatCORE task(s) {unknown}; tasks are: {', '.join(CHAT_TASKS)}")
    return [lower[n.lower()] for n in names]


def evaluate_chatcore(model, tokenizer, *, device=None, max_per_task: int | None = None,
                      tasks: str | list[str] | None = None,
                      log: Callable[[str], None] | None = None, autocast=None,
                      workers: int = 4) -> dict:
    """Run ChatCORE (every rank calls it). Returns ``{"chatcore": score, "label", "report"}``.

    ``max_per_task`` keeps the first N items of each task (file order). ``device`` is
    accepted for the trainer's hook; the model's own device is used.
    """
    rank, world = rank_and_world()
    if log is None:
        log = (lambda line: print(line, flush=True)) if rank == 0 else (lambda line: None)
    dev = _device(model)
    if autocast is None:
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                    else contextlib.nullcontext())
    chosen = select_tasks(tasks)
    was_training = model.training
    model.eval()
    results, missing = [], []
    layers = sandbox.describe_layers() if "HumanEval" in chosen else ""
    try:
        for k, task in enumerate(chosen):
            t0 = time.perf_counter()
            items = load_task(task)
            if items is None:
                missing.append(task)
                log(f"ChatCORE {k + 1}/{len(chosen)} {task:<14} missing ({RELPATHS[task]})")
                continue
            if max_per_task is not None and max_per_task > 0:
                items = items[:max_per_task]
            if KINDS[task] == "categorical":
                credit = run_categorical(model, tokenizer, items, autocast=autocast)
            else:
                credit = run_generative(model, tokenizer, task, items, workers=workers)
            seconds = all_max(time.perf_counter() - t0, dev)
            r = TaskResult(task, len(items), credit, BASELINES[task], seconds, KINDS[task])
            results.append(r)
            log(f"ChatCORE {k + 1}/{len(chosen)} {task:<14} {KINDS[task]:<11} n={len(items):<5d} "
                f"acc {r.accuracy:.4f}  centered {r.centered:+.4f}  {seconds:6.1f} s")
    finally:
        if was_training:
            model.train()
    report = Report("ChatCORE", results, expected=len(CHAT_TASKS), missing=missing,
                    notes=[f"sandbox: {layers}"] if layers else [],
                    meta={"max_per_task": max_per_task, "world_size": world, "device": str(dev)})
    log(report.summary() + (f"  (missing: {', '.join(missing)})" if missing else ""))
    return {"chatcore": report.score, "label": report.label, "report": report}
