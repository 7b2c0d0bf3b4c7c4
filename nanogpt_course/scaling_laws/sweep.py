"""The sweep runner: train every (depth, FLOP budget) pair through the real trainer and
append one CSV row per run.

Each run is ``python -m nanogpt_course.train --depth D --target-flops C ...`` (under
``torchrun --nproc_per_node=N`` with ``nproc > 1``) in its own folder
``<runs>/d<D>-c<C>``; when it ends, its checkpoint's ``meta.json`` and ``metrics.jsonl``
give the row (:data:`COLUMNS`). The sweep is resumable: a run whose row says ``ok``,
``failed`` or ``refused`` is skipped (``retry_failed=True`` runs failed ones again); a run
that was cut off (no row) starts again from scratch. A failing run is recorded with its error
and the sweep goes on. Before launching, the runner resolves the run's plan exactly as the
trainer will (same flags, :func:`~nanogpt_course.train.build.resolve_run` on the meta device)
and refuses a run that needs more than ``max_epochs`` passes over the training split.
"""

from __future__ import annotations

import csv
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from ..paths import git_commit

COLUMNS = ("run_id", "status", "depth", "width", "n_head", "params_total", "params_scaling",
           "flops_per_token", "budget_flops", "flops", "tokens", "tokens_per_param", "steps",
           "batch_tokens", "seq_len", "vocab_size", "val_bpb", "train_loss", "core", "wall_s",
           "device", "nproc", "corpus", "corpus_hash", "epoch_tokens", "epochs", "git_commit",
           "train_args", "finished_at", "error")
TEXT_COLUMNS = {"run_id", "status", "device", "corpus", "corpus_hash", "git_commit", "train_args",
                "finished_at", "error"}
DONE = ("ok", "failed", "refused")  # statuses a resumed sweep skips


@dataclass
class SweepConfig:
    """What to sweep and how to train each run (see ``python -m nanogpt_course.scaling_laws
    sweep --help``). ``train_args`` are extra trainer flags, the same for every run."""

    depths: Sequence[int]
    budgets: Sequence[float]
    data: str  # a prepared folder (see :func:`prepare_data`)
    tokenizer: str  # "gpt2" or a tokenizer folder
    results: Path
    runs: Path
    corpus: str = ""  # the dataset's name, for the CSV
    corpus_hash: str = ""
    train_args: Sequence[str] = ()
    nproc: int = 1
    max_epochs: float = 1.0
    core: bool = False
    retry_failed: bool = False
    time_budget_s: float | None = None  # start no run expected to end after this...
    started_at: float | None = None  # ...many seconds after this time.perf_counter() value
    keep_checkpoints: bool = False
    echo: bool = True
    parallel: int = 1  # runs at once (small models on one GPU leave it mostly idle)

    def run_id(self, depth: int, budget: float) -> str:
        return f"d{depth}-c{budget:.3g}"


@dataclass
class RunOutcome:
    row: dict
    skipped: bool = False
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- the CSV
def read_results(path: str | os.PathLike) -> list[dict]:
    """Rows of a results CSV as dicts (strings; see :func:`numeric` for numbers)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row (every column of :data:`COLUMNS`, missing ones empty); write the header
    when the file is new. One ``write`` + flush per row, so an interrupted sweep leaves whole
    rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown result columns: {sorted(unknown)}")
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({c: _fmt(row.get(c)) for c in COLUMNS})
        f.flush()


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def numeric(rows: list[dict], status: str = "ok") -> list[dict]:
    """The rows with ``status`` and numbers parsed to floats/ints where they are numbers."""
    out = []
    for row in rows:
        if status is not None and row.get("status") != status:
            continue
        parsed = {}
        for key, value in row.items():
            if key in TEXT_COLUMNS or not isinstance(value, str):
                parsed[key] = value
                continue
            try:
                parsed[key] = int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                parsed[key] = value
        out.append(parsed)
    return out


# ---------------------------------------------------------------------------- environment
def device_kind() -> str:
    """``NVIDIA H100 80GB HBM3`` (the first GPU's name) or ``cpu (N cores)``."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def prepare_data(name: str, tokenizer: str, **options) -> tuple[str, str, int]:
    """Prepare ``name`` for ``tokenizer`` (cached) -> (folder, content hash, train tokens).

    The hash is the raw corpus's own (``content_sha256`` of the offline manifest) when the
    source records one, else a hash of the prepared shards' checksums.
    """
    import hashlib

    from .. import data

    folder = data.prepare(name, tokenizer, progress=False, **options)
    meta = data.preparation.read_meta(folder)
    digest = meta.get("source", {}).get("content_sha256")
    if not digest:
        h = hashlib.sha256()
        for split in sorted(meta["splits"]):
            for shard in meta["splits"][split]["shards"]:
                h.update(shard.get("sha256", "").encode())
        digest = h.hexdigest()
    return str(folder), digest, int(meta["splits"]["train"]["tokens"])


# ---------------------------------------------------------------------------- one run
def train_argv(cfg: SweepConfig, depth: int, budget: float, out: Path,
               num_steps_hint: int | None = None) -> list[str]:
    """The trainer's flags for one run (without the ``python -m`` prefix)."""
    argv = ["--mode", "pretraining", "--depth", str(depth), "--target-flops", f"{budget:g}",
            "--data", cfg.data, "--tokenizer", cfg.tokenizer, "--out", str(out),
            "--sample-every", "-1", *cfg.train_args]
    if not any(a.startswith("--eval-every") for a in cfg.train_args):
        argv += ["--eval-every", "1000000"]  # step 0 and the last step only
    if not any(a.startswith("--log-every") for a in cfg.train_args):
        argv += ["--log-every", str(max(1, (num_steps_hint or 100) // 20))]
    if cfg.core:
        argv += ["--core-every", "1000000"]  # at the last step
    return argv


def launch_command(argv: list[str], nproc: int) -> list[str]:
    """``python -m nanogpt_course.train ...``, or the same under torchrun."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m", "nanogpt_course.train", *argv]
    return [sys.executable, "-m", "nanogpt_course.train", *argv]


def subprocess_launcher(argv: list[str], nproc: int, log_path: Path, echo: bool) -> int:
    """Run the trainer as a child process; its output goes to ``log_path`` (and the console
    with ``echo``). Returns its exit code."""
    cmd = launch_command(argv, nproc)
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if echo:
                    print("    " + line, end="", flush=True)
        finally:
            code = proc.wait()
    return code


def in_process_launcher(argv: list[str], nproc: int, log_path: Path, echo: bool) -> int:
    """Run the trainer's ``main(argv)`` in this process: the same code as the command line
    without an interpreter start-up per run (notebooks, tests). One process only."""
    import contextlib
    import io

    from ..train.__main__ import main

    if nproc != 1:
        raise ValueError("the in-process launcher runs one process; use the subprocess "
                         "launcher (the default) for --nproc > 1")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(argv)
    log_path.write_text(buffer.getvalue(), encoding="utf-8")
    if echo:
        print(buffer.getvalue(), end="", flush=True)
    return code


_PLAN_LOCK = threading.Lock()  # resolve_run builds on the meta device: one thread at a time


def plan_run(cfg: SweepConfig, argv: list[str]):
    """The trainer's own resolution of these flags (tokenizer, model config, depth plan),
    on the meta device: no data read, nothing allocated."""
    from ..train.build import resolve_run
    from ..train.config import parse_args

    with _PLAN_LOCK:
        return resolve_run(parse_args(argv), world_size=cfg.nproc)


def _error_line(log_path: Path, code: int) -> str:
    try:
        lines = log_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][:500]
    tail = " | ".join(ln.strip() for ln in lines[-3:] if ln.strip())
    return f"exit code {code}: {tail}"[:500]


def _finished_row(out: Path) -> dict:
    """Numbers from a finished run folder (its last checkpoint and metrics.jsonl)."""
    from .. import checkpoint as ck
    from ..train.metrics import read_metrics

    meta = ck.read_meta(out)
    if not meta.get("finished"):
        raise RuntimeError(f"{out}: the trainer exited 0 but its last checkpoint is not final")
    plan, mc = meta["plan"], meta["model_config"]
    recs = read_metrics(out) if (out / "metrics.jsonl").is_file() else []
    losses = [r["loss"] for r in recs if isinstance(r.get("loss"), (int, float))]
    cores = [r["core"] for r in recs if isinstance(r.get("core"), (int, float))]
    tokens = int(meta["tokens_seen"])
    return {"width": mc["n_embd"], "n_head": mc["n_head"], "params_total": plan["num_params"],
            "params_scaling": plan["scaling_params"],
            "flops_per_token": float(plan["flops_per_token"]),
            "flops": tokens * float(plan["flops_per_token"]), "tokens": tokens,
            "tokens_per_param": tokens / plan["scaling_params"], "steps": int(meta["step"]),
            "batch_tokens": plan["total_batch_size"], "seq_len": mc["sequence_len"],
            "vocab_size": mc["vocab_size"], "val_bpb": meta.get("val_bpb"),
            "train_loss": losses[-1] if losses else None,
            "core": cores[-1] if cores else None}


def run_one(cfg: SweepConfig, depth: int, budget: float, *, epoch_tokens: int,
            launch: Callable = subprocess_launcher) -> dict:
    """Plan, check and train one run; returns its row (status ``ok``/``failed``/``refused``)."""
    run_id = cfg.run_id(depth, budget)
    out = cfg.runs / run_id
    if out.exists():  # a run cut off earlier: start it again from scratch
        shutil.rmtree(out)
    row = {"run_id": run_id, "depth": depth, "budget_flops": float(budget), "nproc": cfg.nproc,
           "device": device_kind(), "corpus": cfg.corpus, "corpus_hash": cfg.corpus_hash,
           "epoch_tokens": epoch_tokens, "git_commit": git_commit(),
           "train_args": shlex.join(cfg.train_args)}
    start = time.perf_counter()
    argv = train_argv(cfg, depth, budget, out)
    try:
        run = plan_run(cfg, argv)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - this run's error, not the sweep's
        row.update(status="failed", error=f"{type(err).__name__}: {err}"[:500])
        return _stamp(row, start)
    p = run.plan
    row.update(width=run.model_config.n_embd, n_head=run.model_config.n_head,
               params_total=p.num_params, params_scaling=p.scaling_params,
               flops_per_token=p.flops_per_token, steps=p.num_steps,
               batch_tokens=p.total_batch_size, seq_len=run.cfg.seq_len,
               vocab_size=run.model_config.vocab_size, tokens=p.total_tokens,
               flops=p.total_flops, tokens_per_param=p.total_tokens / p.scaling_params,
               epochs=p.total_tokens / epoch_tokens if epoch_tokens else None)
    if over_epochs(cfg, p.total_tokens, epoch_tokens):
        row.update(status="refused", error=(
            f"needs {p.total_tokens:,} tokens = {p.total_tokens / epoch_tokens:.2f} epochs of "
            f"the {epoch_tokens:,}-token training split (limit {cfg.max_epochs:g}): use a "
            "bigger corpus, a smaller budget or a deeper model"))
        return _stamp(row, start)
    argv = train_argv(cfg, depth, budget, out, num_steps_hint=p.num_steps)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train.log"
    if cfg.echo:
        print(f"[sweep] {run_id}: {p.num_steps:,} steps x {p.total_batch_size:,} tokens "
              f"({row['epochs']:.3f} epochs)" if row.get("epochs") is not None else
              f"[sweep] {run_id}: {p.num_steps:,} steps", flush=True)
    try:
        code = launch(argv, cfg.nproc, log_path, cfg.echo)
    except Exception as err:  # noqa: BLE001 - a launcher crash fails this run only
        code, message = -1, f"{type(err).__name__}: {err}"
    else:
        message = None
    if code == 0:
        try:
            row.update(_finished_row(out), status="ok")
        except Exception as err:  # noqa: BLE001
            row.update(status="failed", error=f"{type(err).__name__}: {err}"[:500])
    else:
        row.update(status="failed", error=message or _error_line(log_path, code))
    if not cfg.keep_checkpoints:
        for step_dir in out.glob("step_*"):
            shutil.rmtree(step_dir, ignore_errors=True)
    if row.get("tokens") and epoch_tokens:
        row["epochs"] = row["tokens"] / epoch_tokens
    return _stamp(row, start)


def _stamp(row: dict, start: float) -> dict:
    row["wall_s"] = time.perf_counter() - start
    row["finished_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return row


# ---------------------------------------------------------------------------- the sweep
def pending(cfg: SweepConfig) -> list[tuple[int, float]]:
    """(depth, budget) pairs that have no finished row yet, budgets first then depths."""
    done = {}
    for row in read_results(cfg.results):
        done[row["run_id"]] = row["status"]
    todo = []
    for budget in cfg.budgets:
        for depth in cfg.depths:
            status = done.get(cfg.run_id(depth, budget))
            if status in DONE and not (cfg.retry_failed and status == "failed"):
                continue
            todo.append((depth, budget))
    return todo


def over_epochs(cfg: SweepConfig, tokens: int, epoch_tokens: int) -> bool:
    """The refusal rule: a run needing more than ``cfg.max_epochs`` passes over the data."""
    return bool(epoch_tokens) and tokens > cfg.max_epochs * epoch_tokens


def refused(cfg: SweepConfig, depth: int, budget: float, epoch_tokens: int) -> bool:
    """Whether :func:`run_one` will refuse this run (planned as it would plan it)."""
    if not epoch_tokens:
        return False
    try:
        plan = plan_run(cfg, train_argv(cfg, depth, budget, cfg.runs / cfg.run_id(depth, budget))).plan
    except (Exception, SystemExit):  # noqa: BLE001 - run_one records the error itself
        return False
    return over_epochs(cfg, plan.total_tokens, epoch_tokens)


def run_sweep(cfg: SweepConfig, *, epoch_tokens: int,
              launch: Callable = subprocess_launcher) -> list[dict]:
    """Run every pending pair, one after another in this thread (by default) or
    ``cfg.parallel`` at a time, appending a row as each ends; returns the rows written by
    this call. With ``time_budget_s``, starts no run that would end past it (predicted from
    the slowest FLOP rate this call measured at that depth, or at any depth if none yet: a
    depth's FLOP rate hardly depends on its budget, but a tiny model runs far fewer FLOPs
    per second than a large one). Parallel runs share the device, so their
    ``wall_s`` is not a speed measurement; the validation numbers are unaffected."""
    if cfg.parallel > 1 and launch is not subprocess_launcher:
        raise ValueError("parallel runs need the subprocess launcher (one process per run)")
    queue = pending(cfg)
    total = len(cfg.depths) * len(cfg.budgets)
    say = (lambda m: print(f"[sweep] {m}", flush=True)) if cfg.echo else (lambda m: None)
    say(f"{total - len(queue)} of {total} runs already in {cfg.results}; {len(queue)} to go"
        + (f"; {cfg.parallel} at a time" if cfg.parallel > 1 else ""))
    t0 = cfg.started_at if cfg.started_at is not None else time.perf_counter()
    slowest: dict[int, float] = {}  # depth -> slowest FLOP rate of this call's finished runs
    written = []

    def fits(depth: int, budget: float) -> bool:
        elapsed = time.perf_counter() - t0
        if cfg.time_budget_s is None or not slowest or refused(cfg, depth, budget, epoch_tokens):
            return True  # a refusal is recorded at once: it needs no time
        predicted = budget / slowest.get(depth, min(slowest.values()))
        if elapsed + predicted <= cfg.time_budget_s:
            return True
        say(f"stopping: d{depth} at {budget:.3g} FLOPs would need ~{predicted:.0f} s and "
            f"{cfg.time_budget_s - elapsed:.0f} s are left; run the same command again to "
            "continue")
        return False

    def record(row: dict) -> None:
        append_row(cfg.results, row)
        written.append(row)
        if row["status"] == "ok" and row.get("wall_s"):
            depth, rate = int(row["depth"]), row["flops"] / row["wall_s"]
            slowest[depth] = min(rate, slowest.get(depth, rate))
        detail = (f"val {row['val_bpb']:.4f} bpb, {row['wall_s']:.0f} s"
                  if row["status"] == "ok" and row.get("val_bpb") is not None
                  else row.get("error", ""))
        say(f"{row['run_id']}: {row['status']} {detail}")

    if cfg.parallel <= 1:  # in this thread: an in-process trainer keeps its signal handling
        for depth, budget in queue:
            if not fits(depth, budget):
                break
            record(run_one(cfg, depth, budget, epoch_tokens=epoch_tokens, launch=launch))
        return written
    _run_parallel(cfg, queue, fits, record, epoch_tokens)
    return written


def _run_parallel(cfg: SweepConfig, queue: list, fits: Callable, record: Callable,
                  epoch_tokens: int) -> None:
    """``cfg.parallel`` trainer processes at a time, each watched by a thread; rows are
    recorded by this thread as runs end. Trainer output goes to the run logs only (lines of
    parallel runs would mix on the console)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    quiet = replace(cfg, echo=False)
    with ThreadPoolExecutor(max_workers=cfg.parallel) as pool:
        running: set = set()
        while queue or running:
            while queue and len(running) < cfg.parallel:
                if not fits(*queue[0]):
                    queue.clear()
                    break
                depth, budget = queue.pop(0)
                if cfg.echo:
                    print(f"[sweep] started {cfg.run_id(depth, budget)}", flush=True)
                running.add(pool.submit(run_one, quiet, depth, budget,
                                        epoch_tokens=epoch_tokens))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                record(future.result())


def dry_run_table(cfg: SweepConfig, epoch_tokens: int) -> str:
    """Each run's plan as the trainer will resolve it, as a Markdown table (nothing runs)."""
    lines = ["| run | params (scaling) | FLOPs/token | batch | steps | tokens | tokens/param | "
             "epochs | note |", "|---|---|---|---|---|---|---|---|---|"]
    for budget in cfg.budgets:
        for depth in cfg.depths:
            argv = train_argv(cfg, depth, budget, cfg.runs / cfg.run_id(depth, budget))
            try:
                p = plan_run(cfg, argv).plan
            except Exception as err:  # noqa: BLE001
                lines.append(f"| {cfg.run_id(depth, budget)} | | | | | | | | {err} |")
                continue
            epochs = p.total_tokens / epoch_tokens if epoch_tokens else float("nan")
            note = "refused (> max epochs)" if over_epochs(cfg, p.total_tokens, epoch_tokens) else ""
            lines.append(f"| {cfg.run_id(depth, budget)} | {p.scaling_params:,} | "
                         f"{p.flops_per_token:.3g} | {p.total_batch_size:,} | {p.num_steps:,} | "
                         f"{p.total_tokens:,} | {p.total_tokens / p.scaling_params:.1f} | "
                         f"{epochs:.3f} | {note} |")
    return "\n".join(lines)
