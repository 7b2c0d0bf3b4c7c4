"""When do ZeRO-2's gradient collectives start, and what does that cost in peak memory?

One training step of a d``--depth`` GPT with DistMuonAdamW (hooks on) on a one-rank process
group (NCCL on CUDA, gloo on the CPU) under three forwards:

- ``eager``: no compilation;
- ``whole``: ``torch.compile(model)``: one backward node, so every hook fires at its end;
- ``blockwise``: ``train.compiling.BlockwiseCompiled``, what the trainer's ``--compile``
  uses with DistMuonAdamW: one backward node per block.

For each, the step is recorded with ``RecordingCollectives(mark_grads=True)`` whose marks
also record a CUDA event on the current stream (so the times are *GPU* times: when the
kernels that produced that gradient had finished). Reported: backward time, when the first
and the median gradient became ready (fraction of backward: communication can start
then, so ``backward - first`` is the window it can overlap), reduce-scatters launched before
backward ended, step time, and peak memory (``max_memory_allocated``).

    python bench/bench_zero2_overlap.py --depth 12 --device-batch-size 16      # one GPU
    python bench/bench_zero2_overlap.py --dry-run                              # CPU, tiny

Prints one JSON object (and writes it to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.optim import DistMuonAdamW, RecordingCollectives, build_optimizer
from nanogpt_course.train.compiling import BlockwiseCompiled


class TimedCollectives(RecordingCollectives):
    """Also records a CUDA event (or the host time on the CPU) at every mark."""

    def __init__(self, device: torch.device):
        super().__init__(mark_grads=True)
        self.device, self.stamps = device, []

    def mark(self, event, tag=""):
        super().mark(event, tag)
        if self.device.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.stamps.append((event, e))
        else:
            self.stamps.append((event, time.perf_counter()))

    def times_ms(self) -> list[tuple[str, float]]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            t0 = self.stamps[0][1]
            return [(name, t0.elapsed_time(e)) for name, e in self.stamps]
        t0 = self.stamps[0][1]
        return [(name, 1000 * (t - t0)) for name, t in self.stamps]


def run_mode(mode: str, cfg: GPTConfig, device, batch: int, steps: int, backend) -> dict:
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    comm = TimedCollectives(device)
    groups = [dict(g) for g in build_optimizer(model).param_groups]
    opt = DistMuonAdamW(groups, collectives=comm)
    kw = {"dynamic": False} | ({"backend": backend} if backend else {})
    forward = {"eager": model, "whole": lambda: torch.compile(model, **kw),
               "blockwise": lambda: BlockwiseCompiled(model, **kw)}[mode]
    forward = forward() if callable(forward) and not isinstance(forward, torch.nn.Module) \
        else forward
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.sequence_len), generator=g).to(device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)
    step_ms, rec = [], {}
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        comm.log, comm.stamps = [], []
        t0 = time.perf_counter()
        with autocast:
            loss = forward(x, x)
        comm.mark("backward_called")  # the library marks backward_start at the first hook
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_ms.append(1000 * (time.perf_counter() - t0))
    times = comm.times_ms()  # the last step
    start = next(t for n, t in times if n == "backward_called")
    end = next(t for n, t in times if n == "backward_end")
    ready = sorted(t for n, t in times if n == "grad_ready")
    back = comm.log
    end_i = next(i for i, e in enumerate(back) if e[:2] == ("mark", "backward_end"))
    rs = [i for i, e in enumerate(back) if e[:2] == ("launch", "reduce_scatter")]
    rec.update(mode=mode, step_ms=statistics.median(step_ms[1:] or step_ms),
               backward_ms=end - start,
               first_grad_ready_ms=ready[0] - start, median_grad_ready_ms=
               statistics.median(ready) - start, last_grad_ready_ms=ready[-1] - start,
               reduce_scatters=len(rs), reduce_scatters_before_backward_end=sum(
                   1 for i in rs if i < end_i),
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30
               if device.type == "cuda" else None)
    opt.remove_hooks()
    return rec


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--device-batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="per mode; the last one is recorded")
    ap.add_argument("--modes", default="eager,whole,blockwise")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (aot_eager)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    backend = None
    if args.dry_run:
        args.depth, args.vocab, args.seq_len, args.device_batch_size, args.steps = 2, 512, 64, 2, 2
        backend = "aot_eager"  # no C compiler needed
    store = dist.FileStore(tempfile.mktemp(prefix="bench_zero2_store"), 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                            rank=0, world_size=1)
    cfg = GPTConfig.from_depth(args.depth, vocab_size=args.vocab, sequence_len=args.seq_len)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "depth": args.depth, "seq_len": args.seq_len,
              "device_batch_size": args.device_batch_size, "modes": []}
    for mode in args.modes.split(","):
        report["modes"].append(run_mode(mode, cfg, device, args.device_batch_size, args.steps,
                                        backend))
        print(json.dumps(report["modes"][-1]), flush=True)
    dist.destroy_process_group()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
