"""Muon benchmarks and GPU checks: same-shape batching, variants, DistMuonAdamW on the GPU.

    python bench/bench_muon.py                        # GPU: the two checks below, JSON report
    python bench/bench_muon.py --variants             # GPU: time the implementation variants
    python bench/bench_muon.py --profile default,v1   # GPU: kernel-by-kernel table per variant
    python bench/bench_muon.py --device cpu --tiny    # dry run of the same code on a laptop
    python bench/bench_muon.py --device cpu --tiny --variants

1. ``muon_batching``: one Muon step (momentum + Newton-Schulz + update) over the block
   matrices of the d12 and d20 models (vocab 32768, seq 2048), with same-shape matrices
   stacked into one batched call vs one matrix at a time (today's code and v1's, the
   faster of the two counts), and the FLOP floor of the Newton-Schulz matmuls. Targets:
   >= 5x at d12 (DESIGN); at d20 5x is out of reach (the one-at-a-time step is already
   within ~2.6x of the matmul floor), so >= 1.3x. Also: the fused (compiled) kernels
   against the eager path in fp32.
2. ``dist_step_vs_cpu``: DistMuonAdamW on a one-rank process group (NCCL on CUDA, gloo on
   CPU) for a few steps on fixed gradients against MuonAdamW on the CPU, twice: with fp32
   orthogonalization on both sides (must agree to ~1e-6: proves the device/NCCL path), and
   with the device's bf16 orthogonalization against the CPU emulating it in bf16, plus the
   cosine of every per-step update against the fp32 reference.
3. ``--variants``: the Muon step of several implementations in one run (the seed's code,
   v1, the library's, and rejected candidates, see ``VARIANT_PARTS``), each with its time,
   its speed-up over the seed's code and how far its update is from the seed's and from an
   fp32 reference. ``--profile``: the top kernels of a few steps per variant.

``bench/gpu_check.py`` calls :func:`muon_batching` and :func:`dist_step_vs_cpu` (each
returns a JSON-safe dict with ``ok``); :func:`muon_variants` works the same way.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout

import torch  # noqa: E402

from nanogpt_course.model import GPT, GPTConfig  # noqa: E402
from nanogpt_course.optim import (  # noqa: E402
    DistMuonAdamW,
    MuonAdamW,
    build_optimizer,
    fused,
    muon,
)
from nanogpt_course.optim.muon import orthogonalize_dtype  # noqa: E402

FULL_DEPTHS = (12, 20)  # --tiny uses depth 2 at a narrow width
# muon_batching's pass mark per depth (see the module doc and docs/PERFORMANCE.md)
SPEEDUP_TARGET = {12: 5.0, 20: 1.3}
NOMINAL_TFLOPS = 600.0  # what a well-fed H100 bf16 batched matmul sustains, for the floor


def model_config(depth: int, tiny: bool) -> GPTConfig:
    if tiny:
        return GPTConfig.from_depth(depth, vocab_size=512, sequence_len=128, aspect_ratio=32,
                                    head_dim=32)
    return GPTConfig.from_depth(depth, vocab_size=32768, sequence_len=2048)


def matrix_shapes(cfg: GPTConfig) -> list[tuple[int, int]]:
    """The shapes of the model's Muon matrices (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return [tuple(p.shape) for p in model.parameter_kinds()["matrix"]]


def ns_flops(shapes, steps: int = 5) -> float:
    """Matmul FLOPs of ``steps`` Newton-Schulz steps over ``shapes`` (wide side m <= n):
    ``X X^T`` 2m^2n, ``A A`` 2m^3, ``B X`` 2m^2n per step."""
    total = 0
    for rows, cols in shapes:
        m, n = min(rows, cols), max(rows, cols)
        total += steps * (4 * m * m * n + 2 * m ** 3)
    return float(total)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- timing
def _make_params(shapes, device, seed: int = 0):
    """fp32 matrices ``~ 0.02 N(0, 1)`` with fixed N(0, 1) gradients, reproducible."""
    g = torch.Generator(device=device).manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, device=device, generator=g) * 0.02)
              for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=g)
    return params


def _time_steps(opt, device, steps: int, warmup: int, repeats: int = 1) -> float:
    """Best over ``repeats`` of the mean milliseconds per ``opt.step()`` over ``steps``."""
    for _ in range(warmup):
        opt.step()
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / steps * 1e3)
    return best


def time_muon_step(shapes, device, *, batched: bool, steps: int = 10, warmup: int = 3,
                   opt_cls=None) -> float:
    """Milliseconds per Muon step over matrices of ``shapes`` (fp32 params, fixed grads)."""
    params = _make_params(shapes, device)
    opt = (opt_cls or MuonAdamW)([{"kind": "muon", "params": params}],
                                 batch_same_shape=batched)
    return _time_steps(opt, device, steps, warmup, repeats=2)


def muon_batching(device="cuda", *, tiny: bool = False) -> dict:
    """Batched vs one-matrix-at-a-time Muon step time for d12 and d20 (targets: module doc).

    One at a time is timed twice: with today's code (``per_matrix_ms``) and with v1's
    (the library before its fused path, ``per_matrix_v1_ms``), and the speed-up that is
    checked is against the *faster* of the two (``speedup_vs_best_per_matrix``): so a
    slower one-at-a-time path can never make batching look better than it is.
    """
    device = torch.device(device)
    out = {"device": str(device), "gpu": torch.cuda.get_device_name(device)
           if device.type == "cuda" else None}
    ok = True
    for depth in ((2,) if tiny else FULL_DEPTHS):
        shapes = matrix_shapes(model_config(depth, tiny))
        steps = 3 if tiny else 10
        batched = time_muon_step(shapes, device, batched=True, steps=steps)
        single = time_muon_step(shapes, device, batched=False, steps=steps)
        batched_v1 = time_muon_step(shapes, device, batched=True, steps=steps,
                                    opt_cls=V1MuonAdamW)
        single_v1 = time_muon_step(shapes, device, batched=False, steps=steps,
                                   opt_cls=V1MuonAdamW)
        best_single = min(single, single_v1)
        flops = ns_flops(shapes)
        out[f"d{depth}"] = {"matrices": len(shapes), "distinct_shapes": len(set(shapes)),
                            "muon_params": sum(a * b for a, b in shapes),
                            "batched_ms": round(batched, 3), "per_matrix_ms": round(single, 3),
                            "speedup": round(single / batched, 2),
                            "batched_v1_ms": round(batched_v1, 3),
                            "per_matrix_v1_ms": round(single_v1, 3),
                            "speedup_vs_best_per_matrix": round(best_single / batched, 2),
                            "ns_tflop": round(flops / 1e12, 3),
                            "ns_floor_ms_at_nominal": round(flops / NOMINAL_TFLOPS / 1e9, 2),
                            "batched_ns_tflops": round(flops / batched / 1e9, 1)}
        if device.type == "cuda":
            ok &= best_single / batched >= SPEEDUP_TARGET.get(depth, 5.0)
    # the fused kernels compute the eager path's math: in fp32 (TF32 off) the two must
    # agree to summation order (this runs the compiled code on every d12 bucket)
    shapes = matrix_shapes(model_config(2 if tiny else 12, tiny))
    with orthogonalize_dtype(torch.float32), _fp32_matmuls(device):
        with_fused = _two_step_update(MuonAdamW, True, shapes, device)
        with _patched(fused, ENABLED=False):
            eager = _two_step_update(MuonAdamW, True, shapes, device)
    out["fused_vs_eager_fp32_rel_diff"] = _compare(with_fused, eager)["rel_diff"]
    out["fused_used"] = bool(fused.ENABLED and device.type == "cuda" and not fused._broken)
    out["fused_error"] = fused._broken[0] if fused._broken else None
    ok &= out["fused_vs_eager_fp32_rel_diff"] <= 1e-5
    out["ok"] = bool(ok)
    out["target"] = ("speedup_vs_best_per_matrix >= 5x at d12 and >= 1.3x at d20 on CUDA "
                     "(not checked on CPU); floor = NS matmul FLOPs at "
                     f"{NOMINAL_TFLOPS:.0f} TFLOP/s")
    return out


# ----------------------------------------------------------------------------- variants
# Two frozen earlier versions of the Muon step, kept as baselines: the seed's code, and the
# library's code before the fused path ("v1": baddbmm Newton-Schulz, eager elementwise
# passes, parameters stacked and copied back). Both share V1MuonAdamW's bucket step.
def _seed_orthogonalize(G, steps=5, *, method="newton_schulz", dtype=None, eps=1e-7):
    X = G.to(dtype or muon._default_dtype(G))
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    lead = X.shape[:-2]
    X = X.reshape(-1, X.size(-2), X.size(-1))
    scale = muon._SAFETY if method == "polar_express" else 1.0
    norm = X.float().norm(dim=(-2, -1), keepdim=True) * scale + eps
    X = X / norm.to(X.dtype)
    for a, b, c in muon.coefficients(method, steps):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    X = X.reshape(*lead, X.size(-2), X.size(-1))
    if tall:
        X = X.mT
    return X.to(G.dtype)


def _v1_newton_schulz_steps(X, coeffs, tall, out_dtype=None):
    """v1's loop: ``X <- a X + B X`` with ``B = bA + cA^2`` (two baddbmm per step, each
    copying its input first); B is rounded to bf16 on its own."""
    last = len(coeffs) - 1
    for i, (a, b, c) in enumerate(coeffs):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        if tall and i == last:
            return torch.baddbmm(X.mT, X.mT, B, beta=a).to(out_dtype or X.dtype)
        X = torch.baddbmm(X, B, X, beta=a)
    return (X.mT if tall else X).to(out_dtype or X.dtype)


def _ns_fold_identity(X, coeffs, tall, out_dtype=None):
    """Rejected candidate: ``X <- (B + a I) X`` with ``B`` rounded to bf16 *before* adding
    ``a`` (two roundings of the diagonal: 2x the bf16 error of the library's one rounding)."""
    for a, b, c in coeffs:
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        B.diagonal(dim1=-2, dim2=-1).add_(a)
        X = torch.bmm(B, X)
    return (X.mT if tall else X).to(out_dtype or X.dtype)


def _quintic_matrix(A, AA, abc):
    """``aI + bA + cA^2`` from fp32 ``AA = A @ A``, summed in fp32 and rounded once."""
    P = AA * abc[2] + A.float() * abc[1]
    diagonal = torch.eye(A.size(-1), dtype=torch.bool, device=A.device)
    return torch.where(diagonal, P + abc[0], P).to(A.dtype)


def _ns_fold32(X, coeffs, tall, out_dtype=None):
    """Candidate (measured, not kept): ``P = aI + bA + cA^2`` built whole in fp32 from an
    fp32 ``A @ A`` (``out_dtype``) and rounded once, compiled on CUDA. Same numerics as the
    library's loop; it writes and reads an fp32 (m, m) matrix per step (slow at d20)."""
    last = len(coeffs) - 1
    for i, (a, b, c) in enumerate(coeffs):
        A = torch.bmm(X, X.mT)
        abc = torch.tensor([a, b, c], dtype=torch.float32, device=X.device)
        combine = fused.compiled(_quintic_matrix) if fused.use_fused(X) else _quintic_matrix
        P = combine(A, muon._bmm_into(A, A, torch.float32), abc)
        if tall and i == last:
            return torch.bmm(X.mT, P).to(out_dtype or X.dtype)
        X = torch.bmm(P, X)
    return (X.mT if tall else X).to(out_dtype or X.dtype)


class V1MuonAdamW(MuonAdamW):
    """The Muon bucket step of v1 (and, with ``seed=True``, of the seed): stack grads and
    params, clip in a separate pass, eager momentum/norm/cast, copy the params back."""

    seed = False

    def _step_muon_bucket(self, group, key, bucket, coef) -> None:
        params = [p for p in bucket if p.grad is not None]
        if not params:
            return
        grads = torch.stack([p.grad for p in params])
        if coef is not None:
            grads.mul_(coef)
        stacked = torch.stack(params)
        momentum = self._stacked_state(key, params)
        beta = group["momentum"]
        momentum.lerp_(grads, 1.0 - beta)
        update = grads.lerp(momentum, beta) if group["nesterov"] else momentum
        if self.seed:
            direction = _seed_orthogonalize(update, group["ns_steps"],
                                            method=group["orthogonalizer"]).to(stacked.dtype)
        else:
            with _patched(muon, _newton_schulz_steps=_v1_newton_schulz_steps):
                direction = muon._orthogonalize(update, group["ns_steps"],
                                                group["orthogonalizer"], None, 1e-7)
        muon.apply_muon_step_(stacked, direction, lr=group["lr"],
                              weight_decay=group["weight_decay"],
                              cautious=group["cautious_weight_decay"])
        torch._foreach_copy_(params, list(stacked.unbind(0)))


class SeedMuonAdamW(V1MuonAdamW):
    seed = True


@contextmanager
def _patched(module, **attrs):
    saved = {name: getattr(module, name) for name in attrs}
    for name, value in attrs.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


# A variant is parts joined by "+", e.g. "v1+single"; "default" is the library as is.
VARIANT_PARTS = {
    "seed": "the seed's muon.py code (frozen baseline)",
    "v1": "the library before the fused path: baddbmm NS, params stacked and copied back",
    "single": "one matrix at a time (batch_same_shape=False)",
    "eager": "the library with its fused kernels off (NANOGPT_COURSE_MUON_FUSED=0)",
    "fold": "rejected: NS step as (B + aI) X with B rounded first (2x the bf16 error)",
    "fold32": "candidate: P = aI + bA + cA^2 whole in fp32 (fp32 A @ A), compiled on CUDA",
}
DEFAULT_VARIANTS = ("seed", "seed+single", "v1", "v1+single", "default", "single", "eager",
                    "fold", "fold32")


def _variant_setup(name: str, stack: ExitStack, device) -> tuple[type, bool]:
    """Enter the variant's patches on ``stack``; return (optimizer class, batched)."""
    parts = [] if name == "default" else name.split("+")
    unknown = [p for p in parts if p not in VARIANT_PARTS]
    if unknown:
        raise ValueError(f"unknown variant part(s) {unknown}; known: {sorted(VARIANT_PARTS)}")
    if "eager" in parts:
        stack.enter_context(_patched(fused, ENABLED=False))
    if "fold" in parts:
        stack.enter_context(_patched(muon, _newton_schulz_steps=_ns_fold_identity))
    if "fold32" in parts:
        stack.enter_context(_patched(muon, _newton_schulz_steps=_ns_fold32))
    cls = SeedMuonAdamW if "seed" in parts else V1MuonAdamW if "v1" in parts else MuonAdamW
    return cls, "single" not in parts


@contextmanager
def _fp32_matmuls(device):
    """True fp32 matmuls on CUDA (TF32 off) inside; restores the setting after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def time_newton_schulz(shapes, device, *, steps: int = 10, warmup: int = 3) -> float:
    """Milliseconds of the orthogonalization alone (library, default dtype) over ``shapes``,
    one batched call per distinct shape: the matmul part of a batched Muon step."""
    g = torch.Generator(device=device).manual_seed(0)
    counts: dict = {}
    for s in shapes:
        counts[s] = counts.get(s, 0) + 1
    stacks = [torch.randn((k, *s), device=device, generator=g) for s, k in counts.items()]

    def run():
        for x in stacks:
            muon._orthogonalize(x, 5, "newton_schulz", None, 1e-7)

    for _ in range(warmup):
        run()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def _two_step_update(opt_cls, batched, shapes, device) -> list[torch.Tensor]:
    """``W_2 - W_0`` after two steps (different gradients, momentum on) from a fixed start."""
    params = _make_params(shapes, device)
    start = [p.detach().clone() for p in params]
    opt = opt_cls([{"kind": "muon", "params": params}], batch_same_shape=batched)
    opt.step()
    g = torch.Generator(device=device).manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=g)
    opt.step()
    return [p.detach() - s for p, s in zip(params, start)]


def _compare(upd, ref) -> dict:
    """Relative Frobenius distance over all matrices, and the smallest per-matrix cosine."""
    num = sum(float((u.double() - r.double()).pow(2).sum()) for u, r in zip(upd, ref))
    den = sum(float(r.double().pow(2).sum()) for r in ref)
    cos = min(float((u.double() * r.double()).sum()
                    / (u.double().norm() * r.double().norm()).clamp_min(1e-300))
              for u, r in zip(upd, ref))
    return {"rel_diff": math.sqrt(num / den), "min_cos": cos}


def muon_variants(device="cuda", *, tiny: bool = False, variants=DEFAULT_VARIANTS,
                  depths=None) -> dict:
    """Time each variant's Muon step on the d12/d20 matrix sets and compare its two-step
    update with the seed's code and with an fp32 reference (the library in fp32, TF32 off).

    ``within_bf16``: the variant's distance to the fp32 reference is at most 1.25x the
    seed's own (bf16 rounding noise; on the CPU both are fp32 and the distances ~1e-6).
    """
    device = torch.device(device)
    out = {"device": str(device), "gpu": torch.cuda.get_device_name(device)
           if device.type == "cuda" else None, "parts": VARIANT_PARTS}
    ok = True
    for depth in depths or ((2,) if tiny else FULL_DEPTHS):
        shapes = matrix_shapes(model_config(depth, tiny))
        with orthogonalize_dtype(torch.float32), _fp32_matmuls(device):
            ref32 = _two_step_update(MuonAdamW, True, shapes, device)
        ref_seed = _two_step_update(SeedMuonAdamW, True, shapes, device)
        seed_err = _compare(ref_seed, ref32)["rel_diff"]
        rows, seed_ms = {}, None
        for name in variants:
            t0 = time.perf_counter()
            try:
                with ExitStack() as stack:
                    opt_cls, batched = _variant_setup(name, stack, device)
                    upd = _two_step_update(opt_cls, batched, shapes, device)
                    opt = opt_cls([{"kind": "muon", "params": _make_params(shapes, device)}],
                                  batch_same_shape=batched)
                    ms = _time_steps(opt, device, steps=3 if tiny else 10, warmup=3,
                                     repeats=1 if tiny else 3)
                    del opt
            except Exception as err:  # one broken variant must not hide the others
                rows[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
                ok = False
                continue
            vs_seed, vs32 = _compare(upd, ref_seed), _compare(upd, ref32)
            seed_ms = ms if name == "seed" else seed_ms
            rows[name] = {"ms": round(ms, 3),
                          "speedup_vs_seed": round(seed_ms / ms, 2) if seed_ms else None,
                          "rel_diff_vs_seed": vs_seed["rel_diff"],
                          "min_cos_vs_seed": vs_seed["min_cos"],
                          "rel_err_vs_fp32": vs32["rel_diff"],
                          "within_bf16": vs32["rel_diff"] <= 1.25 * seed_err + 1e-6,
                          "seconds": round(time.perf_counter() - t0, 1)}
            print(f"  d{depth} {name:18s} {ms:9.3f} ms  "
                  f"x{rows[name]['speedup_vs_seed']}  vs seed {vs_seed['rel_diff']:.2e} "
                  f"(cos {vs_seed['min_cos']:.5f})  vs fp32 {vs32['rel_diff']:.2e}", flush=True)
            del upd
            if device.type == "cuda":
                torch.cuda.empty_cache()
        ns_ms = time_newton_schulz(shapes, device, steps=3 if tiny else 10)
        flops = ns_flops(shapes)
        out[f"d{depth}"] = {"matrices": len(shapes), "ns_tflop": round(flops / 1e12, 3),
                            "ns_only_ms": round(ns_ms, 3),
                            "ns_only_tflops": round(flops / ns_ms / 1e9, 1),
                            "seed_rel_err_vs_fp32": seed_err, "variants": rows}
        print(f"  d{depth} Newton-Schulz alone {ns_ms:.3f} ms "
              f"({flops / ns_ms / 1e9:.0f} TFLOP/s)", flush=True)
        del ref32, ref_seed
    out["ok"] = bool(ok)
    return out


def profile_variants(device="cuda", *, tiny: bool = False, variants=("default",),
                     depth: int = 12, steps: int = 3, top: int = 18) -> dict:
    """Kernel-level profile of ``steps`` Muon steps per variant: the top kernels by GPU
    time, their sum (GPU busy time) against the wall time (the gap is host overhead)."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    shapes = matrix_shapes(model_config(2 if tiny else depth, tiny))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {"device": str(device), "depth": 2 if tiny else depth}
    for name in variants:
        with ExitStack() as stack:
            opt_cls, batched = _variant_setup(name, stack, device)
            opt = opt_cls([{"kind": "muon", "params": _make_params(shapes, device)}],
                          batch_same_shape=batched)
            for _ in range(3):
                opt.step()
            _sync(device)
            t0 = time.perf_counter()
            with profile(activities=acts) as prof:
                for _ in range(steps):
                    opt.step()
                _sync(device)
            wall = (time.perf_counter() - t0) / steps * 1e3
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
        if device.type == "cuda":  # kernels only (CPU-side ops also carry device time)
            events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(getattr(e, key) for e in events) / steps / 1e3
        rows = sorted(events, key=lambda e: -getattr(e, key))[:top]
        table = [{"kernel": e.key[:90], "calls": e.count // steps,
                  "ms_per_step": round(getattr(e, key) / steps / 1e3, 3)} for e in rows]
        out[name] = {"wall_ms_profiled": round(wall, 3), "kernel_ms": round(busy, 3),
                     "top": table}
        print(f"  profile {name}: wall {wall:.3f} ms/step (profiled), kernels {busy:.3f} ms",
              flush=True)
        for r in table:
            print(f"    {r['ms_per_step']:8.3f} ms  x{r['calls']:<4d} {r['kernel']}", flush=True)
    out["ok"] = True
    return out


# ----------------------------------------------------------------------------- distributed
def _one_rank_group(device: torch.device):
    """A one-rank process group (NCCL on CUDA, gloo on CPU); None if one already exists."""
    import torch.distributed as dist

    if dist.is_initialized():
        return None
    store = dist.FileStore(tempfile.mktemp(prefix="bench_muon_store"), 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                            rank=0, world_size=1)
    return dist


def _run_optimizer(cfg, init: dict, grads, device, *, distributed: bool, ortho_dtype,
                   muon_options: dict | None = None):
    """``len(grads)`` optimizer steps of a fresh model (weights ``init``) on ``device``.

    ``ortho_dtype``: orthogonalization dtype (None: the device's default; float32 also
    turns TF32 off). ``muon_options``: more ``build_optimizer`` keywords (the Muon
    refinements). Returns (final params on the CPU, per-step updates of the matrix
    params on the CPU, per-step grad norms, step milliseconds of the last step, state bytes).
    """
    model = GPT(cfg).to(device)
    model.load_state_dict(init)
    opt = build_optimizer(model, max_grad_norm=1.0, distributed=distributed,
                          weight_decay=0.1, adamw_weight_decay=0.01, **(muon_options or {}))
    assert isinstance(opt, DistMuonAdamW if distributed else MuonAdamW)
    matrices = {id(p) for p in model.parameter_kinds()["matrix"]}
    params = list(model.parameters())
    updates, norms, ms = [], [], 0.0
    with ExitStack() as stack:
        if ortho_dtype is not None:
            stack.enter_context(orthogonalize_dtype(ortho_dtype))
        if ortho_dtype == torch.float32:
            stack.enter_context(_fp32_matmuls(device))
        for step_grads in grads:
            before = [p.detach().clone() for p in params if id(p) in matrices]
            for p, gr in zip(params, step_grads):
                p.grad = gr.to(device)
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            ms = (time.perf_counter() - t0) * 1e3
            after = [p.detach() for p in params if id(p) in matrices]
            updates.append([(a - b).cpu() for a, b in zip(after, before)])
            norms.append(float(opt.grad_norm))
    kinds = ["matrix" if id(p) in matrices else "other" for p in params]
    return ([p.detach().cpu() for p in params], kinds, updates, norms, ms, opt.state_bytes())


def _max_rel_err(params, ref, kinds, kind) -> float:
    errs = [float((p.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30))
            for p, r, k in zip(params, ref, kinds) if k == kind]
    return max(errs) if errs else 0.0


def _min_update_cos(updates, ref_updates) -> float:
    return min(float((u.double() * r.double()).sum()
                     / (u.double().norm() * r.double().norm()).clamp_min(1e-300))
               for step, ref_step in zip(updates, ref_updates) for u, r in zip(step, ref_step))


# Tolerances of dist_step_vs_cpu (relative Frobenius errors of each parameter after the
# steps; cosines of each matrix's per-step update). Measured numbers: docs/PERFORMANCE.md.
DIST_TOL = {
    # fp32 both sides, TF32 off: the two runs differ only in summation order (cuBLAS vs CPU
    # BLAS, reduction trees, batching), ~1e-7 per op. Newton-Schulz amplifies perturbations
    # of the smallest singular directions (slope 3.4 per step) but those carry almost no
    # norm; the CPU/gloo dry run measures ~1e-6 for matrices and ~4e-7 for AdamW tensors.
    "fp32_matrix": 1e-5,
    "fp32_other": 1e-5,
    # the device's global grad norm against the float64 norm of the same gradients: a sum
    # of ~37M fp32 squares in a tree is good to ~1e-7 (the CPU MuonAdamW reference itself
    # is off by ~2.4e-4 here: torch's CPU fp32 vector_norm; reported, not checked).
    "grad_norm": 1e-5,
    # bf16 on the device vs bf16 emulated on the CPU: bf16 results are chaotic at the bf16
    # rounding level. Any change in summation order (cuBLAS vs CPU GEMMs) or a 2e-4 change
    # of the clip coefficient re-rolls every rounding, so the two runs differ about as much
    # as bf16 differs from fp32: the CPU dry run at d4 measures 6.4e-3 (gloo bf16 vs local
    # bf16) and 8.8e-3 (bf16 vs fp32; the GPU measured 9.6e-3). Those errors sit in the
    # zero-initialized output projections, where W is the sum of the updates, so W's error
    # is Newton-Schulz's bf16 error itself (~1.4%). Two independent bf16 runs can differ by
    # ~sqrt(2) x 1e-2; 3e-2 leaves room for that, while a real bug (a wrong, stale or
    # mis-scaled matrix) is >= 0.1.
    "bf16_matrix": 3e-2,
    # the per-step update of every matrix, bf16 on the device vs the fp32 CPU reference:
    # a ~1.4% relative error gives cos ~ 1 - 0.014^2 / 2 = 0.9999 (the CPU measures
    # 0.99993); 0.999 allows a 4.5% error, anything broken is far below.
    "update_cos": 0.999,
}


def dist_step_vs_cpu(device="cuda", *, tiny: bool = False, steps: int = 3,
                     muon_options: dict | None = None) -> dict:
    """DistMuonAdamW (1 rank, on ``device``) vs MuonAdamW on the CPU, same gradients, with
    ``muon_options`` (``build_optimizer`` keywords, e.g. the refinements) on both sides:

    (a) fp32 orthogonalization on both (TF32 off): every parameter within ``DIST_TOL``;
    (b) the device's bf16 orthogonalization vs the CPU's in bf16 (on a CPU device: bf16 on
        both), and the cosine of every per-step matrix update with the fp32 CPU reference.
    """
    import torch.distributed as dist

    device = torch.device(device)
    cfg = model_config(2 if tiny else 4, tiny)
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in GPT(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    shapes = [p.shape for p in GPT(cfg).parameters()]
    grads = [[torch.randn(s, generator=g) * 1e-2 for s in shapes] for _ in range(steps)]
    true_norms = [math.sqrt(sum(float(gr.double().pow(2).sum()) for gr in step))
                  for step in grads]
    created = _one_rank_group(device)
    try:
        cpu = torch.device("cpu")
        run = functools.partial(_run_optimizer, cfg, init, grads, muon_options=muon_options)
        ref32 = run(cpu, distributed=False, ortho_dtype=torch.float32)
        ref16 = run(cpu, distributed=False, ortho_dtype=torch.bfloat16)
        dev32 = run(device, distributed=True, ortho_dtype=torch.float32)
        # the training path: bf16 on CUDA by default; a CPU dry run asks for it explicitly
        dev16 = run(device, distributed=True,
                    ortho_dtype=None if device.type == "cuda" else torch.bfloat16)
    finally:
        if created is not None:
            dist.destroy_process_group()
    kinds = ref32[1]
    norm_err = max(abs(n - t) / t for n, t in zip(dev32[3] + dev16[3], true_norms * 2))
    res = {
        "device": str(device), "depth": cfg.n_layer, "steps": steps,
        "muon_options": muon_options or {},
        "fp32_matrix_max_rel_err": _max_rel_err(dev32[0], ref32[0], kinds, "matrix"),
        "fp32_other_max_rel_err": _max_rel_err(dev32[0], ref32[0], kinds, "other"),
        "grad_norm_rel_err": norm_err,
        "cpu_ref_grad_norm_rel_err": max(abs(n - t) / t for n, t in zip(ref32[3], true_norms)),
        "bf16_matrix_max_rel_err": _max_rel_err(dev16[0], ref16[0], kinds, "matrix"),
        "bf16_other_max_rel_err": _max_rel_err(dev16[0], ref16[0], kinds, "other"),
        "bf16_update_min_cos_vs_bf16": _min_update_cos(dev16[2], ref16[2]),
        "bf16_update_min_cos_vs_fp32": _min_update_cos(dev16[2], ref32[2]),
        # for scale: what the old check compared (bf16 device vs fp32 CPU, W itself), and
        # the same gap on the CPU alone (CPU bf16 vs CPU fp32)
        "bf16_vs_fp32_matrix_max_rel_err": _max_rel_err(dev16[0], ref32[0], kinds, "matrix"),
        "cpu_bf16_vs_fp32_matrix_max_rel_err": _max_rel_err(ref16[0], ref32[0], kinds,
                                                            "matrix"),
        "step_ms_last": round(dev16[4], 3), "state_bytes": dev16[5], "tolerances": DIST_TOL,
    }
    res["ok"] = bool(res["fp32_matrix_max_rel_err"] <= DIST_TOL["fp32_matrix"]
                     and res["fp32_other_max_rel_err"] <= DIST_TOL["fp32_other"]
                     and norm_err <= DIST_TOL["grad_norm"]
                     and res["bf16_matrix_max_rel_err"] <= DIST_TOL["bf16_matrix"]
                     and res["bf16_other_max_rel_err"] <= DIST_TOL["fp32_other"]
                     and res["bf16_update_min_cos_vs_fp32"] >= DIST_TOL["update_cos"])
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--variants", nargs="?", const=",".join(DEFAULT_VARIANTS), default=None,
                    help="time these comma-separated variants instead of the checks "
                    f"(default list: {','.join(DEFAULT_VARIANTS)}; parts: "
                    f"{', '.join(VARIANT_PARTS)}, joined with '+')")
    ap.add_argument("--depths", default=None, help="comma-separated depths for --variants")
    ap.add_argument("--profile", default=None, metavar="VARIANTS",
                    help="comma-separated variants to profile kernel by kernel (d12)")
    ap.add_argument("--out", type=Path, default=None,
                    help="report path (default: $OUT/bench_muon*.json, else runs/bench_muon/)")
    args = ap.parse_args(argv)
    report = {"command": " ".join(["bench/bench_muon.py"] + (argv or sys.argv[1:])),
              "torch": torch.__version__}
    if args.device.startswith("cuda"):
        x = torch.ones(1, 2, 2, device=args.device, dtype=torch.bfloat16)
        try:
            report["bmm_out_dtype"] = str(torch.bmm(x, x, out_dtype=torch.float32).dtype)
        except (TypeError, RuntimeError) as err:
            report["bmm_out_dtype"] = f"unsupported: {err}"[:200]
        print(f"bmm(out_dtype=float32): {report['bmm_out_dtype']}", flush=True)
    if args.profile is not None:
        jobs = (("profile", lambda d, tiny: profile_variants(
            d, tiny=tiny, variants=args.profile.split(","))),)
    elif args.variants is not None:
        depths = [int(d) for d in args.depths.split(",")] if args.depths else None
        jobs = (("muon_variants", lambda d, tiny: muon_variants(
            d, tiny=tiny, variants=args.variants.split(","), depths=depths)),)
    else:
        jobs = (("muon_batching", muon_batching), ("dist_step_vs_cpu", dist_step_vs_cpu))
    folder = (Path(os.environ["OUT"]) if os.environ.get("OUT")
              else Path(__file__).resolve().parent.parent / "runs" / "bench_muon")
    out = args.out or folder / (
        "bench_muon_profile.json" if args.profile is not None else
        "bench_muon_variants.json" if args.variants is not None else "bench_muon.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, fn in jobs:
        t0 = time.perf_counter()
        report[name] = {**fn(args.device, tiny=args.tiny),
                        "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[{'ok' if report[name]['ok'] else 'FAIL'}] {name}: "
              f"{json.dumps(report[name])}", flush=True)
        out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")
    return 0 if all(v["ok"] for v in report.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
