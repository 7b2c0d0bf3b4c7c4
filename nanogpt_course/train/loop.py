"""The trainer: gradient accumulation, schedules, logging, evaluation, checkpoints, and the
ways a run ends (done, stopped, SIGTERM, NaN, out of memory).

One optimizer step, on every rank::

    for micro in range(grad_accum):            # grad_accum = total / (B · T · world)
        x, y = next(train_batches)             # (B, T) this rank's rows
        loss = model(x, y) / grad_accum        # bf16 autocast on CUDA, fp32 on CPU
        loss.backward()                        # gradients add up over micro-batches
    optimizer.step()                           # averages gradients over ranks, updates

so 1 GPU with accumulation 8 and 8 GPUs with accumulation 1 take the same step.

Exact resume: a checkpoint holds the weights, every rank's optimizer shard, every rank's
loader position and RNG states, and the step. Schedules are functions of the step, so a
resumed run computes bit for bit what the uninterrupted run would have (CPU, fp32).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checkpoint as ck
from .. import fp8
from ..device import HostRead
from .build import RunPlan, build_model, build_optimizer, load_optimizer_state
from .compiling import compile_for_training
from .config import ConfigError
from .metrics import MetricsLogger, StepTimer, device_peak_flops, mfu, peak_memory_bytes
from .schedule import apply as apply_schedule
from .validation import eval_hooks_plan, evaluate_bpb, run_eval_hook, sample_texts

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved after the last good checkpoint."""


class TrainingOOM(RuntimeError):
    """The device ran out of memory; the message names the flag to lower."""


@dataclass
class TrainResult:
    out: Path  # the run folder
    status: str  # "finished" | "stopped" (stop_at) | "terminated" (SIGTERM)
    step: int
    checkpoint: Path | None
    final_loss: float | None = None
    val_bpb: float | None = None


class _StopSignal:
    """SIGTERM sets a flag; the trainer checks it once per step (on all ranks together)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some notebook runners): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def oom_message(run: RunPlan, runtime) -> str:
    cfg = run.cfg
    half = max(1, cfg.device_batch_size // 2)
    return (f"out of memory on {runtime.device} at --device-batch-size {cfg.device_batch_size}, "
            f"--seq-len {cfg.seq_len}, depth {cfg.depth}. Lower --device-batch-size (e.g. "
            f"{half}: gradient accumulation grows so the total batch and the result stay the "
            "same); if it is already 1, lower --seq-len or --depth.")


class Trainer:
    """Runs one :class:`RunPlan` on one rank. ``loaders`` makes the batch streams (see
    :mod:`.data`); ``echo=False`` silences the progress lines (metrics.jsonl is still written).
    """

    def __init__(self, run: RunPlan, runtime, loaders, *, echo: bool = True):
        self.run, self.rt, self.loaders = run, runtime, loaders
        self.cfg = run.cfg
        self.log = MetricsLogger(run.out, rank=runtime.rank, num_steps=run.plan.num_steps,
                                 config=self.cfg.to_dict(), echo=echo)
        self.token_bytes = run.tokenizer.token_bytes
        self.val_bpb: float | None = None
        self.last_saved: Path | None = run.resume_from
        self.tokens_seen = 0
        self._announced: set[str] = set()  # eval hooks that said "not available yet"

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        run, rt = self.run, self.rt
        self.model = build_model(run, rt.device)
        self.model.train()
        if self.cfg.fp8:  # before compiling: the compiled graph traces the FP8 matmuls
            try:
                fp8.check_device(rt.device)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            converted = fp8.enable_fp8(self.model)
            self.log.note(f"fp8: {len(converted)} linear layers in FP8 (tensorwise scaling; "
                          "lm_head, embeddings and gates in bf16)")
        if self.cfg.embedding_dtype == "bf16":  # before the optimizer: its moments follow
            self.model.store_embeddings_in(torch.bfloat16)
            self.log.note("embeddings stored in bf16 (token and value embeddings)")
        self.optimizer = build_optimizer(run, self.model, rt)
        self.train_batches = self.loaders.train(run, rt)
        self.step = 0
        if run.resume_from is not None:
            self._restore(run.resume_from, run.resume_meta)
        self.forward = self.model
        if self.cfg.compile:  # block by block when DistMuonAdamW shards grads in backward
            self.forward = compile_for_training(self.model, self.optimizer)
        self.peak = device_peak_flops(rt.device)
        self.timer = StepTimer()
        self._totals_read = HostRead(rt.device, 2, torch.float64)

    def _restore(self, folder: Path, meta: dict) -> None:
        rt = self.rt
        load_optimizer_state(self.optimizer, folder, rt)
        self.step = int(meta["step"])
        self.tokens_seen = int(meta.get("tokens_seen", 0))
        self.val_bpb = meta.get("val_bpb")
        same_world = meta.get("world_size") == rt.world_size
        if meta.get("loader") is not None:  # a global position: valid on any world size
            self.train_batches.load_state_dict(meta["loader"])
        rngs = meta.get("rng") or []
        if same_world and rt.rank < len(rngs):
            ck.set_rng_state(rngs[rt.rank])
        self.log.truncate_after(self.step)
        self.log.note(f"resumed {folder} at step {self.step:,} "
                      f"({meta.get('world_size')} -> {rt.world_size} ranks)")

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> float:
        """Accumulate, update, then check. Returns the mean loss (over micro-batches and
        ranks); raises TrainingDiverged if it is not finite.

        The loss is read on the host only after ``optimizer.step()`` is queued: reading it
        before would make the CPU wait for the backward pass, and the optimizer's kernels
        could not be launched while the GPU still runs it (issue #18). Its copy to the host
        is queued before the optimizer's kernels, so the read waits for the backward pass
        only (:class:`~nanogpt_course.device.HostRead`), and the host prepares the next step while the GPU runs
        the optimizer. A non-finite loss is therefore caught one update late: the weights in
        memory are then spoiled, so the run stops without logging or saving that step, and
        the checkpoints on disk stay good."""
        values = apply_schedule(self.optimizer, self.run.schedule, step)
        accum = self.run.grad_accum
        # [sum of micro-batch losses, stop votes], summed over ranks on the device
        totals = torch.zeros(2, dtype=torch.float64, device=self.rt.device)
        for _ in range(accum):
            x, y = next(self.train_batches)
            x = x.to(self.rt.device, non_blocking=True)
            y = y.to(self.rt.device, non_blocking=True)
            with self.rt.autocast():
                loss = self.forward(x, y)
            (loss / accum).backward()
            totals[0] += loss.detach().double()
        if self._stop.requested:
            totals[1] = 1.0
        self.rt.all_reduce_sum_(totals)
        self._totals_read.start(totals)  # queued before the optimizer's kernels
        self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        total, stop_votes = self._totals_read.values()  # the one host read of the step
        self._stop_all = stop_votes > 0
        mean = total / (accum * self.rt.world_size)
        if not math.isfinite(mean):
            where = self.last_saved or "none (no checkpoint was saved yet)"
            raise TrainingDiverged(
                f"loss is {mean} at step {step + 1}: training stopped; this step was neither "
                f"logged nor saved, the last good checkpoint is: {where}. Lower the "
                "learning rates (e.g. --matrix-lr, --embedding-lr), check the data, or resume "
                "from that checkpoint.")
        self._values = values
        return mean

    # ------------------------------------------------------------------ periodic work
    def _due(self, every: int, step: int, last: bool) -> bool:
        return every > 0 and (step % every == 0 or last)

    def evaluate(self, step: int, last: bool) -> dict:
        cfg, rec = self.cfg, {}
        if self._due(cfg.eval_every, step, last):
            batches = self.loaders.val(self.run, self.rt)
            rec["val_bpb"] = self.val_bpb = evaluate_bpb(
                self.model, batches, self.token_bytes, runtime=self.rt,
                max_batches=self.loaders.val_batches(self.run, self.rt))
        if step > 0 and self._due(cfg.core_every, step, last):
            rec.update(run_eval_hook("core", self.model, self.run.tokenizer, runtime=self.rt,
                                     log=self.log.note, announced=self._announced))
        if step > 0 and self._due(cfg.chatcore_every, step, last):
            rec.update(run_eval_hook("chatcore", self.model, self.run.tokenizer,
                                     runtime=self.rt, log=self.log.note,
                                     announced=self._announced))
        if step > 0 and self.rt.is_main and self._due(cfg.sample_every, step, last):
            for line in sample_texts(self.model, self.run.tokenizer, kind=self.run.kind):
                self.log.note(f"  sample: {line}")
        return rec

    def save(self, step: int, *, finished: bool = False) -> Path:
        rt, run = self.rt, self.run
        tensors, layout = self.optimizer.shard_state_dict()
        loader_state = self.train_batches.state_dict()  # the same on every rank
        rngs = rt.gather_objects(ck.rng_state())
        meta = {"kind": run.kind, "model_config": run.model_config.to_dict(),
                "train_config": self.cfg.to_dict(), "plan": run.plan.to_dict(),
                "tokens_seen": self.tokens_seen, "val_bpb": self.val_bpb,
                "loader": loader_state, "rng": rngs, "finished": finished,
                "num_steps": run.plan.num_steps, "data": self.cfg.data,
                "init_from": str(run.init_from) if run.init_from else None}
        model_state = None
        if rt.is_main:  # fp32 on disk whatever the storage (bf16 -> fp32 -> bf16 is exact)
            model_state = {k: v.float() if v.dtype == torch.bfloat16 else v
                           for k, v in self.model.state_dict().items()}
        folder = ck.save(run.out, step, meta=meta, rank=rt.rank, world_size=rt.world_size,
                         model_state=model_state, optimizer_state=tensors,
                         optimizer_layout=layout, tokenizer=run.tokenizer if rt.is_main else None,
                         barrier=rt.barrier if rt.distributed else None,
                         keep_last=self.cfg.keep_last)
        self.last_saved = folder
        self.log.note(f"saved {folder}")
        return folder

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        run, cfg = self.run, self.cfg
        num_steps = run.plan.num_steps
        self.log.note(run.plan.describe())
        mc = run.model_config
        if mc.window_pattern.upper() != "L":
            self.log.note(f"  attention windows {mc.window_pattern} (keys per layer: "
                          f"{mc.window_sizes()})")
        self.log.note(f"{run.grad_accum} micro-step(s) of {cfg.device_batch_size} x "
                      f"{cfg.seq_len} tokens per rank x {self.rt.world_size} rank(s) = "
                      f"{run.plan.total_batch_size:,} tokens per step; out: {run.out}")
        for line in eval_hooks_plan(cfg, self.rt.device):  # fails early when data is missing
            self.log.note(line)
        self.setup()
        if self.step == 0 and run.resume_from is None:
            rec = self.evaluate(0, last=False)
            if rec:
                self.log.log({"step": 0, **rec})
        status, loss = "finished", None
        first_step = self.step + 1  # of this process (a resumed run starts later)
        with _StopSignal() as self._stop:
            self._stop_all = False
            t0 = time.perf_counter()
            while self.step < num_steps:
                try:
                    loss = self.train_step(self.step)
                except _OOM as err:
                    raise TrainingOOM(oom_message(run, self.rt)) from err
                # No device synchronize here: the step's one host read (its loss) waits for
                # the backward pass only, so while the GPU runs this step's optimizer kernels
                # the CPU already logs, builds the next batch and launches its forward. A
                # step's time runs from the previous step's read to its own, so the times
                # add up to the training time (evaluation and saving left out, as before).
                read = time.perf_counter()
                dt, t0 = read - t0, read
                self.step += 1
                self.tokens_seen += run.plan.total_batch_size
                last = self.step == num_steps
                rec = self._step_record(loss, dt)
                periodic = time.perf_counter()  # evaluation, sampling, saving: not step time
                evaluated = self.evaluate(self.step, last)
                rec.update(evaluated)
                stop_now = self._stop_all or (cfg.stop_at is not None and self.step >= cfg.stop_at)
                if self.step == first_step or last or stop_now:  # the same on every rank
                    rec.update(self._rank_resources())
                t0 += time.perf_counter() - periodic
                if self.step % cfg.log_every == 0 or last or evaluated or stop_now:
                    self.log.log(rec)
                if last or stop_now or self._due(cfg.save_every, self.step, False):
                    periodic = time.perf_counter()
                    self.save(self.step, finished=last)
                    t0 += time.perf_counter() - periodic
                if stop_now and not last:
                    status = "terminated" if self._stop_all else "stopped"
                    why = "SIGTERM" if self._stop_all else f"stop_at={cfg.stop_at}"
                    self.log.note(f"stopping at step {self.step} ({why}); continue with "
                                  f"--resume --out {run.out}")
                    break
        return TrainResult(out=run.out, status=status, step=self.step,
                           checkpoint=self.last_saved, final_loss=loss, val_bpb=self.val_bpb)

    def _rank_resources(self) -> dict:
        """Every rank's optimizer-state bytes (``state_bytes()``: sharded by DistMuonAdamW)
        and peak memory so far (see :func:`.metrics.peak_memory_bytes`), as lists in rank
        order. A collective: all ranks call it at the same step."""
        peak, kind = peak_memory_bytes(self.rt.device)
        ranks = self.rt.gather_objects([int(self.optimizer.state_bytes()), peak])
        return {"opt_state_bytes": [r[0] for r in ranks],
                "peak_mem_bytes": [r[1] for r in ranks], "peak_mem_kind": kind}

    def _step_record(self, loss: float, dt: float) -> dict:
        plan = self.run.plan
        self.timer.add(dt)
        tok_s = plan.total_batch_size / dt if dt > 0 else float("nan")
        rec = {"step": self.step, "loss": loss, "lrm": self._values["lrm"],
               "momentum": self._values["momentum"],
               "weight_decay": self._values["weight_decay"], "tokens": self.tokens_seen,
               "flops": self.tokens_seen * plan.flops_per_token, "dt_ms": 1000 * dt,
               "tok_per_sec": tok_s,
               "mfu": mfu(tok_s, plan.flops_per_token, self.peak, self.rt.world_size)}
        eta = self.timer.eta(plan.num_steps - self.step)
        if eta is not None:
            rec["eta_s"] = eta
        return rec
