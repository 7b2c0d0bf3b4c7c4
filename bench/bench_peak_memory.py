"""Where a training step's peak GPU memory sits: what is live at that moment, ours vs nanochat.

    python bench/bench_peak_memory.py --depth 12 --nanochat .nanochat --out results/   # CUDA

One compiled training step (bf16 autocast, our optimizer; nanochat's model and optimizer
with ``--nanochat``) runs with the CUDA allocator's trace on
(``torch.cuda.memory._record_memory_history``). The trace is replayed event by event to find
the moment of the peak; the blocks live then are summed by size (so (B, T, C) activations,
(B, T, 4C) MLP activations and the logits show up as their own rows) and by the top source
frames that allocated them. Writes ``peak_<name>.json`` per model into ``--out`` and prints
the tables. Needs a CUDA device (the CPU has no allocator trace).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

GIB, MIB = 2**30, 2**20


def top_frames(event: dict, depth: int = 3) -> str:
    """``file:line:function`` of the first frames outside torch (or generated code)."""
    frames = event.get("frames") or []
    own = [f for f in frames if "/torch/" not in f["filename"] or "output_code" in f["filename"]]
    return " < ".join(f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}"
                      for f in (own or frames)[:depth]) or "?"


def live_at_peak(events: list[dict]) -> tuple[int, int, dict]:
    """Replay allocator events: (peak bytes, index of the event that reached it, the blocks
    live then as {address: event}). Only allocations made during the trace are counted."""
    live, current, peak, peak_index, at_peak = {}, 0, 0, -1, {}
    for i, event in enumerate(events):
        if event["action"] == "alloc":
            live[event["addr"]] = event
            current += event["size"]
        elif event["action"] == "free_completed" and event["addr"] in live:
            current -= live.pop(event["addr"])["size"]
        if current > peak:
            peak, peak_index, at_peak = current, i, dict(live)
    return peak, peak_index, at_peak


def summarize(name: str, snapshot: dict) -> dict:
    """The peak's live blocks, by size class and by allocating frame."""
    events = snapshot["device_traces"][0]
    peak, index, live = live_at_peak(events)
    by_size, by_frame = collections.Counter(), collections.Counter()
    for event in live.values():
        by_size[event["size"]] += 1
        by_frame[top_frames(event)] += event["size"]
    sizes = sorted(by_size.items(), key=lambda kv: -kv[0] * kv[1])
    return {"name": name, "traced_peak_gib": peak / GIB, "events": len(events),
            "peak_event": index, "peak_event_frame": top_frames(events[index]) if index >= 0 else "?",
            "by_size": [{"block_mib": round(s / MIB, 2), "count": n, "gib": round(s * n / GIB, 3)}
                        for s, n in sizes[:25]],
            "by_frame": [{"frame": f, "gib": round(b / GIB, 3)} for f, b in by_frame.most_common(25)]}


def traced_step(step, name: str) -> dict:
    """Run ``step`` twice to warm up (compile, optimizer state), then once traced."""
    step()
    step()
    torch.cuda.synchronize()
    between_steps = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=200_000, stacks="python")
    step()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    report = summarize(name, snapshot)
    report.update(allocated_between_steps_gib=between_steps / GIB,
                  max_allocated_gib=torch.cuda.max_memory_allocated() / GIB)
    return report


def ours_step(args, x, y):
    from nanogpt_course.model import GPT, GPTConfig
    from nanogpt_course.optim import build_optimizer

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(args.depth, vocab_size=args.vocab,
                                     sequence_len=args.seq_len)).cuda()
    optimizer, forward = build_optimizer(model), torch.compile(model, dynamic=False)

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            loss = forward(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    return step


def nanochat_step(args, x, y):
    import nanochat_ref

    ref = nanochat_ref.load(args.nanochat)
    model, _, optimizer = nanochat_ref.build_recipe(
        ref, args.depth, vocab_size=args.vocab, sequence_len=args.seq_len, device="cuda",
        seed=0, total_batch_size=x.numel())
    forward = torch.compile(model, dynamic=False)

    def step():  # nanochat computes in bf16 by itself (no autocast)
        forward(x, y).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    return step


def print_report(r: dict) -> None:
    print(f"\n{r['name']}: peak {r['max_allocated_gib']:.2f} GiB "
          f"({r['allocated_between_steps_gib']:.2f} GiB held between steps); the peak is at "
          f"{r['peak_event_frame']}")
    for row in r["by_size"][:10]:
        print(f"  {row['count']:4d} x {row['block_mib']:9.2f} MiB = {row['gib']:7.3f} GiB")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--device-batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--nanochat", help="a nanochat checkout at the pinned commit (optional)")
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_peak_memory.py needs a CUDA device (the allocator trace is CUDA's); "
                 "for static bytes on the CPU run bench/bench_memory.py")
    g = torch.Generator().manual_seed(0)
    shape = (args.device_batch_size, args.seq_len)
    x, y = (torch.randint(0, args.vocab, shape, generator=g).cuda() for _ in range(2))
    builders = [("ours", ours_step)] + ([("nanochat", nanochat_step)] if args.nanochat else [])
    reports = []
    for name, build in builders:
        report = traced_step(build(args, x, y), name)
        print_report(report)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"peak_{name}.json").write_text(json.dumps(report, indent=1))
        reports.append(report)
        gc.collect()
        torch.cuda.empty_cache()
        torch._dynamo.reset()
    return reports


if __name__ == "__main__":
    main()
