"""The MLP with its relu² inside the matmuls' epilogues (opt-in: ``NANOGPT_COURSE_MLP=fused``).

The readable MLP (:class:`nanogpt_course.model.MLP`) is ``y = relu(x W_fcᵀ)² W_projᵀ``.
Compiled, a training step runs per layer: a cuBLAS matmul that writes the pre-activation
``h`` (B·T, 4C), a kernel that reads ``h`` and writes ``a = relu(h)²``, and in backward a
matmul that writes ``da = dy W_proj``, then a kernel that reads ``da`` and ``a`` and writes
``dh = da · 2·sqrt(a)``. The two pointwise kernels only move memory: at d12 with a
micro-batch of 32 × 2048 each (B·T, 4C) bf16 tensor is 384 MiB, and the pair took 7.9 ms of
a 127 ms step on an H100, both at the memory roof (docs/PERFORMANCE.md).

Here the matmul that produces ``h`` applies relu² to its tile before storing it, and the
matmul that produces ``da`` multiplies its tile by ``2·sqrt(a)`` before storing it
(:mod:`nanogpt_course.fused_mlp_kernel`): ``h`` and ``da`` never reach memory, which saves
writing and reading one (B·T, 4C) tensor in each direction. The other matmuls (``y = a
W_projᵀ`` and the three weight or input gradients) stay cuBLAS calls.

Two implementations of the fused matmul, tied by ``tests/test_fused_mlp.py``:

- :func:`matmul_epilogue_reference`: PyTorch ops in fp32 (the CPU's path and the readable
  statement of the math);
- the Triton kernel (CUDA, when Triton is installed; ``$NANOGPT_COURSE_FUSED_MLP_BACKEND``
  = ``torch`` forces the reference; a kernel that cannot be compiled falls back to the
  reference, with one warning).

The whole MLP is the custom operator ``torch.ops.nanogpt_course.relu2_mlp``, which
``torch.compile`` keeps as one opaque call, with its backward registered. It keeps what
:class:`~nanogpt_course.model.ReluSquared` keeps: ``x`` and ``a``. Numerically it rounds
less than the readable path (relu² and the derivative are applied to the fp32
accumulator, then rounded once).

Not the default: its speed against cuBLAS + the compiled pointwise kernels is measured by
``python bench/fused_mlp_sweep.py`` and ``bench_train.py --mlp fused`` on the GPU (docs/PERFORMANCE.md says where that stands).
"""

from __future__ import annotations

import functools
import os

import torch

from .chunked_loss import head_matmul_dtype
from .kernel_choice import KernelChoice

ENV_VAR = "NANOGPT_COURSE_MLP"
IMPLS = ("standard", "fused")
BACKEND_ENV = "NANOGPT_COURSE_FUSED_MLP_BACKEND"
KERNEL = KernelChoice("the fused MLP", "nanogpt_course.fused_mlp_kernel", BACKEND_ENV)
RELU2, DRELU2 = "relu2", "drelu2"


# Launch shapes (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages; GROUP_M 8) the kernel is tuned
# over on the GPU: at the first call for each (M, N, K, epilogue), Triton times every shape
# and keeps the fastest. The first is the tile Triton's matmul tutorial found best for
# bf16 on Hopper, and the fixed default.
LAUNCH_SHAPES = ((128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 8, 4),
                 (128, 128, 64, 4, 4), (256, 128, 64, 8, 3), (64, 256, 64, 4, 4),
                 (128, 256, 32, 8, 4), (128, 128, 128, 8, 3))
AUTOTUNE_ENV = "NANOGPT_COURSE_FUSED_MLP_AUTOTUNE"


def _launch_shape() -> dict:
    """The fixed launch shape (``NANOGPT_COURSE_FUSED_MLP_AUTOTUNE=0``, and Triton's CPU
    interpreter): ``LAUNCH_SHAPES[0]`` unless overridden for A/B runs by
    ``NANOGPT_COURSE_FUSED_MLP_{BLOCK_M,BLOCK_N,BLOCK_K,GROUP_M,WARPS,STAGES}``."""
    env = os.environ.get
    block_m, block_n, block_k, warps, stages = LAUNCH_SHAPES[0]
    return dict(BLOCK_M=int(env("NANOGPT_COURSE_FUSED_MLP_BLOCK_M", block_m)),
                BLOCK_N=int(env("NANOGPT_COURSE_FUSED_MLP_BLOCK_N", block_n)),
                BLOCK_K=int(env("NANOGPT_COURSE_FUSED_MLP_BLOCK_K", block_k)),
                GROUP_M=int(env("NANOGPT_COURSE_FUSED_MLP_GROUP_M", 8)),
                num_warps=int(env("NANOGPT_COURSE_FUSED_MLP_WARPS", warps)),
                num_stages=int(env("NANOGPT_COURSE_FUSED_MLP_STAGES", stages)))


def autotuning() -> bool:
    """Whether the kernel picks its launch shape by timing :data:`LAUNCH_SHAPES` (the
    default on the GPU); never in Triton's interpreter, whose timings mean nothing."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    raw = os.environ.get(AUTOTUNE_ENV) or "1"
    if raw not in ("0", "1"):
        raise ValueError(f"{AUTOTUNE_ENV}={raw!r}: use 1 (time the launch shapes) or 0 "
                         "(the fixed one)")
    return raw == "1"


@functools.cache
def _autotuned_kernel():
    """The kernel wrapped in ``triton.autotune`` over :data:`LAUNCH_SHAPES`, keyed on the
    problem's sizes and epilogue (``.best_config`` is the last choice)."""
    import triton

    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8},
                             num_warps=warps, num_stages=stages)
               for m, n, k, warps, stages in LAUNCH_SHAPES]
    return triton.autotune(configs=configs, key=["M", "N", "K", "EPILOGUE"])(
        KERNEL.require().matmul_epilogue_kernel)


def mlp_impl_from_env() -> str:
    """The MLP implementation a new GPT uses: ``$NANOGPT_COURSE_MLP`` or ``"standard"``."""
    impl = os.environ.get(ENV_VAR) or "standard"
    if impl not in IMPLS:
        raise ValueError(f"MLP implementation {impl!r} ({ENV_VAR}): choose one of {IMPLS}")
    return impl


def matmul_epilogue_reference(a: torch.Tensor, b: torch.Tensor, epilogue: str,
                              aux: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(a @ b)²`` (``"relu2"``) or ``(a @ b) · 2·sqrt(aux)`` (``"drelu2"``), in at
    least fp32 (as the kernel's accumulator), returned in ``a``'s dtype. a (M, K), b (K, N),
    aux (M, N)."""
    acc_dtype = torch.promote_types(a.dtype, torch.float32)
    acc = a.to(acc_dtype) @ b.to(acc_dtype)
    if epilogue == RELU2:
        out = torch.relu(acc).square()
    elif epilogue == DRELU2:
        out = acc * (2 * aux.to(acc_dtype).sqrt())
    else:
        raise ValueError(f"epilogue must be {RELU2!r} or {DRELU2!r}, got {epilogue!r}")
    return out.to(a.dtype)


def matmul_epilogue_triton(a: torch.Tensor, b: torch.Tensor, epilogue: str,
                           aux: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel's version of :func:`matmul_epilogue_reference` (same contract).
    CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    module = KERNEL.require()
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty(m, n, dtype=a.dtype, device=a.device)
    args = (a, b, out, out if aux is None else aux.contiguous(), m, n, k,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1))
    flags = dict(EPILOGUE=module.RELU2 if epilogue == RELU2 else module.DRELU2,
                 UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
                 ALLOW_TF32=torch.backends.cuda.matmul.allow_tf32)

    def grid(shape):  # one program per output tile
        return (-(-m // shape["BLOCK_M"]) * -(-n // shape["BLOCK_N"]),)
    if autotuning():
        _autotuned_kernel()[grid](*args, **flags)
    else:
        shape = _launch_shape()
        module.matmul_epilogue_kernel[grid(shape)](*args, **flags, **shape)
    return out


def matmul_epilogue(a, b, epilogue: str, aux=None, *, backend: str | None = None):
    """Dispatch to the kernel or the reference: ``"auto"`` (the default, or
    ``$NANOGPT_COURSE_FUSED_MLP_BACKEND``) takes the kernel for CUDA tensors when Triton is
    installed and falls back to the reference for good, with one warning, if it fails."""
    return KERNEL.run(lambda: matmul_epilogue_triton(a, b, epilogue, aux),
                      lambda: matmul_epilogue_reference(a, b, epilogue, aux), a, backend)


# the fused matmul as an operator of its own: the MLP's backward calls it, and torch.compile
# traces that backward with fake tensors, which a Triton launch cannot take
@torch.library.custom_op("nanogpt_course::matmul_epilogue", mutates_args=(),
                         schema="(Tensor a, Tensor b, str epilogue, Tensor? aux) -> Tensor")
def _matmul_epilogue_op(a: torch.Tensor, b: torch.Tensor, epilogue: str,
                        aux: torch.Tensor | None) -> torch.Tensor:
    return matmul_epilogue(a, b, epilogue, aux)


@_matmul_epilogue_op.register_fake
def _(a, b, epilogue, aux):
    return a.new_empty(a.shape[0], b.shape[1])


@torch.library.custom_op("nanogpt_course::relu2_mlp", mutates_args=(),
                         schema="(Tensor x, Tensor w_fc, Tensor w_proj) -> (Tensor, Tensor)")
def _relu2_mlp(x: torch.Tensor, w_fc: torch.Tensor,
               w_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y (N, C), a (N, H)) for x (N, C), w_fc (H, C), w_proj (C, H), one dtype."""
    a = matmul_epilogue(x, w_fc.t(), RELU2)
    with torch.autocast(x.device.type, enabled=False):  # the caller chose the dtype
        y = a @ w_proj.t()
    return y, a


@_relu2_mlp.register_fake
def _(x, w_fc, w_proj):
    return x.new_empty(x.shape[0], w_proj.shape[0]), x.new_empty(x.shape[0], w_fc.shape[0])


def _setup_context(ctx, inputs, output):
    x, w_fc, w_proj = inputs
    ctx.save_for_backward(x, w_fc, w_proj, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_y, _grad_a):
    x, w_fc, w_proj, a = ctx.saved_tensors
    grad_y = grad_y.to(x.dtype)
    grad_h = _matmul_epilogue_op(grad_y, w_proj, DRELU2, a)  # (N, H): dy W_proj · 2 sqrt(a)
    with torch.autocast(x.device.type, enabled=False):
        grad_w_proj = grad_y.t() @ a
        grad_x = grad_h @ w_fc
        grad_w_fc = grad_h.t() @ x
    return grad_x, grad_w_fc, grad_w_proj


_relu2_mlp.register_autograd(_backward, setup_context=_setup_context)


def relu2_mlp(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> torch.Tensor:
    """``relu(x W_fcᵀ)² W_projᵀ`` for x (..., C), w_fc (H, C), w_proj (C, H) (nn.Linear
    weights): the matmuls run in the autocast dtype when autocast is on (bf16 on CUDA),
    else in the inputs' promoted dtype. Returns (..., C) in that dtype."""
    dtype = head_matmul_dtype(x, w_fc)  # the dtype nn.Linear's matmul would run in
    y, _ = _relu2_mlp(x.reshape(-1, x.shape[-1]).to(dtype), w_fc.to(dtype), w_proj.to(dtype))
    return y.view(*x.shape[:-1], w_proj.shape[0])
