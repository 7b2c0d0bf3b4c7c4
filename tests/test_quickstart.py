"""The quickstart's time budget (with simulated slow steps), its busy-machine warning, its
refusal to reuse a model it flagged as undertrained, and its standard-library corpus (the
same content hash whatever packages are installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def qs():
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "scripts" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeTrainer:
    """Simulates the trainer: each step costs ``step_seconds(step)`` on a fake clock, and
    every segment (start-up, evaluation, save) costs ``overhead`` more. Records the schedule
    horizon each step was trained under."""

    def __init__(self, step_seconds, overhead=1.0):
        self.now, self.step, self.step_seconds, self.overhead = 0.0, 0, step_seconds, overhead
        self.horizons = []

    def clock(self):
        return self.now

    def run_segment(self, total, stop_at):
        assert self.step < stop_at <= total
        self.now += self.overhead
        while self.step < stop_at:
            self.now += self.step_seconds(self.step)
            self.step += 1
            self.horizons.append(total)
        return self.step


@pytest.mark.parametrize("name, step_seconds, first_estimate", [
    ("steady", lambda s: 0.7, 0.7),
    ("machine gets busy half-way", lambda s: 0.5 if s < 100 else 2.0, 0.5),
    ("calibration on a busy moment, then quiet", lambda s: 0.6, 3.0),
    ("slow from the start", lambda s: 5.0, 5.0),
])
def test_budget_is_held_by_time(qs, name, step_seconds, first_estimate):
    budget = 210.0
    sim = FakeTrainer(step_seconds)
    out = qs.train_by_time(sim.run_segment, budget, first_estimate, clock=sim.clock)
    # finished: the last step was trained under a schedule that ends there
    assert out["steps"] == sim.step == out["total"] == sim.horizons[-1]
    # on time: at most about one segment's worth of slack past the budget
    slowest = max(step_seconds(s) for s in range(sim.step))
    segment = max(qs.SEGMENT_SECONDS, qs.MIN_SEGMENT_STEPS * slowest)
    assert sim.now <= budget + segment + 2 * sim.overhead, sim.now
    # and the budget is used (not a count fixed from the first estimate)
    assert sim.now >= budget - slowest - qs.SEGMENT_SECONDS, sim.now
    if name == "machine gets busy half-way":
        fixed_count = int(budget / first_estimate)  # what a one-off calibration would run
        assert sim.step < fixed_count and len(set(out["plans"])) > 1
    if name == "calibration on a busy moment, then quiet":
        assert sim.step > int(budget / first_estimate) * 2  # re-planning used the quiet time


def test_busy_warning_says_what_to_do(qs):
    assert qs.busy_warning(0.7, 210) == ""  # 300 steps: fine
    assert qs.busy_warning(2.0, 210) == ""  # 105 steps: useful (measured: 122 steps, 1.86 bpb)
    text = qs.busy_warning(10.5, 210)  # the busy machine: 20 steps
    assert "WARNING" in text and "busy" in text and "only about 20 steps" in text
    assert "--minutes" in text and "--fresh" in text


def test_never_silently_reuses_an_undertrained_model(qs):
    assert qs.what_to_do({}, finished=False, has_checkpoint=False) == "train"
    assert qs.what_to_do({"undertrained": False}, True, True) == "reuse"
    assert qs.what_to_do({"undertrained": True, "steps": 20}, True, True) == "retrain"
    assert qs.what_to_do({"undertrained": True}, False, True) == "resume"


def test_state_file_roundtrip(qs, tmp_path):
    qs.write_state(tmp_path, undertrained=True, steps=20)
    qs.write_state(tmp_path, steps=21)
    assert qs.read_state(tmp_path) == {"undertrained": True, "steps": 21}
    assert json.loads((tmp_path / qs.STATE).read_text())["steps"] == 21


def test_stdlib_corpus_hash_ignores_installed_packages(tmp_path):
    """Two processes with different installed packages (an extra one on the path) and
    different caches collect the same standard-library subset: same content hash."""
    extra = tmp_path / "extra_site"
    (extra / "fancy_pkg").mkdir(parents=True)
    (extra / "fancy_pkg" / "__init__.py").write_text('"""A package only one machine has."""\n' * 20)
    code = ("import json, site, sys\n"
            "from nanogpt_course.data import offline\n"
            "if len(sys.argv) > 1: site.addsitedir(sys.argv[1])\n"
            "folder = offline.collect_stdlib(max_bytes=1_500_000, progress=False)\n"
            "m = offline.read_manifest(folder)\n"
            "print(json.dumps([m['content_sha256'], [e[0] for e in m['entries']], m['roots']]))\n")
    results = []
    for n, args in enumerate(([], [str(extra)])):
        env = {**os.environ, "NANOGPT_COURSE_CACHE": str(tmp_path / f"cache{n}")}
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        results.append(json.loads(out.stdout))
    (sha_a, keys_a, roots), (sha_b, keys_b, _) = results
    assert sha_a == sha_b and keys_a == keys_b
    assert [label for label, _ in roots] == ["stdlib"]
    assert keys_a and all(k.startswith(("stdlib/", "pydoc/topics/")) for k in keys_a)
    assert not any("fancy_pkg" in k for k in keys_a)
