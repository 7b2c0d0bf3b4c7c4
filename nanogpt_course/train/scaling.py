"""Depth rules: one knob (``--depth``) sets the batch size, learning rates, weight decay and
the training horizon.

Every rule is anchored at one **reference point**, nanochat's d12 (karpathy/nanochat,
``scripts/base_train.py``): at depth 12 (width 768), trained for 12 tokens per scaling
parameter, the best total batch was measured at 2^19 = 524,288 tokens with Muon LR 0.02,
AdamW LRs 0.3 (embedding) / 0.008 (unembedding) / 0.5 (scalars) and Muon weight decay 0.28.
Other depths are extrapolated from it with three published rules:

1. **Horizon** ``D`` (training tokens): ``tokens_per_param × scaling params`` (default 12,
   nanochat's measured compute-optimal ratio for this parameter count; Chinchilla's classic
   ratio is ~20 tokens per non-embedding parameter), or ``target_flops / flops_per_token``
   when a FLOP budget is given. *Scaling parameters* are the transformer matrices plus the
   lm_head: nanochat found they give the cleanest scaling laws (its dev/LOG.md, Jan 2026);
   embeddings, value embeddings and scalars are left out.
2. **Batch size** ``B = B_ref · (D / D_ref)^0.383``, rounded to the nearest power of two:
   the optimal batch grows with the horizon as a power law ("Power Lines", Bergsma et al.
   2025, arXiv:2505.13738). ``D_ref`` is the reference d12's horizon at the same vocab,
   sequence length and shape: 12 tokens per scaling parameter.
3. **Learning rates** ``η = η_ref · √(B / B_ref)``: square-root scaling with batch size,
   the standard rule for Adam-type optimizers (applied to Muon too, as nanochat does).
4. **Weight decay** ``λ = λ_ref · √(B / B_ref) · (D_ref / D_N)`` with ``D_N = 12 ×``
   the model's scaling parameters: the AdamW "EMA timescale" ``B / (η λ D)`` (Wang &
   Aitchison 2024, arXiv:2405.13698) is held constant for the model's *compute-optimal*
   horizon, as nanochat does, not for the horizon actually trained. Measured: at d6 and 4
   tokens per parameter the old form (``D`` = the trained horizon, λ = 2.45) lost 0.033
   bits per byte to this one (λ = 0.82); the d4 sweep at 2 and 6 tokens per parameter in
   docs/QUALITY.md checks it. So λ depends on the depth (and the batch), not on
   ``--target-flops`` / ``--tokens-per-param``.

At nanochat's settings (vocab 32768, sequence 2048) these give 2^19 tokens, LR × 1 and
λ = 0.28 at d12, and 2^20 tokens, LR × √2 and λ ≈ 0.100 at d20 (tests/test_train_scaling.py).
One deliberate difference: with ``--target-flops`` nanochat keeps deriving ``B`` from the
tokens:params horizon; here it follows the horizon actually trained,
``target_flops / flops_per_token`` (the weight decay follows nanochat, rule 4). ``--max-steps`` only
sets the number of steps: ``B`` and ``λ`` still follow the planned horizon. Explicit flags
(``--total-batch-size``, ``--matrix-lr``, ...) override a rule and are used as given; an
explicit total batch still rescales the LRs (rule 3) unless they are given too.

See docs/DEPTH.md for the numbers at our defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

# ---- the reference point (nanochat d12) and the exponents of the rules ----------------------
REF_DEPTH = 12
REF_TOKENS_PER_PARAM = 12.0
REF_BATCH = 2**19
BATCH_EXPONENT = 0.383  # Power Lines: B_opt ∝ D^0.383
REF_LRS = {"matrix_lr": 0.02, "embedding_lr": 0.3, "unembedding_lr": 0.008, "scalar_lr": 0.5}
REF_WEIGHT_DECAY = 0.28
DEFAULT_TOKENS_PER_PARAM = 12.0


@dataclass(frozen=True)
class ModelStats:
    """What the rules need to know about a model (per depth)."""

    num_params: int  # every parameter
    scaling_params: int  # transformer matrices + lm_head
    flops_per_token: float  # training FLOPs per token (forward + backward)


def formula_stats(depth: int, *, vocab_size: int, sequence_len: int, aspect_ratio: int = 64,
                  head_dim: int = 128, n_kv_head: int | None = None) -> ModelStats:
    """Closed-form counts for the course GPT shape (no value embeddings, full attention).

    width = depth·aspect_ratio rounded up to a multiple of head_dim; per layer the matrices
    are q, o (width²), k, v (width × kv_heads·head_dim each) and the ReLU² MLP (2 × 4·width²).
    FLOPs per token: 6 × (matrices + lm_head) + 12·L·heads·head_dim·T (attention scores and
    values, forward + backward). Used by the tests at nanochat's settings and as a fallback.
    """
    width = -(-depth * aspect_ratio // head_dim) * head_dim
    heads = width // head_dim
    kv = heads if n_kv_head is None else n_kv_head
    per_layer = 2 * width * width + 2 * width * kv * head_dim + 8 * width * width
    matrices = depth * per_layer
    lm_head = vocab_size * width
    embedding = vocab_size * width
    flops = 6 * (matrices + lm_head) + 12 * depth * heads * head_dim * sequence_len
    return ModelStats(num_params=matrices + lm_head + embedding,
                      scaling_params=matrices + lm_head, flops_per_token=float(flops))


def optimal_batch_size(target_tokens: float, ref_tokens: float, *, ref_batch: int = REF_BATCH,
                       exponent: float = BATCH_EXPONENT) -> int:
    """Rule 2: ``B_ref · (D / D_ref)^exponent`` rounded to the nearest power of two (tokens)."""
    if target_tokens <= 0 or ref_tokens <= 0:
        raise ValueError(f"horizons must be positive, got D={target_tokens}, D_ref={ref_tokens}")
    predicted = ref_batch * (target_tokens / ref_tokens) ** exponent
    return 2 ** round(math.log2(predicted))


def lr_scale(total_batch_size: int, *, ref_batch: int = REF_BATCH) -> float:
    """Rule 3: learning rates scale with √(B / B_ref)."""
    return math.sqrt(total_batch_size / ref_batch)


def scaled_weight_decay(total_batch_size: int, target_tokens: float, ref_tokens: float, *,
                        ref_batch: int = REF_BATCH, ref_wd: float = REF_WEIGHT_DECAY) -> float:
    """Rule 4: ``λ_ref · √(B / B_ref) · (D_ref / D)``; :func:`plan` passes the model's
    compute-optimal horizon ``D_N = 12 × scaling params`` as ``target_tokens``."""
    return ref_wd * math.sqrt(total_batch_size / ref_batch) * (ref_tokens / target_tokens)


@dataclass
class DepthPlan:
    """Everything the depth rules decided for one run; ``describe()`` prints it."""

    depth: int
    num_params: int
    scaling_params: int
    flops_per_token: float
    ref_tokens: float  # D_ref
    target_tokens: float  # D, the planned horizon
    horizon_from: str  # "tokens-per-param" | "target-flops"
    total_batch_size: int
    batch_from: str  # "depth rule" | "--total-batch-size"
    lr_scale: float
    lrs: dict[str, float] = field(default_factory=dict)
    lr_from: dict[str, str] = field(default_factory=dict)
    weight_decay: float = 0.0
    weight_decay_from: str = "depth rule"
    num_steps: int = 0
    steps_from: str = ""

    @property
    def total_tokens(self) -> int:
        return self.num_steps * self.total_batch_size

    @property
    def total_flops(self) -> float:
        return self.total_tokens * self.flops_per_token

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(total_tokens=self.total_tokens, total_flops=self.total_flops)
        return out

    def describe(self) -> str:
        """Multi-line summary printed at the start of a run."""
        lines = [
            f"depth rules (reference: nanochat d{REF_DEPTH} at {REF_BATCH:,} tokens/step):",
            f"  params {self.num_params:,} (scaling params {self.scaling_params:,}), "
            f"{self.flops_per_token:.3e} FLOPs/token",
            f"  horizon D = {self.target_tokens:,.0f} tokens ({self.horizon_from}); "
            f"D_ref (d{REF_DEPTH}) = {self.ref_tokens:,.0f}",
            f"  total batch {self.total_batch_size:,} tokens ({self.batch_from}), "
            f"LR scale {self.lr_scale:.4f}",
            "  LRs " + ", ".join(f"{k.removesuffix('_lr')} {v:.4g} ({self.lr_from[k]})"
                                 for k, v in self.lrs.items()),
            f"  weight decay {self.weight_decay:.4f} ({self.weight_decay_from})",
            f"  {self.num_steps:,} steps ({self.steps_from}) = {self.total_tokens:,} tokens "
            f"= {self.total_flops:.3e} FLOPs, {self.total_tokens / self.scaling_params:.2f} "
            "tokens per scaling param",
        ]
        return "\n".join(lines)


def plan(depth: int, stats: Callable[[int], ModelStats], *,
         tokens_per_param: float | None = None, target_flops: float | None = None,
         max_steps: int | None = None, total_batch_size: int | None = None,
         lrs: dict[str, float | None] | None = None,
         weight_decay: float | None = None) -> DepthPlan:
    """Apply the depth rules. ``stats(depth)`` gives the model's counts at any depth (with the
    run's vocab, sequence length and shape), used for the run's depth and the d12 reference.

    ``None`` means "follow the rule"; explicit values override it.
    """
    if depth < 1:
        raise ValueError(f"--depth must be >= 1, got {depth}")
    ratio = DEFAULT_TOKENS_PER_PARAM if tokens_per_param is None else tokens_per_param
    if ratio <= 0:
        raise ValueError(f"--tokens-per-param must be > 0, got {ratio}")
    if target_flops is not None and target_flops <= 0:
        raise ValueError(f"--target-flops must be > 0, got {target_flops}")
    me, ref = stats(depth), stats(REF_DEPTH)
    ref_tokens = REF_TOKENS_PER_PARAM * ref.scaling_params
    if target_flops is not None:
        target_tokens, horizon_from = target_flops / me.flops_per_token, "target-flops"
    else:
        target_tokens, horizon_from = ratio * me.scaling_params, "tokens-per-param"

    if total_batch_size is None:
        batch, batch_from = optimal_batch_size(target_tokens, ref_tokens), "depth rule"
    else:
        batch, batch_from = int(total_batch_size), "--total-batch-size"
    scale = lr_scale(batch)
    chosen, sources = {}, {}
    for name, ref_lr in REF_LRS.items():
        given = (lrs or {}).get(name)
        chosen[name] = ref_lr * scale if given is None else float(given)
        sources[name] = "depth rule" if given is None else "--" + name.replace("_", "-")
    if weight_decay is None:
        optimal_tokens = REF_TOKENS_PER_PARAM * me.scaling_params  # D_N, not the trained D
        wd, wd_from = scaled_weight_decay(batch, optimal_tokens, ref_tokens), "depth rule"
    else:
        wd, wd_from = float(weight_decay), "--weight-decay"

    if max_steps is not None:
        steps, steps_from = int(max_steps), "--max-steps"
    else:
        # nanochat's conventions: floor for a tokens:params horizon, round for a FLOP budget
        exact = target_tokens / batch
        steps = int(exact) if target_flops is None else round(exact)
        steps, steps_from = max(1, steps), horizon_from
    return DepthPlan(depth=depth, num_params=me.num_params, scaling_params=me.scaling_params,
                     flops_per_token=me.flops_per_token, ref_tokens=ref_tokens,
                     target_tokens=target_tokens, horizon_from=horizon_from,
                     total_batch_size=batch, batch_from=batch_from, lr_scale=scale,
                     lrs=chosen, lr_from=sources, weight_decay=wd, weight_decay_from=wd_from,
                     num_steps=steps, steps_from=steps_from)
