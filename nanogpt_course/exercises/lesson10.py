"""Checkers for lessons/10_evaluation: centered accuracy, picking an answer from per-choice
losses (ties shared), and GSM8K answer extraction."""

from __future__ import annotations

from ..eval import chatcore, icl
from ..eval.results import centered
from . import Case, exercise


def centered_accuracy(accuracy: float, baseline_percent: float) -> float:
    """Reference: ``(acc - b) / (1 - b)`` with ``b = baseline_percent / 100``."""
    return centered(accuracy, baseline_percent / 100.0)


def answer_credit(losses: list[float], gold: int) -> float:
    """Reference: 1 when the gold choice has the lowest mean loss; a k-way tie with it 1/k."""
    return icl.example_credit("multiple_choice", [(v, False) for v in losses], gold)


def extract_gsm8k_answer(text: str) -> float | None:
    """Reference: the number after the last ``####`` (commas and ``$`` allowed), else None."""
    return chatcore.extract_number(text)


def _centered_cases() -> list[Case]:
    return [Case("at the baseline", (0.25, 25)), Case("perfect", (1.0, 25)),
            Case("half way", (0.625, 25)), Case("below chance", (0.3, 50)),
            Case("boolq (62 %)", (0.7, 62)), Case("language modelling (0 %)", (0.12, 0)),
            Case("language id (9.1 %)", (0.2, 9.1))]


def _credit_cases() -> list[Case]:
    return [Case("gold lowest", ([2.1, 1.3, 2.9, 3.0], 1)),
            Case("gold not lowest", ([2.1, 1.3, 2.9, 3.0], 0)),
            Case("two-way tie with gold", ([1.5, 1.5, 2.0], 1)),
            Case("tie at the first choice, gold elsewhere", ([0.7, 0.7, 2.0], 2)),
            Case("all tied", ([1.0, 1.0, 1.0, 1.0], 3)),
            Case("two choices", ([0.2, 0.1], 1)),
            Case("nearly equal is not a tie", ([1.0, 1.0 + 1e-12, 2.0], 0))]


def _gsm8k_cases() -> list[Case]:
    return [Case("plain", ("She makes 9 * 2 = 18 dollars.\n#### 18",)),
            Case("commas", ("#### 1,250",)), Case("dollars and decimals", ("#### $3.50",)),
            Case("negative", ("#### -7",)), Case("no marker", ("The answer is 42.",)),
            Case("last marker wins", ("#### 1\nwait, no\n#### 2",)),
            Case("trailing period", ("#### 70000.",)),
            Case("words after the number", ("#### 18 dollars",)),
            Case("no number after the marker", ("#### unknown",))]


exercise("10_evaluation.centered_accuracy", centered_accuracy, _centered_cases, tol=1e-9,
         hint="b = baseline_percent / 100; return (accuracy - b) / (1 - b)")
exercise("10_evaluation.answer_credit", answer_credit, _credit_cases, tol=1e-9,
         hint="best = min(losses); tied = [i for i, v in enumerate(losses) if v == best]; "
              "1 / len(tied) if gold in tied else 0")
exercise("10_evaluation.extract_gsm8k_answer", extract_gsm8k_answer, _gsm8k_cases, tol=1e-9,
         hint="split on the last '####', find the first number after it with a regex, drop "
              "',' and '$', return float(...) (None when there is no marker or number)")
