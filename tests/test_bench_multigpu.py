"""bench/bench_multigpu.py (issue #8): its CPU dry run launches the real trainer on 1 and 2
gloo ranks with the same total batch and must find equal losses and half the optimizer state
per rank; the report's pure functions are checked on hand-made runs."""

from __future__ import annotations

import json

import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    yield from load_bench("bench_multigpu")


RUN_FIELDS = {"depth", "nproc", "status", "steps_done", "grad_accum", "total_batch_size",
              "tok_per_sec", "tok_per_sec_per_gpu", "step_ms_median", "opt_state_bytes",
              "opt_state_bytes_predicted", "peak_mem_bytes", "peak_mem_kind", "losses", "env"}
COMPARISON_FIELDS = {"scaling_efficiency", "opt_state_ratio_max", "opt_state_ideal",
                     "opt_state_ok", "loss_max_abs_diff", "loss_max_rel_diff", "loss_ok"}


@pytest.mark.slow
@pytest.mark.distributed
def test_cpu_dry_run_two_ranks_match_one(bench, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    report = bench.main(["--cpu", "--tiny", "--nprocs", "1,2", "--steps", "6", "--out",
                         str(out), "--work-dir", str(work), "--echo-every", "1000"])
    saved = json.loads((out / "multigpu.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (out / "multigpu_loss.png").stat().st_size > 0
    assert (out / "runs" / "d2-n2" / "metrics.jsonl").is_file()
    table = (out / "multigpu.md").read_text()
    assert table.count("\n| 2 | ") == 2  # one row per world size

    runs = {r["nproc"]: r for r in saved["runs"]}
    assert set(runs) == {1, 2}
    for run in runs.values():
        assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
        assert run["status"] == "finished" and run["steps_done"] == 6
        assert run["total_batch_size"] == 512 and run["tok_per_sec"] > 0
        assert run["peak_mem_kind"] == "max_rss" and all(m > 0 for m in run["peak_mem_bytes"])
    assert (runs[1]["grad_accum"], runs[2]["grad_accum"]) == (4, 2)  # same total batch

    # same losses: 2 ranks x 2 micro-batches = 1 rank x 4 (fp32, only sums reordered)
    one, two = ([loss for _, loss in runs[n]["losses"]] for n in (1, 2))
    # training moved the loss: the comparison has teeth (6 steps: at 512-token batches and
    # these LRs the first 3 steps are noisy since the optimizer groups follow their roles)
    assert one[0] - one[-1] > 0.1
    assert two == pytest.approx(one, rel=1e-5)

    # ZeRO-2: each of 2 ranks holds half the optimizer state. Tolerance 2%: the AdamW
    # tensors under 4096 elements are replicated (and 4-byte step counters) on every rank.
    b1, b2 = runs[1]["opt_state_bytes"], runs[2]["opt_state_bytes"]
    assert len(b1) == 1 and len(b2) == 2
    assert max(b2) <= 0.5 * b1[0] * 1.02 and sum(b2) >= b1[0]
    assert b1 == runs[1]["opt_state_bytes_predicted"]
    assert b2 == runs[2]["opt_state_bytes_predicted"]

    cmp = {c["nproc"]: c for c in saved["comparisons"]}
    assert COMPARISON_FIELDS <= set(cmp[2]), COMPARISON_FIELDS - set(cmp[2])
    assert cmp[2]["loss_ok"] and cmp[2]["opt_state_ok"] and cmp[2]["loss_steps_compared"] == 6
    assert cmp[2]["efficiency_target"] is None  # CPU: no throughput verdict

    # a second call finds both runs finished and reruns nothing; --merge rebuilds the report
    again = bench.main(["--cpu", "--tiny", "--nprocs", "1,2", "--steps", "6", "--out",
                        str(tmp_path / "out2"), "--work-dir", str(work)])
    assert [r["losses"] for r in again["runs"]] == [r["losses"] for r in saved["runs"]]
    merged = bench.main(["--merge", str(out), "--out", str(tmp_path / "merged")])
    assert merged["comparisons"] == saved["comparisons"]


def _run(nproc, losses, tok_s, state):
    return {"depth": 12, "nproc": nproc, "tok_per_sec_per_gpu": tok_s, "opt_state_bytes": state,
            "opt_state_bytes_predicted": state, "losses": list(enumerate(losses, 1))}


def test_compare_verdicts(bench):
    base = _run(1, [10.0, 9.0, 8.0, 7.0], 1000.0, [800])
    good = _run(2, [10.0, 9.01, 8.02, 6.99], 950.0, [400, 400])
    slow = _run(8, [10.0, 9.2, 8.0, 7.0], 800.0, [200] * 7 + [260])
    rows = {c["nproc"]: c for c in bench.compare([good, base, slow], cpu=False)}
    assert rows[2]["scaling_efficiency"] == pytest.approx(0.95) and rows[2]["efficiency_ok"]
    assert rows[2]["loss_max_abs_diff"] == pytest.approx(0.02) and rows[2]["loss_ok"]
    assert rows[2]["opt_state_ratio_max"] == 0.5 and rows[2]["opt_state_ok"]
    assert rows[8]["efficiency_target"] == 0.85 and not rows[8]["efficiency_ok"]  # 80%
    assert not rows[8]["loss_ok"]  # 0.2 nats off at step 2
    assert not rows[8]["opt_state_ok"]  # one rank holds 260/800 > 1.05/8
    cpu = {c["nproc"]: c for c in bench.compare([good, base], cpu=True)}
    assert not cpu[2]["loss_ok"] and cpu[2]["efficiency_target"] is None  # 1e-5 relative


def test_settings_and_child_environment(bench):
    assert bench.per_depth("12:32,20:16", [12, 20]) == {12: 32, 20: 16}
    assert bench.per_depth("200", [12, 20]) == {12: 200, 20: 200}
    with pytest.raises(SystemExit):
        bench.per_depth("12:32", [12, 20])
    gpu, cpu = bench.child_env(cpu=False), bench.child_env(cpu=True)
    for env in (gpu, cpu):  # NVLink multicast off, always
        assert env["NCCL_NVLS_ENABLE"] == "0" and env["NVSHMEM_DISABLE_NVLS"] == "1"
        assert env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert cpu["OMP_NUM_THREADS"] == "1" and cpu["NANOGPT_COURSE_DIST_BACKEND"] == "gloo"
    assert gpu["NANOGPT_COURSE_DIST_BACKEND"] == "nccl"


def test_predicted_state_shards_d12_evenly(bench):
    from nanogpt_course.model import GPTConfig

    config = GPTConfig.from_depth(12, vocab_size=32768, sequence_len=2048)
    one = bench.predicted_state_bytes(config, 1)[0]
    # MuonAdamW on d12: fp32 momentum for the 84.9M matrix weights, two fp32 Adam moments
    # for everything else (embeddings, value embeddings, lm_head, scalars)
    assert one > 1.8 * 2**30
    for n in (2, 4, 8):
        shards = bench.predicted_state_bytes(config, n)
        assert max(shards) / one == pytest.approx(1 / n, rel=1e-3)
