"""karpathy/nanochat, pinned, as a reference for benchmarks: its model, its optimizer, its rules.

One protocol for every benchmark that compares with nanochat (quality per FLOP, training
speed, decoding): the checkout at ``PATH`` (never committed here; ``.nanochat/`` in this
repository's root is git-excluded and travels to the GPU machine with ``carry``) must say
:data:`PINNED` in its ``COMMIT`` file. Attention is forced to nanochat's PyTorch SDPA path
(its FA3 kernels are downloaded from the Hub, which the GPU machine cannot reach), and the
window pattern defaults to ``"L"`` (full context, which SDPA supports).

Small functions, used by the benches that compare with nanochat (quality, training speed,
memory)::

    ref = nanochat_ref.load("/path/to/nanochat")         # sys.path + commit check + SDPA
    model, rules, opt = nanochat_ref.build_recipe(ref, 6, vocab_size=50259,
                                                  sequence_len=1024, device="cuda", seed=0)
    nanochat_ref.apply_schedule(opt, step, num_steps, rules["weight_decay"])

(``build_recipe`` is :func:`build_model`, :func:`base_train_rules` and
:func:`build_optimizer` in a row.)

The rules and schedules restate nanochat's ``scripts/base_train.py`` (the reference point
d12 at 2^19 tokens, Power-Lines batch, √batch LRs, the T_epoch weight decay computed from
the tokens:params ratio, warmup 40 / warmdown 0.65 / final 0.05, Muon momentum 0.85 → 0.97
→ 0.90, cosine weight decay to 0).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

PINNED = "92d63d4"
B_REF = 2**19
REF_LRS = {"embedding_lr": 0.3, "unembedding_lr": 0.008, "matrix_lr": 0.02, "scalar_lr": 0.5}
REF_WEIGHT_DECAY = 0.28


def add_to_path(path: str | Path) -> Path:
    """Check ``PATH/COMMIT`` names :data:`PINNED` and put ``PATH`` first on ``sys.path``."""
    path = Path(path).expanduser().resolve()
    commit_file = path / "COMMIT"
    if not (path / "nanochat" / "gpt.py").is_file():
        raise FileNotFoundError(f"{path} is not a nanochat checkout (no nanochat/gpt.py)")
    commit = commit_file.read_text().strip() if commit_file.is_file() else ""
    if not commit.startswith(PINNED):
        raise ValueError(f"{path}: COMMIT says {commit or '(missing)'!r}, the benchmarks are "
                         f"pinned to nanochat {PINNED}: check that commit out and write it "
                         f"to {commit_file}")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


def load(path: str | Path) -> SimpleNamespace:
    """Import nanochat's ``gpt`` and ``optim`` modules from ``path`` with SDPA attention."""
    add_to_path(path)
    import nanochat.flash_attention as flash
    from nanochat import gpt, optim

    flash._override_impl = "sdpa"
    flash.USE_FA3 = False  # decided at import; its FA3 kernels come from the Hub
    return SimpleNamespace(path=Path(path), gpt=gpt, optim=optim, flash=flash)


def model_config(ref, depth: int, *, vocab_size: int, sequence_len: int,
                 aspect_ratio: int = 64, head_dim: int = 128, window_pattern: str = "L"):
    """nanochat's GPTConfig for a depth (base_train.py's build_model_meta)."""
    base = depth * aspect_ratio
    width = (base + head_dim - 1) // head_dim * head_dim
    heads = width // head_dim
    return ref.gpt.GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                             n_head=heads, n_kv_head=heads, n_embd=width,
                             window_pattern=window_pattern)


def build_model(ref, depth: int, *, vocab_size: int, sequence_len: int, device="cuda",
                seed: int | None = None, **shape):
    """nanochat's GPT at ``depth``, built on the meta device, moved to ``device`` and
    initialized by its own ``init_weights`` (after ``torch.manual_seed(seed)`` if given)."""
    import torch

    config = model_config(ref, depth, vocab_size=vocab_size, sequence_len=sequence_len, **shape)
    with torch.device("meta"):
        model = ref.gpt.GPT(config)
    model.to_empty(device=device)
    if seed is not None:
        torch.manual_seed(seed)
    model.init_weights()
    return model


def scaling_params(model) -> int:
    """Transformer matrices + lm_head: the parameter count nanochat's rules use."""
    counts = model.num_scaling_params()
    return counts["transformer_matrices"] + counts["lm_head"]


def base_train_rules(ref, model, depth: int, *, vocab_size: int, sequence_len: int,
                     target_param_data_ratio: float = 12.0,
                     total_batch_size: int | None = None, **shape) -> dict:
    """Batch size, learning rates and weight decay as ``scripts/base_train.py`` derives
    them. Note: with ``--target-flops`` nanochat still uses the tokens:params ratio (12)
    for the batch and the weight decay; only the number of steps follows the FLOPs."""
    import torch

    with torch.device("meta"):
        d12 = ref.gpt.GPT(model_config(ref, 12, vocab_size=vocab_size,
                                       sequence_len=sequence_len, **shape))
    d_ref = target_param_data_ratio * scaling_params(d12)
    target_tokens = int(target_param_data_ratio * scaling_params(model))
    if total_batch_size is None:
        predicted = B_REF * (target_tokens / d_ref) ** 0.383
        total_batch_size = 2 ** round(math.log2(predicted))
    lr_scale = (total_batch_size / B_REF) ** 0.5
    weight_decay = REF_WEIGHT_DECAY * lr_scale * (d_ref / target_tokens)
    return {"total_batch_size": total_batch_size, "lr_scale": lr_scale,
            "lrs": {k: v * lr_scale for k, v in REF_LRS.items()},
            "weight_decay": weight_decay, "target_tokens": target_tokens, "ref_tokens": d_ref}


def build_optimizer(model, rules: dict):
    """nanochat's own ``GPT.setup_optimizer`` (its groups, betas and decays) with the rules'
    LRs and weight decay; every group gets ``initial_lr``."""
    lrs = rules["lrs"]
    return model.setup_optimizer(unembedding_lr=lrs["unembedding_lr"],
                                 embedding_lr=lrs["embedding_lr"], scalar_lr=lrs["scalar_lr"],
                                 matrix_lr=lrs["matrix_lr"],
                                 weight_decay=rules["weight_decay"])


def build_recipe(ref, depth: int, *, vocab_size: int, sequence_len: int, device="cuda",
                 seed: int | None = None, total_batch_size: int | None = None):
    """``(model, rules, optimizer)``: nanochat's GPT at ``depth`` (:func:`build_model`), the
    batch, LRs and weight decay ``base_train.py`` derives for it (:func:`base_train_rules`;
    ``total_batch_size`` None lets the rules pick it) and its optimizer with them."""
    model = build_model(ref, depth, vocab_size=vocab_size, sequence_len=sequence_len,
                        device=device, seed=seed)
    rules = base_train_rules(ref, model, depth, vocab_size=vocab_size,
                             sequence_len=sequence_len, total_batch_size=total_batch_size)
    return model, rules, build_optimizer(model, rules)


def lr_multiplier(step: int, num_steps: int, *, warmup: int = 40, warmdown_ratio: float = 0.65,
                  final_lr_frac: float = 0.05) -> float:
    warmdown = round(warmdown_ratio * num_steps)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_steps - warmdown:
        return 1.0
    left = (num_steps - step) / warmdown
    return left + (1 - left) * final_lr_frac


def muon_momentum(step: int, num_steps: int, *, warmdown_ratio: float = 0.65) -> float:
    warmdown = round(warmdown_ratio * num_steps)
    start = num_steps - warmdown
    if step < 400:
        frac = step / 400
        return (1 - frac) * 0.85 + frac * 0.97
    if step >= start:
        frac = (step - start) / warmdown
        return 0.97 * (1 - frac) + 0.90 * frac
    return 0.97


def weight_decay_at(step: int, num_steps: int, weight_decay: float) -> float:
    return weight_decay * 0.5 * (1 + math.cos(math.pi * step / num_steps))


def apply_schedule(optimizer, step: int, num_steps: int, weight_decay: float) -> dict:
    """Write step ``step``'s LR, Muon momentum and weight decay into the groups."""
    lrm = lr_multiplier(step, num_steps)
    momentum = muon_momentum(step, num_steps)
    wd = weight_decay_at(step, num_steps, weight_decay)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = momentum
            group["weight_decay"] = wd
    return {"lrm": lrm, "momentum": momentum, "weight_decay": wd}
