"""Plot Chinchilla-style isoFLOP curves from a sweep's CSV (the seed's script name).

    python scripts/plot_isoflop_curve.py data/scaling/cpu_offline.csv [--out docs/scaling]

The same as ``python -m nanogpt_course.scaling_laws fit --results CSV --out DIR``: the
isoFLOP parabolas and their minima, N_opt / D_opt power laws with bootstrap intervals, the
loss-vs-compute frontier (PNG + SVG) and a text summary. Make a CSV with
``python -m nanogpt_course.scaling_laws sweep`` (or ``make run-scaling-law``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanogpt_course.scaling_laws.__main__ import main as scaling_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a sweep's CSV")
    p.add_argument("--out", help="folder for the figures (default: beside the CSV)")
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    out = args.out or str(Path(args.results).parent)
    return scaling_main(["fit", "--results", args.results, "--out", out,
                         "--bootstrap", str(args.bootstrap)])


if __name__ == "__main__":
    sys.exit(main())
