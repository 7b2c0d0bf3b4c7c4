"""The fused AdamW path (``torch._fused_adamw_``, used on CUDA) against the readable
``_foreach`` passes of ``optim.adamw.adamw_step_``: same arithmetic, checked here on the CPU
(where torch has the same fused kernel) in fp32, bf16 and a mixed list, over several steps
with weight decay, and with stochastic rounding."""

from __future__ import annotations

import pytest
import torch

from nanogpt_course.optim import adamw

SHAPES = [(64, 48), (1000,), (3, 5, 7)]


def _state(dtypes, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(d) for s, d in zip(SHAPES, dtypes)]
    moments = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    return params, moments


def _run(dtypes, *, fused, steps=5, stochastic_rounding=False):
    params, (m, v) = _state(dtypes)
    g = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        grads = [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]
        torch.manual_seed(step)  # round_stochastic's draws, the same for both paths
        adamw.adamw_step_(params, grads, m, v, step=step, lr=0.02 / step, beta1=0.8,
                          beta2=0.95, eps=1e-10, weight_decay=0.1,
                          stochastic_rounding=stochastic_rounding, fused=fused)
    return params, m, v


def test_fused_matches_readable_in_fp32():
    fused, readable = _run([torch.float32] * 3, fused=True), _run([torch.float32] * 3, fused=False)
    for a_list, b_list in zip(fused, readable):
        for a, b in zip(a_list, b_list):
            torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
    start, _ = _state([torch.float32] * 3)
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(fused[0], start))  # it moved


@pytest.mark.parametrize("dtypes", [[torch.bfloat16] * 3,
                                    [torch.float32, torch.bfloat16, torch.float32]])
def test_fused_matches_readable_with_bf16_storage(dtypes):
    """Both compute in fp32 and round bf16 results to nearest: equal up to one bf16 step
    where the fp32 results straddle a rounding boundary."""
    fused, readable = _run(dtypes, fused=True), _run(dtypes, fused=False)
    for a_list, b_list in zip(fused, readable):
        for a, b in zip(a_list, b_list):
            assert a.dtype == b.dtype
            if a.dtype == torch.bfloat16:
                ulp = torch.finfo(torch.bfloat16).eps * b.float().abs().clamp_min(1e-3)
                assert ((a.float() - b.float()).abs() <= ulp).all()
                assert (a == b).float().mean() > 0.95
            else:
                torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)


def test_stochastic_rounding_updates_fp32_copies_then_rounds_at_random():
    """With stochastic rounding, bf16 tensors are updated as fp32 copies (by the fused
    kernel when fused) and rounded with the same draws: the same result up to the fp32
    copies' last bits, i.e. the same bf16 values but where a draw lands on the boundary."""
    dtypes = [torch.bfloat16] * 3
    fused = _run(dtypes, fused=True, stochastic_rounding=True)
    readable = _run(dtypes, fused=False, stochastic_rounding=True)
    nearest = _run(dtypes, fused=False)
    for a, b, c in zip(fused[0], readable[0], nearest[0]):
        ulp = torch.finfo(torch.bfloat16).eps * b.float().abs().clamp_min(1e-3)
        assert ((a.float() - b.float()).abs() <= ulp).all()
        assert (a == b).float().mean() > 0.99
        assert (b != c).any()  # rounding at random is not rounding to nearest


def test_default_is_readable_on_the_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the fused kernel ran on the CPU by default")

    monkeypatch.setattr(adamw, "_fused_adamw_step_", fail)
    params, (m, v) = _state([torch.float32] * 3)
    adamw.adamw_step_(params, [torch.ones_like(p) for p in params], m, v, step=1, lr=0.1,
                      beta1=0.9, beta2=0.95, eps=1e-8)
    with pytest.raises(AssertionError, match="fused kernel"):
        adamw.adamw_step_(params, [torch.ones_like(p) for p in params], m, v, step=2, lr=0.1,
                          beta1=0.9, beta2=0.95, eps=1e-8, fused=True)


def test_a_refused_kernel_falls_back_once_with_a_warning(monkeypatch):
    """If torch's fused kernel raises (a build or device without it), the step still
    happens, on the readable path, with one warning; later calls skip the kernel."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no fused kernel here")

    monkeypatch.setattr(torch, "_fused_adamw_", refuse)
    monkeypatch.setattr(adamw, "FUSED", True)
    expected = _run([torch.float32] * 3, fused=False, steps=2)
    with pytest.warns(UserWarning, match="fused AdamW kernel failed"):
        got = _run([torch.float32] * 3, fused=True, steps=2)
    assert adamw.FUSED is False and len(calls) == 1
    for a_list, b_list in zip(got, expected):
        for a, b in zip(a_list, b_list):
            assert torch.equal(a, b)
