"""Figures of a scaling-law fit, each written as PNG and SVG.

- ``<stem>_isoflop``: loss against parameters per budget, with the fitted parabolas and
  their minima (the isoFLOP curves);
- ``<stem>_optima``: N_opt and D_opt against compute with their power laws;
- ``<stem>_frontier``: every run's loss against the FLOPs it used, with the compute-optimal
  frontier.

matplotlib is imported here only (lazily), with the Agg backend when no display is set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fit import ScalingFit


def _plt():
    import matplotlib

    if not matplotlib.get_backend() or "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=120 if ext == "png" else None)
        paths.append(path)
    return paths


def isoflop_figure(fit: ScalingFit, ax=None):
    """Loss vs scaling parameters, one colour per budget; the parabola and its minimum."""
    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(fit.budgets)))
    for bf, color in zip(fit.budgets, colors):
        ax.plot(10 ** bf.log_n, bf.loss, "o", color=color, label=f"C = {bf.budget:.2g}")
        for x, y, d in zip(bf.log_n, bf.loss, bf.depths):
            if d is not None:
                ax.annotate(f"d{d}", (10 ** x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=color)
        xs = np.linspace(bf.log_n.min() - 0.1, bf.log_n.max() + 0.1, 100)
        ax.plot(10 ** xs, bf.parabola(xs), "-", color=color, lw=1)
        ax.plot(bf.n_opt, bf.loss_opt, "*", color=color, ms=12, mec="k")
    ax.set_xscale("log")
    ax.set_xlabel("scaling parameters N (matrices + lm_head)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("isoFLOP curves (stars: fitted minima)")
    ax.legend(fontsize=8)
    return fig or ax.figure


def optima_figure(fit: ScalingFit):
    """N_opt(C) and D_opt(C) with their fitted power laws (two panels)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    c = np.array([bf.budget for bf in fit.budgets])
    grid = np.logspace(np.log10(c.min()) - 0.2, np.log10(c.max()) + 0.2, 50)
    for ax, values, law, interval, label in (
            (axes[0], [bf.n_opt for bf in fit.budgets], fit.n_law, fit.a, "N_opt (params)"),
            (axes[1], [bf.d_opt for bf in fit.budgets], fit.d_law, fit.b, "D_opt (tokens)")):
        ax.loglog(c, values, "o", ms=8)
        spread = f" [{interval.low:.2f}, {interval.high:.2f}]" if interval.samples else ""
        ax.loglog(grid, law(grid), "-", label=f"∝ C^{law.exponent:.3f}{spread}")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[0].set_title("compute-optimal model size")
    axes[1].set_title("compute-optimal tokens")
    fig.tight_layout()
    return fig


def frontier_figure(fit: ScalingFit):
    """Every run's loss against its FLOPs; the fitted optima and the power-law frontier."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    depths = sorted({r["depth"] for r in fit.rows})
    colors = plt.cm.plasma(np.linspace(0.05, 0.85, len(depths)))
    for d, color in zip(depths, colors):
        runs = sorted((r for r in fit.rows if r["depth"] == d), key=lambda r: r["flops"])
        ax.plot([r["flops"] for r in runs], [r["val_bpb"] for r in runs], "o-", color=color,
                lw=0.8, label=f"d{d}")
    c = np.array([bf.budget for bf in fit.budgets])
    ax.plot(c, [bf.loss_opt for bf in fit.budgets], "k*", ms=12, label="isoFLOP minima")
    grid = np.logspace(np.log10(c.min()) - 0.2, np.log10(c.max()) + 0.2, 50)
    ax.plot(grid, fit.loss_law(grid), "k--", lw=1,
            label=f"frontier ∝ C^{fit.loss_law.exponent:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("loss against compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_all(fit: ScalingFit, out, stem: str) -> list[Path]:
    """Write the three figures as ``<out>/<stem>_{isoflop,optima,frontier}.{png,svg}``."""
    plt = _plt()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in (("isoflop", isoflop_figure), ("optima", optima_figure),
                       ("frontier", frontier_figure)):
        fig = make(fit)
        fig.tight_layout()
        written += _save(fig, out, f"{stem}_{name}")
        plt.close(fig)
    return written
