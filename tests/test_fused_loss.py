"""The opt-in fused loss (nanogpt_course/fused_loss.py, issue #18): its in-place gradient
step equals autograd through the readable softcap + F.cross_entropy, its custom operator
gives the readable path's loss and gradients (alone, inside a GPT, under torch.compile), and
its Triton kernel equals the PyTorch reference under Triton's CPU interpreter."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_interpreted

from nanogpt_course import fused_loss
from nanogpt_course.fused_loss import (
    linear_softcap_cross_entropy,
    softcap_cross_entropy_grad_reference_,
)
from tests.test_chunked_loss import CAP, V_PADDED, VOCAB, N, close, inputs, tiny_gpt


def readable(logits, targets, reduction="sum", cap=CAP):
    """GPT.head's softcap + F.cross_entropy on (N, V_padded) logits: the readable path."""
    z = logits[:, :VOCAB].float()
    if cap:
        z = cap * torch.tanh(z / cap)
    return F.cross_entropy(z, targets, ignore_index=-1, reduction=reduction)


# ------------------------------------------------------------- the in-place gradient step
@pytest.mark.parametrize("cap", [CAP, 0.0])
@pytest.mark.parametrize("chunk_rows", [1, 8, 1024])  # 8 does not divide N = 37
def test_reference_step_is_autograd_of_the_readable_loss(cap, chunk_rows):
    h, weight, targets = inputs()
    logits = (h @ weight.t()).detach().requires_grad_()
    per_row = readable(logits, targets, "none", cap)
    (expected,) = torch.autograd.grad(per_row.sum(), logits)
    buffer = logits.detach().clone()
    losses = softcap_cross_entropy_grad_reference_(buffer, targets, vocab_size=VOCAB,
                                                   softcap=cap, chunk_rows=chunk_rows)
    close(losses, per_row.detach())
    close(buffer, expected)  # the buffer now holds d(row loss)/d(logits)
    assert buffer[:, VOCAB:].abs().max() == 0  # padded columns
    assert buffer[targets == -1].abs().max() == 0  # ignored rows


def test_reference_refuses_targets_out_of_range():
    logits = torch.randn(4, V_PADDED)
    with pytest.raises((IndexError, RuntimeError)):
        softcap_cross_entropy_grad_reference_(logits, torch.tensor([0, 1, 2, V_PADDED + 5]),
                                              vocab_size=VOCAB, softcap=CAP)


# ------------------------------------------------------------------- the custom operator
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("cap", [CAP, 0.0])
def test_loss_and_gradients_match_the_readable_path(reduction, cap):
    h, weight, targets = inputs()
    # a different weight per row, so a "none" backward checks the per-row scaling
    row_weights = torch.linspace(-2.0, 3.0, N)

    def reduce(loss):
        return (loss * row_weights).sum() if reduction == "none" else loss

    ref = readable(h @ weight.t(), targets, reduction, cap)
    ref_h, ref_w = torch.autograd.grad(reduce(ref), (h, weight))
    loss = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=cap,
                                        reduction=reduction)
    grad_h, grad_w = torch.autograd.grad(reduce(loss), (h, weight))
    close(loss, ref)
    close(grad_h, ref_h)
    close(grad_w, ref_w)
    assert grad_w[VOCAB:].abs().max() == 0  # the head's padding rows get no gradient


def test_all_targets_ignored_as_pytorch():
    h, weight, _ = inputs()
    targets = torch.full((N,), -1)
    mean = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP)
    assert math.isnan(mean.item()) and math.isnan(readable(h @ weight.t(), targets, "mean").item())
    grad_h, grad_w = torch.autograd.grad(mean, (h, weight))
    assert grad_h.abs().max() == 0 and grad_w.abs().max() == 0  # F.cross_entropy gives 0 too
    total = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP,
                                         reduction="sum")
    assert total.item() == 0


def test_bf16_autocast_within_rounding():
    """Under autocast the matmul runs in bf16 as GPT.head's does; the result matches the
    readable path under the same autocast to bf16's precision."""
    h, weight, targets = inputs(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = readable(h @ weight.t(), targets, "mean")
        loss = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP)
    ref_h, ref_w = torch.autograd.grad(ref, (h, weight))
    grad_h, grad_w = torch.autograd.grad(loss, (h, weight))
    assert grad_h.dtype == h.dtype and grad_w.dtype == weight.dtype  # cast back to fp32
    close(loss, ref, rtol=1e-3)
    close(grad_h, ref_h, rtol=2e-2)
    close(grad_w, ref_w, rtol=2e-2)


def test_operator_registration():
    h, weight, targets = inputs()
    op = torch.ops.nanogpt_course.linear_softcap_cross_entropy.default
    results = torch.library.opcheck(op, (h, weight, targets, VOCAB, CAP))
    assert set(results.values()) == {"SUCCESS"}, results


def test_compiled_matches_eager():
    h, weight, targets = inputs(3)

    def step(h, weight):
        return linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP)

    eager = step(h, weight)
    eager_grads = torch.autograd.grad(eager, (h, weight))
    compiled = torch.compile(step, fullgraph=True)(h, weight)  # one graph: the op is opaque
    compiled_grads = torch.autograd.grad(compiled, (h, weight))
    close(compiled, eager, rtol=1e-6)
    for got, want in zip(compiled_grads, eager_grads):
        close(got, want, rtol=1e-6)


def test_bad_arguments():
    h, weight, targets = inputs()
    with pytest.raises(ValueError, match="reduction"):
        linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP,
                                     reduction="max")
    with pytest.raises(ValueError, match=r"want h \(N, C\)"):
        linear_softcap_cross_entropy(h[None], weight, targets, vocab_size=VOCAB, softcap=CAP)


def test_backend_choice(monkeypatch):
    logits, targets = torch.randn(4, V_PADDED), torch.tensor([0, -1, 2, 3])
    monkeypatch.setenv(fused_loss.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=fused_loss.BACKEND_ENV):
        fused_loss.softcap_cross_entropy_grad_(logits, targets, vocab_size=VOCAB, softcap=CAP)
    monkeypatch.setenv(fused_loss.BACKEND_ENV, "auto")  # CPU tensors: the reference
    expected = softcap_cross_entropy_grad_reference_(logits.clone(), targets,
                                                     vocab_size=VOCAB, softcap=CAP)
    got = fused_loss.softcap_cross_entropy_grad_(logits.clone(), targets, vocab_size=VOCAB,
                                                 softcap=CAP)
    torch.testing.assert_close(got, expected)
    monkeypatch.setattr(fused_loss.KERNEL, "module", lambda: None)  # no Triton installed
    with pytest.raises(RuntimeError, match="pip install triton"):
        fused_loss.softcap_cross_entropy_grad_(logits, targets, vocab_size=VOCAB,
                                               softcap=CAP, backend="triton")


def test_a_kernel_that_fails_falls_back_once_with_a_warning(monkeypatch):
    logits, targets = torch.randn(4, V_PADDED), torch.tensor([0, -1, 2, 3])
    expected = logits.clone()
    want = softcap_cross_entropy_grad_reference_(expected, targets, vocab_size=VOCAB,
                                                 softcap=CAP)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no kernel for this GPU")

    failures = []
    monkeypatch.setattr(fused_loss.KERNEL, "failure", failures)
    # as on a GPU with Triton installed: the kernel applies until it has failed
    monkeypatch.setattr(fused_loss.KERNEL, "applies", lambda logits: not failures)
    monkeypatch.setattr(fused_loss, "softcap_cross_entropy_grad_triton_", broken)
    with pytest.warns(UserWarning, match="no kernel for this GPU"):
        got = fused_loss.softcap_cross_entropy_grad_(logits, targets, vocab_size=VOCAB,
                                                     softcap=CAP, backend="auto")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(logits, expected)
    again = torch.randn(4, V_PADDED)
    fused_loss.softcap_cross_entropy_grad_(again, targets, vocab_size=VOCAB, softcap=CAP,
                                           backend="auto")  # no second try, no warning
    assert len(calls) == 1


# ------------------------------------------------------------------------------ the model
def loss_and_grads(model, impl, x, y, reduction="mean"):
    """``model`` a GPT or its torch.compile wrapper (which shares its attributes)."""
    gpt = getattr(model, "_orig_mod", model)
    gpt.loss_impl = impl
    gpt.zero_grad(set_to_none=True)
    loss = model(x, y, reduction=reduction)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in gpt.named_parameters()}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gpt_gradients_match_the_standard_loss(reduction):
    model = tiny_gpt()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 300, (3, 32), generator=g)
    y = torch.randint(0, 300, (3, 32), generator=g)
    y[0, :7] = -1
    ref_loss, ref = loss_and_grads(model, "standard", x, y, reduction)
    loss, got = loss_and_grads(model, "fused", x, y, reduction)
    close(loss, ref_loss)
    assert set(got) == set(ref)
    for name in ref:
        close(got[name], ref[name])


@pytest.mark.slow
def test_compiled_gpt_with_the_fused_loss_matches_the_eager_standard_loss():
    """The trainer's configuration: the whole GPT under torch.compile (Inductor on the CPU)
    with the fused loss inside, against the eager readable path. ~25 s on 2 cores."""
    model = tiny_gpt()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 300, (2, 32), generator=g)
    y = torch.randint(0, 300, (2, 32), generator=g)
    y[0, :4] = -1
    ref_loss, ref = loss_and_grads(model, "standard", x, y)
    loss, got = loss_and_grads(torch.compile(model, dynamic=False), "fused", x, y)
    close(loss, ref_loss)
    for name in ref:
        close(got[name], ref[name])


def test_gpt_evaluation_and_per_token_losses_use_the_readable_path(monkeypatch):
    model = tiny_gpt()
    x = torch.randint(0, 300, (2, 32))
    ref = model(x, x, reduction="none")
    monkeypatch.setenv(fused_loss.BACKEND_ENV, "bogus")  # would raise if the op ran
    model.loss_impl = "fused"
    torch.testing.assert_close(model(x, x, reduction="none"), ref)
    with torch.no_grad():
        torch.testing.assert_close(model(x, x), ref.mean())


def test_env_var_selects_the_fused_loss(monkeypatch):
    monkeypatch.setenv("NANOGPT_COURSE_LOSS", "fused")
    assert tiny_gpt().loss_impl == "fused"


def test_auto_is_the_fused_loss_on_cuda_with_triton_only(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(fused_loss, "TRITON_INSTALLED", True)
    assert fused_loss.auto_impl(cuda) == "fused" and fused_loss.auto_impl(cpu) == "standard"
    monkeypatch.setattr(fused_loss, "TRITON_INSTALLED", False)
    assert fused_loss.auto_impl(cuda) == "standard"


def test_auto_routes_each_gpt_loss_call(monkeypatch):
    """The default ``loss_impl="auto"`` is resolved per call from the hidden states' device:
    on the CPU the readable path (the fused op never runs); where ``auto_impl`` says
    "fused" (CUDA with Triton), the fused op, with the same loss."""
    model = tiny_gpt()
    assert model.loss_impl == "auto"
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 300, (2, 32), generator=g)
    y = torch.randint(0, 300, (2, 32), generator=g)
    calls = []
    real = fused_loss.linear_softcap_cross_entropy
    monkeypatch.setattr(fused_loss, "linear_softcap_cross_entropy",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = model(x, y)
    assert calls == []
    monkeypatch.setattr(fused_loss, "auto_impl", lambda device: "fused")
    got = model(x, y)
    assert calls == [1]
    close(got, ref)


# ---------------------------------------------------------------- the Triton kernel (CPU)
KERNEL_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from nanogpt_course import fused_loss
    out = {}
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for cap in (15.0, 0.0):
            for vocab, padded in ((250, 256), (256, 256), (100, 160)):
                logits = (20 * torch.randn(9, padded, generator=g)).to(dtype)
                targets = torch.randint(0, vocab, (9,), generator=g)
                targets[2] = -1
                ref, ker = logits.clone(), logits.clone()
                want = fused_loss.softcap_cross_entropy_grad_reference_(
                    ref, targets, vocab_size=vocab, softcap=cap)
                got = fused_loss.softcap_cross_entropy_grad_triton_(
                    ker, targets, vocab_size=vocab, softcap=cap)
                key = f"{dtype}-{cap}-{vocab}-{padded}"
                out[key] = {
                    "loss": (got - want).abs().max().item() / want.abs().max().item(),
                    "grad": (ker.float() - ref.float()).abs().max().item(),
                    "unequal": (ker != ref).float().mean().item(),
                    "pad": ker[:, vocab:].float().abs().max().item() if padded > vocab else 0.0,
                    "ignored": ker[2].float().abs().max().item(),
                }
    json.dump(out, sys.stdout)
""")


def test_triton_kernel_equals_the_reference_in_the_interpreter():
    """Triton's interpreter runs the kernel on CPU tensors; a block of 64 columns makes
    every row take several blocks per pass, with a ragged last one."""
    pytest.importorskip("triton", reason="the kernel test needs Triton (pip install triton)")
    results = run_interpreted(KERNEL_SCRIPT, NANOGPT_COURSE_FUSED_LOSS_BLOCK="64")
    assert len(results) == 12
    for key, r in results.items():
        assert r["loss"] < 1e-5, (key, r)
        # gradients lie in [-1, 1]. fp32: equal to a few rounding errors. bf16: at most one
        # bf16 step apart (the interpreter rounds fp32 to bf16 toward zero where the GPU
        # rounds to nearest, so how many entries differ is checked on the GPU only:
        # `gpu_check --only fused_loss`)
        if "float32" in key:
            assert r["grad"] < 4e-6, (key, r)
        else:
            assert r["grad"] <= 2 ** -8, (key, r)
        assert r["pad"] == 0 and r["ignored"] == 0, (key, r)


def test_launch_shape_sweep_runs_every_shape_and_restores_the_defaults(tmp_path):
    """bench/fused_loss_sweep.py (the GPU's block × warps sweep) on CPU tensors through
    Triton's interpreter: one timed row per shape, the best is the fastest of them, and the
    library's launch shape is the default again afterwards."""
    pytest.importorskip("triton", reason="the sweep times the Triton kernel")
    out = tmp_path / "sweep.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "fused_loss_sweep.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--rows", "3", "--vocab", "200",
         "--blocks", "64,256", "--warps", "4", "--iters", "1", "--out", str(out)],
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    shapes = [(r["block"], r["warps"]) for r in report["results"]]
    assert shapes == [(64, 4), (256, 4)]
    assert all(r["ms"] > 0 for r in report["results"])
    assert report["best"] == min(report["results"], key=lambda r: r["ms"])
    assert report["defaults"] == {"block": fused_loss.BLOCK, "warps": fused_loss.NUM_WARPS}
