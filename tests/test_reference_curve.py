"""scripts/reference_curve.py: a run's metrics -> the reference curve lesson 09 draws."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import reference_curve  # noqa: E402


def test_records_and_samples():
    metrics = [{"time": 0.0, "step": 0, "val_bpb": 2.5},
               {"time": 1.0, "step": 10, "loss": 3.25, "tokens": 1000, "tok_per_sec": 9.0},
               {"time": 2.0, "step": 20, "loss": 3.0, "tokens": 2000, "val_bpb": 2.0},
               {"time": 3.0, "note": "resumed"}]
    assert reference_curve.curve_records(metrics) == [
        {"step": 0, "tokens": 0, "val_bpb": 2.5},
        {"step": 10, "tokens": 1000, "loss": 3.25, "tok_per_sec": 9.0},
        {"step": 20, "tokens": 2000, "loss": 3.0, "val_bpb": 2.0}]
    log = ("depth rules (reference: ...)\n  params 1\n1 micro-step(s) of 4 x 8\n"
           "step 00000/00020 | val bpb 2.5\nstep 00010/00020 | loss 3.2\n"
           "  sample: 'def ' -> 'x = 1'\n  sample: 'The' -> ' end'\n"
           "step 00020/00020 | loss 3.0 | val bpb 2.0\n")
    # a step's samples are printed before its log line
    assert reference_curve.samples_from_log(log) == [
        {"step": 20, "text": "'def ' -> 'x = 1'"}, {"step": 20, "text": "'The' -> ' end'"}]
    assert reference_curve.plan_from_log(log) == [
        "depth rules (reference: ...)", "  params 1", "1 micro-step(s) of 4 x 8"]


def test_script_on_a_real_run(tiny_checkpoint, tmp_path):
    """On the cached tiny run: every validation record has tokens, in the shape lesson 09
    reads (``records`` with ``tokens`` and ``val_bpb``), and the label names the run."""
    out = tmp_path / "ref.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "reference_curve.py"),
                    str(tiny_checkpoint), "--out", str(out), "--hardware", "2-core CPU",
                    "--command", "tiny_checkpoint()"], check=True, cwd=ROOT)
    ref = json.loads(out.read_text())
    curve = [(r["tokens"], r["val_bpb"]) for r in ref["records"] if "val_bpb" in r]
    metrics = [json.loads(x) for x in (tiny_checkpoint / "metrics.jsonl").read_text().splitlines()]
    assert len(curve) == sum("val_bpb" in m for m in metrics) >= 2
    assert curve[0][0] == 0 and all(a[0] < b[0] for a, b in zip(curve, curve[1:]))
    assert ref["final_val_bpb"] == curve[-1][1] and "2-core CPU" in ref["label"]
    assert ref["depth"] == ref["model_config"]["n_layer"]
