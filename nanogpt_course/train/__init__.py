"""Training: the trainer, the depth rules, schedules, metrics and the command line.

- :func:`train` — run as configured (``python -m nanogpt_course.train`` calls it);
- :class:`TrainConfig`, :func:`parse_args` — the settings and their flags;
- :mod:`.scaling` — the depth rules (docs/DEPTH.md); :mod:`.schedule` — LR, momentum, decay;
- :mod:`.metrics` — progress lines, ``metrics.jsonl``, MFU; :mod:`.loop` — the trainer;
- :func:`tiny_checkpoint` — a small trained checkpoint, cached, for lessons and tests.
"""

from .config import ConfigError, TrainConfig, parse_args
from .loop import TrainingDiverged, TrainingOOM, TrainResult
from .metrics import read_metrics
from .modes import train
from .tiny import tiny_checkpoint

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingOOM",
           "parse_args", "read_metrics", "tiny_checkpoint", "train"]
