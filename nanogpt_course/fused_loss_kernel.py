"""The Triton kernel behind :mod:`nanogpt_course.fused_loss` (imported only when used).

One program per row of the logits (N, V_padded), in two passes over the row:

1. the softmax's normalizer ``S = Σ_j exp(z_j - m)`` of the capped logits
   ``z = cap · tanh(x / cap)``. With a cap, ``z < cap``, so ``m = cap`` is a shift that can
   never overflow and needs no running maximum (``exp(z - cap) ≥ exp(-2·cap)``, far above
   fp32's smallest normal at any sensible cap); without a cap an extra pass finds the max.
2. the gradient of the row's loss ``lse - z[t]`` with respect to the logits,
   ``(softmax(z) - onehot(t)) · (1 - tanh²)``, written over the logits in place, as the
   logits' dtype. Padded columns (``j ≥ vocab_size``) and ignored rows (``t == -1``) get 0.

The row is read twice (the second read mostly from L2: a row of 32,768 bf16 logits is
64 KiB) and written once, so the whole loss and its gradient cost about one read and one
write of the logits, against a read in the forward and a read plus a write in the backward
for the unfused graph. tanh is computed from one exp: with ``r = 1 / (1 + exp(2x/cap))``,
``tanh = 1 - 2r``, ``z - cap = -2·cap·r`` and ``1 - tanh² = 4r(1 - r)``.

Offsets are int64: at micro-batch 32 × 2048 and V = 32,768 the logits have 2^31 entries.
``python bench/gpu_check.py --only fused_loss`` checks this kernel against the readable loss
on the GPU; ``tests/test_fused_loss.py`` runs it on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``) where Triton is installed.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _capped(x, cap, HAS_CAP: tl.constexpr):
    """(z, r): the capped logit ``cap·tanh(x/cap)`` and ``r = 1/(1 + exp(2x/cap))`` (0 if
    no cap)."""
    if HAS_CAP:
        r = 1.0 / (1.0 + tl.exp(x * (2.0 / cap)))
        return cap - 2.0 * cap * r, r
    else:
        return x, tl.zeros_like(x)


@triton.jit
def softcap_cross_entropy_grad_kernel(
    logits_ptr, row_stride, targets_ptr, losses_ptr,
    vocab_size, padded_vocab, cap,
    HAS_CAP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Row ``program_id(0)``: its loss to ``losses_ptr[row]`` (fp32), its gradient over the
    logits row (``padded_vocab`` entries, ``vocab_size`` of them real)."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row).to(tl.int64)
    valid = (target >= 0) & (target < vocab_size)
    cols = tl.arange(0, BLOCK)

    # the shift m: cap with a cap (z < cap), else the row's max
    if HAS_CAP:
        m = cap
    else:
        top = tl.full([BLOCK], float("-inf"), tl.float32)
        for start in range(0, vocab_size, BLOCK):
            c = start + cols
            x = tl.load(base + c, mask=c < vocab_size, other=float("-inf")).to(tl.float32)
            top = tl.maximum(top, x)
        m = tl.max(top, axis=0)

    # pass 1: S = sum_j exp(z_j - m), summed per lane, then across lanes
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, vocab_size, BLOCK):
        c = start + cols
        mask = c < vocab_size
        x = tl.load(base + c, mask=mask, other=0.0).to(tl.float32)
        z, r = _capped(x, cap, HAS_CAP)
        acc += tl.where(mask, tl.exp(z - m), 0.0)
    total = tl.sum(acc, axis=0)
    lse = m + tl.log(total)

    x_t = tl.load(base + target, mask=valid, other=0.0).to(tl.float32)
    z_t, r_t = _capped(x_t, cap, HAS_CAP)
    tl.store(losses_ptr + row, tl.where(valid, lse - z_t, 0.0))

    # pass 2: the gradient, written over the row (reads each block before writing it)
    inv_total = 1.0 / total
    for start in range(0, padded_vocab, BLOCK):
        c = start + cols
        real = c < vocab_size
        x = tl.load(base + c, mask=real, other=0.0).to(tl.float32)
        z, r = _capped(x, cap, HAS_CAP)
        g = tl.exp(z - m) * inv_total - tl.where(c == target, 1.0, 0.0)
        if HAS_CAP:
            g = g * (4.0 * r * (1.0 - r))
        g = tl.where(real & valid, g, 0.0)
        tl.store(base + c, g.to(logits_ptr.dtype.element_ty), mask=c < padded_vocab)
