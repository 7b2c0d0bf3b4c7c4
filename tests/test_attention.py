"""Attention kernels and RoPE against plain references."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from nanogpt_course import attention, rope


def _naive(q, k, v, window=None):
    """softmax(QKᵀ/√d)V with a python-loop mask: independent of attention.visible_mask."""
    B, H, T, D = q.shape
    group = H // k.shape[1]
    out = torch.empty_like(q, dtype=torch.float64)
    for h in range(H):
        kh, vh = k[:, h // group].double(), v[:, h // group].double()
        scores = q[:, h].double() @ kh.transpose(-1, -2) / math.sqrt(D)
        for i in range(T):
            for j in range(T):
                if j > i or (window is not None and i - j >= window):
                    scores[:, i, j] = float("-inf")
        out[:, h] = scores.softmax(-1) @ vh
    return out.to(q.dtype)


def _qkv(B=2, H=4, Hkv=4, T=24, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g),
            torch.randn(B, Hkv, T, D, generator=g))


def test_reference_equals_naive_and_sdpa():
    q, k, v = _qkv()
    ref = attention.reference_attention(q, k, v)
    torch.testing.assert_close(ref, _naive(q, k, v), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ref, F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "mask", "flex"])
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_full_context_matches_naive(backend, hkv):
    q, k, v = _qkv(Hkv=hkv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is unfused
        out = attention.causal_attention(q, k, v, backend=backend)
    torch.testing.assert_close(out, _naive(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "mask", "flex"])
@pytest.mark.parametrize("window", [1, 5, 23, 100])
def test_sliding_window_matches_naive(backend, window):
    q, k, v = _qkv(Hkv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = attention.causal_attention(q, k, v, window=window, backend=backend)
    torch.testing.assert_close(out, _naive(q, k, v, window=window), atol=1e-5, rtol=1e-5)


def test_window_actually_limits_attention():
    q, k, v = _qkv(T=16)
    full = attention.causal_attention(q, k, v)
    windowed = attention.causal_attention(q, k, v, window=4)
    # the first 4 positions see the same keys either way; later ones do not
    torch.testing.assert_close(full[:, :, :4], windowed[:, :, :4])
    assert (full[:, :, 4:] - windowed[:, :, 4:]).abs().max() > 1e-2


@pytest.mark.parametrize("T,window", [(256, 100), (1000, 300), (1024, 600), (700, None),
                                      (300, 1000), (128, 1)])
def test_block_mask_matches_torch_create_block_mask(T, window):
    """Our index-built BlockMask is tile-for-tile what create_block_mask derives densely."""
    from torch.nn.attention.flex_attention import create_block_mask

    ours = attention.sliding_window_block_mask(T, window)
    w = T if window is None else min(window, T)
    theirs = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki < w), 1, 1, T, T,
                               device="cpu")
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    for name in ("kv_num_blocks", "full_kv_num_blocks"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


def test_block_mask_is_sparse():
    # window 256 over 2048 tokens: each query tile touches at most 3 of 16 key tiles
    bm = attention.sliding_window_block_mask(2048, 256)
    touched = bm.kv_num_blocks + bm.full_kv_num_blocks
    assert int(touched.max()) <= 3 and int(touched.sum()) < 16 * 16 / 4


def test_flex_with_long_sequence_and_window_matches_reference():
    q, k, v = _qkv(B=1, H=2, Hkv=1, T=300, D=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = attention.causal_attention(q, k, v, window=130, backend="flex")
    ref = attention.reference_attention(q, k, v, window=130)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
def test_masked_attention_with_offset_equals_rows_of_full(window):
    """Queries at positions 10..13 against keys 0..13 = rows 10..13 of the full result."""
    q, k, v = _qkv(T=14, Hkv=2)
    full = _naive(q, k, v, window=window)
    part = attention.masked_attention(q[:, :, 10:], k, v, q_offset=10, window=window)
    torch.testing.assert_close(part, full[:, :, 10:], atol=1e-5, rtol=1e-5)
    one = attention.masked_attention(q[:, :, 13:], k, v, q_offset=13, window=window)
    torch.testing.assert_close(one, full[:, :, 13:], atol=1e-5, rtol=1e-5)


def test_masked_attention_rejects_wrong_key_count():
    q, k, v = _qkv(T=8)
    with pytest.raises(ValueError, match="keys"):
        attention.masked_attention(q[:, :, 2:], k, v, q_offset=3)


def test_unknown_backend():
    q, k, v = _qkv(T=4)
    with pytest.raises(ValueError, match="backend"):
        attention.causal_attention(q, k, v, backend="fast")


# -- RoPE ------------------------------------------------------------------------------
def _rotate_pairs(x, pos, base):
    """RoPE by its definition: rotate the 2-D point (x_i, x_{i+D/2}) by pos·θ_i."""
    D = x.shape[-1]
    out = x.clone().double()
    for i in range(D // 2):
        theta = pos * base ** (-2 * i / D)
        c, s = math.cos(theta), math.sin(theta)
        a, b = x[..., i].double(), x[..., i + D // 2].double()
        out[..., i], out[..., i + D // 2] = a * c - b * s, a * s + b * c
    return out


def test_rope_matches_definition():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 2, 8, generator=g)  # (B, T, H, D)
    cos, sin = rope.rope_cos_sin(6, 8, base=100.0)
    got = rope.apply_rope(x, cos, sin)
    for t in range(6):
        torch.testing.assert_close(got[:, t].double(), _rotate_pairs(x[:, t], t, 100.0),
                                   atol=1e-6, rtol=1e-6)


def test_rope_preserves_norm_and_dtype():
    x = torch.randn(2, 50, 3, 16)
    cos, sin = rope.rope_cos_sin(50, 16)
    y = rope.apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    assert rope.apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_rope_scores_depend_only_on_distance(base):
    """⟨R(m)q, R(n)k⟩ is the same for every (m, n) with the same m − n."""
    g = torch.Generator().manual_seed(2)
    D, T = 32, 64
    q, k = torch.randn(D, generator=g), torch.randn(D, generator=g)
    cos, sin = rope.rope_cos_sin(T, D, base)
    rq = rope.apply_rope(q.expand(1, T, 1, D), cos, sin)[0, :, 0]  # q rotated at every position
    rk = rope.apply_rope(k.expand(1, T, 1, D), cos, sin)[0, :, 0]
    scores = rq @ rk.T  # scores[m, n]
    for dist in (0, 1, 7, 40):
        diag = torch.diagonal(scores, offset=-dist)  # all (m, n) with m - n = dist
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-4, rtol=1e-5)
    # and it does depend on the distance
    assert (scores.diagonal(0)[0] - scores.diagonal(-7)[0]).abs() > 1e-3


def test_rope_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="even"):
        rope.rope_frequencies(7)
