"""Scores and how they are reported: centered accuracy, the aggregate, CSV + JSON + chart.

Centered accuracy rescales a task's accuracy so that guessing scores 0 and a perfect answer
sheet scores 1: ``(acc - b) / (1 - b)`` with ``b`` the accuracy of random guessing (for CORE
the ``Random baseline`` column of ``eval_meta_data.csv`` divided by 100; for ChatCORE 0.25
for four-way multiple choice and 0 for generation). CORE and ChatCORE are the mean of the
centered accuracies of the tasks that ran; when some task files are missing the label says
so: ``CORE (20/22 tasks)``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


def centered(accuracy: float, baseline: float) -> float:
    """``(accuracy - baseline) / (1 - baseline)``; both are fractions in [0, 1)."""
    if not 0.0 <= baseline < 1.0:
        raise ValueError(f"baseline must be a fraction in [0, 1), got {baseline}")
    return (accuracy - baseline) / (1.0 - baseline)


@dataclass
class TaskResult:
    """One task's outcome. ``correct`` may be fractional (exact ties share the credit)."""

    task: str
    n: int
    correct: float
    baseline: float
    seconds: float
    kind: str = ""
    shots: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def centered(self) -> float:
        return centered(self.accuracy, self.baseline) if self.n else float("nan")

    def row(self) -> dict:
        return {"task": self.task, "kind": self.kind, "shots": self.shots, "n": self.n,
                "correct": self.correct, "accuracy": self.accuracy, "baseline": self.baseline,
                "centered": self.centered, "seconds": self.seconds}


@dataclass
class Report:
    """All tasks of one benchmark (``"CORE"`` or ``"ChatCORE"``) and what was left out."""

    benchmark: str
    results: list[TaskResult]
    expected: int  # how many tasks the full benchmark has
    missing: list[str] = field(default_factory=list)  # tasks whose data was absent
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        values = [r.centered for r in self.results if r.n]
        return sum(values) / len(values) if values else float("nan")

    @property
    def label(self) -> str:
        """``CORE`` when every task ran, else ``CORE (20/22 tasks)``."""
        ran = sum(1 for r in self.results if r.n)
        return self.benchmark if ran == self.expected else f"{self.benchmark} ({ran}/{self.expected} tasks)"

    @property
    def partial(self) -> bool:
        return sum(1 for r in self.results if r.n) != self.expected

    def summary(self) -> str:
        return f"{self.label}: {self.score:.4f}"

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, "label": self.label, "score": self.score,
                "partial": self.partial, "tasks_run": sum(1 for r in self.results if r.n),
                "tasks_expected": self.expected, "missing": self.missing, "notes": self.notes,
                "meta": self.meta, "tasks": {r.task: r.row() for r in self.results}}

    def write(self, out: str | Path, stem: str | None = None) -> dict[str, Path]:
        """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or self.benchmark.lower()
        files = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json",
                 "png": out / f"{stem}.png"}
        with open(files["csv"], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(TaskResult("", 0, 0, 0, 0).row()))
            writer.writeheader()
            for r in self.results:
                writer.writerow(r.row())
        files["json"].write_text(json.dumps(_finite(self.to_dict()), indent=2) + "\n",
                                 encoding="utf-8")
        try:
            plot(self, files["png"])
        except ImportError as err:  # a bare GPU box may lack matplotlib: the numbers still count
            print(f"note: no chart ({err}); the CSV and JSON are written", flush=True)
            del files["png"]
        return files


def _finite(obj):
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def plot(report: Report, path: str | Path | None = None):
    """Horizontal bar chart of the centered accuracy per task; returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [r for r in report.results if r.n]
    names = [r.task for r in rows]
    values = [r.centered for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.32 * max(len(rows), 3) + 1.2))
    colors = ["tab:blue" if v >= 0 else "tab:red" for v in values]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("centered accuracy (0 = random guessing, 1 = perfect)")
    ax.set_title(f"{report.label} = {report.score:.4f}")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def rows_as_dicts(results: list[TaskResult]) -> list[dict]:
    return [asdict(r) for r in results]
