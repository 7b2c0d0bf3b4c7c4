"""The opt-in chunked loss (nanogpt_course/chunked_loss.py, issue #18) equals the readable
head + F.cross_entropy in fp32, and its autograd graph keeps no (N, V) tensor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt_course import chunked_loss
from nanogpt_course.chunked_loss import linear_softcap_cross_entropy
from nanogpt_course.model import GPT, GPTConfig

N, C, VOCAB, V_PADDED, CAP = 37, 16, 250, 256, 15.0


def reference(h, weight, targets, reduction, cap=CAP):
    """GPT.head + F.cross_entropy, written out: the readable path."""
    logits = (h @ weight.t())[:, :VOCAB].float()
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction=reduction)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g).requires_grad_()
    # large enough weights that the softcap bends the logits
    weight = (3.0 * torch.randn(V_PADDED, C, generator=g)).requires_grad_()
    targets = torch.randint(0, VOCAB, (N,), generator=g)
    targets[::4] = -1
    return h, weight, targets


def close(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max()))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_rows", [1, 8, N, 1000])  # 8 does not divide N = 37
@pytest.mark.parametrize("cap", [CAP, 0.0])
def test_loss_and_gradients_match_the_readable_path(reduction, chunk_rows, cap):
    h, weight, targets = inputs()
    ref = reference(h, weight, targets, reduction, cap)
    ref_h, ref_w = torch.autograd.grad(ref, (h, weight))
    loss = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=cap,
                                        reduction=reduction, chunk_rows=chunk_rows)
    grad_h, grad_w = torch.autograd.grad(loss, (h, weight))
    close(loss, ref)
    close(grad_h, ref_h)
    close(grad_w, ref_w)
    assert grad_w[VOCAB:].abs().max() == 0  # the head's padding rows get no gradient


def test_backward_scales_by_the_incoming_gradient():
    h, weight, targets = inputs(1)
    ref = reference(h, weight, targets, "sum")
    loss = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP,
                                        reduction="sum", chunk_rows=5)
    close(torch.autograd.grad(-2.5 * loss, h)[0], torch.autograd.grad(-2.5 * ref, h)[0])


def test_all_targets_ignored_as_pytorch():
    h, weight, _ = inputs()
    targets = torch.full((N,), -1)
    mean = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP,
                                        chunk_rows=8)
    assert math.isnan(mean.item()) and math.isnan(reference(h, weight, targets, "mean").item())
    grad_h, grad_w = torch.autograd.grad(mean, (h, weight))
    assert grad_h.abs().max() == 0 and grad_w.abs().max() == 0  # F.cross_entropy gives 0 too
    total = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP,
                                         reduction="sum")
    assert total.item() == 0


def test_without_gradients_only_the_loss():
    h, weight, targets = inputs()
    with torch.no_grad():
        loss = linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP,
                                            chunk_rows=8)
        close(loss, reference(h, weight, targets, "mean"))
    assert loss.grad_fn is None


def test_bad_reduction_and_impl():
    h, weight, targets = inputs()
    with pytest.raises(ValueError, match="reduction"):
        linear_softcap_cross_entropy(h, weight, targets, vocab_size=VOCAB, softcap=CAP,
                                     reduction="none")
    with pytest.raises(ValueError, match="NANOGPT_COURSE_LOSS"):
        chunked_loss.check_impl("bogus")


# ---------------------------------------------------------------------------- the model
def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=300, sequence_len=32, head_dim=32))
    with torch.no_grad():  # the zero-initialized projections too, so every gradient is alive
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch(rows=3, T=32, vocab=300):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (rows, T), generator=g)
    y = torch.randint(0, vocab, (rows, T), generator=g)
    y[0, :7] = -1
    y[2, 20:] = -1
    return x, y


def grads_of(model, impl, reduction):
    model.loss_impl = impl
    model.zero_grad(set_to_none=True)
    x, y = batch()
    loss = model(x, y, reduction=reduction)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_rows", [5, 4096])  # 5 does not divide 3 x 32 rows
def test_gpt_end_to_end_gradients_match(monkeypatch, reduction, chunk_rows):
    monkeypatch.setattr(chunked_loss, "CHUNK_ROWS", chunk_rows)
    model = tiny_gpt()
    assert model.loss_impl == "auto"  # the default: the readable path on the CPU
    ref_loss, ref = grads_of(model, "standard", reduction)
    loss, got = grads_of(model, "chunked", reduction)
    close(loss, ref_loss)
    assert set(got) == set(ref)
    for name in ref:
        close(got[name], ref[name])


def test_gpt_per_token_losses_and_logits_unchanged():
    model = tiny_gpt()
    x, y = batch()
    ref = model(x, y, reduction="none")
    model.loss_impl = "chunked"  # "none" keeps the readable path
    torch.testing.assert_close(model(x, y, reduction="none"), ref)
    assert model(x).shape == (3, 32, 300)


def test_env_var_selects_the_chunked_loss(monkeypatch):
    monkeypatch.setenv(chunked_loss.ENV_VAR, "chunked")
    assert tiny_gpt().loss_impl == "chunked"
    monkeypatch.setenv(chunked_loss.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="NANOGPT_COURSE_LOSS"):
        tiny_gpt()


# ---------------------------------------------------------------------------- memory
def saved_shapes(fn) -> list[torch.Size]:
    """Shapes of every tensor autograd saves for backward while ``fn()`` runs."""
    shapes = []

    def pack(t):
        shapes.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_chunked_loss_saves_no_logits_sized_tensor():
    h, weight, targets = inputs()
    kw = dict(vocab_size=VOCAB, softcap=CAP, chunk_rows=8)
    standard = saved_shapes(lambda: reference(h, weight, targets, "mean"))
    chunked = saved_shapes(lambda: linear_softcap_cross_entropy(h, weight, targets, **kw))
    assert max(s.numel() for s in standard) >= N * VOCAB  # the control: logits are kept
    assert max(s.numel() for s in chunked) == max(N * C, V_PADDED * C)  # the two gradients


def test_gpt_chunked_graph_keeps_no_logits():
    model = tiny_gpt()
    x, y = batch()
    rows, padded, vocab = x.numel(), model.config.padded_vocab_size, model.config.vocab_size

    def logits_like(shapes):
        return [s for s in shapes if len(s) and s[-1] in (padded, vocab) and math.prod(s[:-1]) == rows]

    assert logits_like(saved_shapes(lambda: model(x, y)))  # the readable path keeps them
    model.loss_impl = "chunked"
    assert not logits_like(saved_shapes(lambda: model(x, y)))
