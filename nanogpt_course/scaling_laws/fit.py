"""Chinchilla's "approach 2": isoFLOP parabolas, compute-optimal power laws, the frontier.

For each FLOP budget ``C`` the sweep trained several model sizes ``N`` (scaling parameters:
matrices + lm_head) on ``D ≈ C / flops_per_token`` tokens. Along one budget the loss is
U-shaped in ``log N``: too small a model underfits, too big a one sees too few tokens.

1. :func:`fit_parabola`: ``loss ≈ a·x² + b·x + c`` with ``x = log10 N``; the minimum
   ``x* = -b / 2a`` gives ``N_opt(C)``, and the budget's tokens at ``x*`` give ``D_opt(C)``.
2. :func:`fit_power_law`: a straight line in log-log, ``N_opt = k·C^a`` (and ``D_opt ∝ C^b``);
   with ``C ≈ 6ND``, ``a + b ≈ 1``. Chinchilla found ``a ≈ b ≈ 0.5`` and ~20 tokens per
   parameter; nanochat measures ~8-12 for its models.
3. :func:`bootstrap`: each budget's losses perturbed by its own residuals drawn with
   replacement, everything refitted; the spread of the exponents is their uncertainty.
4. The frontier: the best loss per budget against ``C`` (a power law ``L = A·C^-α``).

Everything here is plain numpy least squares, small enough to read in one sitting.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

CHINCHILLA_TOKENS_PER_PARAM = 20.0
NANOCHAT_TOKENS_PER_PARAM = (8.0, 12.0)


# a bootstrap resample whose isoFLOP minimum lies further than this (in log10 N) outside the
# model sizes that were run is an extrapolation: it is drawn again (see bootstrap)
EXTRAPOLATION_DECADES = 1.0


@dataclass
class Parabola:
    """``loss = a·x² + b·x + c`` in ``x = log10(N)``."""

    a: float
    b: float
    c: float

    @property
    def x_min(self) -> float:
        return -self.b / (2 * self.a)

    @property
    def y_min(self) -> float:
        return self.c - self.b ** 2 / (4 * self.a)

    def __call__(self, x):
        x = np.asarray(x, dtype=float)
        return self.a * x ** 2 + self.b * x + self.c


def fit_parabola(x, y) -> Parabola:
    """Least-squares parabola through ``(x, y)``; needs 3 distinct ``x`` and an upward
    curvature (``a > 0``), else ValueError (no minimum to read)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(np.unique(x)) < 3:
        raise ValueError(f"a parabola needs 3 distinct model sizes, got {len(np.unique(x))}")
    a, b, c = np.polyfit(x, y, 2)
    if not a > 0:
        raise ValueError("the losses do not curve upward (a <= 0): no interior minimum; "
                         "widen the range of depths around the best one")
    return Parabola(float(a), float(b), float(c))


@dataclass
class PowerLaw:
    """``y = coefficient · x^exponent`` (fitted as a line in log10-log10)."""

    exponent: float
    coefficient: float

    def __call__(self, x):
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


def fit_power_law(x, y) -> PowerLaw:
    """Least squares of ``log10 y = exponent·log10 x + log10 coefficient`` (≥ 2 points)."""
    return fit_power_law_log(np.log10(np.asarray(x, dtype=float)),
                             np.log10(np.asarray(y, dtype=float)))


def fit_power_law_log(lx, ly) -> PowerLaw:
    """:func:`fit_power_law` from ``log10 x`` and ``log10 y`` (no ``10**`` of huge logs)."""
    lx, ly = np.asarray(lx, dtype=float), np.asarray(ly, dtype=float)
    if len(np.unique(lx)) < 2:
        raise ValueError("a power law needs at least 2 distinct x values")
    slope, intercept = np.polyfit(lx, ly, 1)
    return PowerLaw(float(slope), float(10 ** intercept))


@dataclass
class BudgetFit:
    """One isoFLOP curve and its minimum."""

    budget: float
    log_n: np.ndarray  # log10 N of the runs
    loss: np.ndarray
    log_d: np.ndarray  # log10 tokens of the runs
    depths: list
    parabola: Parabola
    n_opt: float
    d_opt: float
    loss_opt: float
    interior: bool  # the minimum lies between the smallest and the largest model

    @property
    def tokens_per_param(self) -> float:
        return self.d_opt / self.n_opt


@dataclass
class Interval:
    value: float
    low: float  # 2.5th percentile of the bootstrap
    high: float  # 97.5th
    std: float
    samples: int

    def __str__(self) -> str:
        if not self.samples:
            return (f"{self.value:.3f} (no bootstrap interval: a budget has only 3 model sizes, "
                    "which its parabola fits exactly; sweep 4 or more depths)")
        return f"{self.value:.3f} (95% bootstrap interval {self.low:.3f} to {self.high:.3f})"


@dataclass
class ScalingFit:
    budgets: list[BudgetFit]
    n_law: PowerLaw  # N_opt = k C^a
    d_law: PowerLaw  # D_opt = k C^b
    loss_law: PowerLaw  # L_opt = A C^-alpha (exponent is -alpha)
    a: Interval
    b: Interval
    rows: list[dict] = field(default_factory=list)  # the runs used
    skipped: list[str] = field(default_factory=list)  # budgets that could not be fitted

    @property
    def tokens_per_param(self) -> list[float]:
        return [bf.tokens_per_param for bf in self.budgets]


def _interp_log_d(log_n: np.ndarray, log_d: np.ndarray, x: float) -> float:
    """log10 D at ``x = log10 N`` along one budget (a line through the runs in log-log: at
    fixed C, D = C / flops_per_token(N) is nearly a power of N)."""
    deg = 1 if len(np.unique(log_n)) < 3 else 2
    return float(np.polyval(np.polyfit(log_n, log_d, deg), x))


def fit_budget(budget: float, runs: list[dict], *, loss_key: str = "val_bpb") -> BudgetFit:
    """Fit one isoFLOP curve from its runs (dicts with ``params_scaling``, ``tokens`` and
    ``loss_key``)."""
    runs = sorted(runs, key=lambda r: r["params_scaling"])
    log_n = np.log10([r["params_scaling"] for r in runs])
    log_d = np.log10([r["tokens"] for r in runs])
    loss = np.array([r[loss_key] for r in runs], dtype=float)
    parabola = fit_parabola(log_n, loss)
    x = parabola.x_min
    return BudgetFit(budget=budget, log_n=log_n, loss=loss, log_d=log_d,
                     depths=[r.get("depth") for r in runs], parabola=parabola,
                     n_opt=10 ** x, d_opt=10 ** _interp_log_d(log_n, log_d, x),
                     loss_opt=parabola.y_min, interior=bool(log_n.min() < x < log_n.max()))


def _group(rows: list[dict]) -> dict[float, list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        groups[float(r["budget_flops"])].append(r)
    return dict(sorted(groups.items()))


def _fit_budgets(groups: dict[float, list[dict]], loss_key: str) -> tuple[list, list]:
    fits, skipped = [], []
    for budget, runs in groups.items():
        try:
            fits.append(fit_budget(budget, runs, loss_key=loss_key))
        except (ValueError, np.linalg.LinAlgError) as err:
            skipped.append(f"{budget:.3g}: {err}")
    return fits, skipped


def bootstrap(groups: dict[float, list[dict]], *, n_boot: int = 1000, seed: int = 0,
              loss_key: str = "val_bpb") -> tuple[np.ndarray, np.ndarray]:
    """Exponents ``a`` (of N_opt) and ``b`` (of D_opt) refitted on ``n_boot`` resamples.

    A *residual* bootstrap: the model sizes of a sweep are chosen, not sampled, so each
    resample keeps every run and replaces its loss by the budget's fitted parabola plus a
    residual of that budget drawn with replacement (scaled by ``sqrt(n / (n - 3))`` for the
    three fitted coefficients). It measures how much the exponents move with the run-to-run
    noise of the losses. A resample whose parabola has no minimum, or a minimum more than
    ``EXTRAPOLATION_DECADES`` outside the budget's model sizes (a nearly flat parabola: an
    extrapolation, not a measurement), is drawn again (at most 20·n_boot draws). Returns
    two arrays of exponents; both empty when a budget has only 3 sizes (its parabola
    passes through them: there is no residual to draw)."""
    rng = np.random.default_rng(seed)
    if min(len(runs) for runs in groups.values()) <= 3:  # an exact fit: no residuals to draw
        return np.array([]), np.array([])
    base = {}
    for budget, runs in groups.items():
        bf = fit_budget(budget, runs, loss_key=loss_key)
        residuals = bf.loss - bf.parabola(bf.log_n)
        n = len(residuals)
        scale = math.sqrt(n / (n - 3)) if n > 3 else 1.0
        base[budget] = (bf, residuals * scale)
    a_s, b_s = [], []
    for _ in range(20 * n_boot):
        if len(a_s) >= n_boot:
            break
        fits = []
        for budget, (bf, residuals) in base.items():
            noisy = bf.parabola(bf.log_n) + rng.choice(residuals, size=len(residuals))
            try:
                p = fit_parabola(bf.log_n, noisy)
            except ValueError:
                break
            if not (bf.log_n.min() - EXTRAPOLATION_DECADES < p.x_min
                    < bf.log_n.max() + EXTRAPOLATION_DECADES):
                break
            fits.append((budget, p.x_min, _interp_log_d(bf.log_n, bf.log_d, p.x_min)))
        else:
            log_c = np.log10([f[0] for f in fits])
            a_s.append(fit_power_law_log(log_c, [f[1] for f in fits]).exponent)
            b_s.append(fit_power_law_log(log_c, [f[2] for f in fits]).exponent)
    return np.array(a_s), np.array(b_s)


def _interval(value: float, samples: np.ndarray) -> Interval:
    if len(samples) == 0:
        return Interval(value, math.nan, math.nan, math.nan, 0)
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return Interval(value, float(lo), float(hi), float(samples.std()), len(samples))


def fit_sweep(rows: list[dict], *, n_boot: int = 1000, seed: int = 0,
              loss_key: str = "val_bpb") -> ScalingFit:
    """Everything from a sweep's finished runs (``numeric(read_results(csv))``)."""
    rows = [r for r in rows if isinstance(r.get(loss_key), (int, float))
            and math.isfinite(r[loss_key])]
    groups = _group(rows)
    fits, skipped = _fit_budgets(groups, loss_key)
    if len(fits) < 2:
        raise ValueError(f"need at least 2 budgets with an isoFLOP minimum, got {len(fits)}"
                         + (f" (skipped: {'; '.join(skipped)})" if skipped else ""))
    c = [f.budget for f in fits]
    n_law = fit_power_law(c, [f.n_opt for f in fits])
    d_law = fit_power_law(c, [f.d_opt for f in fits])
    loss_law = fit_power_law(c, [f.loss_opt for f in fits])
    usable = {f.budget: groups[f.budget] for f in fits}
    a_s, b_s = bootstrap(usable, n_boot=n_boot, seed=seed, loss_key=loss_key)
    return ScalingFit(budgets=fits, n_law=n_law, d_law=d_law, loss_law=loss_law,
                      a=_interval(n_law.exponent, a_s), b=_interval(d_law.exponent, b_s),
                      rows=rows, skipped=skipped)


def summary(fit: ScalingFit, *, source: str = "") -> str:
    """A short plain-text report of the fit."""
    lines = [f"isoFLOP fit{' of ' + source if source else ''}: {len(fit.rows)} runs, "
             f"{len(fit.budgets)} budgets"]
    for bf in fit.budgets:
        where = "interior" if bf.interior else "AT THE EDGE of the depths tried (extrapolated)"
        lines.append(f"  C = {bf.budget:.3g} FLOPs: N_opt = {bf.n_opt:,.0f} params, D_opt = "
                     f"{bf.d_opt:,.0f} tokens, {bf.tokens_per_param:.1f} tokens/param, "
                     f"loss {bf.loss_opt:.4f} ({where})")
    lines += [f"  N_opt ∝ C^a, a = {fit.a}",
              f"  D_opt ∝ C^b, b = {fit.b}",
              f"  a + b = {fit.a.value + fit.b.value:.3f} (C ≈ 6ND makes it 1)",
              f"  frontier: loss ≈ {fit.loss_law.coefficient:.4g} · "
              f"C^{fit.loss_law.exponent:.4f}",
              "  tokens per parameter at the optimum: "
              + ", ".join(f"{r:.1f}" for r in fit.tokens_per_param)
              + f" (Chinchilla ~{CHINCHILLA_TOKENS_PER_PARAM:.0f}, nanochat "
              f"~{NANOCHAT_TOKENS_PER_PARAM[0]:.0f}-{NANOCHAT_TOKENS_PER_PARAM[1]:.0f}; N here "
              "= matrices + lm_head)"]
    for s in fit.skipped:
        lines.append(f"  skipped budget {s}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- synthetic data
def chinchilla_loss(n, d, *, e: float = 1.69, a: float = 406.4, b: float = 410.7,
                    alpha: float = 0.34, beta: float = 0.28):
    """Hoffmann et al.'s parametric loss ``E + A/N^α + B/D^β`` (their fitted constants by
    default). With ``C = 6ND`` its compute-optimal size grows as ``C^(β/(α+β))``."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    return e + a / n ** alpha + b / d ** beta


def synthetic_sweep(budgets=(1e18, 3e18, 1e19, 3e19), *, points: int = 7,
                    span_decades: float = 1.0, noise: float = 0.01, seed: int = 0,
                    **law) -> list[dict]:
    """Rows like a sweep's (``budget_flops``, ``params_scaling``, ``tokens``, ``flops``,
    ``val_bpb``, ``depth``) drawn from :func:`chinchilla_loss` with ``C = 6ND`` and Gaussian
    noise of ``noise`` on the loss: ``points`` model sizes per budget, spread over
    ``span_decades`` around the true optimum. For testing the fits against known answers."""
    alpha, beta = law.get("alpha", 0.34), law.get("beta", 0.28)
    a, b = law.get("a", 406.4), law.get("b", 410.7)
    rng = np.random.default_rng(seed)
    # the exact optimum of E + A/N^α + B/(C/6N)^β over N
    g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
    rows = []
    for c in budgets:
        n_opt = g * (c / 6) ** (beta / (alpha + beta))
        for i, x in enumerate(np.linspace(-span_decades / 2, span_decades / 2, points)):
            n = n_opt * 10 ** x
            d = c / (6 * n)
            loss = float(chinchilla_loss(n, d, **law) + rng.normal(0, noise))
            rows.append({"budget_flops": c, "params_scaling": n, "tokens": d, "flops": c,
                         "val_bpb": loss, "depth": i + 1, "status": "ok"})
    return rows


def true_exponents(alpha: float = 0.34, beta: float = 0.28) -> tuple[float, float]:
    """``(a, b)`` of ``N_opt ∝ C^a``, ``D_opt ∝ C^b`` for :func:`chinchilla_loss`."""
    return beta / (alpha + beta), alpha / (alpha + beta)
