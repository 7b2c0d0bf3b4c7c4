"""Worked solutions for lessons/10_evaluation."""

import re


def centered_accuracy(accuracy: float, baseline_percent: float) -> float:
    """Rescale so that random guessing scores 0 and a perfect score 1."""
    b = baseline_percent / 100.0  # the CSV's column is in percent
    return (accuracy - b) / (1.0 - b)


def answer_credit(losses: list[float], gold: int) -> float:
    """The lowest mean loss wins; a tie shares the credit instead of favouring choice 0."""
    best = min(losses)
    tied = [i for i, value in enumerate(losses) if value == best]
    return 1.0 / len(tied) if gold in tied else 0.0


def extract_gsm8k_answer(text: str) -> float | None:
    """The number after the last '####', or None."""
    if "####" not in text:
        return None
    match = re.search(r"-?\$?[\d,]*\.?\d+", text.rsplit("####", 1)[1])
    if match is None:
        return None
    return float(match.group(0).replace(",", "").replace("$", ""))
