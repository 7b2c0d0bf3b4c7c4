"""Turn a training run into the reference curve that lesson 09 draws beside the learner's run.

    python scripts/reference_curve.py runs/ref-d12 --log pretrain.log \
        --hardware "1x H100 80GB" --command "..." --out docs/results/pretrain_d12_reference.json

Reads the run's ``metrics.jsonl`` (one record per logged step) and its latest ``meta.json``
(model, plan, data), and, with ``--log``, the sample lines the trainer printed. Writes one
JSON file: what was trained, on what, for how long, and the records ``{step, tokens,
val_bpb, loss}`` (step 0 at 0 tokens), so runs with other batch sizes compare by tokens.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def curve_records(metrics: list[dict]) -> list[dict]:
    """The logged steps as ``{step, tokens, loss?, val_bpb?}``, step 0 at 0 tokens."""
    out = []
    for r in metrics:
        if "loss" not in r and "val_bpb" not in r:
            continue
        rec = {"step": r["step"], "tokens": r.get("tokens", 0 if r["step"] == 0 else None)}
        for key in ("loss", "val_bpb", "tok_per_sec", "mfu"):
            if r.get(key) is not None:
                rec[key] = round(r[key], 5) if isinstance(r[key], float) else r[key]
        if rec["tokens"] is not None:
            out.append(rec)
    return out


def samples_from_log(text: str) -> list[dict]:
    """The trainer's ``  sample: ...`` lines, each with its step: the trainer prints a
    step's samples before that step's ``step N/M ...`` line (evaluation, then the log)."""
    found, pending = [], []
    for line in text.splitlines():
        m = re.match(r"step (\d+)/", line.strip())
        if m:
            found += [{"step": int(m.group(1)), "text": t} for t in pending]
            pending = []
        elif line.strip().startswith("sample:"):
            pending.append(line.strip()[len("sample:"):].strip())
    return found


def plan_from_log(text: str) -> list[str]:
    """The depth rules' printout (the lines from ``depth rules`` to the micro-step line)."""
    lines, on = [], False
    for line in text.splitlines():
        on = on or line.startswith("depth rules")
        if on:
            lines.append(line.rstrip())
            if "micro-step" in line:
                break
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run folder (metrics.jsonl, step_*/meta.json)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path, help="the trainer's console output (for samples)")
    p.add_argument("--label", default=None)
    p.add_argument("--hardware", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--date", default=None)
    p.add_argument("--depth", type=int, help="when the run folder has no checkpoint left")
    args = p.parse_args(argv)

    from nanogpt_course import checkpoint as ck
    from nanogpt_course.train.metrics import read_metrics

    metrics = read_metrics(args.run)
    latest = ck.latest(args.run)  # None when only metrics.jsonl came back from the GPU
    meta = ck.read_meta(latest) if latest else {}
    records = curve_records(metrics)
    times = [r["time"] for r in metrics if "time" in r]
    log = args.log.read_text() if args.log else ""
    depth = meta.get("model_config", {}).get("n_layer", args.depth)
    last_val = [r for r in records if "val_bpb" in r][-1]
    label = args.label or (f"d{depth} on {args.hardware}, {last_val['tokens'] / 1e6:.0f}M "
                           f"tokens ({(times[-1] - times[0]) / 60:.1f} min)")
    report = {"label": label, "hardware": args.hardware, "command": args.command,
              "date": args.date, "data": meta.get("data"), "depth": depth,
              "model_config": meta.get("model_config"), "plan": meta.get("plan"),
              "plan_printout": plan_from_log(log),
              "duration_s": round(times[-1] - times[0], 1) if times else None,
              "final_val_bpb": last_val["val_bpb"], "tokens": last_val["tokens"],
              "records": records,
              "samples": samples_from_log(log)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}: {len(records)} records, final val bpb {last_val['val_bpb']:.4f} "
          f"at {last_val['tokens']:,} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
