"""Chunked lm_head + softcap + cross-entropy: the training loss without the (N, V) logits.

The readable loss (:meth:`GPT.forward <nanogpt_course.model.GPT.forward>`) computes
``logits = softcap(h @ W.T)`` for every position of the micro-batch, then
``F.cross_entropy``. At d12 with a micro-batch of 32 × 2048 tokens and a 32,768-token
vocabulary that is 65,536 × 32,768 logits: 8 GiB in fp32, plus the bf16 matmul output and
what autograd keeps of the softcap for backward, all alive until backward reaches the head.

:func:`linear_softcap_cross_entropy` walks the rows of the hidden states a chunk at a time.
For each chunk it computes the logits, the loss *and at once the chunk's gradients* with
respect to the hidden states and the head's weight (the gradient of the softcapped
cross-entropy has a closed form), then drops the logits. Only the gradients, (N, C) and
(V, C), are kept for backward, which just scales them by the incoming gradient. Peak extra
memory is a few (chunk, V) fp32 buffers instead of several (N, V) ones; the FLOPs are the
same (the two backward matmuls move into the forward).

Per chunk, with ``z = cap · tanh(logits / cap)`` and ``p = softmax(z)``::

    loss_i      = logsumexp(z_i) - z_i[t_i]                 0 where t_i == -1 (ignored)
    dloss/dz_i  = w_i · (p_i - onehot(t_i))                 w_i = 1/n_valid ("mean") or 1
    dloss/dlogits = dloss/dz · (1 - tanh²)                  the softcap's derivative
    dh   = dlogits @ W          dW += dlogits.T @ h

Precision follows the readable path: under autocast the matmuls run in the autocast dtype
(bf16 on CUDA) and everything else in fp32; without autocast, in the inputs' dtype. The
head's padded rows (``padded_vocab_size > vocab_size``) get -inf logits after the softcap,
so they have probability 0 and zero gradient, as the slice in ``GPT.head`` gives.

Opt-in (``NANOGPT_COURSE_LOSS=chunked`` or ``model.loss_impl = "chunked"``). On an H100 at
d12 it was slower and used more peak memory than the readable path under ``torch.compile``
(docs/PERFORMANCE.md, 2026-12-06), so it stays opt-in; the GPU's default is the fused loss
(fused_loss.py), which keeps the logits but computes their gradient in the forward pass.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "NANOGPT_COURSE_LOSS"
# "auto" (the default): "fused" on CUDA where Triton is installed, else "standard"
# (GPT.loss resolves it per call; fused_loss.auto_impl says why)
IMPLS = ("auto", "standard", "chunked", "fused")
CHUNK_ROWS = 4096  # rows per chunk: at V = 32768 one fp32 (chunk, V) buffer is 512 MiB


def loss_impl_from_env() -> str:
    """The loss implementation a new GPT uses: ``$NANOGPT_COURSE_LOSS`` or ``"auto"``."""
    impl = os.environ.get(ENV_VAR) or "auto"
    return check_impl(impl)


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"loss implementation {impl!r} ({ENV_VAR}): choose one of {IMPLS}")
    return impl


def linear_softcap_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 *, vocab_size: int, softcap: float, reduction: str = "mean",
                                 chunk_rows: int | None = None) -> torch.Tensor:
    """Cross-entropy of ``softcap(h @ weight.T)[:, :vocab_size]`` against ``targets``.

    ``h`` (N, C) hidden states, ``weight`` (V_padded, C) the lm_head weight, ``targets`` (N,)
    int64 with -1 ignored. ``reduction``: ``"mean"`` over the non-ignored targets (NaN when
    all are ignored, as ``F.cross_entropy``) or ``"sum"``. ``chunk_rows``: rows per chunk
    (default :data:`CHUNK_ROWS`, read at call time). Returns a 0-d fp32 tensor.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' here, got {reduction!r}")
    check_rows(h, targets)
    spec = (vocab_size, float(softcap), reduction, max(1, int(chunk_rows or CHUNK_ROWS)),
            head_matmul_dtype(h, weight))
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedLoss.apply(h, weight, targets, spec)
    with torch.autocast(h.device.type, enabled=False):  # evaluation: no gradients to keep
        loss, _, _ = _loss_and_grads(h, weight, targets, spec, grads=False)
    return loss


def check_rows(h: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse anything but hidden states (N, C) with targets (N,)."""
    if h.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(f"want h (N, C) and targets (N,), got {tuple(h.shape)} and "
                         f"{tuple(targets.shape)}")


def head_matmul_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype GPT.head's lm_head matmul runs in (and any nn.Linear's, e.g. the fused
    MLP's): autocast's when autocast is on (bf16 on CUDA), else the inputs' promoted dtype."""
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(h.dtype, weight.dtype)


class _ChunkedLoss(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, h, weight, targets, spec):
        with torch.autocast(h.device.type, enabled=False):  # the dtypes are chosen by hand
            loss, grad_h, grad_w = _loss_and_grads(h, weight, targets, spec, grads=True)
        ctx.save_for_backward(grad_h.to(h.dtype), grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss.to(grad_w.dtype), None, None


def _loss_and_grads(h, weight, targets, spec, *, grads: bool):
    """The chunk loop: (loss, dloss/dh (N, C) fp32, dloss/dweight (V_padded, C) fp32), the
    gradients None when ``grads`` is False."""
    vocab_size, cap, reduction, chunk_rows, dtype = spec
    valid = targets != -1
    n_valid = valid.sum()
    # "mean": every row's gradient is divided by the count of all the chunks' valid rows;
    # with none valid the loss is 0/0 = NaN and the gradients 0, as in F.cross_entropy.
    row_scale = 1.0 / n_valid.clamp(min=1).float() if reduction == "mean" else 1.0
    hd, wd = h.to(dtype), weight.to(dtype)  # one cast of each, as autocast's lm_head does
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if grads else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if grads else None
    for start in range(0, h.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        z, tanh = _capped_logits(hd[rows], wd, vocab_size, cap)  # (n, V_padded) fp32
        lse = torch.logsumexp(z, dim=1)  # (n,)
        tgt = targets[rows].clamp(min=0).unsqueeze(1)  # ignored rows read class 0, then masked
        losses = lse - z.gather(1, tgt).squeeze(1)
        total = total + torch.where(valid[rows], losses, 0.0).sum()
        if not grads:
            continue
        g = z.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of z (padded columns: 0)
        g.scatter_add_(1, tgt, torch.full_like(tgt, -1, dtype=g.dtype))
        g.mul_((valid[rows].float() * row_scale).unsqueeze(1))
        if tanh is not None:
            g.mul_(1.0 - tanh.square_())  # through the softcap: d(cap·tanh(x/cap))/dx
        gd = g.to(dtype)
        grad_h[rows] = gd @ wd  # (n, C)
        grad_w += (gd.t() @ hd[rows]).float()  # (V_padded, C), summed in fp32 over chunks
    loss = total / n_valid.float() if reduction == "mean" else total
    return loss, grad_h, grad_w


def _capped_logits(h, weight, vocab_size: int, cap: float):
    """Softcapped fp32 logits (n, V_padded) of one chunk, the padded columns -inf; and the
    tanh of the softcap (None without a cap), which its derivative needs."""
    logits = (h @ weight.t()).float()
    tanh = None
    if cap:
        tanh = torch.tanh(logits / cap)
        logits = cap * tanh
    if logits.shape[1] > vocab_size:
        logits[:, vocab_size:] = float("-inf")  # the padding rows of the head: never predicted
    return logits, tanh
