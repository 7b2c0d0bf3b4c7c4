"""Quality per FLOP, side by side with nanochat: validation bits per byte at equal FLOPs.

    python bench/bench_quality.py --nanochat .nanochat --out $OUT            # d6, 2.49e16
    python bench/bench_quality.py --nanochat .nanochat --dry-run            # CPU, a minute
    python bench/bench_quality.py --packing-stats --seq-len 2048            # CPU, packing only

Protocol (issue #12):

- **data**: the ``offline`` corpus of this machine (its Python's and packages' text),
  prepared once with the GPT-2 tokenizer; train on its train files, score its held-out
  files. Its size, content hash and the epochs used are recorded.
- **project**: our recipe through our own trainer (``nanogpt_course.train``) with its
  defaults: ``--depth D --target-flops F --seq-len 1024`` (packing, depth rules, groups).
- **nanochat**: nanochat's model and MuonAdamW at commit 92d63d4 imported from ``--nanochat``
  (``bench/nanochat_ref.py``: window pattern "L", SDPA attention), base_train.py's rules and
  schedules, trained on random windows of the same training split (the stream of the 0.768
  baseline in the issue; ``--nanochat-stream packed`` feeds it our packed rows instead).
- **FLOPs**: one closed form for both (:func:`nanogpt_course.train.scaling.formula_stats`:
  6 × (matrices + lm_head) + attention); steps = round(F / (FLOPs per token × batch)).
- **evaluation**: one evaluator (:func:`evaluate`) for both models, on one fixed token
  set: every token of the held-out files (up to ``--eval-rows`` rows), in the loader's
  validation rows (documents whole, long ones continued).

Jobs run as subprocesses, several at once on one GPU (``--parallel``), in priority order;
none starts after ``--start-by`` seconds and all are stopped at ``--deadline``; each result
is written to ``OUT/jobs/<name>.json`` as it finishes and ``OUT/summary.json`` is rewritten.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
import nanochat_ref  # noqa: E402  (bench/ is not a package)
import perf_summary  # noqa: E402

from nanogpt_course import data, paths  # noqa: E402
from nanogpt_course.train import scaling  # noqa: E402

DEFAULT_FLOPS = {6: 2.49e16, 4: 1e16}


# ---------------------------------------------------------------------------- data
def prepare_corpus(max_bytes: int | None, workers: int | None = None) -> tuple[Path, dict]:
    """The offline corpus, GPT-2 tokens; returns (prepared folder, a description)."""
    folder = data.prepare("offline", "gpt2", max_bytes=max_bytes, workers=workers)
    meta = data.read_meta(folder)
    src = meta["source"]
    info = {"name": "offline", "content_sha256": src.get("content_sha256"),
            "texts_sha256": src.get("texts_sha256"),  # the same on every machine
            "files": len(src.get("files", [])) if isinstance(src.get("files"), list)
            else src.get("files"), "bytes": src.get("bytes"),
            "train_tokens": meta["splits"]["train"]["tokens"],
            "val_tokens": meta["splits"]["val"]["tokens"],
            "train_docs": meta["splits"]["train"]["docs"],
            "val_docs": meta["splits"]["val"]["docs"], "vocab_size": meta["vocab_size"]}
    return folder, info


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(forward, folder, seq_len: int, device, *, rows: int | None = None,
             batch_size: int = 8) -> dict:
    """Bits per byte of ``forward(x) -> logits (B, T, V) fp32`` on the validation rows.

    The rows: the loader's validation stream (seed 0, one pass, padded at the end), the
    first ``rows`` of it (None: all). One function for both recipes."""
    from nanogpt_course.tokenizer import Tokenizer

    token_bytes = Tokenizer.gpt2().token_bytes.to(device)
    loader = data.make_loader(folder, "val", batch_size=batch_size, seq_len=seq_len, seed=0,
                              epochs=1, max_rows=rows or 10**12, device=device, verify=False)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for x, y in loader:
        logits = forward(x).float()
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1,
                                 reduction="none").view(y.shape)
        counted = torch.where(y >= 0, token_bytes[y.clamp(min=0)], 0)
        nats += torch.where(counted > 0, losses.double(), 0.0).sum()
        nbytes += counted.double().sum()
        tokens += int((y >= 0).sum())
    bpb = nats.item() / (np.log(2) * nbytes.item())
    return {"bpb": bpb, "eval_tokens": tokens, "eval_bytes": int(nbytes.item())}


def closed_form(depth: int, vocab_size: int, seq_len: int, flops: float, batch: int) -> dict:
    """Steps and tokens from one FLOP count for both recipes."""
    stats = scaling.formula_stats(depth, vocab_size=vocab_size, sequence_len=seq_len)
    steps = max(1, round(flops / (stats.flops_per_token * batch)))
    return {"flops_per_token": stats.flops_per_token, "steps": steps, "tokens": steps * batch,
            "flops": steps * batch * stats.flops_per_token,
            "scaling_params": stats.scaling_params}


# ---------------------------------------------------------------------------- one job
def _use_nanochat_init() -> None:
    """Screening only: our init, then nanochat 92d63d4's differences (token embedding std
    0.8, c_fc at 0.4x the bound, value-embedding gates uniform(0, 0.02), residual lambdas
    1.15 -> 1.05 and x0 lambdas 0.20 -> 0.05 across the layers)."""
    from nanogpt_course.model import GPT

    ours = GPT.init_weights

    @torch.no_grad()
    def init_weights(self) -> None:
        ours(self)
        bound = (3.0 / self.config.n_embd) ** 0.5
        torch.nn.init.normal_(self.wte.weight, mean=0.0, std=0.8)
        for block in self.blocks:
            torch.nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * bound, 0.4 * bound)
            if block.attn.ve_gate is not None:
                torch.nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)
        if self.resid_lambdas is not None:
            last = max(len(self.blocks) - 1, 1)
            for i in range(len(self.blocks)):
                self.resid_lambdas[i] = 1.15 - 0.10 * i / last
                self.x0_lambdas[i] = 0.20 - 0.15 * i / last

    GPT.init_weights = init_weights


def run_project(job: dict, folder: Path, out: Path) -> dict:
    """Our recipe through our trainer (in this process); optional overrides from the job:
    ``weight_decay``, ``roles`` ("uniform": the group table before the d6 A/B,
    ``UNIFORM_ROLES``; the default table is nanochat's), ``tokens_per_param``,
    ``orthogonalizer``, ``cautious_weight_decay``, ``packing``, ``window_pattern`` and
    ``short_window`` (the trainer's flags),
    ``muon`` (keyword arguments for ``optim.build_optimizer`` that the trainer has no flag
    for: a flag the trainer passes would override them), ``init``."""
    from nanogpt_course import checkpoint
    from nanogpt_course.optim import build as optim_build
    from nanogpt_course.train import TrainConfig, read_metrics, train

    if job.get("roles") == "uniform":
        optim_build.ROLES = optim_build.UNIFORM_ROLES
    if job.get("init") == "nanochat":
        _use_nanochat_init()
    if job.get("muon"):  # Muon options the trainer has no flag for (screening only)
        from nanogpt_course import optim
        optim.build_optimizer = functools.partial(optim.build_optimizer, **job["muon"])
    meta = data.read_meta(folder)
    cfg = dict(mode="pretraining", data=str(folder), depth=job["depth"],
               seq_len=job["seq_len"], device_batch_size=job["device_batch_size"],
               seed=job["seed"], compile=job.get("compile", True), eval_every=0,
               sample_every=0, log_every=50, out=str(out / "run"), tokenizer="gpt2",
               weight_decay=job.get("weight_decay"), fp8=job.get("fp8", False),
               window_pattern=job.get("window_pattern", "L"),
               short_window=job.get("short_window"),
               embedding_dtype=job.get("embedding_dtype", "fp32"),
               orthogonalizer=job.get("orthogonalizer", "newton_schulz"),
               cautious_weight_decay=job.get("cautious_weight_decay", True),
               packing=job.get("packing", "bos"),
               stochastic_rounding=job.get("stochastic_rounding", False))
    if job.get("tokens_per_param"):
        cfg["tokens_per_param"] = job["tokens_per_param"]
    else:
        cfg["target_flops"] = job["flops"]
        count = closed_form(job["depth"], meta["vocab_size"], job["seq_len"], job["flops"],
                            job["batch"])
        cfg["max_steps"] = count["steps"]  # the one closed-form count (equal to ours ±0)
        cfg["total_batch_size"] = job["batch"]
    if job.get("max_steps"):
        cfg["max_steps"] = job["max_steps"]
    if job.get("resume") and checkpoint.latest(out / "run") is not None:
        cfg["resume"] = True  # --resume: continue a stopped job; a finished one is only scored
    t0 = time.perf_counter()
    result = train(TrainConfig(**cfg), echo=job.get("echo", False))
    seconds = time.perf_counter() - t0
    if result.final_loss is None:  # resumed a finished run: its last logged loss
        losses = [r["loss"] for r in read_metrics(out / "run") if "loss" in r]
        result.final_loss = losses[-1] if losses else None
    ckpt = checkpoint.load(result.checkpoint, device=job["device"], tokenizer=False)
    plan = json.loads((Path(result.checkpoint) / "meta.json").read_text())
    model = ckpt.model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if job["device"] == "cuda" \
        else torch.autocast("cpu", enabled=False)

    def forward(x):
        with autocast:
            return model(x)

    ev = evaluate(forward, folder, job["seq_len"], job["device"], rows=job.get("eval_rows"))
    return {**ev, "train_seconds": round(seconds, 1), "final_loss": result.final_loss,
            "steps": result.step, "plan": plan.get("plan") or plan.get("train_plan"),
            "resumed": bool(cfg.get("resume"))}  # then train_seconds is not the training time


def run_nanochat(job: dict, folder: Path, out: Path) -> dict:
    """nanochat's recipe: its model, optimizer, rules and schedules; our data stream."""
    ref = nanochat_ref.load(job["nanochat"])
    meta = data.read_meta(folder)
    vocab, T, device = meta["vocab_size"], job["seq_len"], job["device"]
    model, rules, optimizer = nanochat_ref.build_recipe(
        ref, job["depth"], vocab_size=vocab, sequence_len=T, device=device, seed=job["seed"],
        total_batch_size=job.get("nanochat_batch"))
    batch = rules["total_batch_size"]
    count = closed_form(job["depth"], vocab, T, job["flops"], batch)
    steps = job.get("max_steps") or count["steps"]
    step_model = torch.compile(model, dynamic=False) if job.get("compile", True) else model
    micro = job["device_batch_size"]
    accum = batch // (micro * T)
    assert accum * micro * T == batch, (batch, micro, T)
    packing = "bos" if job.get("stream") == "packed" else "windows"
    loader = data.make_loader(folder, "train", batch_size=micro, seq_len=T, seed=job["seed"],
                              packing=packing, device=device, verify=False)
    t0 = time.perf_counter()
    loss = None
    for step in range(steps):
        for _ in range(accum):
            x, y = next(loader)
            loss = step_model(x, y)
            (loss / accum).backward()
        nanochat_ref.apply_schedule(optimizer, step, steps, rules["weight_decay"])
        optimizer.step()
        model.zero_grad(set_to_none=True)
        if step % 50 == 0 and job.get("echo"):
            print(f"nanochat step {step}/{steps} loss {loss.item():.4f}", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    model.eval()
    ev = evaluate(lambda x: model(x), folder, T, device, rows=job.get("eval_rows"))
    return {**ev, "train_seconds": round(seconds, 1), "final_loss": float(loss.item()),
            "steps": steps, "rules": {k: v for k, v in rules.items()},
            "loader_epochs": loader.stats()["epoch"]}


def run_job(job: dict) -> dict:
    folder, out = Path(job["folder"]), Path(job["work"]) / job["name"]
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(job["seed"])
    start = time.time()
    fn = run_nanochat if job["recipe"] == "nanochat" else run_project
    result = fn(job, folder, out)
    result.update(name=job["name"], recipe=job["recipe"], job=job, commit=paths.git_commit(),
                  wall_seconds=round(time.time() - start, 1))
    path = Path(job["out"]) / "jobs" / f"{job['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    return result


# ---------------------------------------------------------------------------- jobs
# issue #12 item 4's refinements (job keys): each is screened at d4 (``screen_d4_TAG``) and
# confirmed at the target size with two seeds (``project_d6_TAG_s0/_s1``)
REFINEMENTS = {
    "polar": {"orthogonalizer": "polar_express"},
    # cautious decay is the trainer's default since the d6 A/B: "cautious" names the
    # default (as the results recorded before it were named), "nocautious" the old rule
    "cautious": {"cautious_weight_decay": True},
    "nocautious": {"cautious_weight_decay": False},
    "shapewd": {"muon": {"shape_scaled_weight_decay": True}},
    "nanochat_init": {"init": "nanochat"},
    "muoneq": {"muon": {"row_equilibrate": True}},
    "muonplus": {"muon": {"renormalize": True}},
    "normuon": {"muon": {"variance_beta2": 0.9}},
    # not a Muon change: the weight-decay rule with the d4 sweep's horizon trend (D^-0.7)
    "wdhorizon": {"weight_decay_horizon": 0.7},
    # everything nanochat's Muon does that ours does not by default
    "nanochat_muon": {"orthogonalizer": "polar_express", "cautious_weight_decay": True,
                      "muon": {"shape_scaled_weight_decay": True,
                               "row_equilibrate": True, "renormalize": True,
                               "variance_beta2": 0.9}},
}


HORIZON_TPP = 6  # tokens per parameter at which the d4 sweep found the rule's λ best


def resolve_horizon(job: dict, args) -> dict:
    """Turn a job's ``weight_decay_horizon`` h into ``weight_decay`` = the rule's λ ×
    (HORIZON_TPP / tokens per parameter)^h (d4: ``args.rule_wd``, the job's horizon; the
    d6 side by side: ``args.rule_wd_d6`` at ``args.tpp_d6``)."""
    h = job.pop("weight_decay_horizon", None)
    if h is None:
        return job
    if job.get("tokens_per_param"):
        rule, tpp = args.rule_wd, job["tokens_per_param"]
    else:
        rule, tpp = args.rule_wd_d6, args.tpp_d6
    return {**job, "weight_decay": round(rule * (HORIZON_TPP / tpp) ** h, 4)}


def combined(tags: list[str]) -> dict:
    """The job keys of several REFINEMENTS at once (``polar+normuon``): every tag's keys,
    dict values (the ``muon`` keywords) merged."""
    extra: dict = {}
    for tag in tags:
        for key, value in REFINEMENTS[tag].items():
            extra[key] = {**extra.get(key, {}), **value} if isinstance(value, dict) else value
    return extra


def combination_job(name: str, by_name: dict, args) -> dict | None:
    """A screen or d6 confirmation of several refinements, named with ``+``
    (``screen_d4_polar+normuon``, ``project_d6_polar+normuon_s0``): the first tag's job
    with all the tags' settings. None when ``name`` is not such a combination."""
    match = re.fullmatch(r"(screen_d4|project_d\d+)_([\w+]+?)(_s\d+)?", name)
    if not match or "+" not in match[2]:
        return None
    tags = match[2].split("+")
    base = by_name.get(f"{match[1]}_{tags[0]}{match[3] or ''}")
    if base is None or any(t not in REFINEMENTS for t in tags):
        return None
    refinement_keys = {key for ref in REFINEMENTS.values() for key in ref}
    job = {k: v for k, v in base.items() if k not in refinement_keys}
    return resolve_horizon({**job, **combined(tags), "name": name}, args)


def default_jobs(args, batch_d6: int) -> list[dict]:
    """The issue's plan in priority order: the d6 side by side (seed 0); the d4 weight
    decay sweep at 2 and 6 tokens per parameter around the rule's λ (the rule's own value
    at 6 doubles as the A of the group A/B); the group A/B; then seed 1 of the d6 pair."""
    common = dict(seq_len=args.seq_len, device_batch_size=args.device_batch_size)
    d6 = dict(common, depth=args.depth, flops=args.flops, batch=batch_d6)
    pairs = []  # the side-by-side rows of the summary
    for seed in range(args.seeds):
        pair = dict(d6, seed=seed, side_by_side=True)
        pairs.append(dict(pair, name=f"project_d{args.depth}_s{seed}", recipe="project"))
        pairs.append(dict(pair, name=f"nanochat_d{args.depth}_s{seed}", recipe="nanochat"))
    # variants of the d6 project run (seed 0; selected with --only): issue #19's FP8 and
    # windows, and issue #12's group table A/B at the target size
    d6 = dict(d6, seed=0, recipe="project")
    variants = [dict(d6, name=f"project_d{args.depth}_fp8_s0", fp8=True),
                dict(d6, name=f"project_d{args.depth}_SSSL_s0", window_pattern="SSSL"),
                # a window of a quarter of the context (the one FlexAttention can make pay)
                dict(d6, name=f"project_d{args.depth}_SSSLq_s0", window_pattern="SSSL",
                     short_window=args.seq_len // 4),
                # issue #12's group A/B: the table before nanochat's became the default
                dict(d6, name=f"project_d{args.depth}_groups_uniform_s0", roles="uniform"),
                dict(d6, name=f"project_d{args.depth}_groups_uniform_s1", roles="uniform",
                     seed=1),
                # issue #18: the residual stream in fp32 under autocast (the old default)
                dict(d6, name=f"project_d{args.depth}_fp32res_s0",
                     env={"NANOGPT_COURSE_RESIDUAL": "fp32"}),
                # issue #18: the readable loss where the GPU's default fuses it (fused_loss.py)
                dict(d6, name=f"project_d{args.depth}_standardloss_s0",
                     env={"NANOGPT_COURSE_LOSS": "standard"}),
                # issue #18: token and value embeddings stored in bf16 (nanochat's storage)
                dict(d6, name=f"project_d{args.depth}_bf16emb_s0", embedding_dtype="bf16"),
                # the same with the updates rounded at random (unbiased) instead of to nearest
                dict(d6, name=f"project_d{args.depth}_bf16emb_sr_s0", embedding_dtype="bf16",
                     stochastic_rounding=True)]
    # issue #12: which part of the difference is the data stream? each recipe fed the
    # other's rows (ours: random windows; nanochat's: our packed rows), same seeds
    for seed in range(2):
        variants += [dict(d6, name=f"project_d{args.depth}_windows_s{seed}", seed=seed,
                          packing="windows"),
                     dict(d6, name=f"nanochat_d{args.depth}_packed_s{seed}", seed=seed,
                          recipe="nanochat", stream="packed")]
    # issue #12: the d4 screens' confirmations at the target size, two seeds each (more
    # with --seeds)
    for tag, extra in REFINEMENTS.items():
        variants += [dict(d6, name=f"project_d{args.depth}_{tag}_s{seed}", seed=seed, **extra)
                     for seed in range(max(2, args.seeds))]
    if not args.sweep:
        return pairs + variants

    def d4(tpp, mult=None, **kw):
        wd = None if mult is None else round(float(args.rule_wd) * mult, 4)
        name = kw.pop("name", f"wd_d4_tpp{tpp}_x{mult}")
        return dict(common, depth=4, tokens_per_param=tpp, seed=0, recipe="project",
                    weight_decay=wd, flops=None, batch=None, name=name, **kw)

    # x6 at 2 tokens per parameter is the old rule's λ (6.48): the direct A/B of the rules
    sweep = [d4(2, 1.0), d4(2, 6.0), d4(2, 3.0), d4(6, 1.0),
             d4(6, name="groups_uniform_d4_tpp6", roles="uniform"),
             d4(6, 0.5), d4(2, 0.5), d4(6, 2.0), d4(6, 3.0), d4(6, 0.25), d4(2, 0.25)]
    # issue #12 item 4's refinements, screened at d4 against wd_d4_tpp6_x1.0 (same λ)
    screens = [d4(6, 1.0, name=f"screen_d4_{tag}", **extra) for tag, extra in REFINEMENTS.items()]
    jobs = pairs[:2] + sweep + screens + pairs[2:] + variants
    return [resolve_horizon(job, args) for job in jobs]


def launch(job: dict, log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"{job['name']}.log", "w")
    # several jobs share one GPU: expandable segments return freed blocks instead of keeping
    # them reserved (five d4 jobs at micro-batch 32 ran out with ~6 GiB reserved but unused)
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **os.environ,
           "PYTHONUNBUFFERED": "1", **job.get("env", {})}
    if job.get("no_dynamo"):  # CPU dry run: nanochat's compiled optimizer steps run eagerly
        env["TORCHDYNAMO_DISABLE"] = "1"
    return subprocess.Popen([sys.executable, __file__, "--job", json.dumps(job)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


OOM_EXIT = 3  # a job's exit code when the GPU ran out of memory (other jobs share it)


def retry_smaller(job: dict) -> dict | None:
    """``job`` with half the micro-batch (gradient accumulation doubles: the same total
    batch and result), or None when it is already 1."""
    if job["device_batch_size"] <= 1:
        return None
    return dict(job, device_batch_size=job["device_batch_size"] // 2)


def run_queue(jobs: list[dict], out: Path, *, parallel: int, start_by: float,
              deadline: float, summary, t0: float) -> None:
    """Run ``jobs`` (priority order) with at most ``parallel`` at once; start none after
    ``start_by`` seconds since ``t0`` (the bench's start), stop (kill) what still runs at
    ``deadline``. A job that runs out of memory beside the others goes back to the front
    of the queue with half its micro-batch."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running = list(jobs), {}
    while pending or running:
        elapsed = time.time() - t0
        while pending and len(running) < parallel and elapsed < start_by:
            job = pending.pop(0)
            running[job["name"]] = (launch(job, logs), time.time(), job)
            print(f"[{elapsed:5.0f}s] started {job['name']}", flush=True)
        if elapsed >= start_by and pending:
            for job in pending:
                print(f"[{elapsed:5.0f}s] not started (time): {job['name']}", flush=True)
            pending = []
        for name, (proc, started, _) in list(running.items()):
            code = proc.poll()
            if code is None and elapsed > deadline:
                proc.kill()  # a process this bench started, by its own handle
                proc.wait()
                code = "killed"
            if code is not None:
                job = running.pop(name)[2]
                print(f"[{elapsed:5.0f}s] {name}: exit {code} after "
                      f"{time.time() - started:.0f}s", flush=True)
                smaller = retry_smaller(job) if code == OOM_EXIT else None
                if smaller is not None:
                    print(f"[{elapsed:5.0f}s] {name}: out of memory, queued again at "
                          f"micro-batch {smaller['device_batch_size']}", flush=True)
                    pending.insert(0, smaller)
                    continue
                if code != 0:
                    tail = (logs / f"{name}.log").read_text()[-1500:]
                    print(tail, flush=True)
                summary()
        time.sleep(2)


SCREEN_BASE = "wd_d4_tpp6_x1.0"  # every d4 screen changes one thing against this job


def ab_table(bpb: dict[str, float]) -> list[dict]:
    """Each screen and d6 variant against its A, for the jobs present in ``bpb``
    (name -> bits per byte): ``screen_d4_X`` against :data:`SCREEN_BASE`,
    ``project_dD_X_sK`` against ``project_dD_sK`` (the same seed; ``nanochat_dD_X_sK``
    likewise). ``delta`` < 0: better."""
    rows = []
    for name, value in sorted(bpb.items()):
        base = None
        if name.startswith("screen_d4_"):
            base = SCREEN_BASE
        elif (match := re.fullmatch(r"((?:project|nanochat)_d\d+)_.+(_s\d+)", name)):
            base = match[1] + match[2]
        if base in bpb:
            rows.append({"job": name, "bpb": round(value, 5), "base": base,
                         "base_bpb": round(bpb[base], 5), "delta": round(value - bpb[base], 5)})
    return rows


def summarize(out: Path, corpus: dict, device: str, args) -> dict:
    """Collect ``OUT/jobs/*.json`` into ``OUT/summary.json`` (rows in the issue's format)."""
    results = [json.loads(p.read_text()) for p in sorted((out / "jobs").glob("*.json"))]
    commit = perf_summary.git_commit()
    rows = []
    d6 = [r for r in results if r["job"].get("side_by_side")]
    if d6:
        by = lambda rec: sorted((r for r in d6 if r["recipe"] == rec), key=lambda r: r["job"]["seed"])
        proj, nano = by("project"), by("nanochat")
        first = (proj or nano)[0]
        batch = first["job"].get("batch") or first.get("rules", {}).get("total_batch_size")
        tokens = first["steps"] * batch
        rows.append({"corpus": f"offline ({device} machine's packages, content sha256 "
                               f"{str(corpus.get('content_sha256'))[:12]})",
                     "depth": args.depth, "flops": args.flops, "tokens": tokens,
                     "project_bpb": [round(r["bpb"], 5) for r in proj],
                     "nanochat_bpb": [round(r["bpb"], 5) for r in nano],
                     "device": device, "date": date.today().isoformat(), "commit": commit,
                     "seq_len": args.seq_len, "eval_tokens": first.get("eval_tokens"),
                     "epochs": round(tokens / max(1, corpus.get("train_tokens", 1)), 3)})
    summary = {"corpus": corpus, "device": device, "rows": rows,
               "jobs": {r["name"]: {k: r.get(k) for k in ("recipe", "bpb", "final_loss", "steps",
                                                           "train_seconds", "eval_tokens")}
                        | {k: r["job"].get(k) for k in ("depth", "flops", "tokens_per_param",
                                                          "weight_decay", "roles", "seed",
                                                          "fp8", "window_pattern", "env",
                                                          "short_window", "embedding_dtype",
                                                          "muon", "init",
                                                          "orthogonalizer", "packing",
                                                          "stream", "stochastic_rounding")}
                        for r in results}}
    summary["ab"] = ab_table({r["name"]: r["bpb"] for r in results if r.get("bpb") is not None})
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if args.report:  # two files for a place that takes few (the GPU machine's $OUT)
        report = Path(args.report)
        report.mkdir(parents=True, exist_ok=True)
        full = dict(summary, results=results)
        (report / "quality_report.json").write_text(json.dumps(full, indent=1, default=str))
        tails = [f"===== {p.name}\n{p.read_text()[-2500:]}"
                 for p in sorted((out / "logs").glob("*.log"))]
        (report / "quality_logs.txt").write_text("\n".join(tails))
    return summary


# ---------------------------------------------------------------------------- packing stats
def packing_stats(folder: Path, row_len: int, *, context: int = 1024, rows: int = 4000,
                  seed: int = 0) -> dict:
    """Tokens cropped, padded and the share with >= ``context`` tokens of same-document
    context, for the packers over the training split's real document lengths."""
    from nanogpt_course.data.packing import BestFitPacker, WindowSampler

    split = data.Split(folder, "train", verify=False)
    lengths = split.doc_len
    out = {"docs": int(len(lengths)), "median_doc_tokens": float(np.median(lengths)),
           "tokens": int(lengths.sum())}
    # the new packer
    packer = BestFitPacker(lengths, row_len, seed=seed)
    step_docs, step_top = [], []  # batch diversity: per group of 256 rows (one d6 step)
    for start in range(0, rows, 256):
        tokens = {}
        for _ in range(min(256, rows - start)):
            for doc, a, b in packer.plan():
                tokens[doc] = tokens.get(doc, 0) + b - a
        step_docs.append(len(tokens))
        step_top.append(max(tokens.values()) / sum(tokens.values()))
    out["pieces"] = {"cropped": 0.0, "padded": packer.padded / (packer.rows * row_len),
                     "long_context": packer.long_context / packer.tokens,
                     "docs_per_256_rows_median": float(np.median(step_docs)),
                     "docs_per_256_rows_min": int(min(step_docs)),
                     "largest_doc_share_of_256_rows_max": float(max(step_top))}
    # best fit over whole documents with cropping (nanochat's loader), streaming buffer
    out["bestfit_crop"] = _bestfit_crop(lengths, row_len, context, rows, seed)
    # random windows over the concatenated documents
    starts = np.concatenate([[0], np.cumsum(lengths)])
    sampler = WindowSampler([int(lengths.sum())], row_len, seed=seed)
    long = 0
    for _ in range(rows):
        _, start = sampler.plan()
        pos = np.arange(start, start + row_len)
        doc_start = starts[np.searchsorted(starts, pos, side="right") - 1]
        ctx = np.minimum(pos - doc_start, pos - start)
        long += int((ctx >= context).sum())
    out["windows"] = {"cropped": 0.0, "padded": 0.0, "long_context": long / (rows * row_len)}
    return out


def _bestfit_crop(lengths, row_len, context, rows, seed, buffer_size=1000) -> dict:
    from bisect import insort

    from nanogpt_course.data.packing import choose

    order = np.random.default_rng([seed, 0]).permutation(len(lengths))
    keys, cursor, cropped, placed, long = [], 0, 0, 0, 0
    for _ in range(rows):
        remaining = row_len
        while remaining > 0:
            while len(keys) < buffer_size and cursor < len(order):
                insort(keys, (int(lengths[order[cursor]]), int(order[cursor])))
                cursor += 1
            if not keys:
                break
            i = choose(keys, remaining)
            i = 0 if i is None else i
            length, _ = keys.pop(i)
            take = min(length, remaining)
            cropped += length - take
            placed += take
            long += max(0, take - context)
            remaining -= take
    return {"cropped": cropped / (cropped + placed), "padded": 0.0, "long_context": long / placed}


def plot_sweep(report: Path) -> Path:
    """``REPORT/wd_sweep.png``: validation bits per byte against λ / (the rule's λ), one
    line per horizon, from the ``wd_d4_tpp*`` jobs in ``REPORT/jobs``."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_tpp: dict[float, list[tuple[float, float]]] = {}
    for f in sorted((report / "jobs").glob("wd_d4_tpp*_x*.json")):
        r = json.loads(f.read_text())
        tpp, mult = f.stem.removeprefix("wd_d4_tpp").split("_x")
        by_tpp.setdefault(float(tpp), []).append((float(mult), r["bpb"]))
    if not by_tpp:
        raise SystemExit(f"error: no wd_d4_tpp*_x*.json in {report / 'jobs'}")
    fig, axes = plt.subplots(1, len(by_tpp), figsize=(4.5 * len(by_tpp), 3.6), squeeze=False)
    for ax, (tpp, points) in zip(axes[0], sorted(by_tpp.items())):
        points.sort()
        ax.plot([m for m, _ in points], [b for _, b in points], marker="o")
        ax.axvline(1.0, color="gray", ls=":", label="the depth rule's λ")
        ax.set(xscale="log", xlabel="λ / rule's λ", ylabel="val bits/byte",
               title=f"d4, {tpp:g} tokens per parameter")
        ax.set_xticks([m for m, _ in points], [f"{m:g}×" for m, _ in points])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = report / "wd_sweep.png"
    fig.savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanochat", help="a nanochat checkout at commit 92d63d4 (its COMMIT file)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_quality"))
    p.add_argument("--work", default=None, help="run folders (checkpoints); default OUT/work")
    p.add_argument("--report", default=None, help="also write the report and log tails here")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--flops", type=float, default=None, help="default 2.49e16 at d6")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--device-batch-size", type=int, default=16)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--sweep", action="store_true", help="add the d4 weight-decay sweep and A/B")
    p.add_argument("--rule-wd", type=float, default=None,
                   help="the rule's λ at d4 (sweep); default: the depth rule's own value")
    p.add_argument("--parallel", type=int, default=3)
    p.add_argument("--start-by", type=float, default=330,
                   help="seconds since the bench started (corpus included): start no job later")
    p.add_argument("--deadline", type=float, default=480, help="seconds: stop every job")
    p.add_argument("--max-bytes", type=int, default=None, help="cap the offline corpus")
    p.add_argument("--eval-rows", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated job names to run")
    p.add_argument("--resume", action="store_true",
                   help="continue jobs stopped by --deadline from their last checkpoint under "
                        "--work (a job whose training finished is only scored)")
    p.add_argument("--dry-run", action="store_true", help="tiny CPU run of every path")
    p.add_argument("--packing-stats", action="store_true")
    p.add_argument("--plot-sweep", metavar="REPORT",
                   help="plot REPORT/jobs/wd_d4_*.json to REPORT/wd_sweep.png and exit")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        from nanogpt_course.train.loop import TrainingOOM
        try:
            run_job(json.loads(args.job))
        except (TrainingOOM, torch.OutOfMemoryError) as err:  # the queue retries it smaller
            print(f"out of memory: {err}", file=sys.stderr)
            return OOM_EXIT
        return 0
    if args.plot_sweep:
        print(f"wrote {plot_sweep(Path(args.plot_sweep))}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    folder, corpus = prepare_corpus(args.max_bytes if not args.dry_run else
                                    (args.max_bytes or 2_000_000))
    corpus["prepare_seconds"] = round(time.time() - t0, 1)
    print(f"corpus: {json.dumps(corpus)}", flush=True)
    stats_proc = None
    if args.report and not args.packing_stats:  # CPU work beside the GPU jobs
        stats_proc = subprocess.Popen(
            [sys.executable, __file__, "--packing-stats", "--seq-len", "2048", "--out",
             str(Path(args.report))] + (["--max-bytes", str(args.max_bytes)] if args.max_bytes
                                        else []) + (["--dry-run"] if args.dry_run else []),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if args.packing_stats:
        stats = {"corpus": corpus, "context": 1024,
                 "by_seq_len": {T: packing_stats(folder, T + 1) for T in (1024, 2048)}}
        (out / "packing_stats.json").write_text(json.dumps(stats, indent=1))
        print(json.dumps(stats, indent=1))
        return 0
    if not args.nanochat:
        print("error: --nanochat PATH is required (a nanochat checkout at commit "
              f"{nanochat_ref.PINNED}); or use --packing-stats", file=sys.stderr)
        return 2
    nanochat_ref.add_to_path(args.nanochat)  # fails early on a wrong checkout
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    if args.dry_run:
        args.depth, args.flops, args.seq_len, args.device_batch_size = 2, 3e11, 64, 4
    args.flops = args.flops or DEFAULT_FLOPS.get(args.depth, 2.49e16)
    from nanogpt_course.model import GPTConfig
    from nanogpt_course.train.build import model_stats  # the project's own batch rule

    vocab = corpus["vocab_size"]
    stats = lambda d: model_stats(GPTConfig.from_depth(d, vocab_size=vocab,
                                                       sequence_len=args.seq_len))
    plan = scaling.plan(args.depth, stats, target_flops=args.flops)
    args.batch_d6 = plan.total_batch_size
    if args.rule_wd is None:  # rule 4 depends on the depth, not on the horizon
        args.rule_wd = scaling.plan(4, stats, tokens_per_param=2).weight_decay
    args.rule_wd_d6, args.tpp_d6 = plan.weight_decay, plan.target_tokens / plan.scaling_params
    jobs = default_jobs(args, plan.total_batch_size)
    work = Path(args.work) if args.work else out / "work"
    for job in jobs:
        job.update(folder=str(folder), out=str(out), work=str(work), device=device,
                   nanochat=str(Path(args.nanochat).resolve()), eval_rows=args.eval_rows,
                   echo=True, resume=args.resume)
        if args.dry_run:
            job.update(compile=False, max_steps=3, depth=2, seq_len=64, device_batch_size=4,
                       eval_rows=8, no_dynamo=True, nanochat_batch=4 * 64 * 2)
            if job.get("tokens_per_param"):
                job["tokens_per_param"] = 0.05
            if job["recipe"] == "project" and job.get("batch"):
                job["batch"] = 4 * 64 * 2
    if args.only:  # in the order given (the queue starts them in that order)
        by_name, wanted = {j["name"]: j for j in jobs}, args.only.split(",")
        by_name.update({n: job for n in wanted if n not in by_name
                        for job in [combination_job(n, by_name, args)] if job is not None})
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            print(f"error: unknown job(s) {unknown}; known: {sorted(by_name)} and "
                  f"combinations of refinements joined by '+' ({', '.join(REFINEMENTS)}), "
                  "e.g. screen_d4_polar+normuon", file=sys.stderr)
            return 2
        jobs = [by_name[n] for n in wanted]
    print(f"{len(jobs)} jobs on {device_name}: " + ", ".join(j["name"] for j in jobs), flush=True)
    summary = lambda: summarize(out, corpus, device_name, args)
    run_queue(jobs, out, parallel=args.parallel, start_by=args.start_by, deadline=args.deadline,
              summary=summary, t0=t0)
    result = summary()
    print(json.dumps(result, indent=1, default=str))
    for row in result["ab"]:  # unindented: readable in a log's tail
        print(f"A/B {row['job']}: {row['bpb']:.5f} against {row['base']} {row['base_bpb']:.5f} "
              f"({row['delta']:+.5f} bits per byte)")
    if stats_proc is not None and stats_proc.poll() is None:
        stats_proc.kill()  # started above by this bench
    return 0


if __name__ == "__main__":
    sys.exit(main())
