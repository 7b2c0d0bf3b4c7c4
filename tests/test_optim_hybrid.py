"""MuonAdamW as a whole: build_optimizer, clipping, state, shards, and training a tiny GPT."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.optim import (
    DistMuonAdamW,
    MuonAdamW,
    build_optimizer,
    consolidate,
    demo,
    infer_parameter_kinds,
    reshard,
)

VOCAB = 64


def tiny_config(**kw) -> GPTConfig:
    base = dict(sequence_len=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    return GPTConfig(**{**base, **kw})


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**kw))


def bigram_batch(step: int):
    """16 x 32 tokens of the library's fixed random bigram chain: each token has 3 possible
    successors, so the best achievable loss is ln 3 ~ 1.10 nats."""
    return demo.bigram_batch(step, vocab=VOCAB, batch=16, seq=32)


def train_gpt(make_opt, steps: int) -> float:
    """Train a fresh tiny GPT; return its loss on a held-out batch."""
    model = tiny_gpt()
    opt = make_opt(model)
    for step in range(steps):
        x, y = bigram_batch(step)
        opt.zero_grad(set_to_none=True)
        model(x, y).backward()
        opt.step()
    x, y = bigram_batch(10_000)
    with torch.no_grad():
        return model(x, y).item()


def test_muon_beats_tuned_adamw_on_a_tiny_gpt():
    steps = 30
    adamw = {lr: train_gpt(lambda m, lr=lr: torch.optim.AdamW(
        m.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0), steps)
        for lr in (3e-3, 1e-2, 3e-2)}  # the best of an LR sweep, to be fair to AdamW
    muon = train_gpt(lambda m: build_optimizer(m), steps)
    assert muon < min(adamw.values()) - 0.005, (muon, adamw)


def test_build_optimizer_covers_every_gpt_parameter_once():
    model = tiny_gpt()
    opt = build_optimizer(model)
    assert isinstance(opt, MuonAdamW)
    listed = [p for g in opt.param_groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))
    assert {id(p) for p in listed} == {id(p) for p in model.parameters()}
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["matrix"]["kind"] == "muon"
    assert all(p.ndim == 2 for p in by_name["matrix"]["params"])
    assert model.lm_head.weight in by_name["unembedding"]["params"]
    assert model.wte.weight in by_name["embedding"]["params"]
    for g in opt.param_groups:
        assert g["initial_lr"] == g["lr"]
    # AdamW LRs scale like 1 / sqrt(width / 768); Muon and scalars do not
    s = (64 / 768) ** -0.5
    assert by_name["embedding"]["lr"] == pytest.approx(0.2 * s)
    assert by_name["unembedding"]["lr"] == pytest.approx(0.004 * s)
    assert by_name["x0"]["lr"] == 0.5 and by_name["residual"]["lr"] == pytest.approx(0.005)
    assert by_name["gate"]["lr"] == by_name["matrix"]["lr"] == 0.02  # gates on Muon
    wide = build_optimizer(tiny_gpt(n_embd=128), embedding_lr=0.3)
    emb = next(g for g in wide.param_groups if g["name"] == "embedding")
    assert emb["lr"] == pytest.approx(0.3 * (128 / 768) ** -0.5)


def test_build_optimizer_distributed_flag_and_kind_checks():
    model = tiny_gpt()
    assert isinstance(build_optimizer(model, distributed=True), DistMuonAdamW)

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def parameter_kinds(self):
            return {"matrix": [self.a.weight], "scalar": [self.a.bias, self.b.bias]}

    with pytest.raises(ValueError, match="leaves out"):
        build_optimizer(Broken())
    Broken.parameter_kinds = lambda self: {"matrix": [self.a.weight, self.b.weight, self.a.weight],
                                           "scalar": [self.a.bias, self.b.bias]}
    with pytest.raises(ValueError, match="twice"):
        build_optimizer(Broken())


def test_infer_parameter_kinds_without_the_method():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.fc = nn.Linear(8, 8)
            self.lm_head = nn.Linear(8, 10, bias=False)

    model = Plain()
    kinds = infer_parameter_kinds(model)
    assert kinds["embedding"] == [model.emb.weight]
    assert kinds["matrix"] == [model.fc.weight]
    assert kinds["scalar"] == [model.fc.bias]
    assert kinds["unembedding"] == [model.lm_head.weight]
    assert len(build_optimizer(model).param_groups) == 4


def _step_with_grads(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def test_global_clipping_equals_clip_grad_norm_then_step():
    model = tiny_gpt()
    twin = copy.deepcopy(model)
    opt = build_optimizer(model, max_grad_norm=0.5)
    ref = build_optimizer(twin)
    for step in range(3):
        x, y = bigram_batch(step)
        for m in (model, twin):
            m.zero_grad(set_to_none=True)
            m(x, y).backward()
        before = [p.grad.clone() for p in model.parameters()]
        expected_norm = torch.nn.utils.clip_grad_norm_(list(twin.parameters()), 0.5)
        opt.step()
        ref.step()
        assert expected_norm > 0.5  # the clip is active
        torch.testing.assert_close(opt.grad_norm, expected_norm)
        for b, p in zip(before, model.parameters()):
            assert torch.equal(b, p.grad)  # gradients are left alone
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    off = build_optimizer(tiny_gpt())
    assert off.grad_norm is None


def _trained(steps=3, **kw):
    model = tiny_gpt()
    opt = build_optimizer(model, **kw)
    for step in range(steps):
        x, y = bigram_batch(step)
        opt.zero_grad(set_to_none=True)
        model(x, y).backward()
        opt.step()
    return model, opt


def _next_step(model, opt, step=3):
    x, y = bigram_batch(step)
    opt.zero_grad(set_to_none=True)
    model(x, y).backward()
    opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_shard_state_roundtrip_through_safetensors(tmp_path):
    model, opt = _trained()
    tensors, layout = opt.shard_state_dict()
    save_file(tensors, tmp_path / "optimizer_rank0.safetensors")  # no shared storage
    loaded = load_file(tmp_path / "optimizer_rank0.safetensors")
    assert layout["world_size"] == 1
    twin = copy.deepcopy(model)
    fresh = build_optimizer(twin, matrix_lr=0.5)  # hyperparameters come back from the layout
    fresh.load_shard_state_dict(loaded, layout)
    assert fresh.param_groups[0]["lr"] == 0.02
    expected = _next_step(model, opt)
    got = _next_step(twin, fresh)
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_torch_state_dict_roundtrip():
    model, opt = _trained()
    state = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    fresh = build_optimizer(twin)
    fresh.load_state_dict(state)
    expected, got = _next_step(model, opt), _next_step(twin, fresh)
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_load_rejects_other_models_state():
    _, opt = _trained(steps=1)
    tensors, layout = opt.shard_state_dict()
    other = build_optimizer(tiny_gpt(n_layer=3))
    with pytest.raises(ValueError, match="different parameters"):
        other.load_shard_state_dict(tensors, layout)
    with pytest.raises(ValueError, match="layout"):
        other.load_shard_state_dict(tensors, {"world_size": 1})


def test_reshard_splits_and_consolidate_rejoins():
    _, opt = _trained(steps=2)
    full, layout = opt.shard_state_dict()
    shards, layouts = zip(*(reshard(full, layout, world_size=3, rank=r, small_param_numel=16)
                            for r in range(3)))
    assert all(lay == layouts[0] for lay in layouts)
    # every tensor lands on exactly one rank, except the replicated small ones
    modes = {i: e["mode"] for i, e in enumerate(layouts[0]["params"])}
    for key in full:
        holders = [r for r in range(3) if key in shards[r]]
        mode = modes[int(key.split(".")[0])]
        assert len(holders) == (3 if mode == "replicated" else 1) or mode == "flat"
    per_rank = [sum(t.numel() for t in s.values()) for s in shards]
    assert max(per_rank) < 0.5 * sum(t.numel() for t in full.values())
    back, back_layout = consolidate(list(shards), layouts[0])
    assert back.keys() == full.keys() and back_layout["params"] == layout["params"]
    for key in full:
        assert torch.equal(back[key].reshape(full[key].shape), full[key])


def test_dist_optimizer_without_process_group_equals_muonadamw():
    a, b = tiny_gpt(), tiny_gpt()
    opt_a = build_optimizer(a, max_grad_norm=1.0)
    opt_b = build_optimizer(b, max_grad_norm=1.0, distributed=True)
    for step in range(3):
        x, y = bigram_batch(step)
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad(set_to_none=True)
            m(x, y).backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert opt_a.state_bytes() == opt_b.state_bytes() > 0


def test_state_bytes_counts_stacked_buffers_once():
    params = [nn.Parameter(torch.randn(8, 4)) for _ in range(3)]
    opt = MuonAdamW([{"kind": "muon", "params": params}])
    _step_with_grads(opt, params, [torch.randn(8, 4) for _ in params])
    assert opt.state_bytes() == 3 * 8 * 4 * 4  # one stacked (3, 8, 4) fp32 buffer
    assert opt.state[params[1]]["momentum_buffer"].shape == (8, 4)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64)])
def test_shape_scaled_weight_decay_decays_tall_matrices_at_their_own_lr(shape):
    """Decay is applied before the update and the direction does not depend on it, so the
    two runs differ by exactly ``lr * wd * (s - 1) * W0`` with ``s = sqrt(max(1, m / n))``
    (1 for a wide matrix: no difference)."""
    torch.manual_seed(0)
    w0 = torch.randn(*shape)
    grad = torch.randn(*shape)
    lr, wd = 0.02, 0.5
    after = {}
    for scaled in (False, True):
        p = nn.Parameter(w0.clone())
        opt = MuonAdamW([{"kind": "muon", "params": [p], "lr": lr, "weight_decay": wd,
                          "shape_scaled_weight_decay": scaled}])
        p.grad = grad.clone()
        opt.step()
        after[scaled] = p.detach().clone()
    s = max(1.0, shape[0] / shape[1]) ** 0.5
    expected = lr * wd * (s - 1.0) * w0
    torch.testing.assert_close(after[False] - after[True], expected, atol=1e-6, rtol=1e-4)
    if s > 1:
        assert (after[False] - after[True]).abs().max() > 1e-3  # the flag changed something
