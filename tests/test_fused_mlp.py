"""The opt-in fused MLP (nanogpt_course/fused_mlp.py, issue #18): its custom operator gives
the readable MLP's output and gradients (alone in fp64, inside a GPT, under CPU bf16
autocast, under torch.compile), it steps aside where it does not apply (no gradients, FP8
layers), and its Triton kernel equals the PyTorch reference under Triton's CPU interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import load_bench, run_interpreted

from nanogpt_course import fp8, fused_mlp
from nanogpt_course.model import relu_squared_reference
from tests.test_chunked_loss import batch, close, tiny_gpt

N, C, H = 37, 16, 64  # 37 rows: no tile size divides them


def readable_mlp(x, w_fc, w_proj):
    """The readable MLP: two matmuls around relu²."""
    return relu_squared_reference(x @ w_fc.t()) @ w_proj.t()


def mlp_inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()
            for shape in ((N, C), (H, C), (C, H))]


def test_reference_epilogues_state_the_math():
    a, w_fc, w_proj = (t.detach() for t in mlp_inputs())
    h = a @ w_fc.t()
    close(fused_mlp.matmul_epilogue_reference(a, w_fc.t(), "relu2"), torch.relu(h) ** 2)
    kept = torch.relu(h) ** 2
    grad = torch.randn(N, C, dtype=torch.float64)
    close(fused_mlp.matmul_epilogue_reference(grad, w_proj, "drelu2", kept),
          (grad @ w_proj) * 2 * torch.relu(h))
    with pytest.raises(ValueError, match="epilogue must be"):
        fused_mlp.matmul_epilogue_reference(a, w_fc.t(), "gelu")


def test_operator_gradients_pass_gradcheck_and_match_the_readable_mlp():
    inputs = mlp_inputs()
    torch.autograd.gradcheck(fused_mlp.relu2_mlp, inputs)
    y = fused_mlp.relu2_mlp(*inputs)
    want = readable_mlp(*inputs)
    close(y, want, rtol=1e-12)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, inputs, grad)
    expected = torch.autograd.grad(want, inputs, grad)
    for g, e in zip(got, expected):
        close(g, e, rtol=1e-12)


def test_operator_passes_opcheck():
    x, w_fc, w_proj = (t.detach().float() for t in mlp_inputs())
    results = torch.library.opcheck(torch.ops.nanogpt_course.relu2_mlp.default, (x, w_fc, w_proj))
    assert all(r == "SUCCESS" for r in results.values()), results


def test_compiled_operator_matches_eager():
    """torch.compile keeps the operator as one opaque call (fullgraph) with its backward."""
    x, w_fc, w_proj = (t.detach().float().requires_grad_() for t in mlp_inputs())
    eager = fused_mlp.relu2_mlp(x, w_fc, w_proj).square().sum()
    eager_grads = torch.autograd.grad(eager, (x, w_fc, w_proj))
    compiled_fn = torch.compile(lambda *a: fused_mlp.relu2_mlp(*a).square().sum(), fullgraph=True)
    compiled = compiled_fn(x, w_fc, w_proj)
    close(compiled, eager, rtol=1e-6)
    for got, want in zip(torch.autograd.grad(compiled, (x, w_fc, w_proj)), eager_grads):
        close(got, want, rtol=1e-5)


def set_mlp(model, impl):
    for block in model.blocks:
        block.mlp.impl = impl


def loss_and_grads(model, autocast=False, forward=None):
    """The loss of ``forward`` (default: the model itself) and the model's gradients."""
    x, y = batch()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = (model if forward is None else forward)(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture
def op_calls(monkeypatch):
    """How many times the fused operator ran."""
    calls = []
    original = fused_mlp._relu2_mlp

    def counted(*args):
        calls.append(1)
        return original(*args)
    monkeypatch.setattr(fused_mlp, "_relu2_mlp", counted)
    return calls


def test_gpt_with_the_fused_mlp_matches_the_standard_one(op_calls):
    model = tiny_gpt()
    loss, grads = loss_and_grads(model)
    assert not op_calls
    set_mlp(model, "fused")
    fused_loss_value, fused_grads = loss_and_grads(model)
    assert len(op_calls) == len(model.blocks)
    close(fused_loss_value, loss)
    for name, grad in grads.items():
        close(fused_grads[name], grad, rtol=1e-5)


def test_gpt_with_the_fused_mlp_under_bf16_autocast(op_calls):
    """CPU bf16 autocast: the operator runs its matmuls in bf16, as on the GPU, and rounds
    less than the readable path (once per epilogue), so the two agree to bf16's precision."""
    model = tiny_gpt()
    loss, grads = loss_and_grads(model, autocast=True)
    set_mlp(model, "fused")
    fused_loss_value, fused_grads = loss_and_grads(model, autocast=True)
    assert len(op_calls) == len(model.blocks)
    close(fused_loss_value, loss, rtol=1e-2)
    for name, grad in grads.items():
        cosine = torch.nn.functional.cosine_similarity(fused_grads[name].flatten().double(),
                                                       grad.flatten().double(), dim=0)
        assert cosine > 0.999, (name, float(cosine))


def test_the_fused_mlp_steps_aside_without_gradients_and_for_fp8_layers(op_calls):
    model = tiny_gpt()
    set_mlp(model, "fused")
    x, _ = batch()
    with torch.no_grad():
        model(x)
    assert not op_calls  # evaluation and sampling run the readable MLP
    fp8.enable_fp8(model)  # --fp8: the MLP's matmuls are FP8Linear's own
    loss_and_grads(model)
    assert not op_calls


def test_backend_choice_goes_through_the_shared_kernel_choice(monkeypatch):
    """NANOGPT_COURSE_FUSED_MLP_BACKEND is validated, CPU tensors take the reference under
    auto, and asking for the kernel without Triton names this kernel and the way out."""
    a, w_fc = (t.detach().float() for t in mlp_inputs()[:2])
    monkeypatch.setenv(fused_mlp.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=fused_mlp.BACKEND_ENV):
        fused_mlp.matmul_epilogue(a, w_fc.t(), "relu2")
    monkeypatch.setenv(fused_mlp.BACKEND_ENV, "auto")
    torch.testing.assert_close(fused_mlp.matmul_epilogue(a, w_fc.t(), "relu2"),
                               fused_mlp.matmul_epilogue_reference(a, w_fc.t(), "relu2"))
    monkeypatch.setattr(fused_mlp.KERNEL, "module", lambda: None)  # no Triton installed
    with pytest.raises(RuntimeError, match="the fused MLP's .*pip install triton.*=torch"):
        fused_mlp.matmul_epilogue(a, w_fc.t(), "relu2", backend="triton")


def test_mlp_impl_from_the_environment(monkeypatch):
    monkeypatch.setenv(fused_mlp.ENV_VAR, "fused")
    assert tiny_gpt().blocks[0].mlp.impl == "fused"
    monkeypatch.delenv(fused_mlp.ENV_VAR)
    assert tiny_gpt().blocks[0].mlp.impl == "standard"
    monkeypatch.setenv(fused_mlp.ENV_VAR, "triton")
    with pytest.raises(ValueError, match="NANOGPT_COURSE_MLP.*standard"):
        tiny_gpt()


KERNEL_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from nanogpt_course import fused_mlp
    out = {}
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        # ragged in every dimension against the 32 x 32 x 16 tiles; b given transposed
        # (w_fc.t(), the forward) and row-major (w_proj, the backward)
        x = torch.randn(70, 40, generator=g).to(dtype)
        w_fc = torch.randn(100, 40, generator=g).to(dtype)
        grad = torch.randn(70, 40, generator=g).to(dtype)
        w_proj = torch.randn(40, 100, generator=g).to(dtype)
        a = fused_mlp.matmul_epilogue_reference(x, w_fc.t(), "relu2")
        cases = {"relu2": (x, w_fc.t(), "relu2", None),
                 "drelu2": (grad, w_proj, "drelu2", a)}
        for name, args in cases.items():
            got = fused_mlp.matmul_epilogue_triton(*args).float()
            want = fused_mlp.matmul_epilogue_reference(*args).float()
            excess = (got - want).abs() - 2.0 ** -7 * want.abs()  # one bf16 step
            out[f"{name}-{dtype}"] = {
                "rel": float((got - want).abs().max() / want.abs().max()),
                "excess": float(excess.max()), "zeros_kept": bool((got[want == 0] == 0).all())}
    json.dump(out, sys.stdout)
""")


def test_triton_kernel_equals_the_reference_in_the_interpreter():
    """Triton's interpreter runs the kernel on CPU tensors with 32 x 32 x 16 tiles, so every
    dimension has a ragged last tile and the grouped tile order wraps."""
    pytest.importorskip("triton", reason="the kernel test needs Triton (pip install triton)")
    results = run_interpreted(KERNEL_SCRIPT, NANOGPT_COURSE_FUSED_MLP_BLOCK_M="32",
                              NANOGPT_COURSE_FUSED_MLP_BLOCK_N="32",
                              NANOGPT_COURSE_FUSED_MLP_BLOCK_K="16",
                              NANOGPT_COURSE_FUSED_MLP_GROUP_M="2")
    assert len(results) == 4
    for key, r in results.items():
        assert r["zeros_kept"], (key, r)  # relu's zeros stay exact zeros
        if "float32" in key:
            assert r["rel"] < 1e-5, (key, r)
        else:  # the interpreter rounds fp32 to bf16 toward zero: within one bf16 step
            assert r["excess"] <= 1e-6, (key, r)


def test_launch_shape_sweep_times_every_shape_and_restores_the_defaults(tmp_path):
    """bench/fused_mlp_sweep.py (the GPU's launch-shape sweep) on CPU tensors through
    Triton's interpreter: one row per shape and depth, the best per pass is the fastest,
    the predicted saving is n_layer × both passes' differences, and the library's launch
    shape is the default again afterwards."""
    pytest.importorskip("triton", reason="the sweep times the Triton kernel")
    out = tmp_path / "sweep.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "fused_mlp_sweep.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGPT_COURSE_FUSED_MLP")}
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--rows", "40", "--depths", "1,2",
         "--shapes", "32x32x16/4/2,16x64x32/4/3", "--iters", "1", "--out", str(out)],
        env={**env, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [d["depth"] for d in report["depths"]] == [1, 2]
    for d in report["depths"]:
        assert [r["shape"] for r in d["results"]] == ["32x32x16/4/2", "16x64x32/4/3"]
        assert d["best_fwd"] == min(d["results"], key=lambda r: r["fwd_ms"])
        assert d["best_bwd"] == min(d["results"], key=lambda r: r["bwd_ms"])
        saved = (d["fwd_unfused_ms"] - d["best_fwd"]["fwd_ms"]
                 + d["bwd_unfused_ms"] - d["best_bwd"]["bwd_ms"])
        assert d["saved_ms_per_step"] == pytest.approx(saved * d["depth"], abs=2e-3)
    assert report["defaults"] == fused_mlp._launch_shape()


@pytest.fixture
def sweep_module():
    yield from load_bench("fused_mlp_sweep")


def test_launch_shapes_parse_and_are_restored(sweep_module):
    shape = sweep_module.parse_shape("128x256x64/8/3")
    assert shape == {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "WARPS": 8, "STAGES": 3}
    before = fused_mlp._launch_shape()
    seen = sweep_module.with_launch_shape(sweep_module.parse_shape("16x32x8/2/1"),
                                          fused_mlp._launch_shape)
    assert seen == {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 8, "GROUP_M": before["GROUP_M"],
                    "num_warps": 2, "num_stages": 1}
    assert fused_mlp._launch_shape() == before
    assert fused_mlp.AUTOTUNE_ENV not in os.environ  # the sweep's fixed shapes are undone


def test_compiled_backward_reaches_the_kernel_as_an_operator(monkeypatch):
    """torch.compile traces the MLP's backward with fake tensors, so the backward's fused
    matmul must be an operator (a Triton launch cannot take fake tensors): under compile
    both epilogues run on real tensors, once per step, and never while tracing."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    seen = []
    original = fused_mlp.matmul_epilogue

    def recording(a, b, epilogue, aux=None, **kw):
        seen.append((epilogue, type(a) is torch.Tensor))  # a plain tensor: not traced
        return original(a, b, epilogue, aux, **kw)
    monkeypatch.setattr(fused_mlp, "matmul_epilogue", recording)
    x, w_fc, w_proj = (t.detach().float().requires_grad_() for t in mlp_inputs())
    compiled = torch.compile(lambda *a: fused_mlp.relu2_mlp(*a).square().sum(), fullgraph=True)
    # compile afresh: a cached graph from an earlier version of the backward would be reused
    with functorch_config.patch(enable_autograd_cache=False), \
            inductor_config.patch(fx_graph_cache=False):
        for _ in range(2):
            compiled(x, w_fc, w_proj).backward()
    assert sorted(seen) == [("drelu2", True)] * 2 + [("relu2", True)] * 2, seen


@pytest.mark.slow
def test_compiled_gpt_with_the_fused_mlp_matches_the_eager_standard_one(op_calls):
    """The trainer's configuration: the whole GPT under torch.compile (Inductor on the CPU)
    with the fused MLP and the fused loss inside, against the eager readable paths."""
    model = tiny_gpt()
    loss, grads = loss_and_grads(model)
    set_mlp(model, "fused")
    model.loss_impl = "fused"
    compiled_loss, compiled_grads = loss_and_grads(
        model, forward=torch.compile(model, dynamic=False))
    assert op_calls  # traced through the operator
    close(compiled_loss, loss)
    for name, grad in grads.items():
        close(compiled_grads[name], grad, rtol=1e-5)


def test_autotuning_is_the_gpu_default_and_never_in_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(fused_mlp.AUTOTUNE_ENV, raising=False)
    assert fused_mlp.autotuning()
    monkeypatch.setenv(fused_mlp.AUTOTUNE_ENV, "0")
    assert not fused_mlp.autotuning()
    monkeypatch.setenv(fused_mlp.AUTOTUNE_ENV, "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not fused_mlp.autotuning()
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv(fused_mlp.AUTOTUNE_ENV, "yes")
    with pytest.raises(ValueError, match="use 1 .* or 0"):
        fused_mlp.autotuning()
