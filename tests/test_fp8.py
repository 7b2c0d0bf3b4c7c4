"""FP8 training matmuls (nanogpt_course/fp8.py, issue #19): the math against a plain matmul
on the FP8-rounded operands, gradients against autograd's, the layer swap, and the trainer's
refusal on hardware without FP8 tensor cores. CPU PyTorch runs ``torch._scaled_mm`` (slowly),
so the same code path is checked here; speed and loss parity are measured on an H100
(bench/gpu_check.py ``fp8_vs_bf16``, docs/PERFORMANCE.md)."""

import pytest
import torch
from torch import nn

from nanogpt_course import fp8
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.train.config import ConfigError, parse_args
from tests.test_train_helpers import tiny_cfg


def test_quantize_uses_the_whole_range_and_round_trips():
    x = torch.randn(64, 96) * 3.0
    for dtype, rel in ((fp8.E4M3, 2**-3), (fp8.E5M2, 2**-2)):  # 2^-mantissa bits
        x8, inv = fp8.quantize(x, dtype)
        assert x8.dtype == dtype and inv.dim() == 0
        assert x8.float().abs().max() == torch.finfo(dtype).max  # amax lands on the max
        back = x8.float() * inv
        # relative rounding error of a normal FP8 number: at most half an ulp
        big = x.abs() > x.abs().max() / 64
        assert ((back - x).abs()[big] / x.abs()[big]).max() <= rel / 2 + 1e-6


def test_forward_and_backward_equal_a_matmul_of_the_rounded_operands():
    torch.manual_seed(0)
    x = torch.randn(48, 64, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    g = torch.randn(48, 32).bfloat16()  # the output is bf16, so is its gradient
    y = fp8.fp8_linear(x, w)
    assert y.dtype == torch.bfloat16 and y.shape == (48, 32)
    y.backward(g)
    # the reference: the same per-tensor roundings, then exact fp32 matmuls
    rq = lambda t, dt: (lambda q: q[0].float() * q[1])(fp8.quantize(t, dt))
    xq, wq, gq = rq(x.detach(), fp8.E4M3), rq(w.detach(), fp8.E4M3), rq(g.float(), fp8.E5M2)
    torch.testing.assert_close(y.float(), (xq @ wq.t()).bfloat16().float(), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, (gq @ wq).bfloat16().float(), rtol=0, atol=0)
    torch.testing.assert_close(w.grad, gq.t() @ xq, rtol=1e-5, atol=1e-5)
    # and close to the full-precision result (what FP8 costs on random data)
    exact = x.detach() @ w.detach().t()
    assert (y.float() - exact).norm() / exact.norm() < 0.05


def test_leading_dimensions_and_dtypes_follow_linear():
    x = torch.randn(2, 8, 32, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(16, 32, requires_grad=True)
    y = fp8.fp8_linear(x, w)
    assert y.shape == (2, 8, 16)
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32


def test_enable_fp8_swaps_only_the_block_linears():
    cfg = GPTConfig(sequence_len=32, vocab_size=256, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = GPT(cfg)
    model.init_weights()
    params_before = {n: p for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = fp8.enable_fp8(model)
    assert sorted(names) == sorted(f"blocks.{i}.{m}" for i in range(2) for m in
                                   ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj",
                                    "mlp.c_fc", "mlp.c_proj"))
    assert type(model.lm_head) is nn.Linear
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("ve_gate"))
    assert {n: p for n, p in model.named_parameters()} == params_before  # same objects
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # without gradients the layers are plain linears: eval logits unchanged
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        fp8_eval = model(idx)
    plain = GPT(cfg)
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fp8_eval, plain(idx))
    # with gradients the loss moves by FP8 rounding only
    loss = model(idx, targets=idx)
    ref = plain(idx, targets=idx)
    assert abs(loss.item() - ref.item()) < 0.02 * ref.item()
    loss.backward()
    assert model.blocks[0].mlp.c_fc.weight.grad is not None


def test_flag_parses_and_the_trainer_refuses_a_cpu(tmp_path):
    assert parse_args(["--fp8"]).fp8 is True and parse_args([]).fp8 is False
    from nanogpt_course.train import train

    with pytest.raises(ConfigError, match="--fp8 needs an NVIDIA GPU .* Run without --fp8"):
        train(tiny_cfg(tmp_path / "run", fp8=True, max_steps=1), echo=False)


def test_check_device_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100")
    with pytest.raises(ValueError, match="A100 is 8.0"):
        fp8.check_device(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    fp8.check_device(torch.device("cuda", 0))  # Hopper passes
