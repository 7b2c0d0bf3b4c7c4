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
    """The trainer's ``step N/M ...`` lines followed by ``  sample: ...`` lines."""
    found, step = [], None
    for line in text.splitlines():
        m = re.match(r"step (\d+)/", line.strip())
        if m:
            step = int(m.group(1))
        elif line.strip().startswith("sample:") and step is not None:
            found.append({"step": step, "text": line.strip()[len("sample:"):].strip()})
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run folder (metrics.jsonl, step_*/meta.json)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path, help="the trainer's console output (for samples)")
    p.add_argument("--label", default=None)
    p.add_argument("--hardware", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--date", default=None)
    args = p.parse_args(argv)

    from nanogpt_course import checkpoint as ck

    metrics = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    meta = ck.read_meta(ck.latest(args.run))
    records = curve_records(metrics)
    times = [r["time"] for r in metrics if "time" in r]
    plan = meta.get("plan", {})
    depth = meta["model_config"].get("n_layer")
    last_val = [r for r in records if "val_bpb" in r][-1]
    label = args.label or (f"d{depth} on {args.hardware}, {last_val['tokens'] / 1e6:.0f}M "
                           f"tokens ({(times[-1] - times[0]) / 60:.1f} min)")
    report = {"label": label, "hardware": args.hardware, "command": args.command,
              "date": args.date, "data": meta.get("data"), "depth": depth,
              "model_config": meta["model_config"], "plan": plan,
              "duration_s": round(times[-1] - times[0], 1) if times else None,
              "final_val_bpb": last_val["val_bpb"], "tokens": last_val["tokens"],
              "records": records,
              "samples": samples_from_log(args.log.read_text()) if args.log else []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}: {len(records)} records, final val bpb {last_val['val_bpb']:.4f} "
          f"at {last_val['tokens']:,} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
