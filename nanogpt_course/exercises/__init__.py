"""Exercise checkers: run a learner's function against reference cases and report.

Each lesson ``NN_topic`` registers its exercises in ``nanogpt_course/exercises/lessonNN.py``
with :func:`exercise`. In the lesson, a stub is followed by a checker cell::

    def count_pairs(ids):
        raise NotImplementedError   # your code here

    count_pairs = exercises.check("01_tokenizer.count_pairs", count_pairs)

:func:`check` runs every case, prints a small table (case / expected / got / max diff), and
returns the function to use from then on: the learner's when it passes, the library's
reference when the stub is still unattempted (so the rest of the notebook runs). A wrong
answer raises :class:`ExerciseFailed` with the table, so mistakes are never silent.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "Exercise", "ExerciseFailed", "exercise", "check", "run", "names", "get"]


@dataclass
class Case:
    """One input for an exercise: ``fn(*args, **kwargs)`` should equal the reference's output."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass
class Exercise:
    """An exercise: its reference implementation, its cases and how to compare outputs."""

    key: str  # "NN_topic.function_name"
    reference: Callable
    cases: Callable[[], Sequence[Case]]  # built lazily: cases may need data or a model
    tol: float = 1e-5
    compare: Callable[[Any, Any], float] | None = None  # returns a "max diff"; 0 = equal
    hint: str = ""


class ExerciseFailed(AssertionError):
    """The learner's function returned something other than the reference on some case."""


_REGISTRY: dict[str, Exercise] = {}


def exercise(key: str, reference: Callable, cases: Callable[[], Sequence[Case]], **options) -> Exercise:
    """Register an exercise under ``"NN_topic.name"``; used by the ``lessonNN`` modules."""
    ex = Exercise(key=key, reference=reference, cases=cases, **options)
    _REGISTRY[key] = ex
    return ex


def _lesson_module(lesson: str) -> str:
    match = re.match(r"(\d\d)_", lesson)
    if not match:
        raise KeyError(f"exercise keys look like 'NN_topic.name', got lesson {lesson!r}")
    return f"{__name__}.lesson{match.group(1)}"


def names(lesson: str) -> list[str]:
    """The exercise keys registered for a lesson, e.g. ``names("00_setup")``."""
    importlib.import_module(_lesson_module(lesson))
    return sorted(k for k in _REGISTRY if k.startswith(lesson + "."))


def get(key: str) -> Exercise:
    """Look an exercise up by key (importing its lesson's checker module on first use)."""
    if key in _REGISTRY:
        return _REGISTRY[key]
    lesson = key.split(".", 1)[0]
    importlib.import_module(_lesson_module(lesson))
    if key not in _REGISTRY:
        raise KeyError(f"no exercise {key!r}; known for {lesson}: {names(lesson)}")
    return _REGISTRY[key]


def max_diff(got: Any, expected: Any) -> float:
    """Distance between two outputs: max abs difference for numbers and tensors (shape
    mismatch = inf), elementwise for sequences and dicts, 0/inf equality otherwise."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and (isinstance(got, torch.Tensor) or isinstance(expected, torch.Tensor)):
        if not (isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)):
            return math.inf
        if got.shape != expected.shape:
            return math.inf
        if got.numel() == 0:
            return 0.0
        if not (got.is_floating_point() or expected.is_floating_point()):
            return 0.0 if torch.equal(got, expected) else math.inf
        return float((got.double() - expected.double()).abs().max())
    if isinstance(got, bool) or isinstance(expected, bool):
        return 0.0 if got == expected else math.inf
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
        if math.isnan(got) and math.isnan(expected):
            return 0.0
        return abs(float(got) - float(expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        if got.keys() != expected.keys():
            return math.inf
        return max((max_diff(got[k], expected[k]) for k in got), default=0.0)
    if isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)):
        if len(got) != len(expected):
            return math.inf
        return max((max_diff(g, e) for g, e in zip(got, expected)), default=0.0)
    return 0.0 if got == expected else math.inf


def _short(value: Any, width: int = 38) -> str:
    shape = getattr(value, "shape", None)
    text = f"tensor{tuple(shape)}" if shape is not None and len(shape) > 1 else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class Report:
    """What :func:`run` found: one row per case, and whether all passed."""

    key: str
    rows: list[tuple[str, str, str, float, bool]]
    error: BaseException | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(ok for *_, ok in self.rows)

    def table(self) -> str:
        head = ("case", "expected", "got", "max diff", "")
        rows = [head] + [
            (name, exp, got, "-" if math.isinf(d) else f"{d:.2e}", "ok" if ok else "WRONG")
            for name, exp, got, d, ok in self.rows
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def run(key: str, fn: Callable) -> Report:
    """Run ``fn`` on every case of exercise ``key``; exceptions propagate except
    NotImplementedError, which is recorded in ``Report.error``."""
    ex = get(key)
    rows = []
    for case in ex.cases():
        expected = ex.reference(*case.args, **case.kwargs)
        try:
            got = fn(*case.args, **case.kwargs)
        except NotImplementedError as err:
            return Report(key, rows, error=err)
        diff = (ex.compare or max_diff)(got, expected)
        rows.append((case.name, _short(expected), _short(got), diff, diff <= ex.tol))
    return Report(key, rows)


def check(key: str, fn: Callable, *, verbose: bool = True) -> Callable:
    """Check a learner's ``fn`` and return the function the notebook should use next.

    - stub still raises NotImplementedError → says so, returns the library's reference;
    - every case matches → prints the table, returns ``fn``;
    - some case differs → raises :class:`ExerciseFailed` with the table.
    """
    report = run(key, fn)
    ex = get(key)
    if isinstance(report.error, NotImplementedError):
        if verbose:
            print(f"[{key}] not attempted yet (NotImplementedError): using the library's "
                  f"version so the rest of the notebook runs. Fill in the stub and rerun.")
        return ex.reference
    if verbose:
        print(f"[{key}]\n{report.table()}")
    if not report.passed:
        raise ExerciseFailed(
            f"{key}: {sum(not ok for *_, ok in report.rows)} of {len(report.rows)} cases differ "
            f"from the reference (tolerance {ex.tol:g}).\n{report.table()}"
            + (f"\nHint: {ex.hint}" if ex.hint else "")
        )
    if verbose:
        print(f"[{key}] all {len(report.rows)} cases pass.")
    return fn
