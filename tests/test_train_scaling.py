"""Depth rules: nanochat's numbers at nanochat's settings, overrides, and the printed plan."""

from __future__ import annotations

import math
from functools import partial

import pytest

from nanogpt_course.train import scaling

# nanochat's settings: vocab 32768, sequence 2048, aspect ratio 64, head dim 128, ratio 12
NANOCHAT = partial(scaling.formula_stats, vocab_size=32768, sequence_len=2048)


def test_formula_counts_match_nanochat_shapes():
    # d12: width 768, 6 heads; matrices 12 layers x 12 x 768^2, lm_head 32768 x 768
    d12 = NANOCHAT(12)
    assert d12.scaling_params == 12 * 12 * 768**2 + 32768 * 768 == 110_100_480
    d20 = NANOCHAT(20)
    assert d20.scaling_params == 20 * 12 * 1280**2 + 32768 * 1280 == 435_159_040


def test_d12_is_the_reference_point():
    p = scaling.plan(12, NANOCHAT)
    assert p.total_batch_size == 2**19
    assert p.lr_scale == 1.0
    assert p.weight_decay == pytest.approx(0.28, abs=1e-12)
    assert p.lrs == {"matrix_lr": 0.02, "embedding_lr": 0.3, "unembedding_lr": 0.008,
                     "scalar_lr": 0.5}
    assert p.target_tokens == 12 * 110_100_480
    assert p.num_steps == 12 * 110_100_480 // 2**19  # nanochat floors: 2520


def test_d20_follows_the_power_law_sqrt_lr_and_weight_decay_rule():
    p = scaling.plan(20, NANOCHAT)
    assert p.total_batch_size == 2**20
    assert p.lr_scale == pytest.approx(math.sqrt(2), rel=1e-12)
    assert p.lrs["matrix_lr"] == pytest.approx(0.02 * math.sqrt(2))
    assert p.weight_decay == pytest.approx(0.100, abs=5e-4)
    # the rule written out by hand: 0.28 * sqrt(2) * D_ref / D
    expected = 0.28 * math.sqrt(2) * (12 * 110_100_480) / (12 * 435_159_040)
    assert p.weight_decay == pytest.approx(expected, rel=1e-12)


def test_batch_rounds_to_nearest_power_of_two():
    ref = 1e9
    assert scaling.optimal_batch_size(ref, ref) == 2**19
    # D x 2^(1/0.383) doubles the prediction exactly
    assert scaling.optimal_batch_size(ref * 2 ** (1 / 0.383), ref) == 2**20
    # just under half-way (in log2) between 2^19 and 2^20 stays at 2^19
    assert scaling.optimal_batch_size(ref * 2 ** (0.49 / 0.383), ref) == 2**19
    assert scaling.optimal_batch_size(ref * 2 ** (0.51 / 0.383), ref) == 2**20
    assert scaling.optimal_batch_size(ref / 2 ** (1 / 0.383), ref) == 2**18


def test_target_flops_sets_horizon_and_steps():
    stats = NANOCHAT(12)
    p = scaling.plan(12, NANOCHAT, target_flops=1e18)
    assert p.horizon_from == "target-flops"
    assert p.target_tokens == pytest.approx(1e18 / stats.flops_per_token)
    assert p.num_steps == round(1e18 / stats.flops_per_token / p.total_batch_size)
    assert p.total_flops == pytest.approx(1e18, rel=0.01)


def test_explicit_flags_override_rules():
    p = scaling.plan(20, NANOCHAT, total_batch_size=2**18, lrs={"matrix_lr": 0.05},
                     weight_decay=0.0, max_steps=7)
    assert p.total_batch_size == 2**18 and p.batch_from == "--total-batch-size"
    assert p.lrs["matrix_lr"] == 0.05 and p.lr_from["matrix_lr"] == "--matrix-lr"
    # an explicit batch still rescales the LRs that were not given: sqrt(2^18 / 2^19)
    assert p.lrs["embedding_lr"] == pytest.approx(0.3 / math.sqrt(2))
    assert p.weight_decay == 0.0 and p.num_steps == 7


def test_tokens_per_param_changes_horizon_only_through_the_rules():
    p12, p20 = scaling.plan(12, NANOCHAT), scaling.plan(12, NANOCHAT, tokens_per_param=20)
    assert p20.target_tokens == pytest.approx(p12.target_tokens * 20 / 12)
    # rule 4 holds the EMA timescale for the model's compute-optimal horizon (12 tokens per
    # scaling parameter), not the trained one: only the batch (through √(B/B_ref)) moves λ
    assert p20.weight_decay == pytest.approx(0.28 * p20.lr_scale)


def test_weight_decay_does_not_follow_a_short_flop_budget():
    """d6 at 2.49e16 FLOPs (4 tokens per parameter): nanochat's λ 0.817, not 3x that."""
    short = scaling.plan(6, NANOCHAT, target_flops=2.49e16)
    assert short.target_tokens / short.scaling_params < 6
    optimal = scaling.plan(6, NANOCHAT)
    expected = 0.28 * short.lr_scale * short.ref_tokens / (12 * short.scaling_params)
    assert short.weight_decay == pytest.approx(expected, rel=1e-12)
    assert short.weight_decay == pytest.approx(
        optimal.weight_decay * short.lr_scale / optimal.lr_scale, rel=1e-12)


def test_bad_values_raise():
    with pytest.raises(ValueError, match="depth"):
        scaling.plan(0, NANOCHAT)
    with pytest.raises(ValueError, match="tokens-per-param"):
        scaling.plan(12, NANOCHAT, tokens_per_param=-1)


def test_describe_prints_every_number():
    text = scaling.plan(20, NANOCHAT).describe()
    for needle in ("1,048,576", "1.4142", "0.1002", "steps", "FLOPs"):
        assert needle in text, needle


def test_formula_agrees_with_the_model_when_available():
    model = pytest.importorskip("nanogpt_course.model")
    from nanogpt_course.train.build import model_stats

    for depth in (2, 12):
        config = model.GPTConfig.from_depth(depth, vocab_size=32768, sequence_len=2048)
        got = model_stats(config)
        want = NANOCHAT(depth)
        assert got.scaling_params == want.scaling_params
        assert got.flops_per_token == pytest.approx(want.flops_per_token, rel=1e-4)  # + value gates


def test_model_counts_reproduce_nanochat_numbers():
    """The same rules on the real model's parameter/FLOP counts (meta device)."""
    model = pytest.importorskip("nanogpt_course.model")
    from nanogpt_course.train.build import model_stats

    def stats(d):
        return model_stats(model.GPTConfig.from_depth(d, vocab_size=32768, sequence_len=2048))

    d12, d20 = scaling.plan(12, stats), scaling.plan(20, stats)
    assert (d12.total_batch_size, d20.total_batch_size) == (2**19, 2**20)
    assert d12.lr_scale == 1.0 and d20.lr_scale == pytest.approx(math.sqrt(2))
    assert d12.weight_decay == pytest.approx(0.28)
    assert d20.weight_decay == pytest.approx(0.100, abs=5e-4)


def test_depth_table_lists_our_defaults():
    pytest.importorskip("nanogpt_course.model")
    from nanogpt_course.train.build import depth_table

    table = depth_table((12, 20))
    assert "| 12 | 768 | 6 |" in table and "2^19" in table and "2^20" in table
