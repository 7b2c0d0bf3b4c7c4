"""Presets: one knob that sizes every lesson and run.

- ``smoke``: seconds; what CI runs (nbval cannot pass parameters, so it sets
  ``NANOGPT_COURSE_PRESET=smoke``).
- ``laptop``: minutes on a CPU; the default for a learner.
- ``full``: GPUs; the seed's full-scale numbers.

Presets change sizes only: every cell of every lesson runs in every preset.

In a lesson::

    PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")   # parameters cell
    steps = presets.choose(PRESET, smoke=5, laptop=300, full=5000)
"""

from __future__ import annotations

import os
from typing import TypeVar

PRESETS = ("smoke", "laptop", "full")
ENV_VAR = "NANOGPT_COURSE_PRESET"
DEFAULT = "laptop"

T = TypeVar("T")


def validate(preset: str) -> str:
    """Return ``preset`` if it is known, else raise a ValueError listing the choices."""
    if preset not in PRESETS:
        raise ValueError(
            f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)} "
            f"(set it with -p PRESET <name> in papermill or {ENV_VAR}=<name>)"
        )
    return preset


def default_preset() -> str:
    """The preset named by ``NANOGPT_COURSE_PRESET``, else ``laptop``."""
    return validate(os.environ.get(ENV_VAR, DEFAULT) or DEFAULT)


def choose(preset: str, *, smoke: T, laptop: T, full: T) -> T:
    """Pick the value for ``preset``: ``choose("smoke", smoke=5, laptop=300, full=5000) == 5``."""
    return {"smoke": smoke, "laptop": laptop, "full": full}[validate(preset)]
