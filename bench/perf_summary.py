"""docs/results/perf_summary.json: one file, one section per benchmark (``decode``, ``train``).

Shared by the benches that write a section (``bench_decode.py --merge``,
``bench_train.py --merge-summary``) so each rewrites only its own section::

    {"device", "torch", "date", "commit",           top level: the first writer's, kept
     "decode": {..., "device", "torch", "date", "commit"},
     "train": {"d12": {...}, "device", "torch", "date", "commit"}}
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ scripts run from a checkout, installed or not
    sys.path.insert(0, str(ROOT))
from nanogpt_course import paths  # noqa: E402

DEFAULT_PATH = ROOT / "docs" / "results" / "perf_summary.json"
META_KEYS = ("device", "torch", "date", "commit")


git_commit = paths.git_commit  # one rule for every record (see its docstring)


def run_meta(device: str) -> dict:
    """The four fields every section carries, for a run on ``device`` today."""
    import torch

    return {"device": device, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "commit": git_commit()}


def merge_section(path: Path, name: str, entries: dict, meta: dict, *,
                  replace: bool = True) -> dict:
    """Write section ``name`` (``entries`` plus ``meta``'s four fields) into the JSON file at
    ``path`` and return the whole file's contents.

    Other sections are never touched. ``replace=True`` swaps the whole section (decode:
    one report is one consistent table); ``replace=False`` updates it entry by entry, so
    entries of other runs (other depths) stay. Top-level meta is set only where absent.
    """
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    section = {} if replace else dict(data.get(name) or {})
    section.update(entries)
    section.update({key: meta[key] for key in META_KEYS})
    data[name] = section
    for key in META_KEYS:
        data.setdefault(key, meta[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data
