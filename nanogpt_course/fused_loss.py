"""Fused lm_head + softcap + cross-entropy for training (the default on CUDA with Triton).

The readable loss (:meth:`GPT.loss <nanogpt_course.model.GPT.loss>`) is three steps:
``logits = h @ W.T``, ``z = cap · tanh(logits / cap)``, ``F.cross_entropy(z, t)``. Under
``torch.compile`` that becomes a matmul, a kernel that reads the bf16 logits to compute the
loss, and in backward a kernel that reads them again to write their gradient, then the two
backward matmuls. At d12 with a micro-batch of 32 × 2048 and V = 32,768 the logits are 4 GiB
of bf16, and those two kernels took 7.6 ms of a 127 ms step on an H100 (docs/PERFORMANCE.md).

Here the loss's gradient with respect to the logits is computed *in the forward pass*, in
the same kernel that computes the loss, and written over the logits (they are not needed
afterwards): for row i with target t_i,

    loss_i          = logsumexp(z_i) - z_i[t_i]              0 where t_i == -1 (ignored)
    dloss_i/dlogits = (softmax(z_i) - onehot(t_i)) · (1 - tanh²)   0 on ignored rows

Backward then only runs the two matmuls, each row's gradient scaled by the incoming
gradient of its loss (a per-row scale, applied to the small (N, C) operands, never to the
logits): ``dh = diag(g) · dlogits @ W`` and ``dW = dlogits.T @ diag(g) · h``. The peak memory
is the readable path's: one (N, V_padded) buffer in the matmul dtype, saved for backward.

Two implementations of the in-place step, tied by ``tests/test_fused_loss.py``:

- :func:`softcap_cross_entropy_grad_reference_`: PyTorch ops, a chunk of rows at a time in
  fp32 (the CPU's path, and the readable statement of the math);
- the Triton kernel in :mod:`nanogpt_course.fused_loss_kernel` (CUDA, when Triton is
  installed; ``$NANOGPT_COURSE_FUSED_LOSS_BACKEND=torch`` forces the reference for A/B runs;
  a kernel that cannot be compiled falls back to the reference, with one warning).

The whole step is the custom operator ``torch.ops.nanogpt_course.linear_softcap_cross_entropy``,
which ``torch.compile`` keeps as one opaque call, with its backward registered. Targets
must lie in ``[0, vocab_size)`` or be -1: the kernel does not check (checking would stall the
stream), and treats other values as ignored rows; the reference raises.

The default on CUDA where Triton is installed (``loss_impl="auto"``, see :func:`auto_impl`);
``NANOGPT_COURSE_LOSS=standard`` or ``model.loss_impl = "standard"`` turns it off, ``"fused"``
asks for it anywhere (the CPU runs the reference). ``reduction="none"`` and evaluation without
gradients use the readable path.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .chunked_loss import check_rows, head_matmul_dtype
from .kernel_choice import KernelChoice

BACKEND_ENV = "NANOGPT_COURSE_FUSED_LOSS_BACKEND"
# the kernel's launch shape; environment overrides for A/B runs on the GPU
BLOCK = int(os.environ.get("NANOGPT_COURSE_FUSED_LOSS_BLOCK", "4096"))
NUM_WARPS = int(os.environ.get("NANOGPT_COURSE_FUSED_LOSS_WARPS", "8"))
# found, not imported: cheap at import time, and a constant while torch.compile traces GPT.loss
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
REFERENCE_CHUNK_ROWS = 1024  # rows per fp32 chunk of the reference: 128 MiB at V = 32768


def softcap_cross_entropy_grad_reference_(logits: torch.Tensor, targets: torch.Tensor, *,
                                          vocab_size: int, softcap: float,
                                          chunk_rows: int = REFERENCE_CHUNK_ROWS) -> torch.Tensor:
    """Per-row losses (N,) fp32 of ``softcap(logits)[:, :vocab_size]`` against ``targets``;
    ``logits`` (N, V_padded) is overwritten with each row loss's gradient.

    PyTorch ops, ``chunk_rows`` rows at a time in fp32; the readable version of the kernel.
    """
    losses = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        x = logits[rows, :vocab_size].float()
        tanh = torch.tanh(x / softcap) if softcap else None
        z = softcap * tanh if softcap else x
        lse = torch.logsumexp(z, dim=1, keepdim=True)  # (n, 1)
        tgt = targets[rows].unsqueeze(1)  # (n, 1)
        valid = tgt != -1
        tgt = tgt.clamp(min=0)  # ignored rows read class 0, then are masked
        losses[rows] = torch.where(valid, lse - z.gather(1, tgt), 0.0).squeeze(1)
        onehot = torch.zeros_like(z).scatter_(1, tgt, 1.0)
        grad = (torch.exp(z - lse) - onehot) * valid
        if softcap:
            grad = grad * (1.0 - tanh * tanh)  # d(cap·tanh(x/cap))/dx
        logits[rows, :vocab_size] = grad.to(logits.dtype)
        logits[rows, vocab_size:] = 0  # the head's padded rows are never predicted
    return losses


KERNEL = KernelChoice("the fused loss", "nanogpt_course.fused_loss_kernel", BACKEND_ENV)


def softcap_cross_entropy_grad_triton_(logits: torch.Tensor, targets: torch.Tensor, *,
                                       vocab_size: int, softcap: float) -> torch.Tensor:
    """The Triton kernel's version of :func:`softcap_cross_entropy_grad_reference_` (same
    contract). CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    module = KERNEL.require()
    if logits.stride(1) != 1:
        raise ValueError(f"logits must have contiguous rows, got strides {logits.stride()}")
    n, padded_vocab = logits.shape
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    block = min(BLOCK, 1 << (padded_vocab - 1).bit_length())  # a power of two, ≥ 1
    module.softcap_cross_entropy_grad_kernel[(n,)](
        logits, logits.stride(0), targets.contiguous(), losses,
        vocab_size, padded_vocab, float(softcap or 1.0),
        HAS_CAP=bool(softcap), BLOCK=block, num_warps=NUM_WARPS)
    return losses


def auto_impl(device: torch.device) -> str:
    """What ``loss_impl="auto"`` runs on ``device``: ``"fused"`` on CUDA where Triton is
    installed, else ``"standard"``. Measured on an H100 at d12 (docs/PERFORMANCE.md,
    2026-12-08): the kernel takes 4.5 ms where the compiled softcap + cross-entropy forward
    and backward took 7.6 in the trainer's profile, the trainer ran 3.4% faster at the same
    peak memory, and a 300-step d6 run reached the standard loss's within 0.03%. On the CPU
    the fused path would run the fp32 reference, which is slower than the readable one."""
    return "fused" if device.type == "cuda" and TRITON_INSTALLED else "standard"


def softcap_cross_entropy_grad_(logits, targets, *, vocab_size: int, softcap: float,
                                backend: str | None = None) -> torch.Tensor:
    """Dispatch to the kernel (``"triton"``) or the reference (``"torch"``); ``"auto"`` (the
    default, or ``$NANOGPT_COURSE_FUSED_LOSS_BACKEND``) takes the kernel for CUDA tensors
    when Triton is installed, and falls back to the reference for good, with one warning,
    if the kernel cannot be compiled or launched (the logits are untouched then)."""
    kw = dict(vocab_size=vocab_size, softcap=softcap)
    return KERNEL.run(lambda: softcap_cross_entropy_grad_triton_(logits, targets, **kw),
                      lambda: softcap_cross_entropy_grad_reference_(logits, targets, **kw),
                      logits, backend)


# the schema spelled out: not inferred from this module's (string) annotations
@torch.library.custom_op("nanogpt_course::linear_softcap_cross_entropy", mutates_args=(),
                         schema="(Tensor h, Tensor weight, Tensor targets, int vocab_size, "
                                "float softcap) -> (Tensor, Tensor)")
def _linear_softcap_ce(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       vocab_size: int, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses (N,) fp32, dlogits (N, V_padded) in h's dtype) for h (N, C), weight
    (V_padded, C) of the same dtype, targets (N,) int64."""
    with torch.autocast(h.device.type, enabled=False):  # the caller chose the dtype
        logits = h @ weight.t()
    losses = softcap_cross_entropy_grad_(logits, targets, vocab_size=vocab_size, softcap=softcap)
    return losses, logits  # the logits buffer now holds their gradient


@_linear_softcap_ce.register_fake
def _(h, weight, targets, vocab_size, softcap):
    return (h.new_empty(h.shape[0], dtype=torch.float32),
            h.new_empty(h.shape[0], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    h, weight, *_ = inputs
    ctx.save_for_backward(h, weight, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_losses, _grad_dlogits):
    h, weight, dlogits = ctx.saved_tensors
    g = grad_losses.float().unsqueeze(1)  # (N, 1): each row's incoming gradient
    grad_h = ((dlogits @ weight).float() * g).to(h.dtype)
    grad_w = dlogits.t() @ (h.float() * g).to(h.dtype)
    return grad_h, grad_w, None, None, None


_linear_softcap_ce.register_autograd(_backward, setup_context=_setup_context)


def linear_softcap_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 *, vocab_size: int, softcap: float,
                                 reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``softcap(h @ weight.T)[:, :vocab_size]`` against ``targets``.

    ``h`` (N, C), ``weight`` (V_padded, C) the lm_head weight, ``targets`` (N,) int64 with -1
    ignored. The matmul runs in the autocast dtype when autocast is on (bf16 on CUDA), else
    in the inputs' promoted dtype; the softmax in fp32. ``reduction``: ``"mean"`` over the
    non-ignored targets (NaN when all are ignored, as ``F.cross_entropy``), ``"sum"`` or
    ``"none"`` ((N,) per-row losses, 0 where ignored). Returns fp32.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    check_rows(h, targets)
    dtype = head_matmul_dtype(h, weight)
    losses, _ = _linear_softcap_ce(h.to(dtype), weight.to(dtype), targets.long(),
                                   int(vocab_size), float(softcap))
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    # NaN when every target is ignored, with zero gradients, as F.cross_entropy (0/0 would
    # send its infinite backward into the zero rows and make NaN gradients)
    n_valid = (targets != -1).sum()
    return torch.where(n_valid > 0, total / n_valid.clamp(min=1), float("nan"))
