"""``python -m nanogpt_course.train``: see ``--help`` and docs/DEPTH.md.

Exit codes: 0 finished or stopped cleanly (SIGTERM saves first), 2 bad settings (nothing
was allocated), 3 the loss diverged (NaN/inf), 4 out of memory.
"""

from __future__ import annotations

import os
import sys

import torch

from ..checkpoint import CheckpointError
from .config import ConfigError, parse_args
from .loop import TrainingDiverged, TrainingOOM
from .modes import train
from .runtime import keep_freed_memory


def _fail(rank_zero_only: bool, message: str, code: int) -> int:
    if not rank_zero_only or int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    cfg = parse_args(argv)
    if (cfg.device or os.environ.get("NANOGPT_COURSE_DEVICE") or
            ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu"):
        keep_freed_memory()  # CPU training: no page-fault storm every step
    try:
        result = train(cfg)
    except (ConfigError, CheckpointError) as err:  # bad settings or a broken checkpoint
        return _fail(True, str(err), 2)
    except TrainingDiverged as err:
        return _fail(True, str(err), 3)
    except TrainingOOM as err:
        return _fail(False, str(err), 4)
    except FileNotFoundError as err:  # missing data / tokenizer: the message says what to run
        return _fail(True, str(err), 2)
    results = result if isinstance(result, list) else [result]
    if int(os.environ.get("RANK", "0")) == 0:
        for r in results:
            print(f"{r.status}: {r.out} (step {r.step}, checkpoint {r.checkpoint})", flush=True)
        if results[-1].status == "finished":
            print(f"chat with it: python -m nanogpt_course.chat --checkpoint {results[-1].out}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
