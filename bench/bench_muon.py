"""Muon benchmarks and GPU checks: same-shape batching, and DistMuonAdamW on the GPU.

    python bench/bench_muon.py                        # GPU: d12 and d20, JSON report
    python bench/bench_muon.py --device cpu --tiny    # dry run of the same code on a laptop

1. ``muon_batching``: one Muon step (momentum + Newton-Schulz + update) over the block
   matrices of the d12 and d20 models (vocab 32768, seq 2048), with same-shape matrices
   stacked into one batched call vs one matrix at a time. Target: >= 5x.
2. ``dist_step_vs_cpu``: DistMuonAdamW on a one-rank process group (NCCL on CUDA, gloo on
   CPU) for a few steps on fixed gradients, against MuonAdamW in fp32 on the CPU. The GPU
   orthogonalizes in bf16, so Muon matrices agree to ~1e-3 relative, AdamW ones to ~1e-6.

``bench/gpu_check.py`` calls :func:`muon_batching` and :func:`dist_step_vs_cpu` (each
returns a JSON-safe dict with ``ok``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout

import torch  # noqa: E402

from nanogpt_course.model import GPT, GPTConfig  # noqa: E402
from nanogpt_course.optim import DistMuonAdamW, MuonAdamW, build_optimizer  # noqa: E402

# (depth, seconds budget) at full scale; --tiny uses depth 2 at a narrow width
FULL_DEPTHS = (12, 20)


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_muon_step(shapes, device, *, batched: bool, steps: int = 10, warmup: int = 3) -> float:
    """Milliseconds per Muon step over matrices of ``shapes`` (fp32 params, fixed grads)."""
    g = torch.Generator(device=device).manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device=device, generator=g) * 0.02)
              for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=g)
    opt = MuonAdamW([{"kind": "muon", "params": params}], batch_same_shape=batched)
    for _ in range(warmup):
        opt.step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def muon_batching(device="cuda", *, tiny: bool = False) -> dict:
    """Batched vs one-matrix-at-a-time Muon step time for d12 and d20 (ok: >= 5x on CUDA)."""
    device = torch.device(device)
    out = {"device": str(device), "gpu": torch.cuda.get_device_name(device)
           if device.type == "cuda" else None}
    ok = True
    for depth in ((2,) if tiny else FULL_DEPTHS):
        shapes = matrix_shapes(model_config(depth, tiny))
        steps = 3 if tiny else 10
        batched = time_muon_step(shapes, device, batched=True, steps=steps)
        single = time_muon_step(shapes, device, batched=False, steps=steps)
        out[f"d{depth}"] = {"matrices": len(shapes), "distinct_shapes": len(set(shapes)),
                            "muon_params": sum(a * b for a, b in shapes),
                            "batched_ms": round(batched, 3), "per_matrix_ms": round(single, 3),
                            "speedup": round(single / batched, 2)}
        if device.type == "cuda":
            ok &= single / batched >= 5.0
    out["ok"] = bool(ok)
    out["target"] = "speedup >= 5x on CUDA (not checked on CPU)"
    return out


def _one_rank_group(device: torch.device):
    """A one-rank process group (NCCL on CUDA, gloo on CPU); None if one already exists."""
    import torch.distributed as dist

    if dist.is_initialized():
        return None
    store = dist.FileStore(tempfile.mktemp(prefix="bench_muon_store"), 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                            rank=0, world_size=1)
    return dist


def dist_step_vs_cpu(device="cuda", *, tiny: bool = False, steps: int = 3) -> dict:
    """DistMuonAdamW (1 rank, on ``device``) vs MuonAdamW fp32 on the CPU, same gradients."""
    import torch.distributed as dist

    device = torch.device(device)
    cfg = model_config(2 if tiny else 4, tiny)
    torch.manual_seed(0)
    ref_model = GPT(cfg)
    gpu_model = GPT(cfg).to(device)
    gpu_model.load_state_dict(ref_model.state_dict())
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=g) * 1e-2 for p in ref_model.parameters()]
             for _ in range(steps)]
    created = _one_rank_group(device)
    try:
        ref_opt = build_optimizer(ref_model, max_grad_norm=1.0)
        gpu_opt = build_optimizer(gpu_model, max_grad_norm=1.0, distributed=True)
        assert isinstance(ref_opt, MuonAdamW) and isinstance(gpu_opt, DistMuonAdamW)
        t_step = []
        for step_grads in grads:
            for p, q, gr in zip(ref_model.parameters(), gpu_model.parameters(), step_grads):
                p.grad, q.grad = gr.clone(), gr.to(device)
            ref_opt.step()
            _sync(device)
            t0 = time.perf_counter()
            gpu_opt.step()
            _sync(device)
            t_step.append(time.perf_counter() - t0)
        kinds = {id(p): k for k, ps in ref_model.parameter_kinds().items() for p in ps}
        worst = {"matrix": 0.0, "other": 0.0}
        for p, q in zip(ref_model.parameters(), gpu_model.parameters()):
            err = float((q.detach().cpu().double() - p.detach().double()).norm()
                        / p.detach().double().norm().clamp_min(1e-30))
            key = "matrix" if kinds[id(p)] == "matrix" else "other"
            worst[key] = max(worst[key], err)
        norm_err = abs(float(gpu_opt.grad_norm) - float(ref_opt.grad_norm)) / float(
            ref_opt.grad_norm)
    finally:
        if created is not None:
            dist.destroy_process_group()
    bf16 = device.type == "cuda"
    tol = {"matrix": 5e-3 if bf16 else 1e-5, "other": 1e-5}
    return {"ok": worst["matrix"] <= tol["matrix"] and worst["other"] <= tol["other"]
            and norm_err <= 1e-5,
            "device": str(device), "depth": cfg.n_layer, "steps": steps,
            "matrix_params_max_rel_err": worst["matrix"],
            "adamw_params_max_rel_err": worst["other"], "grad_norm_rel_err": norm_err,
            "step_ms_last": round(t_step[-1] * 1e3, 3), "tolerances": tol,
            "state_bytes": gpu_opt.state_bytes()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    report = {"command": " ".join(["bench/bench_muon.py"] + (argv or sys.argv[1:])),
              "torch": torch.__version__}
    for name, fn in (("muon_batching", muon_batching), ("dist_step_vs_cpu", dist_step_vs_cpu)):
        t0 = time.perf_counter()
        report[name] = {**fn(args.device, tiny=args.tiny),
                        "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[{'ok' if report[name]['ok'] else 'FAIL'}] {name}: "
              f"{json.dumps(report[name])}", flush=True)
    out = args.out or Path(os.environ.get("OUT", ".")) / "bench_muon.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")
    return 0 if all(v["ok"] for v in report.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
