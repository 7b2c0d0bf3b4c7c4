"""Causal self-attention kernels: full context, sliding windows, and queries against a cache.

Shapes follow PyTorch's ``scaled_dot_product_attention``: q is (B, H, Tq, D), k and v are
(B, Hkv, Tk, D) with ``H % Hkv == 0`` (grouped-query attention, GQA: each key/value head
serves ``H // Hkv`` query heads). The output has q's shape.

A *window* ``W`` means: the query at absolute position ``p`` sees the keys at positions
``p - W + 1 .. p`` (itself and the ``W - 1`` before it). ``window=None`` (or any ``W``
at least the sequence length) is ordinary causal attention.

Which kernel runs (``backend="auto"``):

- full context: SDPA with ``is_causal=True`` (flash attention on a GPU);
- a sliding window on CUDA: FlexAttention with a *block-sparse* mask built from block
  indices (:func:`sliding_window_block_mask`), so tiles outside the window are never
  computed and no T×T mask is ever materialized;
- a sliding window elsewhere (CPU, MPS): SDPA with an explicit boolean (Tq, Tk) mask.
  That is O(T²) memory, which is fine at CPU sizes and is the simplest correct path.

Against a KV cache: :func:`prefix_attention` (new queries over every cached position) and
:func:`cached_attention` (queries over a whole preallocated cache through a mask, for the
CUDA-graphed decode step of :mod:`nanogpt_course.fast_decode`).

:func:`reference_attention` is the plain softmax(QKᵀ/√d)V definition, for tests, lessons
and the GPU check; it is never used for training.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex", "mask")
FLEX_BLOCK_SIZE = 128  # FlexAttention's tile: the block mask is defined at this granularity
# Tile sizes, warps and pipeline stages of FlexAttention's Triton kernels (its
# ``kernel_options``, e.g. {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8}); None keeps
# torch's own choice. bench/bench_attention.py times the candidates on a GPU.
FLEX_KERNEL_OPTIONS: dict | None = None


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean "query may see key" for absolute positions: causal, and inside the window.

    q_pos: (Tq,) and k_pos: (Tk,) integer tensors. Returns (Tq, Tk) booleans.
    """
    diff = q_pos[:, None] - k_pos[None, :]  # how far back the key is
    ok = diff >= 0
    if window is not None:
        ok = ok & (diff < window)
    return ok


def visible_mask(tq: int, tk: int, *, q_offset: int = 0, window: int | None = None,
                 device=None) -> torch.Tensor:
    """The (tq, tk) boolean mask for tq queries at positions ``q_offset ..`` and tk keys at
    positions ``0 .. tk-1``."""
    q_pos = torch.arange(q_offset, q_offset + tq, device=device)
    k_pos = torch.arange(tk, device=device)
    return visible(q_pos, k_pos, window)


def reference_attention(q, k, v, *, window: int | None = None, q_offset: int = 0):
    """softmax(QKᵀ/√d + mask)V written out, in float64 math on the inputs' device.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D); queries sit at positions ``q_offset ..``.
    Returns (B, H, Tq, D) in q's dtype.
    """
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1).double()  # GQA: copy each kv head to its group
    v = v.repeat_interleave(group, dim=1).double()
    scores = q.double() @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = visible_mask(q.shape[2], k.shape[2], q_offset=q_offset, window=window,
                        device=q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v).to(q.dtype)


def _expand_kv(q, k, v):
    """Repeat kv heads to match q's heads (for kernels without a GQA switch)."""
    group = q.shape[1] // k.shape[1]
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def masked_attention(q, k, v, *, q_offset: int = 0, window: int | None = None):
    """SDPA with an explicit boolean mask: any queries against any prefix of keys.

    Used for sliding windows off-GPU, and for prefill/decode against a KV cache (where the
    queries start at ``q_offset`` and the keys at 0). q: (B, H, Tq, D), k/v: (B, Hkv, Tk, D).
    """
    tq, tk = q.shape[2], k.shape[2]
    if q_offset + tq != tk:
        raise ValueError(f"queries at {q_offset}..{q_offset + tq - 1} need exactly "
                         f"{q_offset + tq} keys, got {tk}")
    k, v = _expand_kv(q, k, v)
    if tq == 1 and (window is None or window >= tk):
        return F.scaled_dot_product_attention(q, k, v)  # one query sees every key
    mask = visible_mask(tq, tk, q_offset=q_offset, window=window, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def prefix_attention(q, k, v, *, q_offset: int, window: int | None = None,
                     backend: str = "auto"):
    """T new queries at positions ``q_offset ..`` over keys 0 .. q_offset+T-1 (a KV cache).

    A prompt that starts at position 0 is ordinary causal attention (flash/Flex kernels);
    later chunks and single decode tokens use the explicit mask. q: (B, H, T, D); k, v:
    (B, Hkv, q_offset+T, D).
    """
    if q_offset == 0 and backend != "mask":
        return causal_attention(q, k, v, window=window, backend=backend)
    return masked_attention(q, k, v, q_offset=q_offset, window=window)


def cached_attention(q, k, v, mask):
    """Queries against a whole preallocated cache, ``mask`` saying which slots they see.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tmax, D); mask: (Tq, Tmax) booleans (every query sees
    at least one key). Returns (B, H, Tq, D). Grouped-query heads are handled by folding each
    group's queries into one matrix instead of copying the cache ``H // Hkv`` times. Written
    out (two batched matmuls and an fp32 softmax) so that ``torch.compile`` fuses it and CUDA
    graphs can replay it: shapes never depend on how many slots are filled.
    """
    B, H, Tq, D = q.shape
    Hkv = k.shape[1]
    g = q.reshape(B, Hkv, (H // Hkv) * Tq, D)  # (B, Hkv, G*Tq, D), group-major like q's heads
    scores = (g @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(D))  # (B, Hkv, G*Tq, Tmax)
    scores = scores.view(B, Hkv, H // Hkv, Tq, -1).masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype).view(B, Hkv, (H // Hkv) * Tq, -1)
    return (probs @ v).view(B, H, Tq, D)


def _window_blocks(seq_len: int, window: int, block: int, device):
    """Block-level layout of a causal sliding window, from block indices only.

    For query tile i and key tile j (d = i - j), the smallest query-key distance in the tile
    pair is (d-1)·block+1 and the largest is (d+1)·block-1. The pair holds some visible
    entry when d >= 0 and the smallest distance is below the window, and *only* visible
    entries (a "full" tile, no mask evaluation needed) when d >= 1 and the largest is.
    Returns (partial, full): (n, n) booleans with n = ceil(seq_len / block).
    """
    n = (seq_len + block - 1) // block
    idx = torch.arange(n, device=device)
    d = idx[:, None] - idx[None, :]
    touched = (d >= 0) & ((d - 1) * block + 1 < window)
    full = (d >= 1) & ((d + 1) * block - 1 < window)
    # A ragged last tile (seq_len not a multiple of block) is never "full": the mask is
    # evaluated there, as torch's own create_block_mask does.
    whole = (idx + 1) * block <= seq_len
    full = full & whole[:, None] & whole[None, :]
    return touched & ~full, full


def _as_kv_lists(blocks: torch.Tensor):
    """(n, n) booleans → (counts (1,1,n), indices (1,1,n,n)) with the listed tiles first."""
    n = blocks.shape[-1]
    cols = torch.arange(n, device=blocks.device).expand_as(blocks)
    order = torch.where(blocks, cols, cols + n).argsort(dim=-1)  # listed tiles, ascending
    counts = blocks.sum(dim=-1, dtype=torch.int32)
    return counts[None, None], order.to(torch.int32)[None, None]


def sliding_window_block_mask(seq_len: int, window: int | None, device=None,
                              block: int = FLEX_BLOCK_SIZE):
    """A FlexAttention ``BlockMask`` for causal attention over the last ``window`` keys.

    Built from (seq_len/block)² tile indices, never from a seq_len² element mask, so it is
    cheap enough to rebuild every forward (also inside ``torch.compile``).
    """
    from torch.nn.attention.flex_attention import BlockMask

    window = seq_len if window is None else min(window, seq_len)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    partial, full = _window_blocks(seq_len, window, block, device)
    kv_num, kv_idx = _as_kv_lists(partial)
    full_num, full_idx = _as_kv_lists(full)
    extra = {}
    if "seq_lengths" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        extra["seq_lengths"] = (seq_len, seq_len)  # torch >= 2.6: lengths not multiple of block
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, **extra)


# How the stand-alone FlexAttention kernel is compiled (outside a compiled model):
# "dynamic" (default) compiles once with symbolic batch and sequence sizes; "static" is the
# former ``dynamic=False``, which specializes on every shape: dynamo then recompiles for
# every new sequence length (every prefill, every evaluation length) until its recompile
# limit makes it run the eager kernel, which materializes the full score matrix. If the
# dynamic compile fails, the static one is used (with a warning). bench/bench_decode.py
# measures both.
FLEX_SHAPES = "dynamic"
_compiled_flex: dict = {}


def _compiled_flex_fn(mode: str):
    from torch.nn.attention.flex_attention import flex_attention as flex

    if mode not in _compiled_flex:
        if mode not in ("dynamic", "static"):
            raise ValueError(f"FLEX_SHAPES must be 'dynamic' or 'static', got {mode!r}")
        _compiled_flex[mode] = torch.compile(flex, dynamic=mode == "dynamic")
    return _compiled_flex[mode]


def flex_attention(q, k, v, block_mask):
    """FlexAttention, compiled once when called outside ``torch.compile`` (the eager kernel
    materializes the full score matrix and is only fit for tests). q: (B, H, T, D)."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    kwargs = {"block_mask": block_mask, "enable_gqa": q.shape[1] != k.shape[1]}
    if q.device.type != "cuda":
        return flex(q, k, v, **kwargs)
    if FLEX_KERNEL_OPTIONS is not None:  # Triton tile options: CUDA kernels only
        kwargs["kernel_options"] = dict(FLEX_KERNEL_OPTIONS)
    if torch.compiler.is_compiling():
        return flex(q, k, v, **kwargs)
    global FLEX_SHAPES
    try:
        return _compiled_flex_fn(FLEX_SHAPES)(q, k, v, **kwargs)
    except Exception as err:
        if FLEX_SHAPES != "dynamic":
            raise
        warnings.warn(f"FlexAttention with dynamic shapes failed ({type(err).__name__}: "
                      f"{err}); compiling it per shape instead", RuntimeWarning, stacklevel=2)
        FLEX_SHAPES = "static"
        return _compiled_flex_fn("static")(q, k, v, **kwargs)


def causal_attention(q, k, v, *, window: int | None = None, backend: str = "auto",
                     block_mask=None):
    """Causal attention of T queries over the same T keys (training and prefill).

    q: (B, H, T, D); k, v: (B, Hkv, T, D) → (B, H, T, D). ``window`` limits how far back
    each query looks (see the module docstring for which kernel runs). ``block_mask`` lets
    a caller reuse one FlexAttention mask across layers.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}: choose one of {BACKENDS}")
    T = q.shape[2]
    if window is not None and window >= T:
        window = None  # the window covers the whole sequence: plain causal attention
    if backend == "auto":
        if window is None:
            backend = "sdpa"
        else:
            backend = "flex" if q.device.type == "cuda" else "mask"
    if backend == "sdpa":
        if window is not None:
            raise ValueError("backend 'sdpa' is full-context only; use 'flex' or 'mask'")
        return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              enable_gqa=q.shape[1] != k.shape[1])
    if backend == "flex":
        if block_mask is None:
            block_mask = sliding_window_block_mask(T, window, device=q.device)
        return flex_attention(q, k, v, block_mask)
    return masked_attention(q, k, v, window=window)
