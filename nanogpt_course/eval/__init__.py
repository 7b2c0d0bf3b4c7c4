"""Evaluation: validation bits per byte (``bpb``); CORE and ChatCORE arrive with the
evaluation issue (``core``, ``chatcore``, ``sandbox``, ``python -m nanogpt_course.eval``)."""

from .bpb import evaluate_bpb

__all__ = ["evaluate_bpb"]
