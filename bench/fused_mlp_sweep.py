"""The fused MLP's matmul kernels against cuBLAS + the compiled pointwise kernel, per launch shape.

    python bench/fused_mlp_sweep.py --out $OUT/fused_mlp_sweep.json         # GPU, ~1-2 min
    TRITON_INTERPRET=1 python bench/fused_mlp_sweep.py --device cpu --rows 64 --depths 2 \\
        --shapes 32x32x16/4/2 --iters 1                                        # CPU dry run

For each depth's MLP (``--depths``, width 64·depth, hidden 4× that; ``--rows`` tokens,
default d12's micro-batch of 32 × 2048), in bf16, times the two passes that
``nanogpt_course/fused_mlp.py`` fuses:

- forward ``a = relu(x W_fcᵀ)²``: ``torch.compile`` of the readable expression (cuBLAS +
  an Inductor pointwise kernel, as the trainer's graph runs it) against the fused kernel;
- backward ``dh = (dy W_proj) · 2·sqrt(a)``: likewise;

plus the cuBLAS matmul alone (the floor the kernel's matmul competes with). The fused
times in that first row are the library's own call (on the GPU it times
``fused_mlp.LAUNCH_SHAPES`` once per problem and keeps the fastest). Then every launch shape
of ``--shapes`` (``BLOCK_MxBLOCK_NxBLOCK_K/warps/stages``, GROUP_M 8; default: the same
list) is timed alone for both fused passes; the report gives each time, the best shape per
pass, and the predicted saving per training step (``n_layer`` × (unfused − best fused),
both passes). A fixed shape: ``NANOGPT_COURSE_FUSED_MLP_AUTOTUNE=0`` and
``NANOGPT_COURSE_FUSED_MLP_{BLOCK_M,BLOCK_N,BLOCK_K,WARPS,STAGES}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
from bench_attention import timed  # noqa: E402  (bench/ is not a package)

from nanogpt_course import fused_mlp  # noqa: E402

SHAPES = tuple(f"{m}x{n}x{k}/{warps}/{stages}" for m, n, k, warps, stages in fused_mlp.LAUNCH_SHAPES)
ENV = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "WARPS", "STAGES")


def parse_shape(text: str) -> dict[str, int]:
    """``"128x256x64/8/3"`` -> the launch shape's environment values, by name."""
    tiles, warps, stages = text.split("/")
    return dict(zip(ENV, [*map(int, tiles.split("x")), int(warps), int(stages)]))


def with_launch_shape(shape: dict[str, int], fn):
    """``fn()`` with the kernel's launch shape set through its environment variables (and
    the library's timed choice off), the environment restored afterwards."""
    env = {f"NANOGPT_COURSE_FUSED_MLP_{k}": str(v) for k, v in {**shape, "AUTOTUNE": 0}.items()}
    with mock.patch.dict(os.environ, env):
        return fn()


def unfused_passes(*, compile: bool):
    """The two passes as the trainer's compiled graph runs them: a matmul, then a kernel."""
    def forward(x, w_fc):
        r = torch.relu(x @ w_fc.t())
        return r * r

    def backward(grad_y, w_proj, a):
        return ((grad_y @ w_proj).float() * (2 * a.float().sqrt())).to(grad_y.dtype)

    if compile:
        return torch.compile(forward, dynamic=False), torch.compile(backward, dynamic=False)
    return forward, backward


def mlp_tensors(rows: int, width: int, device, dtype=torch.bfloat16, seed: int = 0):
    """x (rows, C), w_fc (4C, C), grad_y (rows, C), w_proj (C, 4C), a = relu(x W_fcᵀ)²."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device=device, generator=g)).to(dtype)
    hidden = 4 * width
    x, w_fc = rand(rows, width), rand(hidden, width, scale=width ** -0.5)
    grad_y, w_proj = rand(rows, width), rand(width, hidden, scale=hidden ** -0.5)
    a = fused_mlp.matmul_epilogue_reference(x, w_fc.t(), "relu2")
    return x, w_fc, grad_y, w_proj, a


def pass_times(x, w_fc, grad_y, w_proj, a, *, iters: int, compile: bool) -> dict:
    """ms of both passes unfused (compiled) and fused (the current launch shape), and of
    the cuBLAS matmul alone."""
    cuda = x.is_cuda
    fwd, bwd = unfused_passes(compile=compile)

    def t(fn):
        return round(timed(fn, iters=iters, warmup=1, cuda=cuda), 4)
    return {"fwd_unfused_ms": t(lambda: fwd(x, w_fc)),
            "fwd_fused_ms": t(lambda: fused_mlp.matmul_epilogue(x, w_fc.t(), "relu2")),
            "bwd_unfused_ms": t(lambda: bwd(grad_y, w_proj, a)),
            "bwd_fused_ms": t(lambda: fused_mlp.matmul_epilogue(grad_y, w_proj, "drelu2", a)),
            "matmul_alone_ms": t(lambda: x @ w_fc.t())}


def sweep_depth(depth: int, rows: int, shapes: list[str], device, iters: int) -> dict:
    width = 64 * depth
    x, w_fc, grad_y, w_proj, a = mlp_tensors(rows, width, device)
    flops = 2 * rows * width * 4 * width  # one (rows, C) @ (C, 4C) matmul
    cuda = x.is_cuda
    base = pass_times(x, w_fc, grad_y, w_proj, a, iters=iters, compile=cuda)
    results = []
    for text in shapes:
        row = {"shape": text}
        try:
            times = with_launch_shape(parse_shape(text), lambda: {
                "fwd_ms": round(timed(lambda: fused_mlp.matmul_epilogue_triton(
                    x, w_fc.t(), "relu2"), iters=iters, warmup=1, cuda=cuda), 4),
                "bwd_ms": round(timed(lambda: fused_mlp.matmul_epilogue_triton(
                    grad_y, w_proj, "drelu2", a), iters=iters, warmup=1, cuda=cuda), 4)})
            row.update(times, fwd_tflops=round(flops / times["fwd_ms"] / 1e9, 1))
        except Exception as err:  # a shape Triton refuses (e.g. shared memory): report it
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        results.append(row)
        print(depth, row, flush=True)
    ran = [r for r in results if "error" not in r]
    best_fwd = min(ran, key=lambda r: r["fwd_ms"]) if ran else None
    best_bwd = min(ran, key=lambda r: r["bwd_ms"]) if ran else None
    out = {"depth": depth, "rows": rows, "width": width, "hidden": 4 * width, **base,
           "matmul_alone_tflops": round(flops / base["matmul_alone_ms"] / 1e9, 1),
           "results": results, "best_fwd": best_fwd, "best_bwd": best_bwd}
    if best_fwd and best_bwd:
        saved = (base["fwd_unfused_ms"] - best_fwd["fwd_ms"]
                 + base["bwd_unfused_ms"] - best_bwd["bwd_ms"])
        out["saved_ms_per_layer"] = round(saved, 4)
        out["saved_ms_per_step"] = round(saved * depth, 3)  # one MLP per layer
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=32 * 2048)
    p.add_argument("--depths", default="12,20")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    if not fused_mlp.KERNEL.available():
        raise SystemExit("the sweep times the Triton kernel: pip install triton")
    device = torch.device(args.device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "defaults": fused_mlp._launch_shape(),
              "depths": [sweep_depth(int(d), args.rows, args.shapes.split(","), device,
                                     args.iters) for d in args.depths.split(",")]}
    for d in report["depths"]:
        print(json.dumps({k: d.get(k) for k in ("depth", "fwd_unfused_ms", "bwd_unfused_ms",
                                                 "best_fwd", "best_bwd", "saved_ms_per_step")}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if all(d["best_fwd"] for d in report["depths"]) else 1


if __name__ == "__main__":
    sys.exit(main())
