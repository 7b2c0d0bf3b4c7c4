"""bench/gpu_check.py must keep running: its CPU dry run (--device cpu --tiny) passes."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(repo, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", repo / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look it up
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "report.json"
    code = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)])
    report = json.loads(out.read_text())
    names = [c["name"] for c in report["checks"]]
    assert names == [name for name, _ in gpu_check.CHECKS]
    failed = {c["name"]: c.get("error") for c in report["checks"] if not c["ok"]}
    assert code == 0 and report["all_ok"], failed
    decode = next(c for c in report["checks"] if c["name"] == "decode_throughput")
    assert decode["batch1_ctx16_tok_s"] > 0
    assert "all checks passed" in capsys.readouterr().out
