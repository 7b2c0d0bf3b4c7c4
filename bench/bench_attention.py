"""Sliding-window attention against full causal attention, kernel by kernel (issue #19).

    python bench/bench_attention.py                     # CUDA: d12 and d20 shapes, every candidate
    python bench/bench_attention.py --shapes d12 --quick
    python bench/bench_attention.py --dry-run           # CPU: tiny shapes, the masked kernel

Why: a window of half the context skips about a quarter of the causal triangle's tiles at
T = 2048 (108 of 136 tiles of 128 x 128 are computed), so a windowed layer should cost ~79%
of a full one, yet FlexAttention with torch's default kernel options ran about as slow as
SDPA's flash kernel on the whole triangle (docs/PERFORMANCE.md). This times, forward and
forward + backward, with the same q, k, v:

- ``sdpa_causal``: SDPA with ``is_causal`` (flash attention): the full-context layer, then
  (CUDA) each of :data:`SDPA_BACKENDS` forced, ``sdpa_causal[FLASH_ATTENTION]`` etc.;
- ``flex_causal``: FlexAttention on the full causal mask (how far flex is from flash);
- ``flex_window``: FlexAttention on the window, with torch's default kernel options, then
  with each candidate of :data:`CANDIDATES` (tile sizes, warps, stages) and a mask block
  of 256 instead of 128; ``max-autotune`` lets Inductor pick the tiles itself.

Each row: milliseconds (median of ``--iters`` after warm-up), TFLOP/s from the exact count
of visible query-key pairs (4·D FLOPs per pair forward, 3.5x that for forward + backward),
the time relative to ``sdpa_causal`` and the largest difference of the output from the
default flex window (a candidate that changes the result is marked INVALID). The best valid
window candidate's options are what ``attention.FLEX_KERNEL_OPTIONS`` should hold.

Writes ``--out`` (default ``$OUT/bench_attention.json`` or ``runs/bench_attention.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import perf_summary  # noqa: E402  (bench/ is not a package)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nanogpt_course import attention  # noqa: E402

# (batch, heads, head dim) of the models' attention at micro-batch 32: width = 64 x depth,
# heads of 128 (GPTConfig.from_depth)
SHAPES = {"d12": (32, 6, 128), "d20": (32, 10, 128)}

# Kernel options tried on the window (FlexKernelOptions; "fwd_" / "bwd_" apply to one pass).
# Tile sizes, warps and stages only. The mask guarantees are *not* properties of a causal
# window: with ROWS_GUARANTEED_SAFE (alone or with BLOCKS_ARE_CONTIGUOUS) the kernel returned
# NaN on an H200 (2026-12-07). A query near the end of a tile sees nothing in the partial
# tile at the window's far edge, so a row is empty within that tile, and a row's partial
# tiles (that one and the diagonal) are not adjacent.
CANDIDATES = {
    "fwd128x64_w8_s3": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_warps": 8,
                        "fwd_num_stages": 3},
    "fwd128x128_w8_s2": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8,
                         "fwd_num_stages": 2},
    "fwd64x128_w4_s3": {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 128, "fwd_num_warps": 4,
                        "fwd_num_stages": 3},
    "bwd64x128_w8_s3": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128,
                        "bwd_BLOCK_N2": 64, "bwd_num_warps": 8, "bwd_num_stages": 3},
    "bwd32x128_w4_s3": {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128,
                        "bwd_BLOCK_N2": 32, "bwd_num_warps": 4, "bwd_num_stages": 3},
    "prescale": {"PRESCALE_QK": True},
    "tma": {"USE_TMA": True},
}
# a candidate whose output differs from the default kernel's by more than this (bf16
# inputs of unit scale) computes something else and is marked INVALID
MAX_DIFF = 0.05
QUICK = ("fwd128x64_w8_s3", "bwd64x128_w8_s3")
# SDPA's backends timed one at a time on the full causal layer (the models' default path
# lets SDPA pick; on an H100 with torch 2.11 it picked cuDNN's kernels)
SDPA_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")


def visible_pairs(seq_len: int, window: int | None) -> int:
    """Query-key pairs a causal (window ``None``) or sliding-window layer computes."""
    w = seq_len if window is None else min(window, seq_len)
    return sum(min(q + 1, w) for q in range(seq_len))


def attention_flops(batch: int, heads: int, head_dim: int, seq_len: int,
                    window: int | None, *, backward: bool) -> float:
    """4·D FLOPs per visible pair forward (QKᵀ and PV); backward adds 2.5x that (it
    recomputes QKᵀ, then dV, dP, dQ and dK)."""
    per_pair = 4 * head_dim * (3.5 if backward else 1.0)
    return batch * heads * visible_pairs(seq_len, window) * per_pair


def timed(fn, *, iters: int, warmup: int, cuda: bool) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_kernel(kind: str, seq_len: int, window: int | None, *, device, options=None,
                block: int = attention.FLEX_BLOCK_SIZE, mode: str | None = None):
    """A function (q, k, v) -> output for one row of the table."""
    if kind == "sdpa_causal":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if kind.startswith("sdpa_causal["):  # one SDPA backend forced, e.g. sdpa_causal[FLASH_ATTENTION]
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, kind[len("sdpa_causal["):-1])

        def forced(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return forced
    if device.type != "cuda":  # the dry run: FlexAttention has no backward on the CPU
        return lambda q, k, v: attention.causal_attention(q, k, v, window=window, backend="mask")
    from torch.nn.attention.flex_attention import flex_attention

    mask = attention.sliding_window_block_mask(seq_len, window, device=device, block=block)
    kwargs = {"block_mask": mask}
    if options:
        kwargs["kernel_options"] = dict(options)
    torch._dynamo.reset()  # each candidate is a recompile: never hit dynamo's limit of 8
    compiled = torch.compile(flex_attention, dynamic=False, mode=mode)
    return lambda q, k, v: compiled(q, k, v, **kwargs)


def measure(name: str, kernel, q, k, v, *, flops_fwd: float, flops_fb: float, iters: int,
            warmup: int, reference=None) -> dict:
    """Forward and forward + backward times of one kernel; an error is recorded, not raised."""
    cuda = q.device.type == "cuda"
    row = {"name": name}
    try:
        t_compile = time.perf_counter()
        with torch.no_grad():
            out = kernel(q, k, v)
        if cuda:
            torch.cuda.synchronize()
        row["first_call_s"] = round(time.perf_counter() - t_compile, 2)
        if reference is not None:
            row["max_abs_diff"] = float((out.float() - reference.float()).abs().max())
        with torch.no_grad():
            row["fwd_ms"] = timed(lambda: kernel(q, k, v), iters=iters, warmup=warmup, cuda=cuda)
        grad = torch.randn_like(q)
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))

        def fwd_bwd():
            kernel(qg, kg, vg).backward(grad)

        row["fwd_bwd_ms"] = timed(fwd_bwd, iters=iters, warmup=warmup, cuda=cuda)
        row["fwd_tflops"] = round(flops_fwd / row["fwd_ms"] / 1e9, 1)
        row["fwd_bwd_tflops"] = round(flops_fb / row["fwd_bwd_ms"] / 1e9, 1)
        return row
    except Exception as err:  # noqa: BLE001 - a candidate the kernel rejects is a result too
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        return row
    finally:
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "name"),
              flush=True)


def bench_shape(label: str, batch: int, heads: int, head_dim: int, *, seq_len: int,
                window: int, device, iters: int, warmup: int, quick: bool,
                autotune: bool) -> list[dict]:
    """Every row for one (batch, heads, head dim) at ``seq_len`` with a ``window``."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, generator=gen).to(device, dtype)
               for _ in range(3))
    full = dict(flops_fwd=attention_flops(batch, heads, head_dim, seq_len, None, backward=False),
                flops_fb=attention_flops(batch, heads, head_dim, seq_len, None, backward=True))
    win = dict(flops_fwd=attention_flops(batch, heads, head_dim, seq_len, window, backward=False),
               flops_fb=attention_flops(batch, heads, head_dim, seq_len, window, backward=True))
    timing = dict(iters=iters, warmup=warmup)
    rows = [measure("sdpa_causal", make_kernel("sdpa_causal", seq_len, None, device=device),
                    q, k, v, **full, **timing),
            measure("flex_causal", make_kernel("flex", seq_len, None, device=device),
                    q, k, v, **full, **timing)]
    default = make_kernel("flex", seq_len, window, device=device)
    with torch.no_grad():
        reference = default(q, k, v)
    rows.append(measure("flex_window", default, q, k, v, **win, **timing, reference=reference))
    if device.type == "cuda":  # which backend SDPA's default picked: each one alone
        for backend in SDPA_BACKENDS:
            kind = f"sdpa_causal[{backend}]"
            rows.append(measure(kind, make_kernel(kind, seq_len, None, device=device),
                                q, k, v, **full, **timing, reference=None))
        names = QUICK if quick else tuple(CANDIDATES)
        for name in names:
            kernel = make_kernel("flex", seq_len, window, device=device, options=CANDIDATES[name])
            rows.append(measure(f"flex_window[{name}]", kernel, q, k, v, **win, **timing,
                                reference=reference))
        for block in (() if quick else (256,)):  # 64 fails: the kernel's tiles are 128
            kernel = make_kernel("flex", seq_len, window, device=device, block=block)
            rows.append(measure(f"flex_window[mask block {block}]", kernel, q, k, v,
                                **win, **timing, reference=reference))
        if autotune:
            kernel = make_kernel("flex", seq_len, window, device=device,
                                 mode="max-autotune-no-cudagraphs")
            rows.append(measure("flex_window[max-autotune]", kernel, q, k, v, **win,
                                **timing, reference=reference))
    return annotate(rows, label)


def annotate(rows: list[dict], label: str) -> list[dict]:
    """Each row's shape, its time relative to the first row (``sdpa_causal``), and
    ``invalid`` when its output is off the default window kernel's by more than MAX_DIFF."""
    base = rows[0].get("fwd_bwd_ms")
    for row in rows:
        row["shape"] = label
        if base and row.get("fwd_bwd_ms"):
            row["vs_sdpa_causal"] = round(row["fwd_bwd_ms"] / base, 3)
        diff = row.get("max_abs_diff")
        if diff is not None and not diff <= MAX_DIFF:  # NaN fails this too
            row["invalid"] = True
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| shape | kernel | fwd ms | fwd+bwd ms | fwd+bwd TFLOP/s | vs sdpa causal | "
             "max diff | first call s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['name']} | error: {r['error'][:80]} | | | | | |")
            continue
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
        diff += " INVALID" if r.get("invalid") else ""
        lines.append(f"| {r['shape']} | {r['name']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                     f"{r['fwd_bwd_tflops']} | {r.get('vs_sdpa_causal', '')} | {diff} | "
                     f"{r['first_call_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="d12,d20", help=f"comma-separated, of {sorted(SHAPES)}")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--window", type=int, default=None, help="default: half the sequence")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--quick", action="store_true",
                   help=f"only the candidates {', '.join(QUICK)}; no other mask block")
    p.add_argument("--autotune", action="store_true",
                   help="also let Inductor's max-autotune choose the tiles (minutes of compile)")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny shapes; the masked kernel stands in for FlexAttention")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if args.dry_run:
        shapes, seq_len, iters, warmup = {"tiny": (2, 2, 16)}, 256, 2, 1
    else:
        shapes = {s: SHAPES[s] for s in args.shapes.split(",")}
        seq_len, iters, warmup = args.seq_len, args.iters, args.warmup
    window = args.window or seq_len // 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {**perf_summary.run_meta(name), "seq_len": seq_len, "window": window,
              "candidates": CANDIDATES, "rows": []}
    for label, (b, h, d) in shapes.items():
        print(f"{label}: batch {b}, {h} heads of {d}, T {seq_len}, window {window}", flush=True)
        report["rows"] += bench_shape(label, b, h, d, seq_len=seq_len, window=window,
                                      device=device, iters=iters, warmup=warmup,
                                      quick=args.quick or args.dry_run, autotune=args.autotune)
        print(table([r for r in report["rows"] if r["shape"] == label]), flush=True)
    out = args.out or (Path(os.environ["OUT"]) / "bench_attention.json" if os.environ.get("OUT")
                       else ROOT / "runs" / "bench_attention.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
