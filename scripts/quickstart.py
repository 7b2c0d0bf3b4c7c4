"""The Python side of ``make quickstart``: a tiny GPT trained on your CPU in a few minutes.

1. collects the standard-library subset of the ``offline`` corpus (the standard library's
   sources and docs plus the pydoc topics: the same text, and the same content hash,
   printed, on every machine with the same Python build);
2. trains a small BPE tokenizer on it (4096 ids);
3. tokenizes the corpus into shards;
4. trains a 4-layer GPT for ``--minutes`` of wall-clock time (default 3.5): the budget is
   held by time, not by a step count fixed up front. Training runs in segments of about
   30 s; after each one the measured speed re-plans the total number of steps, so a machine
   that gets busier (or quieter) half-way still finishes on time, with a complete learning
   rate schedule. When the machine is too busy for a useful model it says so, and what to do;
5. prints samples, writes ``runs/quickstart/loss.png`` and says how to chat with it.

Run again: a finished model is reused (``--fresh`` retrains), an interrupted one resumes,
and a model this script flagged as undertrained is trained again (never silently reused).

    python scripts/quickstart.py [--minutes 3.5] [--steps N] [--out runs/quickstart] [--fresh]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from nanogpt_course import checkpoint as ck  # noqa: E402
from nanogpt_course import paths  # noqa: E402

VOCAB = 4096
MODEL = dict(depth=4, aspect_ratio=48, head_dim=48, seq_len=256)
BATCH = dict(device_batch_size=16, total_batch_size=16 * 256)
# Explicit LRs: the depth rules are anchored at 2^19-token batches; scaled down 128x by
# their sqrt(B) rule they would be too timid for a few hundred steps.
LRS = dict(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5,
           weight_decay=0.1)
PROMPTS = ("The", "def", "import", "This module", "Returns the")
# Below this many steps the samples are mostly noise (measured on 2 cores: 8 steps gave 2.64
# bits per byte and noise, 20 steps 2.57 and noise, 122 steps 1.86 and code-like text with
# real imports, 285 steps 1.49).
MIN_USEFUL_STEPS = 100
SEGMENT_SECONDS = 30.0  # re-plan the number of steps this often
MIN_SEGMENT_STEPS = 5  # a segment's start-up (data, model, checkpoint) must not dominate
STATE = "quickstart.json"  # what this script decided about its model (undertrained, ...)


def say(text: str) -> None:
    print(f"[quickstart] {text}", flush=True)


def build_tokenizer(folder: Path, corpus: Path):
    from nanogpt_course.tokenizer import Tokenizer
    from nanogpt_course.tokenizer.fast import train_fast

    if (folder / "tokenizer.json").is_file():
        return Tokenizer.load(folder)
    start = time.perf_counter()
    texts = (json.loads(line)["text"] for line in
             (corpus / "corpus.jsonl").open(encoding="utf-8"))
    tok = train_fast((t for t in texts), VOCAB)
    tok.save(folder)
    say(f"trained a {VOCAB}-token BPE tokenizer in {time.perf_counter() - start:.1f} s "
        f"-> {folder}")
    return tok


# --------------------------------------------------------------------------- the time budget
def plan_total(done: int, elapsed: float, budget: float, per_step: float) -> int:
    """Total steps that fit: the steps done plus what the rest of the budget allows at the
    measured speed; always at least one more step, so a run can finish."""
    left = max(0.0, budget - elapsed)
    return done + max(1, int(left / max(per_step, 1e-9)))


def busy_warning(per_step: float, budget: float, *, steps_planned: int | None = None) -> str:
    """The warning for a machine too busy to train a useful model in the budget, or ""."""
    steps = steps_planned if steps_planned is not None else int(budget / per_step)
    if steps >= MIN_USEFUL_STEPS:
        return ""
    need = MIN_USEFUL_STEPS * per_step / 60
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    return (f"WARNING: this machine is busy ({per_step:.2f} s per step{load}): only about "
            f"{steps} steps fit in {budget / 60:.1f} minutes, and a useful model needs about "
            f"{MIN_USEFUL_STEPS}. The model will be undertrained (samples mostly noise).\n"
            f"  What to do: give it more time, e.g. make quickstart ARGS=\"--minutes "
            f"{max(need * 1.2, budget / 60 + 1):.0f}\", or run it again when the machine is "
            f"quieter with make quickstart ARGS=--fresh.")


def train_by_time(run_segment: Callable[[int, int], int], budget: float, per_step: float, *,
                  done: int = 0, clock: Callable[[], float] = time.perf_counter,
                  segment: float = SEGMENT_SECONDS,
                  log: Callable[[str], None] = lambda line: None) -> dict:
    """Train until ``budget`` seconds are spent, re-planning the number of steps after each
    segment from the speed actually measured (evaluations and saves included).

    ``run_segment(total, stop_at)`` trains from the current step to ``stop_at`` with a
    schedule of ``total`` steps and returns the step reached; ``per_step`` is a first
    estimate (seconds). Returns ``{"steps", "total", "seconds", "per_step", "plans"}``.
    """
    start = clock()
    plans = []
    total = plan_total(done, 0.0, budget, per_step)
    while done < total:
        elapsed = clock() - start
        total = plan_total(done, elapsed, budget, per_step)
        plans.append(total)
        stop_at = min(total, done + max(MIN_SEGMENT_STEPS, int(segment / max(per_step, 1e-9))))
        t0 = clock()
        reached = run_segment(total, stop_at)
        if reached <= done:
            raise RuntimeError(f"training made no progress (step {done} -> {reached})")
        per_step = (clock() - t0) / (reached - done)
        done = reached
        log(f"{done}/{total} steps after {clock() - start:.0f} s of {budget:.0f} s "
            f"({per_step:.2f} s per step)")
    return {"steps": done, "total": total, "seconds": clock() - start, "per_step": per_step,
            "plans": plans}


def read_state(root: Path) -> dict:
    try:
        return json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(root: Path, **values) -> None:
    state = {**read_state(root), **values}
    (root / STATE).write_text(json.dumps(state, indent=1))


def what_to_do(state: dict, finished: bool, has_checkpoint: bool) -> str:
    """``"reuse"`` a good finished model, ``"retrain"`` one this script flagged undertrained,
    ``"resume"`` an interrupted run, or ``"train"`` from scratch."""
    if not has_checkpoint:
        return "train"
    if finished:
        return "retrain" if state.get("undertrained") else "reuse"
    return "resume"


def calibrate(tokenizer, steps: int = 3) -> float:
    """Seconds per training step of the quickstart model on this machine (random tokens),
    with the faster of all cores and one thread, which is then kept: on a machine busy with
    other jobs, one thread is often several times faster than two that wait for each other
    (measured 1.9 s vs 5-12 s per step at load average 6 on 2 cores)."""
    candidates = [torch.get_num_threads()] + ([1] if torch.get_num_threads() > 1 else [])
    timed = []
    for threads in candidates:
        torch.set_num_threads(threads)
        timed.append((_step_seconds(tokenizer, steps), threads))
    per_step, threads = min(timed)
    torch.set_num_threads(threads)
    say("calibration: " + ", ".join(f"{n} thread(s) {t * 1000:.0f} ms per step" for t, n in timed)
        + f" -> training with {threads}")
    return per_step


def _step_seconds(tokenizer, steps: int) -> float:
    """Median seconds per training step (random tokens, first step excluded)."""
    from nanogpt_course.model import GPT, GPTConfig
    from nanogpt_course.optim import build_optimizer

    config = GPTConfig.from_depth(MODEL["depth"], vocab_size=tokenizer.vocab_size,
                                  sequence_len=MODEL["seq_len"],
                                  aspect_ratio=MODEL["aspect_ratio"], head_dim=MODEL["head_dim"])
    model = GPT(config)
    opt = build_optimizer(model, matrix_lr=0.02)
    B, T = BATCH["device_batch_size"], MODEL["seq_len"]
    accum = BATCH["total_batch_size"] // (B * T)
    x = torch.randint(0, tokenizer.vocab_size, (B, T))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        for _ in range(accum):
            model(x, x).backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]  # median, first step excluded


def plot(run: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nanogpt_course.train import read_metrics

    recs = read_metrics(run)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in recs if "loss" in r]
    ax.plot(steps, [r["loss"] for r in recs if "loss" in r], lw=1, label="train loss (nats/token)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    val = [(r["step"], r["val_bpb"]) for r in recs if "val_bpb" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", color="tab:red", label="val bits per byte")
        ax2.set_ylabel("val bits per byte", color="tab:red")
    ax.set_title("quickstart: a 4-layer GPT on the standard-library corpus")
    handles = ax.get_lines() + (ax2.get_lines() if val else [])  # both curves in one legend
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def samples(run: Path) -> None:
    from nanogpt_course.engine import stream_text

    c = ck.load(run, device="cpu")
    say("samples (temperature 0.8, top-k 50):")
    for i, prompt in enumerate(PROMPTS):
        ids = [c.tokenizer.bos_id] + c.tokenizer.encode(prompt)
        text = "".join(stream_text(c.model, c.tokenizer, ids, 48, temperature=0.8, top_k=50,
                                   seed=i, stop=[c.tokenizer.bos_id]))
        print(f"  --- {prompt!r}\n  {(prompt + text)!r}", flush=True)


def prepare_corpus(root: Path):
    """The standard-library corpus, its tokenizer and its shards; prints the corpus hash.
    A tokenizer or model in ``root`` built from another corpus (or by an older version of
    this script, which left no record) is removed first."""
    from nanogpt_course import data
    from nanogpt_course.data import offline

    corpus = offline.collect_stdlib()
    manifest = offline.read_manifest(corpus)
    sha = manifest["content_sha256"]
    say(f"corpus: the standard library of Python {manifest['python']} + pydoc topics, "
        f"{manifest['files']:,} files, {manifest['bytes'] / 1e6:.1f} MB; content sha256 "
        f"{sha[:16]} (the same on every machine with this Python build)")
    stale = [root / name for name in ("model", "tokenizer") if (root / name).exists()]
    if stale and read_state(root).get("corpus_sha256") != sha:
        say(f"{root} holds a model or tokenizer built from another corpus: starting again")
        for path in stale:
            shutil.rmtree(path)
        (root / STATE).unlink(missing_ok=True)
        write_state(root, corpus_sha256=sha)
    elif not stale:
        write_state(root, corpus_sha256=sha)
    tok = build_tokenizer(root / "tokenizer", corpus)
    prepared = data.prepare(str(corpus / "corpus.jsonl"), tok, progress=False)
    return sha, tok, prepared


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.5,
                   help="training time budget in minutes, held by wall-clock time (default 3.5)")
    p.add_argument("--steps", type=int, help="train exactly this many steps (no time budget)")
    p.add_argument("--out", default=None, help="folder (default: $NANOGPT_COURSE_RUNS/quickstart)")
    p.add_argument("--fresh", action="store_true", help="delete a previous quickstart first")
    args = p.parse_args(argv)
    if args.minutes <= 0 or (args.steps is not None and args.steps < 1):
        print("error: --minutes and --steps must be positive", file=sys.stderr)
        return 2
    root = Path(args.out) if args.out else paths.runs_dir("quickstart", create=False)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    run = root / "model"
    t0 = time.perf_counter()

    from nanogpt_course.train.runtime import keep_freed_memory

    keep_freed_memory()  # ~20% faster CPU steps: no fresh pages for every activation
    say(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; output in {root}")
    corpus_sha, tok, prepared = prepare_corpus(root)
    say(f"data ready after {time.perf_counter() - t0:.0f} s")

    state = read_state(root)
    has_ckpt = ck.latest(run) is not None
    finished = has_ckpt and bool(ck.read_meta(run).get("finished"))
    action = what_to_do(state, finished, has_ckpt)
    if action == "retrain":
        say(f"the model in {run} was flagged undertrained ({state.get('steps')} steps): "
            "training it again rather than reusing it")
        shutil.rmtree(run, ignore_errors=True)
        (root / STATE).unlink(missing_ok=True)
        write_state(root, corpus_sha256=corpus_sha)
        state, action = read_state(root), "train"
    if action == "reuse":
        say(f"{run} is already trained ({state.get('steps', '?')} steps; use --fresh to retrain)")
    else:
        result = train_model(args, root, run, tok, prepared, corpus_sha, state,
                             resume=action == "resume")
        if result["undertrained"]:
            say(busy_warning(result["per_step"], args.minutes * 60,
                             steps_planned=result["steps"]) or "WARNING: undertrained")

    plot(run, root / "loss.png")
    meta = ck.read_meta(run)
    say(f"final validation: {meta.get('val_bpb', float('nan')):.3f} bits per byte; "
        f"loss curve (train and validation): {root / 'loss.png'}")
    samples(run)
    if read_state(root).get("undertrained"):
        say(f"this model is undertrained ({read_state(root).get('steps')} steps): the next "
            "make quickstart trains it again; pass ARGS=\"--minutes N\" for a longer budget")
    say(f"total {time.perf_counter() - t0:.0f} s. Chat with it (a base model continues your text):")
    if importlib.util.find_spec("nanogpt_course.chat") is not None:
        print(f"    python -m nanogpt_course.chat --checkpoint {run}", flush=True)
        print("  or in Python:", flush=True)
    else:  # the terminal/web chat arrives with the chat issue: show what works today
        print("  (the terminal chat, python -m nanogpt_course.chat, arrives with the chat issue)\n"
              "  in Python:", flush=True)
    print("    from nanogpt_course import checkpoint, engine\n"
          f"    c = checkpoint.load({str(run)!r}, device='cpu')\n"
          "    ids = [c.tokenizer.bos_id] + c.tokenizer.encode('def ')\n"
          "    print(''.join(engine.stream_text(c.model, c.tokenizer, ids, 64, temperature=0.8)))",
          flush=True)
    return 0


def train_model(args, root: Path, run: Path, tok, prepared, corpus_sha: str, state: dict, *,
                resume: bool) -> dict:
    """Train (or resume) the quickstart model within the time budget; records the outcome
    in ``quickstart.json``."""
    from nanogpt_course.train import TrainConfig, train

    budget = args.minutes * 60
    spent = float(state.get("train_seconds", 0.0)) if resume else 0.0
    done = int(ck.read_meta(run)["step"]) if resume else 0
    if args.steps:
        per_step, est_total = None, args.steps
    else:
        if resume and "per_step" in state:
            per_step = float(state["per_step"])
            torch.set_num_threads(int(state.get("threads", torch.get_num_threads())))
        else:
            per_step = calibrate(tok)
        est_total = plan_total(done, spent, budget, per_step)
        say(f"this machine: {per_step * 1000:.0f} ms per step of {BATCH['total_batch_size']:,} "
            f"tokens -> about {est_total} steps in {args.minutes:g} minutes (re-planned every "
            f"{SEGMENT_SECONDS:.0f} s from the measured speed)")
        warning = busy_warning(per_step, budget - spent, steps_planned=est_total - done)
        if warning:
            say(warning)
    # Settings a resumed run must keep fixed are set once, from the first estimate.
    kept = state if resume else {}
    warmup = int(kept.get("warmup_steps", min(40, max(1, est_total // 10))))
    eval_every = int(kept.get("eval_every", max(MIN_SEGMENT_STEPS, est_total // 8)))
    write_state(root, corpus_sha256=corpus_sha, warmup_steps=warmup, eval_every=eval_every,
                minutes=args.minutes, undertrained=False, threads=torch.get_num_threads())
    base = TrainConfig(mode="pretraining", data=str(prepared), tokenizer=str(root / "tokenizer"),
                       out=str(run), eval_every=eval_every, eval_tokens=32 * 1024,
                       sample_every=-1, log_every=max(1, est_total // 50),
                       warmup_steps=warmup, warmdown_ratio=0.5, device="cpu", seed=0,
                       **MODEL, **BATCH, **LRS)
    segments = {"resume": resume}

    def run_segment(total: int, stop_at: int) -> int:
        result = train(base.replace(max_steps=total, stop_at=stop_at,
                                    resume=segments["resume"]))
        segments["resume"] = True
        reached = int(result.step)
        write_state(root, steps=reached, total=total,
                    train_seconds=spent + (time.perf_counter() - start))
        return reached

    start = time.perf_counter()
    if args.steps:
        reached = run_segment(args.steps, args.steps)
        outcome = {"steps": reached, "per_step": (time.perf_counter() - start) / max(1, reached - done)}
    else:
        outcome = train_by_time(run_segment, budget - spent, per_step, done=done, log=say)
    undertrained = not args.steps and outcome["steps"] < MIN_USEFUL_STEPS
    write_state(root, steps=outcome["steps"], per_step=outcome["per_step"],
                undertrained=undertrained, train_seconds=spent + time.perf_counter() - start)
    say(f"trained {outcome['steps']} steps in {(time.perf_counter() - start) / 60:.1f} minutes")
    return {**outcome, "undertrained": undertrained}


if __name__ == "__main__":
    sys.exit(main())
