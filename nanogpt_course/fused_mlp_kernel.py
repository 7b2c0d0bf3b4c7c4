"""The Triton kernel behind :mod:`nanogpt_course.fused_mlp` (imported only when used).

One matmul ``acc = A @ B`` (A (M, K), B (K, N), any strides, fp32 accumulation) whose
epilogue finishes the MLP's pointwise work on the tile while it is still in registers, so
the (M, N) tensor between the matmul and that work is never written or read:

- ``EPILOGUE = RELU2``: ``out = relu(acc)²``, the MLP's forward activation
  ``a = relu(x W_fcᵀ)²``;
- ``EPILOGUE = DRELU2``: ``out = acc · 2·sqrt(aux)``, the gradient with respect to the
  pre-activation, ``dh = (dy W_proj) · 2·relu(h)``, with ``aux = a`` saved by the forward
  (relu(h) = sqrt(a): the same identity as :class:`nanogpt_course.model.ReluSquared`).

Each program computes one (BLOCK_M, BLOCK_N) tile, looping over K in BLOCK_K steps (the
classic tiled matmul of Triton's tutorial, which Triton lowers to Hopper's wgmma). Programs
are numbered in groups of GROUP_M rows of tiles, so tiles that run at the same time share
their A rows and B columns in L2. Offsets are int64: at d20 with a micro-batch of
32 × 2048 an (M, N) tensor has 2^28.3 entries, and four times the micro-batch would pass
int32's 2^31.

``tests/test_fused_mlp.py`` runs this kernel on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``, with ``UPCAST``: the interpreter's ``tl.dot`` gets bf16 wrong, so
the operands are multiplied in fp32 there; loads, epilogues and bf16 stores are the
GPU's); ``python bench/gpu_check.py --only fused_mlp`` checks it on the GPU against the
readable MLP.
"""

from __future__ import annotations

import triton
import triton.language as tl

RELU2 = 0  # out = relu(acc)²
DRELU2 = 1  # out = acc · 2·sqrt(aux)


@triton.jit
def matmul_epilogue_kernel(
    a_ptr, b_ptr, out_ptr, aux_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    EPILOGUE: tl.constexpr, UPCAST: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Tile ``program_id(0)`` of ``out = epilogue(A @ B)`` (``aux`` has ``out``'s strides)."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    # grouped order: GROUP_M rows of tiles are walked column by column
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % per_group) % group_rows
    tile_n = (pid % per_group) // group_rows

    rows = tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tile_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    a_tile = a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak
    b_tile = b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_left = K - k
        a = tl.load(a_tile, mask=(rows[:, None] < M) & (ks[None, :] < k_left), other=0.0)
        b = tl.load(b_tile, mask=(ks[:, None] < k_left) & (cols[None, :] < N), other=0.0)
        if UPCAST:  # Triton's CPU interpreter multiplies bf16 bit patterns as integers
            a, b = a.to(tl.float32), b.to(tl.float32)
        # fp32 operands: TF32 only where torch's matmuls may use it (bf16 ignores this)
        if ALLOW_TF32:
            acc = tl.dot(a, b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        a_tile += BLOCK_K * stride_ak
        b_tile += BLOCK_K * stride_bk

    inside = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None] * stride_om + cols[None, :] * stride_on
    if EPILOGUE == RELU2:
        r = tl.maximum(acc, 0.0)
        out = r * r
    else:
        kept = tl.load(aux_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        out = acc * (2.0 * tl.sqrt(kept))
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)
