"""FP8 matmuls for training the transformer's linear layers (``--fp8``, issue #19).

The recipe: **tensorwise dynamic scaling**. For each matmul, each operand gets one scale
per tensor, computed from its current largest magnitude so that it lands on the format's
maximum (``scale = fp8_max / amax``); the operand is multiplied by it, cast to FP8, the
tensor cores multiply the two FP8 matrices with fp32 accumulation (``torch._scaled_mm``),
and the inverse scales are handed to the kernel, which undoes them in its epilogue.

- forward ``Y = X Wᵀ``: X and W in **e4m3** (3 mantissa bits, max 448: precision first);
- backward ``dX = dY W`` and ``dW = dYᵀ X``: dY in **e5m2** (2 mantissa bits, max 57344:
  gradients span a wider range), the other operand the e4m3 copy saved by the forward
  (no second quantization; X is kept in FP8 for backward, half the bytes of bf16);
- no amax history ("delayed scaling"): every call measures its operands. One reduction per
  operand, and nothing to go stale when the weights move.

The fp32 master weights, the optimizer and its states never see FP8. Only the blocks'
linear layers are converted (attention q/k/v/proj, MLP fc/proj: nearly all of the FLOPs);
the embeddings, the value-embedding gates (tiny) and ``lm_head`` (whose logits set the loss
directly) stay in bf16. The FP8 path runs only while gradients are being recorded (training
steps); evaluation, sampling and the KV-cache engine use the same weights in bf16, so
validation numbers compare with a bf16 run's.

``torch._scaled_mm`` wants its first operand row-major, its second column-major and every
dimension a multiple of 16; the transposes below are there for that layout, nothing else.
Hardware: FP8 tensor cores are Hopper's (H100/H200, compute capability 9.0) and newer;
:func:`check_device` refuses other devices with a message. (CPU PyTorch can run
``_scaled_mm`` slowly, which the tests use to check the math against a plain matmul.)
"""

from __future__ import annotations

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2


def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaling to FP8. Returns ``(x8, inv_scale)`` with ``x ≈ x8.float() * inv_scale``;
    ``inv_scale`` is a 0-D fp32 tensor on x's device (no host sync)."""
    fmax = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float().clamp(min=1e-12)
    scale = fmax / amax
    x8 = (x.float() * scale).clamp(-fmax, fmax).to(dtype)
    return x8, scale.reciprocal()


def _mm(a8, a_inv, b8_colmajor, b_inv, out_dtype) -> torch.Tensor:
    """``(a8 · a_inv) @ (b8 · b_inv)``: a (M, K) row-major, b (K, N) column-major."""
    return torch._scaled_mm(a8, b8_colmajor, scale_a=a_inv, scale_b=b_inv, out_dtype=out_dtype)


def _colmajor(t: torch.Tensor) -> torch.Tensor:
    """The same matrix, laid out column-major (its transpose made contiguous, transposed)."""
    return t.t().contiguous().t()


class _FP8Matmul(torch.autograd.Function):
    """``x (M, K) @ w (N, K)ᵀ -> (M, N)`` in bf16, FP8 operands in both directions."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x8, x_inv = quantize(x, E4M3)
        w8, w_inv = quantize(w, E4M3)
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.dtypes = (x.dtype, w.dtype)
        return _mm(x8, x_inv, w8.t(), w_inv, torch.bfloat16)  # w8.t(): (K, N) column-major

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        g8, g_inv = quantize(grad_out, E5M2)
        grad_x = _mm(g8, g_inv, _colmajor(w8), w_inv, torch.bfloat16)  # (M,N) @ (N,K)
        # (N, M) @ (M, K) -> (N, K); fp32 out: the weight gradient feeds fp32 masters
        grad_w = _mm(g8.t().contiguous(), g_inv, _colmajor(x8), x_inv, torch.float32)
        return grad_x.to(x_dtype), grad_w.to(w_dtype)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) through FP8: x (..., K), weight (N, K) -> (..., N) bf16."""
    shape = x.shape
    y = _FP8Matmul.apply(x.reshape(-1, shape[-1]), weight)
    return y.view(*shape[:-1], weight.shape[0])


class FP8Linear(nn.Linear):
    """An ``nn.Linear`` (no bias) whose training matmuls run in FP8. Same parameters and
    state dict as the layer it replaces; without gradients (eval, decoding) it is the plain
    bf16/fp32 linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return fp8_linear(x, self.weight)
        return super().forward(x)


def convertible(module: nn.Module) -> bool:
    """A bias-free linear whose sizes suit the FP8 kernels (multiples of 16)."""
    return (type(module) is nn.Linear and module.bias is None
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def enable_fp8(model: nn.Module) -> list[str]:
    """Switch the blocks' linear layers of a :class:`~nanogpt_course.model.GPT` to
    :class:`FP8Linear` in place (the parameters stay the same objects, so an optimizer built
    before or after is unaffected). Returns the converted layers' names."""
    names = []
    for name, module in model.blocks.named_modules():
        if convertible(module) and not name.endswith("ve_gate"):
            module.__class__ = FP8Linear
            names.append(f"blocks.{name}")
    return names


def check_device(device: torch.device) -> None:
    """Raise ``ValueError`` unless ``device`` has FP8 tensor cores (Hopper or newer)."""
    if device.type != "cuda":
        raise ValueError(f"--fp8 needs an NVIDIA GPU with FP8 tensor cores (Hopper: H100/H200); "
                         f"this run is on {device.type}. Run without --fp8.")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"--fp8 needs FP8 tensor cores (compute capability 9.0 or newer, "
                         f"e.g. H100/H200); {name} is {major}.{minor}. Run without --fp8.")
