"""``--compile``: the model as one graph, or block by block when gradients shard in backward.

``torch.compile(model)`` turns the whole forward into one graph and the whole backward into
one autograd node: every parameter's gradient appears when that node finishes, at the very
end of backward. DistMuonAdamW's ZeRO-2 hooks (``register_post_accumulate_grad_hook``) then
fire all at once: nothing overlaps the backward and the peak holds every full gradient.

:class:`BlockwiseCompiled` compiles each transformer block, and the head + loss, as separate
graphs (what ``nn.Module.compile`` does per block; torchtitan compiles per block too): the
backward becomes one node per block, so block ``i``'s gradients are complete, and their
hooks fire and their reduce-scatters leave, while block ``i - 1`` is still differentiating.
Blocks of the same shape reuse one compiled graph (dynamo inlines ``nn.Module``s and guards
on the parameters' shapes, not their identity). The compiled calls are switched on only for
the training forward, so evaluation and sampling (KV cache) use the plain model.

:func:`compile_for_training` picks: block by block when the optimizer shards gradients in
backward, the whole model otherwise (one GPU: MuonAdamW, the faster single graph).
"""

from __future__ import annotations

import os

import torch

__all__ = ["COMPILE_MODES", "GEMM_AUTOTUNE_CHOICES", "BlockwiseCompiled", "compile_for_training",
           "compile_kwargs_from_env", "compile_mode_from_env", "coordinate_tuning_from_env",
           "gemm_autotune_from_env"]


def _head_loss(model, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of ``GPT.forward(idx, targets)`` from hidden states (B, T, C)
    (``GPT.loss``: the model's ``loss_impl`` applies here too)."""
    return model.loss(h, targets)


class BlockwiseCompiled:
    """``loss = BlockwiseCompiled(model)(idx, targets)``: the GPT's training loss with each
    block and the head + loss compiled separately (``compile_kwargs`` go to torch.compile).

    ``block_calls[i]`` is block ``i``'s compiled call (tests wrap them to mark where each
    block's backward starts).
    """

    def __init__(self, model, **compile_kwargs):
        self.model = model
        _allow_recompiles(2 * len(model.blocks) + 8)
        self.block_calls = [torch.compile(b._call_impl, **compile_kwargs)
                            for b in model.blocks]
        self.head_loss = torch.compile(_head_loss, **compile_kwargs)

    def __call__(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        blocks = self.model.blocks
        for block, call in zip(blocks, self.block_calls):
            # nn.Module.__call__ runs _compiled_call_impl when set (what Module.compile sets)
            block._compiled_call_impl = call
        try:
            h = self.model.hidden(idx)
        finally:
            for block in blocks:
                block._compiled_call_impl = None
        return self.head_loss(self.model, h, targets)


def _allow_recompiles(n: int) -> None:
    """Every block shares one code object (``Module._call_impl``), so its variants (with or
    without a value-embedding gate, each attention window) count against dynamo's recompile
    limit (8 by default), past which it silently runs the rest eagerly: raise it to ``n``."""
    import torch._dynamo.config as config

    for name in ("recompile_limit", "cache_size_limit"):  # new name, then the old one
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), n))
            return


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode_from_env() -> str | None:
    """``NANOGPT_COURSE_COMPILE_MODE``: torch.compile's ``mode`` for the training forward,
    for A/B runs (``max-autotune-no-cudagraphs`` tries Triton matmul templates, which can
    fuse pointwise epilogues, against cuBLAS; compiling takes minutes). Unset: torch's
    default."""
    mode = os.environ.get("NANOGPT_COURSE_COMPILE_MODE") or None
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"NANOGPT_COURSE_COMPILE_MODE={mode!r} is not a torch.compile mode; "
                         f"use one of {', '.join(COMPILE_MODES)} (or unset it)")
    return mode


COORDINATE_TUNING_DEFAULT = False


def coordinate_tuning_from_env() -> bool:
    """``NANOGPT_COURSE_COORDINATE_TUNING`` (``1``/``0``, default
    :data:`COORDINATE_TUNING_DEFAULT`): let Inductor tune each generated Triton kernel's
    launch configuration (block sizes, warps) by timing its neighbours, once, at compile time.
    Same arithmetic, kernels tuned to the GPU; it adds compile time and changes nothing on
    the CPU, whose kernels are C++."""
    raw = os.environ.get("NANOGPT_COURSE_COORDINATE_TUNING")
    if raw is None or raw == "":
        return COORDINATE_TUNING_DEFAULT
    if raw not in ("0", "1"):
        raise ValueError(f"NANOGPT_COURSE_COORDINATE_TUNING={raw!r}: use 1 (on) or 0 (off)")
    return raw == "1"


GEMM_AUTOTUNE_CHOICES = ("0", "1", "tma")


def gemm_autotune_from_env() -> str:
    """``NANOGPT_COURSE_GEMM_AUTOTUNE``: ``0`` (unset: cuBLAS for every matmul, torch's
    default), ``1`` (Inductor times its Triton matmul templates against cuBLAS for each
    matmul shape, once, at compile time, and may fuse the pointwise work that follows a
    matmul, e.g. relu², into the template's epilogue: the matmul then writes its
    activated output directly) or ``tma`` (``1`` plus the persistent TMA templates of
    Hopper GPUs). Unlike the max-autotune modes it tunes matmuls only: no
    coordinate-descent pass over every pointwise kernel, so the compile stays in minutes."""
    raw = os.environ.get("NANOGPT_COURSE_GEMM_AUTOTUNE") or "0"
    if raw not in GEMM_AUTOTUNE_CHOICES:
        raise ValueError(f"NANOGPT_COURSE_GEMM_AUTOTUNE={raw!r}: use 0 (off), 1 (Triton matmul "
                         f"templates timed against cuBLAS) or tma (and Hopper's TMA templates)")
    return raw


def _inductor_options_from_env() -> dict:
    """The Inductor options the tuning variables ask for ({} when none is on)."""
    options = {}
    if coordinate_tuning_from_env():
        options["coordinate_descent_tuning"] = True
    gemm = gemm_autotune_from_env()
    if gemm != "0":
        options["max_autotune_gemm"] = True
    if gemm == "tma":
        options["triton.enable_persistent_tma_matmul"] = True
    return options


def compile_kwargs_from_env() -> dict:
    """torch.compile's ``mode`` / ``options`` for the training forward, from the variables
    above. torch.compile takes a mode or options, not both, so with a tuning option on the
    mode is spelled out as its options (``torch._inductor.list_mode_options``) plus the
    tuning options; passed per call, nothing global changes (a nanochat model compiled in
    the same process, as bench_train does, gets torch's defaults)."""
    mode = compile_mode_from_env()
    extra = _inductor_options_from_env()
    if not extra:
        return {"mode": mode} if mode is not None else {}
    from torch._inductor import list_mode_options

    return {"options": {**list_mode_options(mode or "default"), **extra}}


def compile_for_training(model, optimizer, **compile_kwargs):
    """The callable ``(idx, targets) -> loss`` the trainer runs under ``--compile``."""
    compile_kwargs.setdefault("dynamic", False)
    if not {"backend", "mode", "options"} & compile_kwargs.keys():  # the caller's choice wins
        compile_kwargs.update(compile_kwargs_from_env())  # mode and options are Inductor's
    if getattr(optimizer, "shards_grads_in_backward", False) and hasattr(model, "blocks"):
        return BlockwiseCompiled(model, **compile_kwargs)
    return torch.compile(model, **compile_kwargs)
