"""The fused loss kernel's launch shape: block size × warps, timed on d12's logits.

    python bench/fused_loss_sweep.py --out $OUT/fused_loss_sweep.json      # GPU, ~25 s
    TRITON_INTERPRET=1 python bench/fused_loss_sweep.py --device cpu --rows 4 --vocab 256 \\
        --blocks 64,128 --warps 4                                            # CPU dry run

Times ``fused_loss.softcap_cross_entropy_grad_triton_`` (the in-place loss + gradient of
``nanogpt_course/fused_loss_kernel.py``) on random bf16 logits of ``--rows`` × ``--vocab``
(default: d12's micro-batch, 32 × 2048 rows of 32,768) for every (block, warps) pair, and
reports each median time, the best pair, and the bandwidth it reached counting two reads and
one write of the logits. The library's defaults are ``NANOGPT_COURSE_FUSED_LOSS_BLOCK`` and
``_WARPS`` (docs/PERFORMANCE.md has the H100's sweep).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
from bench_attention import timed  # noqa: E402  (bench/ is not a package)

from nanogpt_course import fused_loss  # noqa: E402


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def sweep(rows: int, vocab: int, blocks: list[int], warps: list[int], device: str,
          iters: int = 10, cap: float = 15.0) -> dict:
    """{"results": [{"block", "warps", "ms"}...], "best", "best_gb_s", ...}; ms is None
    for a shape that failed to compile or launch (its error is kept)."""
    g = torch.Generator(device=device).manual_seed(0)
    logits = (8 * torch.randn(rows, vocab, device=device, generator=g)).bfloat16()
    targets = torch.randint(0, vocab, (rows,), device=device, generator=g)
    cuda = device.startswith("cuda")
    saved = fused_loss.BLOCK, fused_loss.NUM_WARPS
    results = []
    try:
        for block, num_warps in itertools.product(blocks, warps):
            fused_loss.BLOCK, fused_loss.NUM_WARPS = block, num_warps
            buf = logits.clone()  # overwritten by each call; the time does not care with what
            run = functools.partial(fused_loss.softcap_cross_entropy_grad_triton_, buf, targets,
                                    vocab_size=vocab, softcap=cap)
            row = {"block": block, "warps": num_warps, "ms": None}
            try:
                row["ms"] = round(timed(run, iters=iters, warmup=2, cuda=cuda), 4)
            except Exception as err:  # a shape Triton refuses: report it, try the next
                row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
            results.append(row)
            print(row, flush=True)
    finally:
        fused_loss.BLOCK, fused_loss.NUM_WARPS = saved
    ran = [r for r in results if r["ms"] is not None]
    best = min(ran, key=lambda r: r["ms"]) if ran else None
    moved = rows * vocab * logits.element_size() * 3  # two reads and one write
    return {"device": torch.cuda.get_device_name() if cuda else device, "rows": rows,
            "vocab": vocab, "defaults": {"block": saved[0], "warps": saved[1]},
            "results": results, "best": best,
            "best_gb_s": round(moved / best["ms"] / 1e6) if best else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=32 * 2048)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--blocks", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--warps", default="4,8,16,32")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    if not fused_loss.KERNEL.available():
        raise SystemExit("the sweep times the Triton kernel: pip install triton")
    report = sweep(args.rows, args.vocab, ints(args.blocks), ints(args.warps), args.device,
                   iters=args.iters)
    print(json.dumps({k: report[k] for k in ("best", "best_gb_s", "defaults")}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if report["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
