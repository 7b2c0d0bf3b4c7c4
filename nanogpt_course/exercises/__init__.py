"""Exercise checkers: run a learner's function against reference cases and report.

Each lesson ``NN_topic`` registers its exercises in ``nanogpt_course/exercises/lessonNN.py``
with :func:`exercise`. In the lesson, a stub is followed by a checker cell::

    def count_pairs(ids):
        raise NotImplementedError   # your code here

    count_pairs = exercises.check("01_tokenizer.count_pairs", count_pairs)

:func:`check` runs every case and returns the function to use from then on: the learner's
when it passes (after printing the table of case / expected / got / max diff once), the
library's reference when the stub is still unattempted (so the rest of the notebook runs).
A wrong answer raises :class:`ExerciseFailed`, so mistakes are never silent; its message
is written to teach:

- the table, then for each wrong case what differs: small tensors and lists by value, large
  ones as their first differing entries (index, expected, got);
- an exception raised by the learner's function is caught per case and reported with the
  case name and the line of the learner's code it came from (the other cases still run);
- a hint in tiers: the idea first; ``exercises.hint(key)`` reveals the next tier, the last
  one closest to code. Exercises register tiers with ``hints=(...)`` (a single ``hint=``
  string still works).
"""

from __future__ import annotations

import copy
import importlib
import math
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "Exercise", "ExerciseFailed", "exercise", "check", "run", "names", "get",
           "hint"]


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
    hint: str = ""  # one hint (older exercises); prefer ``hints``
    hints: Sequence[str] = ()  # tiers: the idea first, the last closest to code

    @property
    def tiers(self) -> list[str]:
        """Every hint tier in order (``hints``, else the single ``hint``)."""
        return [h for h in (list(self.hints) or [self.hint]) if h]


class ExerciseFailed(AssertionError):
    """The learner's function returned something other than the reference on some case.

    When the learner's function *raised* (and nothing else was wrong), the exception is also
    an instance of that error's type (a ``TypeError`` stays catchable as ``TypeError``) and
    is chained to it, so the original traceback is one scroll away."""


_REGISTRY: dict[str, Exercise] = {}
_HINTS_SHOWN: dict[str, int] = {}  # key -> how many tiers the learner has seen


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
        if (got.dtype == torch.bool) != (expected.dtype == torch.bool):
            return math.inf  # a mask must be a mask: masked_fill and ~ need bool
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


def _fmt_number(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else repr(x)


SMALL = 16  # tensors and sequences up to this many entries are shown by value


def _value(value: Any, width: int | None = None) -> str:
    """A readable rendering: small tensors by value (rounded), large ones by shape."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        if value.numel() <= SMALL:
            data = value.detach().cpu()
            if data.is_floating_point():
                data = data.double().round(decimals=4)
            text = f"tensor({data.tolist()}, {dtype})"
        else:
            text = f"tensor{tuple(value.shape)} {dtype}"
    else:
        text = repr(value)
    text = " ".join(text.split())
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def _short(value: Any, width: int = 38) -> str:
    return _value(value, width)


def _modified(now: Any, before: Any) -> bool:
    """Whether the learner's copy of the inputs no longer equals the original (exactly;
    NaN and inf entries equal themselves). Tensors, arrays, containers and plain values
    are compared; other objects (a tokenizer) are not: a deep copy of one need not compare
    equal to it."""
    import numpy as np
    import torch

    if isinstance(now, torch.Tensor) and isinstance(before, torch.Tensor):
        if now.shape != before.shape or now.dtype != before.dtype:
            return True
        if now.is_floating_point() or now.is_complex():
            same = torch.equal(now.isnan(), before.isnan()) and torch.equal(
                torch.nan_to_num(now), torch.nan_to_num(before))
            return not same
        return not torch.equal(now, before)
    if isinstance(now, dict) and isinstance(before, dict):
        return now.keys() != before.keys() or any(_modified(now[k], before[k]) for k in now)
    if isinstance(now, (list, tuple)) and isinstance(before, (list, tuple)):
        return len(now) != len(before) or any(_modified(a, b) for a, b in zip(now, before))
    if isinstance(now, np.ndarray) and isinstance(before, np.ndarray):
        return now.shape != before.shape or not np.array_equal(
            now, before, equal_nan=now.dtype.kind in "fc")
    if isinstance(now, (int, float, complex, str, bytes, type(None))):
        return now != before and not (now != now and before != before)  # NaN == NaN
    return False


def _first_differences(got: Any, expected: Any, tol: float, limit: int = 4) -> str:
    """Where two outputs differ, in words: the first differing entries for tensors and
    sequences, missing/extra keys for dicts, else both values."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor):
        if got.shape != expected.shape:
            return (f"shape {tuple(got.shape)} but expected {tuple(expected.shape)}"
                    + ("" if got.dtype == expected.dtype else
                       f" (dtype {str(got.dtype)[6:]}, expected {str(expected.dtype)[6:]})"))
        if (got.dtype == torch.bool) != (expected.dtype == torch.bool):
            return f"dtype {str(got.dtype)[6:]} but expected {str(expected.dtype)[6:]}"
        if expected.numel() <= SMALL:
            return f"expected {_value(expected)}\n      got      {_value(got)}"
        g, e = got.detach().cpu().double(), expected.detach().cpu().double()
        bad = ((g - e).abs() > tol) | (g.isnan() != e.isnan())
        where = bad.nonzero().tolist()[:limit]
        parts = [f"[{', '.join(map(str, i))}] expected {e[tuple(i)].item():.6g} got "
                 f"{g[tuple(i)].item():.6g}" for i in where]
        n = int(bad.sum())
        return (f"{n:,} of {bad.numel():,} entries differ; first: " + "; ".join(parts)
                if parts else f"dtype {got.dtype} but expected {expected.dtype}")
    if isinstance(got, dict) and isinstance(expected, dict):
        missing, extra = sorted(map(repr, expected.keys() - got.keys())), sorted(
            map(repr, got.keys() - expected.keys()))
        if missing or extra:
            return (f"missing keys {', '.join(missing[:limit]) or '-'}; "
                    f"unexpected keys {', '.join(extra[:limit]) or '-'}")
        wrong = [k for k in expected if max_diff(got[k], expected[k]) > tol][:limit]
        return "; ".join(f"[{k!r}] expected {_value(expected[k], 40)} got {_value(got[k], 40)}"
                         for k in wrong)
    if isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)):
        if len(got) <= SMALL and len(expected) <= SMALL:
            prefix = (f"length {len(got)}, expected {len(expected)}; "
                      if len(got) != len(expected) else "")
            return f"{prefix}expected {_value(expected)}\n      got      {_value(got)}"
        if len(got) != len(expected):
            first = next((i for i, (g, e) in enumerate(zip(got, expected))
                          if max_diff(g, e) > tol), min(len(got), len(expected)))
            return (f"length {len(got)} but expected {len(expected)}; first difference at "
                    f"[{first}]: expected {_value(expected[first:first + 3], 60)} got "
                    f"{_value(got[first:first + 3], 60)}")
        wrong = [i for i, (g, e) in enumerate(zip(got, expected)) if max_diff(g, e) > tol]
        return f"{len(wrong)} of {len(expected)} items differ; first: " + "; ".join(
            f"[{i}] expected {_value(expected[i], 40)} got {_value(got[i], 40)}"
            for i in wrong[:limit])
    return f"expected {_value(expected, 200)}\n      got      {_value(got, 200)}"


def _where(err: BaseException) -> str:
    """The innermost frame of the learner's code (not this module's) that raised."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename != __file__]
    if not frames:
        return ""
    f = frames[-1]
    line = f" ({f.line.strip()})" if f.line else ""
    return f" at line {f.lineno} of {f.name}(){line}"


@dataclass
class Report:
    """What :func:`run` found: one row per case ``(name, expected, got, max diff, ok)``, the
    per-case explanations of wrong cases, and the exceptions the learner's code raised."""

    key: str
    rows: list[tuple[str, str, str, float, bool]]
    error: BaseException | None = None  # NotImplementedError: the stub is unattempted
    details: list[tuple[str, str]] = field(default_factory=list)  # (case, what differs)
    raised: dict[str, BaseException] = field(default_factory=dict)  # case -> exception

    @property
    def passed(self) -> bool:
        return self.error is None and not self.raised and all(ok for *_, ok in self.rows)

    @property
    def n_wrong(self) -> int:
        return sum(not ok for *_, ok in self.rows)

    def table(self) -> str:
        head = ("case", "expected", "got", "max diff", "")
        rows = [head] + [
            (name, exp, got, "-" if math.isinf(d) else f"{d:.2e}",
             "ok" if ok else ("RAISED" if name in self.raised else "WRONG"))
            for name, exp, got, d, ok in self.rows
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def explain(self) -> str:
        """The table, then what differs in each wrong case."""
        parts = [self.table()]
        if self.details:
            parts.append("what differs:")
            parts += [f"  {name}: {text}" for name, text in self.details]
        return "\n".join(parts)


def run(key: str, fn: Callable) -> Report:
    """Run ``fn`` on every case of exercise ``key``. An exception from ``fn`` is recorded
    for its case (the other cases still run); NotImplementedError (an unattempted stub) stops
    the run and is recorded in ``Report.error``. Errors in the reference itself propagate."""
    ex = get(key)
    rows, details, raised = [], [], {}
    for case in ex.cases():
        expected = ex.reference(*case.args, **case.kwargs)
        # the learner's function gets its own copy: one that edits its input in place must
        # not change what the next case (or the reference) sees, and is caught below
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        try:
            got = fn(*args, **kwargs)
        except NotImplementedError as err:
            return Report(key, rows, error=err)
        except Exception as err:  # the learner's bug: report it with the case, keep going
            raised[case.name] = err
            rows.append((case.name, _short(expected), f"raised {type(err).__name__}",
                         math.inf, False))
            details.append((case.name, f"raised {type(err).__name__}: {err}{_where(err)}"))
            continue
        try:
            diff = (ex.compare or max_diff)(got, expected)
        except Exception as err:  # e.g. an output of a type the comparison cannot read
            diff = math.inf
            details.append((case.name, f"cannot compare the output ({type(err).__name__}: "
                                       f"{err}); expected {_value(expected, 80)}"))
        if _modified(args, case.args) or _modified(kwargs, case.kwargs):
            diff = math.inf
            details.append((case.name, "your function modified its input in place; build "
                                       "and return a new value instead"))
        ok = diff <= ex.tol
        rows.append((case.name, _short(expected), _short(got), diff, ok))
        if not ok and not (details and details[-1][0] == case.name):
            details.append((case.name, _first_differences(got, expected, ex.tol)))
    return Report(key, rows, details=details, raised=raised)


def hint(key: str, level: int | None = None) -> str:
    """The next hint tier of an exercise (or tier ``level``, counted from 1), printed and
    returned. Tiers go from the idea to something close to code."""
    tiers = get(key).tiers
    if not tiers:
        text = f"[{key}] has no hints; compare your output with the 'expected' column."
    else:
        shown = _HINTS_SHOWN.get(key, 0)
        n = level if level is not None else min(shown + 1, len(tiers))
        n = max(1, min(n, len(tiers)))
        _HINTS_SHOWN[key] = max(shown, n)
        more = (f" (next: exercises.hint({key!r}))" if n < len(tiers) else " (last hint)")
        text = f"hint {n} of {len(tiers)}: {tiers[n - 1]}{more}"
    print(text)
    return text


def _failure(key: str, ex: Exercise, report: Report) -> ExerciseFailed:
    tiers = ex.tiers
    shown = max(_HINTS_SHOWN.get(key, 0), 1)
    _HINTS_SHOWN[key] = shown
    lines = [f"{key}: {report.n_wrong} of {len(report.rows)} cases differ from the reference "
             f"(tolerance {ex.tol:g}).", report.explain()]
    if tiers:
        more = (f" More: exercises.hint({key!r})" if shown < len(tiers) else "")
        tier = tiers[shown - 1].rstrip()
        stop = "" if tier.endswith((".", "!", "?")) else "."
        lines.append(f"Hint {shown} of {len(tiers)}: {tier}{stop}{more}")
    message = "\n".join(lines)
    only_raised = report.raised and all(name in report.raised for name, *_ , ok in report.rows
                                        if not ok)
    if only_raised:  # also catchable as the learner's own error type
        first = next(iter(report.raised.values()))
        try:
            kind = type(f"ExerciseFailed_{type(first).__name__}", (ExerciseFailed, type(first)), {})
            failed = kind(message)
        except TypeError:  # incompatible exception layouts: a plain ExerciseFailed
            failed = ExerciseFailed(message)
        failed.__cause__ = first
        return failed
    return ExerciseFailed(message)


def check(key: str, fn: Callable, *, verbose: bool = True) -> Callable:
    """Check a learner's ``fn`` and return the function the notebook should use next.

    - stub still raises NotImplementedError → says so, returns the library's reference;
    - every case matches → prints the table once, returns ``fn``;
    - some case differs or raises → raises :class:`ExerciseFailed` whose message holds the
      table, what differs per case and the first hint tier (printed once, by the error).
    """
    report = run(key, fn)
    ex = get(key)
    if isinstance(report.error, NotImplementedError):
        if verbose:
            print(f"[{key}] not attempted yet (NotImplementedError): using the library's "
                  f"version so the rest of the notebook runs. Fill in the stub and rerun.")
        return ex.reference
    if not report.passed:
        raise _failure(key, ex, report)
    if verbose:
        print(f"[{key}]\n{report.table()}")
        print(f"[{key}] all {len(report.rows)} cases pass.")
    return fn
