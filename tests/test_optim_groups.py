"""Optimizer groups by role: every group's LR, betas and weight decay pinned to the table,
the residual/x0 scalars' first (noise) step skipped, and an old-layout checkpoint refused."""

from __future__ import annotations

import pytest
import torch

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.optim import MuonAdamW, build_optimizer, demo
from nanogpt_course.optim.build import UNIFORM_ROLES, parameter_roles

WIDTH = 128
S = (WIDTH / 768) ** -0.5  # the AdamW width factor


def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(sequence_len=32, vocab_size=64, n_layer=4, n_head=2, n_kv_head=2,
                         n_embd=WIDTH))


LRS = dict(matrix_lr=0.03, embedding_lr=0.2, unembedding_lr=0.004, scalar_lr=0.5)

# role: (kind, lr, betas, weight decay): written out by hand, not read from the table.
# The default is nanochat 92d63d4's setup_optimizer grouping.
UNIFORM = {
    "matrix": ("muon", 0.03, None, 0.1),
    "gate": ("adamw", 0.5, (0.8, 0.95), 0.0),
    "residual": ("adamw", 0.5, (0.8, 0.95), 0.0),
    "x0": ("adamw", 0.5, (0.8, 0.95), 0.0),
    "embedding": ("adamw", 0.2 * S, (0.8, 0.95), 0.0),
    "value_embedding": ("adamw", 0.2 * S, (0.8, 0.95), 0.0),
    "unembedding": ("adamw", 0.004 * S, (0.8, 0.95), 0.0),
}
DEFAULT = {
    "matrix": ("muon", 0.03, None, 0.1),
    "gate": ("muon", 0.03, None, 0.1),
    "residual": ("adamw", 0.005, (0.8, 0.95), 0.05),
    "x0": ("adamw", 0.5, (0.96, 0.95), 0.0),
    "embedding": ("adamw", 0.2 * S, (0.8, 0.995), 0.001),
    "value_embedding": ("adamw", 0.1 * S, (0.8, 0.995), 0.01),
    "unembedding": ("adamw", 0.004 * S, (0.8, 0.96), 0.01),
}


@pytest.mark.parametrize("roles, expected", [(None, DEFAULT), (UNIFORM_ROLES, UNIFORM)])
def test_every_group_is_pinned_to_the_table(roles, expected):
    model = _gpt()
    opt = build_optimizer(model, weight_decay=0.1, roles=roles, **LRS)
    got = {g["name"]: g for g in opt.param_groups}
    assert set(got) == set(expected)
    for name, (kind, lr, betas, wd) in expected.items():
        g = got[name]
        assert g["kind"] == kind, name
        assert g["lr"] == pytest.approx(lr, rel=1e-12) and g["initial_lr"] == g["lr"], name
        assert g["weight_decay"] == pytest.approx(wd), name
        if betas is not None:
            assert tuple(g["betas"]) == betas and g["eps"] == 1e-10, name
    # the roles hold what their names say
    assert got["residual"]["params"] == [model.resid_lambdas]
    assert got["x0"]["params"] == [model.x0_lambdas]
    assert got["embedding"]["params"] == [model.wte.weight]
    assert got["unembedding"]["params"] == [model.lm_head.weight]
    assert {id(p) for p in got["value_embedding"]["params"]} == {
        id(e.weight) for e in model.value_embeds.values()}
    gates = [b.attn.ve_gate.weight for b in model.blocks if b.attn.ve_gate is not None]
    assert len(gates) == 2 and {id(p) for p in got["gate"]["params"]} == {id(p) for p in gates}
    listed = [p for g in opt.param_groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))


def test_roles_cover_the_model_once():
    model = _gpt()
    roles = parameter_roles(model)
    listed = [id(p) for ps in roles.values() for p in ps]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())


def test_the_residual_scalars_first_step_is_skipped():
    """At init their gradient is rounding noise (~1e-11): Adam would take a full step."""
    model = _gpt()
    opt = build_optimizer(model, **LRS)
    x, y = demo.bigram_batch(0, vocab=64, batch=4, seq=32)
    model(x, y).backward()
    grad = model.resid_lambdas.grad.abs().max().item()
    assert grad < 1e-5  # zero in exact arithmetic
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["resid_lambdas"], before["resid_lambdas"])
    assert torch.equal(after["x0_lambdas"], before["x0_lambdas"])
    assert not torch.equal(after["wte.weight"], before["wte.weight"])
    # from the second step on they train (the blocks are no longer the identity)
    opt.zero_grad(set_to_none=True)
    model(*demo.bigram_batch(1, vocab=64, batch=4, seq=32)).backward()
    assert model.resid_lambdas.grad.abs().max().item() > 1e-4
    opt.step()
    assert not torch.equal(model.resid_lambdas.detach(), before["resid_lambdas"])


def test_an_optimizer_state_of_the_old_grouping_is_refused_clearly():
    model = _gpt()
    kinds = model.parameter_kinds()  # the old grouping: four kinds, gates among the scalars
    old = MuonAdamW([{"name": "matrix", "kind": "muon", "params": kinds["matrix"]}] + [
        {"name": k, "kind": "adamw", "params": kinds[k]}
        for k in ("embedding", "unembedding", "scalar")])
    model(*demo.bigram_batch(0, vocab=64, batch=4, seq=32)).backward()
    old.step()
    tensors, layout = old.shard_state_dict()
    new = build_optimizer(model, **LRS)
    with pytest.raises(ValueError, match="--checkpoint"):
        new.load_shard_state_dict(tensors, layout)


def test_an_optimizer_state_of_the_uniform_table_is_refused_clearly():
    """The table before the d6 A/B kept the gates in AdamW: its state does not fit."""
    model = _gpt()
    old = build_optimizer(model, roles=UNIFORM_ROLES, **LRS)
    model(*demo.bigram_batch(0, vocab=64, batch=4, seq=32)).backward()
    old.step()
    tensors, layout = old.shard_state_dict()
    with pytest.raises(ValueError, match="--checkpoint"):
        build_optimizer(model, **LRS).load_shard_state_dict(tensors, layout)
