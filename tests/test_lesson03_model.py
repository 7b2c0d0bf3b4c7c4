"""Lesson 03's module-built GPT (MLP, CausalSelfAttention, Block, GPTModel, as written in
lessons/03_gpt_model.py with the worked solutions filled in) equals the library's GPT:
same state_dict keys and shapes, same logits, loss and gradients, across configurations."""

from __future__ import annotations

import ast
import importlib.util
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import REPO

from nanogpt_course import attention, rope
from nanogpt_course.model import GPT, GPTConfig

LESSON = REPO / "lessons" / "03_gpt_model.py"
NAMES = {"rms_norm", "MLP", "CausalSelfAttention", "Block", "GPTModel"}


@pytest.fixture(scope="module")
def lesson_model():
    """The lesson's definitions, executed with the solutions in place of the stubs."""
    spec = importlib.util.spec_from_file_location("solutions_03", REPO / "solutions" / "03_gpt_model.py")
    solutions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(solutions)
    tree = ast.parse(LESSON.read_text())
    nodes = [n for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in NAMES]
    assert {n.name for n in nodes} == NAMES, "lesson 03 no longer defines the model's modules"
    namespace = dict(torch=torch, nn=nn, F=F, math=math, rope=rope, attention=attention,
                     GPTConfig=GPTConfig, mlp_relu2=solutions.mlp_relu2,
                     block_forward=solutions.block_forward)
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(LESSON), "exec"), namespace)
    return namespace["GPTModel"]


def _randomize(model: GPT) -> None:
    """Random values everywhere (a fresh GPT has zero output projections and gates)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.dim() == 2 else 1
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


BASE = dict(sequence_len=48, vocab_size=200, n_layer=3, n_head=4, n_kv_head=4, n_embd=64)
CONFIGS = {
    "plain full context": dict(),
    "GQA 4/2, SL windows": dict(n_kv_head=2, window_pattern="SL", short_window=8),
    "SSSL, 1 kv head": dict(n_layer=4, n_kv_head=1, window_pattern="SSSL", short_window=12),
    "no value embeddings": dict(value_embeds=False),
    "no residual scalars, no softcap": dict(residual_scalars=False, softcap=0.0),
    "odd vocab 1000 (padded)": dict(vocab_size=1000, n_layer=2),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_module_built_model_matches_library(lesson_model, overrides):
    cfg = GPTConfig(**{**BASE, **overrides})
    torch.manual_seed(0)
    reference = GPT(cfg)
    _randomize(reference)
    mine = lesson_model(cfg)
    assert {k: v.shape for k, v in mine.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    mine.load_state_dict(reference.state_dict(), strict=True)

    idx = torch.randint(0, cfg.vocab_size, (2, cfg.sequence_len))
    targets = torch.randint(0, cfg.vocab_size, (2, cfg.sequence_len))
    targets[:, :5] = -1  # ignored positions
    torch.testing.assert_close(mine(idx), reference(idx), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine(idx[:, :17]), reference(idx[:, :17]), atol=1e-4, rtol=1e-4)

    loss_mine, loss_ref = mine(idx, targets), reference(idx, targets)
    torch.testing.assert_close(loss_mine, loss_ref, atol=1e-5, rtol=1e-5)
    loss_mine.backward()
    loss_ref.backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in mine.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def test_a_wrong_block_is_caught(lesson_model):
    """The comparison can fail: a model whose blocks skip the x0 path differs."""
    cfg = GPTConfig(**BASE)
    reference = GPT(cfg)
    _randomize(reference)
    mine = lesson_model(cfg)
    mine.load_state_dict(reference.state_dict())
    with torch.no_grad():
        mine.x0_lambdas.zero_()
    idx = torch.randint(0, cfg.vocab_size, (1, 16))
    assert not torch.allclose(mine(idx), reference(idx), atol=1e-3)
