"""--embedding-dtype bf16: the token and value embeddings (and their Adam moments) are
stored in bf16, AdamW still computes in fp32 and rounds once, the run trains like the fp32
one, checkpoints load and resume exactly."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_helpers import optimizer_groups, tiny_cfg

from nanogpt_course import checkpoint as ck
from nanogpt_course.optim.adamw import adamw_step_
from nanogpt_course.train import read_metrics, train
from nanogpt_course.train.config import ConfigError, parse_args, validate


def _naive_adamw_bf16(p, g, m, v, step, lr, b1, b2, eps, wd):
    """Textbook AdamW in fp64 on the bf16 values, each state rounded to bf16 at the end."""
    p, g, m, v = (t.double() for t in (p, g, m, v))
    p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr / (1 - b1**step) * m / (v.sqrt() / math.sqrt(1 - b2**step) + eps)
    return tuple(t.bfloat16() for t in (p, m, v))


def test_adamw_on_bf16_tensors_is_fp32_math_rounded_once():
    torch.manual_seed(0)
    p = torch.randn(64, 16).bfloat16()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    p32 = p.float().clone()  # an fp32 tensor in the same call takes the plain path
    m32, v32 = torch.zeros_like(p32), torch.zeros_like(p32)
    ref = (p.clone(), m.clone(), v.clone())
    hp = dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-10, weight_decay=0.1)
    for step in range(1, 6):
        g = torch.randn(64, 16)
        adamw_step_([p, p32], [g.bfloat16(), g], [m, m32], [v, v32], step=step, **hp)
        ref = _naive_adamw_bf16(*ref[:1], g.bfloat16(), *ref[1:], step, hp["lr"], hp["beta1"],
                                hp["beta2"], hp["eps"], hp["weight_decay"])
    assert p.dtype == m.dtype == v.dtype == torch.bfloat16 and p32.dtype == torch.float32
    for got, want in zip((p, m, v), ref):  # the same bf16 values (fp32 vs fp64: 1 ulp,
        # or 1e-7 where m cancels to ~0)
        ulp = (want.float().abs() * 2**-7).clamp(min=1e-7)
        assert ((got.float() - want.float()).abs() <= ulp).all()
    # the bf16 copy stays within bf16 rounding of the fp32 run, not far from it
    assert (p.float() - p32).abs().max() < 0.05


def test_flag_parses_and_validates():
    cfg = parse_args(["--embedding-dtype", "bf16"])
    assert cfg.embedding_dtype == "bf16"
    validate(cfg)
    with pytest.raises(ConfigError, match="fp32, bf16"):
        validate(cfg.replace(embedding_dtype="fp16"))


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def test_bf16_embeddings_train_load_and_resume_exactly(tmp_path):
    steps = 6
    fp32 = train(tiny_cfg(tmp_path / "fp32", max_steps=steps, eval_every=-1), echo=False)
    full = train(tiny_cfg(tmp_path / "full", max_steps=steps, eval_every=-1,
                          embedding_dtype="bf16"), echo=False)
    # on disk in fp32 (checkpoints keep one format), holding bf16 values
    state = ck.read_model_state(tmp_path / "full")
    embeddings = [k for k in state if k.startswith(("wte.", "value_embeds."))]
    assert embeddings and all(v.dtype == torch.float32 for v in state.values())
    assert all(torch.equal(state[k], state[k].bfloat16().float()) for k in embeddings)
    assert not torch.equal(state["lm_head.weight"], state["lm_head.weight"].bfloat16().float())
    # the same run up to bf16 rounding of the embeddings: close, not equal
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / "full")
    assert a[1] != b[1] and abs(a[steps] - b[steps]) < 0.02 * a[steps]
    assert fp32.status == full.status == "finished"
    # moments follow their parameter's dtype
    opt = ck.read_optimizer_state(tmp_path / "full", 0)
    assert any(v.dtype == torch.bfloat16 for v in opt.values() if torch.is_tensor(v))
    # inference loads the checkpoint (the weights are cast into the model)
    model = ck.load(tmp_path / "full", device="cpu").model
    logits = model(torch.zeros(1, 4, dtype=torch.long))
    assert torch.isfinite(logits).all()
    # stop at 3 and resume: bitwise the uninterrupted run
    cut = tmp_path / "cut"
    train(tiny_cfg(cut, max_steps=steps, eval_every=-1, embedding_dtype="bf16", stop_at=3),
          echo=False)
    train(tiny_cfg(cut, max_steps=steps, eval_every=-1, embedding_dtype="bf16", resume=True),
          echo=False)
    assert _losses(cut) == b
    for name, tensor in ck.read_model_state(cut).items():
        assert torch.equal(tensor, state[name]), name


def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours():
    from nanogpt_course.optim.adamw import round_stochastic

    gen = torch.Generator().manual_seed(0)
    lo = torch.tensor(1.0).bfloat16().float()
    step = 2.0**-7  # bf16 spacing in [1, 2)
    x = torch.full((20_000,), float(lo) + 0.3 * step)  # 30% of the way to the next value
    r = round_stochastic(x, generator=gen).float()
    assert set(r.unique().tolist()) == {float(lo), float(lo) + step}
    assert abs(float(r.mean()) - float(x[0])) < 0.01 * step  # E[r] = x (sd ~0.003 step)
    assert abs(float((r > lo).float().mean()) - 0.3) < 0.02
    neg = round_stochastic(-x, generator=gen).float()  # the sign is kept, same law
    assert abs(float(neg.mean()) + float(x[0])) < 0.01 * step
    exact = torch.tensor([0.0, -2.5, 1.0, float("inf"), float("-inf")])
    assert torch.equal(round_stochastic(exact).float(), exact)  # representable: unchanged
    assert round_stochastic(torch.tensor([float("nan")])).isnan().all()
    with pytest.raises(ValueError, match="fp32"):
        round_stochastic(x.double())


def test_stochastic_rounding_keeps_updates_below_half_a_step():
    """An update of 1/10 of a bf16 step is lost every time by rounding to nearest; rounded
    at random it moves the weights by the right amount on average."""
    torch.manual_seed(0)
    n, steps = 4096, 50
    lr = 0.1 * 2**-7  # Adam's step is ~lr per entry: a tenth of bf16's spacing at 1.0
    runs = {}
    for sr in (False, True):
        p = torch.ones(n).bfloat16()
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        for step in range(1, steps + 1):
            adamw_step_([p], [torch.ones(n).bfloat16()], [m], [v], step=step, lr=lr,
                        beta1=0.9, beta2=0.95, eps=1e-10, stochastic_rounding=sr)
        runs[sr] = p.float()
    assert torch.equal(runs[False], torch.ones(n))  # every update rounded away
    drift = 1.0 - float(runs[True].mean())
    assert abs(drift - steps * lr) < 0.1 * steps * lr  # ~0.039, as in exact arithmetic


def test_stochastic_rounding_flag(tmp_path):
    cfg = parse_args(["--embedding-dtype", "bf16", "--stochastic-rounding"])
    validate(cfg)
    assert cfg.stochastic_rounding
    with pytest.raises(ConfigError, match="--embedding-dtype bf16"):
        validate(parse_args(["--stochastic-rounding"]))
    adamw = optimizer_groups(tiny_cfg(tmp_path / "sr", embedding_dtype="bf16",
                                      stochastic_rounding=True), "adamw")
    assert adamw and all(g["stochastic_rounding"] for g in adamw)
    res = train(tiny_cfg(tmp_path / "run", embedding_dtype="bf16", stochastic_rounding=True,
                         max_steps=3), echo=False)
    assert res.status == "finished" and math.isfinite(res.final_loss)
