"""The MLP's relu(h)² keeps only its output for backward (model.ReluSquared).

Checked against autograd on the readable ``F.relu(h).square()``: the same values and
gradients (fp64 gradcheck, bf16 within one rounding), and half the saved bytes, eager and
under torch.compile (eager autograd keeps one tensor either way: relu's output, which
``square`` also needs; the compiled graph of the readable version keeps h and relu(h)²).
The saved-tensor counting and the compiled comparison are bench/gpu_check.py's
(``relu2_saved``), run here on the CPU.
"""

import pytest
import torch
from conftest import load_bench

from nanogpt_course.model import GPT, GPTConfig, relu_squared, relu_squared_reference


@pytest.fixture(scope="module")
def gpu_check():
    yield from load_bench("gpu_check")


def test_forward_and_gradient_match_the_reference_in_fp64():
    torch.manual_seed(0)
    h = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(relu_squared(h), relu_squared_reference(h), rtol=0, atol=0)
    assert torch.autograd.gradcheck(relu_squared, (h,))
    g = torch.randn_like(h)
    (mine,) = torch.autograd.grad(relu_squared(h), h, g)
    (ref,) = torch.autograd.grad(relu_squared_reference(h), h, g)
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=0)


def test_gradient_is_zero_where_relu_is_off():
    h = torch.tensor([-2.0, -1e-30, 0.0, 1e-3, 3.0], requires_grad=True)
    relu_squared(h).sum().backward()
    torch.testing.assert_close(h.grad, torch.tensor([0.0, 0.0, 0.0, 2e-3, 6.0]))


def test_bf16_gradient_within_one_rounding_of_fp32():
    torch.manual_seed(1)
    h = torch.randn(4096, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(4096, dtype=torch.bfloat16)
    (mine,) = torch.autograd.grad(relu_squared(h), h, g)
    assert mine.dtype == torch.bfloat16
    exact = g.double() * 2 * h.double().clamp_min(0)
    # sqrt of the bf16-rounded square is relu(h) to half a bf16 step; one more rounding out
    torch.testing.assert_close(mine.double(), exact, rtol=2 * 2.0**-8, atol=0)


def test_saves_only_the_output(gpu_check):
    h = torch.randn(2, 8, 64, requires_grad=True)
    a, mine = gpu_check.saved_storage_bytes(relu_squared, h)
    assert list(mine) == [a.untyped_storage().data_ptr()]  # not h


@pytest.mark.slow
def test_compiled_mlp_keeps_one_hidden_activation_not_two(gpu_check):
    """Under torch.compile the partitioner decides what to keep; the hidden (B, T, 4C)
    tensors kept for backward drop from two (pre-activation and output) to one."""
    ctx = gpu_check.Context(device=torch.device("cpu"), tiny=True, compile=True)
    r = gpu_check.check_relu2_saved(ctx)
    assert r["hidden_tensors_kept"] == 1
    assert r["readable_hidden_tensors_kept"] == 2
    assert r["out_rel_err"] < 1e-6 and r["grad_rel_err"] < 1e-6  # fp32 on the CPU
    assert r["ok"]


def test_gpt_gradients_match_the_readable_mlp(monkeypatch):
    """The whole model's gradients with the fast relu² equal those with the readable one."""
    cfg = GPTConfig.from_depth(2, vocab_size=256, sequence_len=32)
    torch.manual_seed(0)
    model = GPT(cfg)
    for block in model.blocks:  # nonzero output projections, so gradients reach c_fc
        torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.02)
    idx = torch.randint(0, 256, (2, 32))

    def grads():
        model.zero_grad()
        model(idx, idx).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    fast = grads()
    import nanogpt_course.model as model_module
    monkeypatch.setattr(model_module, "relu_squared", relu_squared_reference)
    ref = grads()
    assert fast["blocks.0.mlp.c_fc.weight"].abs().sum() > 0
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-5, atol=1e-7)
