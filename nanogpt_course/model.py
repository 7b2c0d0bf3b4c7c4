"""The GPT: a decoder-only transformer with the modern touches nanochat-style models use.

Architecture, for ``idx`` of shape (B, T):

    x0 = norm(wte[idx])                                  token embedding, then RMSNorm
    for each layer i:
        x = resid_lambda[i] * x + x0_lambda[i] * x0      per-layer residual scalars (optional)
        x = x + attn_i(norm(x), ve_i[idx])               RoPE, QK-norm, causal (windowed) attn
        x = x + mlp_i(norm(x))                           ReLU² MLP, 4× wide
    logits = softcap(lm_head(norm(x)))                   untied head, tanh cap in fp32

- RMSNorm has no learnable parameters (``F.rms_norm``); no linear layer has a bias.
- Value embeddings (optional): every other layer, ending with the last one, adds a learned
  per-token vector to the attention values, scaled by a per-head gate ``2·sigmoid(W x[:32])``.
- Sliding windows (optional): ``window_pattern`` such as ``"SSSL"`` is tiled over the layers;
  ``S`` sees the last ``short_window`` tokens (default half the context), ``L`` the whole
  context; the last layer is always ``L``.
- Vocabulary padding: the embedding and head have ``padded_vocab_size`` rows (the tokenizer's
  ``vocab_size`` rounded up to a multiple of ``VOCAB_PAD_MULTIPLE`` = 128, which keeps the
  head matmul on tensor-core friendly shapes); logits are cut back to ``vocab_size``.

Precision: parameters are fp32 master weights. On CUDA callers run forward/backward under
``torch.autocast("cuda", dtype=torch.bfloat16)``: matmuls and attention run in bf16, and so
does the residual stream (the normed embedding is cast to the autocast dtype, as nanochat
stores its activations: an fp32 stream doubles the bytes every norm, residual add and saved
activation moves, about 5 GiB more at d12 × micro-batch 32); the softcap and loss are
computed in fp32. ``NANOGPT_COURSE_RESIDUAL=fp32`` (read when a GPT is built) keeps the
stream in fp32 under autocast, for A/B runs. On CPU all fp32.

Init scheme (:meth:`GPT.init_weights`): token embedding N(0, 1) (it is RMS-normed anyway);
q/k/v, MLP input and value embeddings U(±√(3/C)), i.e. std 1/√C so unit-RMS inputs give
unit-RMS outputs; both output projections zero, so every block starts as the identity and
the residual stream carries the embedding untouched; lm_head N(0, 0.001²), so the first
predictions are nearly uniform (loss ≈ ln V); value-embedding gates zero (gate = 1);
residual scalars 1 and x0 scalars 0.1.

Meta-device construction works: ``with torch.device("meta"): m = GPT(cfg)`` then
``m.to_empty(device=d); m.init_weights()``. Built on a real device, ``GPT(cfg)`` is
initialized at once. The RoPE tables are non-persistent buffers: ``init_weights`` and
``load_state_dict`` rebuild them.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import chunked_loss, fused_loss, fused_mlp
from .attention import BACKENDS, causal_attention, sliding_window_block_mask
from .rope import apply_rope, rope_cos_sin

VOCAB_PAD_MULTIPLE = 128
VE_GATE_CHANNELS = 32  # the value-embedding gate reads this many channels of the input


@dataclass
class GPTConfig:
    """Model shape. ``vocab_size`` is the tokenizer's; see :attr:`padded_vocab_size`."""

    sequence_len: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "L"
    short_window: int | None = None  # tokens an "S" layer sees; None = sequence_len // 2
    rope_base: float = 10000.0
    softcap: float = 15.0  # 0 disables the logit cap
    value_embeds: bool = True
    residual_scalars: bool = True
    mlp_ratio: int = 4

    def __post_init__(self):
        self.validate()

    # -- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        m = VOCAB_PAD_MULTIPLE
        return (self.vocab_size + m - 1) // m * m

    def window_sizes(self) -> list[int]:
        """Keys each layer's queries see (including their own), one entry per layer."""
        short = self.short_window or max(1, self.sequence_len // 2)
        pattern = self.window_pattern.upper()
        sizes = [short if pattern[i % len(pattern)] == "S" else self.sequence_len
                 for i in range(self.n_layer)]
        sizes[-1] = self.sequence_len  # the last layer always sees the whole context
        return [min(s, self.sequence_len) for s in sizes]

    def has_value_embed(self, layer: int) -> bool:
        """Value embeddings sit on every other layer, counted back from the last."""
        return self.value_embeds and (self.n_layer - 1 - layer) % 2 == 0

    # -- checks and (de)serialization ----------------------------------------------------
    def validate(self) -> None:
        """Raise a ValueError naming the first inconsistent field."""
        for name in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                     "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                             f"every head needs the same width (n_embd = n_head × head_dim)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = n_embd / n_head = {self.head_dim} must be even for "
                             f"RoPE (it rotates pairs of dimensions)")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}: "
                             f"in grouped-query attention each kv head serves a whole group")
        if not self.window_pattern or set(self.window_pattern.upper()) - {"S", "L"}:
            raise ValueError(f"window_pattern {self.window_pattern!r} must be a non-empty "
                             f"string of 'S' (short window) and 'L' (full context), e.g. 'SSSL'")
        if self.short_window is not None and self.short_window < 1:
            raise ValueError(f"short_window must be >= 1 or None, got {self.short_window}")
        if self.softcap < 0 or self.rope_base <= 1:
            raise ValueError(f"softcap must be >= 0 (0 = off) and rope_base > 1, got "
                             f"softcap={self.softcap}, rope_base={self.rope_base}")

    def to_dict(self) -> dict:
        """JSON-safe dict (what checkpoints store in meta.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown} (known: {sorted(known)}); "
                             f"was this config written by a newer nanogpt_course?")
        return cls(**d)

    @classmethod
    def from_depth(cls, depth: int, *, vocab_size: int, sequence_len: int,
                   aspect_ratio: int = 64, head_dim: int = 128, **overrides) -> GPTConfig:
        """The one-knob model family: ``n_layer = depth`` and width ``depth × aspect_ratio``
        rounded up to a multiple of ``head_dim``, with ``width / head_dim`` heads.

        d6 → 384 wide, 3 heads; d12 → 768, 6; d20 → 1280, 10 (at the defaults).
        ``n_kv_head`` defaults to ``n_head`` (no GQA). Any field can be overridden.
        """
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        width = math.ceil(depth * aspect_ratio / head_dim) * head_dim
        base = dict(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                    n_embd=width, n_head=width // head_dim)
        base.update(overrides)
        base.setdefault("n_kv_head", base["n_head"])
        return cls(**base)

    def replace(self, **changes) -> GPTConfig:
        return replace(self, **changes)


RESIDUAL_ENV = "NANOGPT_COURSE_RESIDUAL"
RESIDUAL_PRECISIONS = ("auto", "fp32")


def residual_precision_from_env() -> str:
    """``$NANOGPT_COURSE_RESIDUAL`` or ``"auto"`` (see the module docstring)."""
    value = os.environ.get(RESIDUAL_ENV) or "auto"
    if value not in RESIDUAL_PRECISIONS:
        raise ValueError(f"{RESIDUAL_ENV}={value!r}: choose one of {RESIDUAL_PRECISIONS}")
    return value


def norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


class CausalSelfAttention(nn.Module):
    """Multi-head (grouped-query) attention with RoPE, QK-norm and optional value embeddings."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        C, kv_dim = config.n_embd, config.n_kv_head * config.head_dim
        self.c_q = nn.Linear(C, C, bias=False)
        self.c_k = nn.Linear(C, kv_dim, bias=False)
        self.c_v = nn.Linear(C, kv_dim, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.ve_gate = None
        if config.has_value_embed(layer):
            self.ve_gate = nn.Linear(min(VE_GATE_CHANNELS, C), config.n_kv_head, bias=False)

    def forward(self, x, ve, cos, sin, window, *, kv_cache=None, backend="auto",
                block_mask=None):
        """x: (B, T, C) normed input; ve: (B, T, kv_dim) or None; cos/sin: (T, D/2)."""
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate.in_features]))
            v = v + gate.unsqueeze(-1) * ve.view_as(v).to(v.dtype)
        # QK-norm bounds every attention score by √D; RMSNorm and the rotation commute.
        q, k = apply_rope(norm(q), cos, sin), apply_rope(norm(k), cos, sin)
        # (B, heads, T, D) for attention; one dtype (bf16 under autocast) for the kernels.
        q, k, v = (t.transpose(1, 2).to(v.dtype) for t in (q, k, v))
        if kv_cache is None:
            y = causal_attention(q, k, v, window=window, backend=backend, block_mask=block_mask)
        else:  # the cache stores k/v and attends (engine.KVCache, or the decode-graph cache)
            y = kv_cache.attend(self.layer, q, k, v, window=window, backend=backend)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


def relu_squared_reference(h: torch.Tensor) -> torch.Tensor:
    """relu(h)², the readable version. Autograd keeps relu(h) for its backward; a compiled
    training graph kept both a (B, T, 4C) pre-activation and the output (see ReluSquared)."""
    return F.relu(h).square()


class ReluSquared(torch.autograd.Function):
    """relu(h)² that keeps only its output for the backward pass.

    The derivative is 2·relu(h), and relu(h) = sqrt(relu(h)²): the backward can be computed
    from the output ``a`` alone. The output has to be kept anyway (it is the input of the
    MLP's second matmul, whose weight gradient needs it), so the pre-activation ``h`` is not
    kept at all: one (B, T, 4C) bf16 tensor less per layer than autograd on the readable
    version keeps under torch.compile (0.375 GiB per layer at d12 × micro-batch 32 × 2048).
    torch.compile traces both methods, so the forward and backward stay fused kernels.
    ``tests/test_model_relu2.py`` ties it to :func:`relu_squared_reference`.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        r = F.relu(h)
        # r * r, not r.square(): CUDA autocast runs pow in fp32, so square() would return an
        # fp32 ``a``, and the compiled graph would keep h to recompute it instead of ``a``
        a = r * r
        ctx.save_for_backward(a)
        return a

    @staticmethod
    def backward(ctx, grad_a: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        # d relu(h)²/dh = 2 relu(h) = 2 sqrt(a), computed in at least fp32 (bf16 rounds once)
        acc = torch.promote_types(a.dtype, torch.float32)
        return (grad_a.to(acc) * (2 * a.to(acc).sqrt())).to(a.dtype)


def relu_squared(h: torch.Tensor) -> torch.Tensor:
    """relu(h)² with the smaller backward of :class:`ReluSquared`. h: any shape."""
    return ReluSquared.apply(h)


class MLP(nn.Module):
    """x → relu(x W_fc)² W_proj: squared ReLU, ``mlp_ratio`` times wider inside.

    ``impl``: ``"standard"`` (the default: two nn.Linear calls around :func:`relu_squared`)
    or ``"fused"`` (opt-in, ``NANOGPT_COURSE_MLP=fused``: while gradients are recorded the
    relu² and its derivative run inside the matmuls' epilogues, fused_mlp.py; same values).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=False)
        self.impl = fused_mlp.mlp_impl_from_env()

    def forward(self, x):
        """x: (B, T, C) → (B, T, C)."""
        if self.impl == "fused" and torch.is_grad_enabled() and self._plain_linears():
            return fused_mlp.relu2_mlp(x, self.c_fc.weight, self.c_proj.weight)
        return self.c_proj(relu_squared(self.c_fc(x)))

    def _plain_linears(self) -> bool:
        """False once --fp8 has swapped the layers (their matmuls are FP8's own then)."""
        return type(self.c_fc) is nn.Linear and type(self.c_proj) is nn.Linear


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, window, **attn_kwargs):
        x = x + self.attn(norm(x), ve, cos, sin, window, **attn_kwargs)
        return x + self.mlp(norm(x))


def _rebuild_rope_after_load(module, incompatible_keys) -> None:
    """load_state_dict post-hook: the RoPE tables are not saved, so rebuild them where the
    loaded weights now live (``assign=True`` may have moved them off the meta device)."""
    module._build_rope()


class GPT(nn.Module):
    """The language model. See the module docstring for the architecture and init."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = config
        # "auto" picks flash/FlexAttention on CUDA, masked SDPA elsewhere; the GPU check
        # sets "mask" to get a dense fp32 reference on the same weights.
        self.attention_backend = "auto"
        # "standard": head + F.cross_entropy (the readable one); "fused": its forward
        # writes the logits' gradient over them (fused_loss.py); "auto" (the default):
        # "fused" on CUDA with Triton, else "standard"; opt-in "chunked" never holds the
        # (B·T, V) logits (chunked_loss.py).
        self.loss_impl = chunked_loss.loss_impl_from_env()
        # "auto": the residual stream in the autocast dtype when autocast is on (bf16 on
        # CUDA), fp32 otherwise; "fp32": always fp32 (see the module docstring)
        self.residual_precision = residual_precision_from_env()
        V, C, L = config.padded_vocab_size, config.n_embd, config.n_layer
        kv_dim = config.n_kv_head * config.head_dim
        self.wte = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(L))
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(V, kv_dim) for i in range(L) if config.has_value_embed(i)})
        self.lm_head = nn.Linear(C, V, bias=False)
        self.resid_lambdas = self.x0_lambdas = None
        if config.residual_scalars:
            self.resid_lambdas = nn.Parameter(torch.ones(L))
            self.x0_lambdas = nn.Parameter(torch.zeros(L))
        self.windows = config.window_sizes()
        self._build_rope(self.wte.weight.device)
        self.register_load_state_dict_post_hook(_rebuild_rope_after_load)
        if not self.wte.weight.is_meta:
            self.init_weights()

    # -- construction --------------------------------------------------------------------
    def _build_rope(self, device=None):
        """(Re)build the RoPE tables: (sequence_len, head_dim/2) fp32 cos and sin."""
        device = self.wte.weight.device if device is None else device
        cfg = self.config
        cos, sin = rope_cos_sin(cfg.sequence_len, cfg.head_dim, cfg.rope_base, device=device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialize every parameter (scheme in the module docstring) and the RoPE tables."""
        bound = math.sqrt(3.0 / self.config.n_embd)  # uniform with std 1/sqrt(C)
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.blocks:
            attn = block.attn
            for lin in (attn.c_q, attn.c_k, attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if attn.ve_gate is not None:
                nn.init.zeros_(attn.ve_gate.weight)
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound)
        if self.resid_lambdas is not None:
            self.resid_lambdas.fill_(1.0)
            self.x0_lambdas.fill_(0.1)
        self._build_rope()

    # -- forward -------------------------------------------------------------------------
    def hidden(self, idx: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """Final normed hidden states (B, T, n_embd) for tokens ``idx`` (B, T) int64.

        With a ``kv_cache`` the tokens continue the cached sequence (positions
        ``kv_cache.pos ..``), their keys/values are appended and the cache advances by T.
        A cache whose position lives on the device (a CUDA-graphed decode step) has
        ``pos = None``; it hands out the RoPE rows itself and its driver checks the room.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.pos
        if start is not None and start + T > self.config.sequence_len:
            where = f"positions {start}..{start + T - 1}" if start else f"{T} tokens"
            raise ValueError(f"{where} exceed the model's context of sequence_len="
                             f"{self.config.sequence_len} tokens: crop the input to the last "
                             f"{self.config.sequence_len} tokens (or train with a longer --seq-len)")
        backend = self.attention_backend
        if backend not in BACKENDS:
            raise ValueError(f"attention_backend {backend!r} not in {BACKENDS}")
        if start is not None:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        else:
            cos, sin = kv_cache.rope(self.rope_cos, self.rope_sin, T)
        masks = self._block_masks(T, idx.device, backend, kv_cache)
        x = x0 = norm(self.wte(idx)).to(self.residual_dtype(idx.device.type))
        for i, block in enumerate(self.blocks):
            if self.resid_lambdas is not None:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if self.config.has_value_embed(i) else None
            x = block(x, ve, cos, sin, self.windows[i], kv_cache=kv_cache, backend=backend,
                      block_mask=masks.get(self.windows[i]))
        if kv_cache is not None:
            kv_cache.advance(T)
        return norm(x)

    def residual_dtype(self, device_type: str) -> torch.dtype:
        """The residual stream's dtype: the autocast dtype while autocast is on for
        ``device_type`` (unless ``residual_precision == "fp32"``), else fp32."""
        if self.residual_precision == "auto" and torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return torch.float32

    def _block_masks(self, T, device, backend, kv_cache) -> dict:
        """One FlexAttention block mask per distinct window, shared by the layers using it."""
        if kv_cache is not None or not (backend == "flex" or (backend == "auto"
                                                               and device.type == "cuda")):
            return {}
        return {w: sliding_window_block_mask(T, w, device=device)
                for w in set(self.windows) if w < T}

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., vocab_size) in fp32 from hidden states (..., n_embd), softcapped."""
        logits = self.lm_head(h)[..., : self.config.vocab_size].float()
        cap = self.config.softcap
        if cap:
            logits = cap * torch.tanh(logits / cap)  # smooth clamp to (-cap, cap)
        return logits

    def forward(self, idx, targets=None, reduction: str = "mean", kv_cache=None):
        """Logits (B, T, vocab_size) when ``targets`` is None; else the cross-entropy loss.

        Targets equal to -1 are ignored. ``reduction="mean"`` averages over the others (a
        scalar; NaN when every target is -1, as in PyTorch); ``"sum"`` sums them; ``"none"``
        returns (B, T) per-token losses, 0 where ignored.
        """
        h = self.hidden(idx, kv_cache)
        if targets is None:
            return self.head(h)
        return self.loss(h, targets, reduction)

    def loss(self, h: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
        """Cross-entropy of the head's logits for hidden states ``h`` (B, T, n_embd) against
        ``targets`` (B, T); see :meth:`forward`. ``loss_impl == "chunked"`` computes the
        "mean" and "sum" reductions without materializing the logits; ``"fused"`` computes
        them and the logits' gradient in one pass while gradients are recorded (same
        values; see chunked_loss.py and fused_loss.py); ``"auto"`` is ``"fused"`` for CUDA
        tensors where Triton is installed, else ``"standard"``."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        impl, cfg = chunked_loss.check_impl(self.loss_impl), self.config
        if impl == "auto":
            impl = fused_loss.auto_impl(h.device)
        if impl == "chunked" and reduction != "none":
            return chunked_loss.linear_softcap_cross_entropy(
                h.flatten(0, 1), self.lm_head.weight, targets.flatten(),
                vocab_size=cfg.vocab_size, softcap=cfg.softcap, reduction=reduction)
        if impl == "fused" and reduction != "none" and torch.is_grad_enabled():
            return fused_loss.linear_softcap_cross_entropy(
                h.flatten(0, 1), self.lm_head.weight, targets.flatten(),
                vocab_size=cfg.vocab_size, softcap=cfg.softcap, reduction=reduction)
        logits = self.head(h)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1,
                               reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss

    def store_embeddings_in(self, dtype: torch.dtype) -> None:
        """Keep the token and value embeddings in ``dtype`` (e.g. bf16, as nanochat does).

        Their lookups feed the bf16 residual stream anyway; stored in bf16, their weights,
        gradients and Adam moments take half the bytes (1.3 GiB less at d12, 3.4 at d20;
        the AdamW step still does its arithmetic in fp32, see optim/adamw.py). The cost is
        precision: an update smaller than 1/256 of an entry is rounded away.
        """
        self.wte.to(dtype)
        for emb in self.value_embeds.values():
            emb.to(dtype)

    # -- bookkeeping ---------------------------------------------------------------------
    def parameter_kinds(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer role; each parameter appears exactly once.

        ``matrix``: 2-D weights inside blocks (Muon); ``embedding``: token and value
        embeddings; ``unembedding``: lm_head; ``scalar``: residual scalars and value gates.
        """
        kinds = {"matrix": [], "embedding": [self.wte.weight], "unembedding": [self.lm_head.weight],
                 "scalar": []}
        kinds["embedding"] += [e.weight for e in self.value_embeds.values()]
        for block in self.blocks:
            for name, p in block.named_parameters():
                kinds["scalar" if "ve_gate" in name else "matrix"].append(p)
        if self.resid_lambdas is not None:
            kinds["scalar"] += [self.resid_lambdas, self.x0_lambdas]
        return kinds

    def param_counts(self) -> dict[str, int]:
        """Parameter counts: total = matrices + embeddings + value_embeds + lm_head + scalars.

        ``embeddings`` is the token embedding only (padded rows included, as allocated).
        """
        kinds = self.parameter_kinds()
        count = lambda ps: sum(p.numel() for p in ps)
        value = count(e.weight for e in self.value_embeds.values())
        out = {"matrices": count(kinds["matrix"]), "embeddings": self.wte.weight.numel(),
               "value_embeds": value, "lm_head": count(kinds["unembedding"]),
               "scalars": count(kinds["scalar"])}
        out["total"] = sum(out.values())
        return out

    def num_params(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self) -> int:
        """Training FLOPs per token (forward + backward) at full ``sequence_len``.

        6 × (parameters that take part in a matmul: block matrices, value gates, lm_head;
        not the embedding lookups) + 12 · H · D · window for each layer's attention scores
        and weighted sum. Left out: norms, RoPE, softmax, ReLU², softcap and the loss
        (elementwise, a few % at most), and the causal mask's saving (the formula counts a
        full window of keys per query, as FLOP counters and MFU conventions do).
        """
        kinds = self.parameter_kinds()
        gates = sum(b.attn.ve_gate.weight.numel() for b in self.blocks if b.attn.ve_gate is not None)
        matmul = sum(p.numel() for p in kinds["matrix"] + kinds["unembedding"]) + gates
        cfg = self.config
        attention = sum(12 * cfg.n_head * cfg.head_dim * w for w in self.windows)
        return 6 * matmul + attention
