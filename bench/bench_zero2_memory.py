"""ZeRO-2 memory per rank: measured on CPU gloo ranks, predicted for the real depths.

1. ``measured``: ``nanogpt_course.optim.demo`` on 1, 2 and 4 gloo ranks (through
   ``nanogpt_course.launch``), gradients sharded in backward (ZeRO-2) and, for comparison,
   in ``step()`` (``--no-grad-hooks``: full gradients after backward, ZeRO-1 memory). Per
   rank: gradient bytes alive after the last backward and optimizer-state bytes after the
   step, both from the live tensors, next to the plan's prediction.
2. ``predicted``: per-GPU bytes of parameters, gradients and optimizer state for d12/d20/d26
   (vocab 32768, fp32 master weights and gradients) on ``--gpus`` GPUs, from the sharding
   plan (``optim.grad_shard.rank_memory``; the largest rank). Activations come on top.

    python bench/bench_zero2_memory.py                   # CPU, ~1 minute on 2 cores
    python bench/bench_zero2_memory.py --predict-only    # the table only, instant

Writes ``--json`` (default docs/results/zero2_memory_cpu.json) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from nanogpt_course.launch import launch
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.optim import build_optimizer
from nanogpt_course.optim.grad_shard import rank_memory
from nanogpt_course.optim.sharding import make_layout

DEMO = ["--depth", "4", "--width", "128", "--seq", "32", "--batch", "8", "--device-batch", "2",
        "--steps", "2", "--small-param-numel", "4096"]


def measure(worlds=(1, 2, 4), demo_args=DEMO) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            for hooks in ((True, False) if world > 1 else (True,)):
                out = Path(tmp) / f"w{world}{'' if hooks else '_nohooks'}"
                args = [*demo_args] + ([] if hooks else ["--no-grad-hooks"])
                launch("nanogpt_course.optim.demo", *args, nproc=world, device="cpu", out=out,
                       on_line=None, timeout=600)
                r = json.loads((out / "report.json").read_text())
                rows.append({"world_size": world, "optimizer": r["optimizer"],
                             "grad_hooks": r["grad_hooks"], "param_bytes": r["param_bytes"],
                             "grad_bytes": r["grad_bytes_after_backward_per_rank"],
                             "predicted_owned": r["predicted_owned_grad_bytes_per_rank"],
                             "predicted_bound": r["predicted_bound_grad_bytes_per_rank"],
                             "state_bytes": r["state_bytes_per_rank"]})
                print(f"measured {world} rank(s), hooks {hooks}: grads {rows[-1]['grad_bytes']}",
                      flush=True)
    return rows


def predict(depths=(12, 20, 26), gpus: int = 8, vocab: int = 32768, seq: int = 2048) -> list:
    rows = []
    for depth in depths:
        with torch.device("meta"):
            model = GPT(GPTConfig.from_depth(depth, vocab_size=vocab, sequence_len=seq))
        groups = build_optimizer(model).param_groups
        for world in (1, gpus):
            placed = make_layout(groups, world)["params"]
            per_rank = [rank_memory(placed, world, r) for r in range(world)]
            worst = {k: max(m[k] for m in per_rank) for k in per_rank[0]}
            rows.append({"depth": depth, "gpus": world, "num_params": model.num_params(),
                         **worst})
    return rows


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def tables(measured: list[dict], predicted: list[dict]) -> str:
    lines = []
    if measured:
        lines += ["| ranks | gradients sharded | grad bytes after backward, per rank | "
                  "ZeRO-2 plan: owned + bound | optimizer state per rank |",
                  "|---|---|---|---|---|"]
        for r in measured:
            pred = [o + b for o, b in zip(r["predicted_owned"], r["predicted_bound"])]
            lines.append(f"| {r['world_size']} | {'in backward' if r['grad_hooks'] else 'in step()'}"
                         f" | {', '.join(f'{b:,}' for b in r['grad_bytes'])} | "
                         f"{', '.join(f'{b:,}' for b in pred)} | "
                         f"{', '.join(f'{b:,}' for b in r['state_bytes'])} |")
        lines.append("")
    lines += ["| depth | params | GPUs | parameters GiB | gradients GiB, ZeRO-2 (ZeRO-1) | "
              "optimizer state GiB | total GiB, ZeRO-2 (ZeRO-1) |", "|---|---|---|---|---|---|---|"]
    for r in predicted:
        z2 = r["params"] + r["grads"] + r["state"]
        z1 = r["params"] + r["grads_unsharded"] + r["state"]
        lines.append(f"| d{r['depth']} | {r['num_params'] / 1e6:.0f}M | {r['gpus']} | "
                     f"{_gib(r['params'])} | {_gib(r['grads'])} ({_gib(r['grads_unsharded'])}) |"
                     f" {_gib(r['state'])} | {_gib(z2)} ({_gib(z1)}) |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predict-only", action="store_true")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--json", type=Path, default=Path("docs/results/zero2_memory_cpu.json"))
    args = ap.parse_args(argv)
    predicted = predict(gpus=args.gpus)
    measured = [] if args.predict_only else measure()
    report = {"measured_cpu_gloo": measured, "demo_args": DEMO, "predicted": predicted,
              "torch": torch.__version__}
    print(tables(measured, predicted))
    if not args.predict_only:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
