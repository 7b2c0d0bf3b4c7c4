"""GPTConfig and GPT: sizes, errors, init, causality, loss, FLOPs, precision."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt_course.model import GPT, VOCAB_PAD_MULTIPLE, GPTConfig


def tiny_config(**overrides) -> GPTConfig:
    base = dict(sequence_len=32, vocab_size=101, n_layer=4, n_head=4, n_kv_head=2, n_embd=32)
    base.update(overrides)
    return GPTConfig(**base)


def randomized(model: GPT, seed: int = 0) -> GPT:
    """Give the zero-initialized weights (projections, gates) values, so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 2 else 0.1) + (
                1.0 if p.dim() == 1 else 0.0))
    return model


# -- config ----------------------------------------------------------------------------
@pytest.mark.parametrize("depth,width,heads", [(6, 384, 3), (12, 768, 6), (20, 1280, 10),
                                               (3, 256, 2), (1, 128, 1)])
def test_from_depth_sizes(depth, width, heads):
    cfg = GPTConfig.from_depth(depth, vocab_size=50259, sequence_len=2048)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim) == (depth, width, heads, 128)
    assert cfg.n_kv_head == heads and cfg.sequence_len == 2048 and cfg.vocab_size == 50259


def test_from_depth_overrides():
    cfg = GPTConfig.from_depth(4, vocab_size=256, sequence_len=64, aspect_ratio=32,
                               head_dim=32, n_kv_head=2, window_pattern="SSSL")
    assert (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.window_pattern) == (128, 4, 2, "SSSL")


def test_padded_vocab():
    cfg = tiny_config(vocab_size=50259)
    assert cfg.padded_vocab_size == 50304 and cfg.padded_vocab_size % VOCAB_PAD_MULTIPLE == 0
    assert tiny_config(vocab_size=256).padded_vocab_size == 256


@pytest.mark.parametrize("changes,match", [
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "must divide n_head"),
    (dict(n_embd=36, n_head=4, n_kv_head=4), "even"),
    (dict(window_pattern="SXL"), "window_pattern"),
    (dict(window_pattern=""), "window_pattern"),
    (dict(n_layer=0), "positive integer"),
    (dict(sequence_len=-5), "positive integer"),
    (dict(short_window=0), "short_window"),
    (dict(softcap=-1.0), "softcap"),
])
def test_inconsistent_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**changes)


def test_config_round_trips_through_json():
    cfg = tiny_config(window_pattern="SSL", short_window=8, softcap=0.0, value_embeds=False)
    again = GPTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_experts": 8})


def test_window_sizes():
    cfg = tiny_config(n_layer=6, window_pattern="SSSL")
    assert cfg.window_sizes() == [16, 16, 16, 32, 16, 32]  # last layer forced to full
    assert tiny_config(window_pattern="L").window_sizes() == [32] * 4
    assert tiny_config(window_pattern="S", short_window=5).window_sizes() == [5, 5, 5, 32]


# -- construction, init, bookkeeping ----------------------------------------------------
def test_meta_construction_then_init():
    cfg = tiny_config()
    with torch.device("meta"):
        model = GPT(cfg)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    ref = GPT(cfg)
    torch.testing.assert_close(model.rope_cos, ref.rope_cos)
    logits = model(torch.randint(0, 101, (2, 8)))
    assert logits.shape == (2, 8, 101) and torch.isfinite(logits).all()


def test_init_scheme():
    torch.manual_seed(0)
    cfg = tiny_config(n_embd=64, vocab_size=500, sequence_len=16)
    model = GPT(cfg)
    for block in model.blocks:
        assert block.attn.c_proj.weight.abs().sum() == 0 and block.mlp.c_proj.weight.abs().sum() == 0
        bound = math.sqrt(3 / 64)
        assert block.attn.c_q.weight.abs().max() <= bound
        assert abs(block.attn.c_q.weight.std().item() - 1 / 8) < 0.01
    assert abs(model.lm_head.weight.std().item() - 0.001) < 1e-4
    assert abs(model.wte.weight.std().item() - 1.0) < 0.02
    # near-uniform first predictions: the loss starts at ln(V)
    idx = torch.randint(0, 500, (4, 16))
    loss = model(idx, idx)
    assert abs(loss.item() - math.log(500)) < 0.05


def test_parameter_kinds_cover_every_parameter_once():
    model = GPT(tiny_config(n_layer=3))
    kinds = model.parameter_kinds()
    assert set(kinds) == {"matrix", "embedding", "unembedding", "scalar"}
    ids = [id(p) for ps in kinds.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(p.dim() == 2 for p in kinds["matrix"])
    assert len(kinds["matrix"]) == 3 * 6  # q, k, v, proj, fc, mlp proj per block
    assert kinds["unembedding"] == [model.lm_head.weight]
    assert len(kinds["embedding"]) == 1 + 2  # wte + value embeddings on layers 0 and 2


def test_param_counts():
    cfg = tiny_config()
    model = GPT(cfg)
    counts = model.param_counts()
    assert counts["total"] == model.num_params() == sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    V, C, L, kv = cfg.padded_vocab_size, 32, 4, 2 * 8
    assert counts["matrices"] == L * (C * C * 2 + 2 * C * kv + 8 * C * C)
    assert counts["embeddings"] == counts["lm_head"] == V * C
    assert counts["value_embeds"] == 2 * V * kv  # layers 1 and 3
    assert counts["scalars"] == 2 * L + 2 * (2 * 32)  # lambdas + two (kv_heads × 32) gates
    plain = GPT(tiny_config(value_embeds=False, residual_scalars=False)).param_counts()
    assert plain["value_embeds"] == plain["scalars"] == 0


# -- forward ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, dict(window_pattern="SSSL", short_window=5),
                                       dict(value_embeds=False, residual_scalars=False,
                                            softcap=0.0)])
def test_causality(overrides):
    """Changing tokens at positions >= t never changes the logits before t."""
    model = randomized(GPT(tiny_config(**overrides)))
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 101, (2, 32), generator=g)
    base = model(idx)
    for t in (1, 9, 31):
        changed = idx.clone()
        changed[:, t:] = torch.randint(0, 101, changed[:, t:].shape, generator=g)
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=0, rtol=0)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-4  # and position t does react


def test_sliding_window_changes_only_long_contexts():
    """Same weights with and without windows: equal while T <= window, different after."""
    full = randomized(GPT(tiny_config()))
    windowed = GPT(tiny_config(window_pattern="SSSL", short_window=6))
    windowed.load_state_dict(full.state_dict())
    idx = torch.randint(0, 101, (2, 20))
    a, b = full(idx), windowed(idx)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3
    assert windowed.windows == [6, 6, 6, 32]


def test_logits_width_and_softcap():
    model = randomized(GPT(tiny_config(vocab_size=100, softcap=2.0)))
    logits = model(torch.randint(0, 100, (1, 8)))
    assert logits.shape == (1, 8, 100) and logits.dtype == torch.float32
    assert logits.abs().max() < 2.0
    uncapped = GPT(tiny_config(vocab_size=100, softcap=0.0))
    uncapped.load_state_dict(model.state_dict())
    raw = uncapped(torch.randint(0, 100, (1, 8)))
    assert raw.abs().max() > 2.0


def test_loss_matches_cross_entropy_and_ignores_minus_one():
    model = randomized(GPT(tiny_config()))
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, 101, (3, 16), generator=g)
    targets = torch.randint(0, 101, (3, 16), generator=g)
    targets[0, :5] = -1
    targets[2, 10:] = -1
    logits = model(idx)
    keep = targets != -1
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(model(idx, targets), expected)
    per_token = model(idx, targets, reduction="none")
    assert per_token.shape == (3, 16)
    assert (per_token[~keep] == 0).all()
    torch.testing.assert_close(per_token[keep], F.cross_entropy(logits[keep], targets[keep],
                                                                reduction="none"))
    torch.testing.assert_close(model(idx, targets, reduction="sum"), per_token.sum())
    with pytest.raises(ValueError, match="reduction"):
        model(idx, targets, reduction="avg")


def test_sequence_longer_than_context_is_a_clear_error():
    model = GPT(tiny_config(sequence_len=16))
    with pytest.raises(ValueError, match="sequence_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, time"):
        model(torch.zeros(17, dtype=torch.long))


def test_backward_reaches_every_parameter():
    model = randomized(GPT(tiny_config(window_pattern="SL", short_window=4)))
    idx = torch.randint(0, 101, (2, 32))
    model(idx, idx).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_load_state_dict_rebuilds_rope_tables():
    cfg = tiny_config()
    src = randomized(GPT(cfg))
    idx = torch.randint(0, 101, (2, 12))
    expected = src(idx)
    assert not any("rope" in k for k in src.state_dict())  # tables are not saved
    with torch.device("meta"):
        dst = GPT(cfg)
    dst.load_state_dict(src.state_dict(), assign=True)
    torch.testing.assert_close(dst(idx), expected)
    with torch.device("meta"):
        dst2 = GPT(cfg)
    dst2.to_empty(device="cpu")
    dst2.load_state_dict(src.state_dict())
    torch.testing.assert_close(dst2(idx), expected)


def test_bf16_autocast_stays_close_to_fp32():
    """The CUDA recipe (bf16 autocast, fp32 weights) on the CPU: same model, bf16 tolerance."""
    model = randomized(GPT(tiny_config(window_pattern="SSL", short_window=6)), seed=5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(0.3)
    idx = torch.randint(0, 101, (2, 32))
    ref = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(idx)
        loss = model(idx, idx)
    assert low.dtype == torch.float32 and loss.dtype == torch.float32  # softcap/loss in fp32
    rel = (low - ref).norm() / ref.norm()
    assert rel < 3e-2, rel


def _residual_dtypes(model: GPT, idx: torch.Tensor) -> set:
    """Dtypes of the residual stream: what each block receives, under CPU bf16 autocast."""
    seen = set()
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.add(args[0].dtype))
             for b in model.blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.hidden(idx)
    for hook in hooks:
        hook.remove()
    return seen | {h.dtype}


def test_residual_stream_in_autocast_dtype_unless_fp32_is_asked(monkeypatch):
    """Under autocast the stream is bf16 (half the bytes of every norm and residual add);
    NANOGPT_COURSE_RESIDUAL=fp32 keeps it fp32 and gives the same loss within bf16 noise;
    without autocast it is fp32."""
    torch.manual_seed(0)
    model = randomized(GPT(tiny_config()), seed=3)
    idx = torch.randint(0, 101, (2, 32))
    assert _residual_dtypes(model, idx) == {torch.bfloat16}
    assert model.hidden(idx).dtype == torch.float32  # no autocast: fp32 throughout
    monkeypatch.setenv("NANOGPT_COURSE_RESIDUAL", "fp32")
    wide = GPT(tiny_config())
    wide.load_state_dict(model.state_dict())
    assert wide.residual_precision == "fp32"
    assert _residual_dtypes(wide, idx) == {torch.float32}
    ref = model(idx, idx)  # fp32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, high = model(idx, idx), wide(idx, idx)
    assert abs(low - ref) / ref < 2e-2 and abs(high - ref) / ref < 2e-2
    monkeypatch.setenv("NANOGPT_COURSE_RESIDUAL", "fp16")
    with pytest.raises(ValueError, match="NANOGPT_COURSE_RESIDUAL='fp16': choose one of"):
        GPT(tiny_config())


# -- FLOPs -----------------------------------------------------------------------------
def _cpu_sdpa_flop_mapping():
    """torch's FLOP counter knows the CUDA attention kernels but not the CPU one: count the
    CPU kernel with torch's own SDPA formulas (forward 4·T²·D per head, backward 10·T²·D)."""
    from torch.utils import flop_counter as fc

    def raw(formula):  # torch's formulas already take shapes; tell the counter so
        def counted(*args, **kwargs):
            return formula(*args, **kwargs)
        counted._get_raw = True
        return counted

    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: raw(fc.sdpa_flop),
            aten._scaled_dot_product_flash_attention_for_cpu_backward: raw(fc.sdpa_backward_flop)}


def test_estimate_flops_matches_flop_counter():
    """6N + 12·L·H·D·T vs torch's FLOP counter on a real forward+backward.

    The matmul part matches exactly; the attention part differs because the counter charges
    the backward 2.5× the forward (it recomputes the scores) where the formula charges 2×.
    """
    from torch.utils.flop_counter import FlopCounterMode

    cfg = GPTConfig(sequence_len=64, vocab_size=512, n_layer=2, n_head=2, n_kv_head=2,
                    n_embd=64)
    model = randomized(GPT(cfg))
    B, T = 2, 64
    idx = torch.randint(0, 512, (B, T))
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_flop_mapping())
    with counter:
        model(idx, idx).backward()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert by_op.get("aten._scaled_dot_product_flash_attention_for_cpu", 0) > 0  # counted
    measured = counter.get_total_flops()
    estimated = model.estimate_flops() * B * T
    assert abs(estimated - measured) / measured < 0.05, (estimated, measured)
    attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T * B * T
    assert by_op["aten.mm"] == estimated - attention  # 6 × matmul params × tokens, exactly


def test_estimate_flops_is_window_aware():
    cfg = tiny_config(n_layer=4, sequence_len=64)
    full = GPT(cfg).estimate_flops()
    windowed = GPT(cfg.replace(window_pattern="SSSL", short_window=16)).estimate_flops()
    # three S layers each see 16 instead of 64 keys: 12·H·D·48 fewer FLOPs apiece
    assert full - windowed == 3 * 12 * cfg.n_head * cfg.head_dim * (64 - 16)
    counts = GPT(cfg).param_counts()
    gates = 2 * 2 * 32
    assert full == 6 * (counts["matrices"] + counts["lm_head"] + gates) + 4 * 12 * 32 * 64
