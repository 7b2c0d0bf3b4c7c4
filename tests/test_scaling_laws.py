"""Scaling laws: the fits against known answers, FLOPs accounting against a flop counter,
plots, and the sweep runner (resume, failures, refusals, one row per run)."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.scaling_laws import fit, flops, plot, sweep


# ---------------------------------------------------------------------------- fits
def test_parabola_minimum_is_exact_on_a_parabola():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    p = fit.fit_parabola(x, 2 * (x - 1.3) ** 2 + 0.7)
    assert p.x_min == pytest.approx(1.3)
    assert p.y_min == pytest.approx(0.7)


def test_parabola_refuses_a_curve_without_a_minimum():
    with pytest.raises(ValueError, match="curve upward"):
        fit.fit_parabola([0, 1, 2], [1.0, 2.0, 1.5])
    with pytest.raises(ValueError, match="3 distinct"):
        fit.fit_parabola([1, 1, 2], [1.0, 1.0, 2.0])


def test_power_law_recovers_exponent_and_coefficient():
    c = np.logspace(15, 19, 5)
    law = fit.fit_power_law(c, 0.3 * c ** 0.55)
    assert law.exponent == pytest.approx(0.55)
    assert law.coefficient == pytest.approx(0.3)


@pytest.mark.parametrize("alpha,beta", [(0.34, 0.28), (0.2, 0.4), (0.45, 0.15)])
def test_isoflop_fit_recovers_known_exponents_from_noisy_data(alpha, beta):
    """Losses drawn from Chinchilla's parametric law with noise: the exponents come back
    within 0.03 (the three cases differ by > 0.15, so a fit that ignored the data or swapped
    a and b would fail), and the bootstrap interval covers the truth."""
    a_true, b_true = fit.true_exponents(alpha, beta)
    rows = fit.synthetic_sweep(noise=0.004, seed=1, alpha=alpha, beta=beta)
    result = fit.fit_sweep(rows, n_boot=200, seed=0)
    assert result.a.value == pytest.approx(a_true, abs=0.03)
    assert result.b.value == pytest.approx(b_true, abs=0.03)
    assert result.a.value + result.b.value == pytest.approx(1.0, abs=1e-6)  # D = C / 6N
    assert result.a.low - 0.01 <= a_true <= result.a.high + 0.01
    assert result.a.samples == 200
    assert all(bf.interior for bf in result.budgets)


def test_isoflop_optimum_matches_the_analytic_optimum():
    """Per budget, N_opt from the parabola is within 10% of the true minimizer of the law
    (the parabola is only a local approximation of the curve in log N)."""
    rows = fit.synthetic_sweep(budgets=(1e18, 1e20), noise=0.0, points=9, span_decades=0.8)
    result = fit.fit_sweep(rows, n_boot=10)
    alpha, beta, a, b = 0.34, 0.28, 406.4, 410.7
    g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
    for bf in result.budgets:
        n_true = g * (bf.budget / 6) ** (beta / (alpha + beta))
        assert bf.n_opt == pytest.approx(n_true, rel=0.10)
        assert bf.d_opt == pytest.approx(bf.budget / (6 * bf.n_opt), rel=1e-6)


def test_fit_needs_two_budgets_with_a_minimum():
    rows = fit.synthetic_sweep(budgets=(1e18,), noise=0.0)
    with pytest.raises(ValueError, match="at least 2 budgets"):
        fit.fit_sweep(rows, n_boot=5)


def test_edge_minimum_is_flagged():
    rows = [r for r in fit.synthetic_sweep(noise=0.0, points=7) if r["depth"] >= 4]
    result = fit.fit_sweep(rows, n_boot=5)
    assert not all(bf.interior for bf in result.budgets)
    assert "AT THE EDGE" in fit.summary(result)


# ---------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_measured_flops_match_estimate_within_2_percent(depth):
    """FlopCounterMode on one real forward + backward at full context agrees with
    estimate_flops() and with the count by hand."""
    config = GPTConfig.from_depth(depth, vocab_size=500, sequence_len=64, aspect_ratio=32,
                                  head_dim=16)
    row = flops.accounting_row(config)
    assert row.measured == pytest.approx(row.estimate, rel=0.02)
    assert row.by_hand == row.estimate
    assert row.measured > 0.5 * row.estimate  # the counter saw the matmuls at all


def test_six_n_counts_matrices_and_lm_head():
    config = GPTConfig.from_depth(2, vocab_size=300, sequence_len=32, aspect_ratio=32,
                                  head_dim=16)
    with torch.device("meta"):
        model = GPT(config)
    named = dict(model.named_parameters())
    matrices = sum(p.numel() for name, p in named.items()
                   if name.startswith("blocks.") and p.dim() == 2 and "ve_gate" not in name)
    lm_head = named["lm_head.weight"].numel()
    assert flops.scaling_params(model) == matrices + lm_head
    hand = flops.flops_by_hand(config)
    assert hand["attention_matrices"] + hand["mlp"] + hand["lm_head"] == 6 * (matrices + lm_head)


def test_accounting_table_formats_every_depth():
    rows = flops.accounting_table((1, 2), vocab_size=256, sequence_len=32, aspect_ratio=32,
                                  head_dim=16)
    text = flops.format_table(rows)
    assert text.count("\n") == 3 and "| 1 | 32 | 32 |" in text


# ---------------------------------------------------------------------------- plots
def test_plots_are_written_and_not_empty(tmp_path):
    result = fit.fit_sweep(fit.synthetic_sweep(noise=0.005), n_boot=20)
    files = plot.plot_all(result, tmp_path, "synthetic")
    assert {p.suffix for p in files} == {".png", ".svg"} and len(files) == 6
    for path in files:
        assert path.stat().st_size > 5000, path
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- the runner
TINY_ARGS = ("--seq-len 64 --aspect-ratio 16 --head-dim 16 --device-batch-size 8 "
             "--total-batch-size 512 --matrix-lr 0.02 --embedding-lr 0.3 --unembedding-lr 0.008 "
             "--scalar-lr 0.5 --weight-decay 0 --eval-tokens 2048 --device cpu").split()


@pytest.fixture(scope="module")
def tiny_data():
    from nanogpt_course.train.tiny import corpus_data, corpus_tokenizer

    tok = corpus_tokenizer()
    folder, digest, epoch = sweep.prepare_data(str(corpus_data(str(tok))), str(tok))
    return str(tok), folder, digest, epoch


def _config(tmp_path, tiny_data, **kw):
    tok, folder, digest, _ = tiny_data
    base = dict(depths=[1, 2], budgets=[1.5e9], data=folder, tokenizer=tok,
                results=tmp_path / "results.csv", runs=tmp_path / "runs", corpus="offline-2MB",
                corpus_hash=digest, train_args=TINY_ARGS, echo=False)
    base.update(kw)
    return sweep.SweepConfig(**base)


def in_process(calls, fail_depths=()):
    """A launcher that runs the real trainer in this process (no interpreter start-up) and
    makes the runs of ``fail_depths`` fail like a crashing trainer would."""
    from nanogpt_course.train.__main__ import main

    def launch(argv, nproc, log_path, echo):
        depth = int(argv[argv.index("--depth") + 1])
        calls.append(depth)
        if depth in fail_depths:
            log_path.write_text("step 1 ...\nerror: boom (simulated crash)\n")
            return 3
        return main(argv)

    return launch


def test_sweep_rows_resume_and_failures(tmp_path, tiny_data):
    """One row per run with every column; a failing run is recorded and the sweep goes on;
    a second call launches nothing; --retry-failed launches only the failed run."""
    cfg = _config(tmp_path, tiny_data)
    calls = []
    rows = sweep.run_sweep(cfg, epoch_tokens=tiny_data[3], launch=in_process(calls, {1}))
    assert calls == [1, 2]
    assert [r["status"] for r in rows] == ["failed", "ok"]
    with cfg.results.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == sweep.COLUMNS
        saved = list(reader)
    assert [r["run_id"] for r in saved] == ["d1-c1.5e+09", "d2-c1.5e+09"]
    failed, ok = saved
    assert "boom" in failed["error"]
    required = set(sweep.COLUMNS) - {"error", "core"}
    assert not [c for c in required if ok[c] == ""], ok
    ok = sweep.numeric(saved)[0]
    assert 0 < ok["val_bpb"] < 10 and math.isfinite(ok["train_loss"])
    assert ok["tokens"] == ok["steps"] * ok["batch_tokens"] == ok["steps"] * 512
    assert ok["flops"] == pytest.approx(1.5e9, rel=0.05)  # the trainer hit the budget
    assert ok["epochs"] == pytest.approx(ok["tokens"] / tiny_data[3])
    assert ok["corpus_hash"] == tiny_data[2] and ok["width"] == 32
    assert not list((cfg.runs / "d2-c1.5e+09").glob("step_*"))  # checkpoints removed

    again = []
    assert sweep.run_sweep(cfg, epoch_tokens=tiny_data[3], launch=in_process(again)) == []
    assert again == []
    cfg.retry_failed = True
    rows = sweep.run_sweep(cfg, epoch_tokens=tiny_data[3], launch=in_process(again))
    assert again == [1] and rows[0]["status"] == "ok"
    assert len(sweep.read_results(cfg.results)) == 3


def test_sweep_refuses_runs_over_the_epoch_limit(tmp_path, tiny_data):
    cfg = _config(tmp_path, tiny_data, depths=[1], max_epochs=1e-4)
    calls = []
    (row,) = sweep.run_sweep(cfg, epoch_tokens=tiny_data[3], launch=in_process(calls))
    assert calls == [] and row["status"] == "refused" and "epochs" in row["error"]
    assert row["epochs"] > 1e-4


def test_sweep_records_bad_settings_without_launching(tmp_path, tiny_data):
    cfg = _config(tmp_path, tiny_data, depths=[1],
                  train_args=[*TINY_ARGS, "--total-batch-size", "500"])  # not divisible
    calls = []
    (row,) = sweep.run_sweep(cfg, epoch_tokens=tiny_data[3], launch=in_process(calls))
    assert calls == [] and row["status"] == "failed" and "divisible" in row["error"]


def test_append_row_rejects_unknown_columns(tmp_path):
    with pytest.raises(KeyError):
        sweep.append_row(tmp_path / "r.csv", {"nope": 1})


def test_launch_command_uses_torchrun_for_several_processes():
    cmd = sweep.launch_command(["--depth", "2"], 4)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=4" in cmd and cmd[-2:] == ["--depth", "2"]
    assert sweep.launch_command(["--depth", "2"], 1)[1:3] == ["-m", "nanogpt_course.train"]


# ---------------------------------------------------------------------------- CLI
def test_fit_cli_writes_summary_and_plots(tmp_path):
    from nanogpt_course.scaling_laws.__main__ import main

    csv_path = tmp_path / "synthetic.csv"
    for row in fit.synthetic_sweep(noise=0.005):
        sweep.append_row(csv_path, {**row, "run_id": f"d{row['depth']}-{row['budget_flops']}"})
    assert main(["fit", "--results", str(csv_path), "--out", str(tmp_path / "out"),
                 "--bootstrap", "50"]) == 0
    text = (tmp_path / "out" / "synthetic_summary.txt").read_text()
    assert "N_opt ∝ C^a" in text and "Chinchilla" in text
    assert len(list((tmp_path / "out").glob("synthetic_*.svg"))) == 3


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    from nanogpt_course.scaling_laws.__main__ import main

    assert main(["fit", "--results", str(tmp_path / "missing.csv"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "o").exists()
    assert main(["sweep", "--preset", "cpu", "--depths", "0", "--dry-run"]) == 2
    capsys.readouterr()
    for bad in ("--no-such-flag 3", "--seq-len abc"):
        assert main(["sweep", "--preset", "cpu", "--train-args", bad, "--results",
                     str(tmp_path / "r.csv"), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --train-args"), err
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.slow
def test_sweep_cli_runs_the_trainer_as_a_subprocess(tmp_path, tiny_data):
    """End to end: ``python -m nanogpt_course.scaling_laws sweep`` launches
    ``python -m nanogpt_course.train`` and appends its row."""
    import os
    import subprocess
    import sys

    tok, folder, digest, _ = tiny_data
    results = tmp_path / "r.csv"
    cmd = [sys.executable, "-m", "nanogpt_course.scaling_laws", "sweep", "--depths", "1",
           "--budgets", "1e9", "--data", folder, "--tokenizer", tok, "--results", str(results),
           "--runs", str(tmp_path / "runs"), "--train-args", " ".join(TINY_ARGS), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = sweep.read_results(results)
    assert row["status"] == "ok", row["error"]
    assert (tmp_path / "runs" / "d1-c1e+09" / "train.log").read_text().startswith("$ ")


def test_bootstrap_interval_grows_with_the_noise():
    """The residual bootstrap measures the losses' scatter around each parabola (noise, plus
    the parabola's misfit to the true curve, which is all there is at zero noise): more
    noise, a wider interval."""
    widths = []
    for noise in (0.0, 0.002, 0.02):
        result = fit.fit_sweep(fit.synthetic_sweep(noise=noise, seed=3), n_boot=200, seed=0)
        widths.append(result.a.high - result.a.low)
    assert 0 < widths[0] < widths[1] < widths[2]
    assert widths[2] > 3 * widths[0]


def test_sweep_restarts_a_cut_off_run_and_honours_the_time_budget(tmp_path, tiny_data):
    """A run folder left by a killed run (no row) is cleared and trained again; with a time
    budget already spent, the sweep stops after the first run it could time (it needs one
    finished run to predict the next)."""
    cfg = _config(tmp_path, tiny_data, depths=[1], budgets=[1e9, 1.5e9], time_budget_s=1e-6)
    stale = cfg.runs / cfg.run_id(1, 1e9) / "step_000003"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half-written")
    calls = []
    rows = sweep.run_sweep(cfg, epoch_tokens=tiny_data[3], launch=in_process(calls))
    assert calls == [1] and [r["run_id"] for r in rows] == ["d1-c1e+09"]
    assert rows[0]["status"] == "ok" and not stale.exists()
    assert [d for d, _ in sweep.pending(cfg)] == [1]  # the second budget is still to run


def test_time_budget_does_not_stop_before_a_run_that_will_be_refused(tmp_path, tiny_data):
    """A run past the epoch limit is refused at once, so a spent time budget must not stop
    the sweep before it (the GPU sweep stopped on such a run, which took a second call)."""
    cfg = _config(tmp_path, tiny_data, depths=[1], budgets=[1e9, 1e14], time_budget_s=1e-6)
    calls = []
    rows = sweep.run_sweep(cfg, epoch_tokens=tiny_data[3], launch=in_process(calls))
    assert calls == [1]
    assert [(r["run_id"], r["status"]) for r in rows] == [("d1-c1e+09", "ok"),
                                                          ("d1-c1e+14", "refused")]
    assert sweep.pending(cfg) == []


def test_time_budget_predicts_a_run_from_the_flop_rate_of_its_own_depth(tmp_path, tiny_data,
                                                                       monkeypatch):
    """A tiny model runs far fewer FLOPs per second than a larger one, so the slowest rate
    of any depth would stop the sweep before runs that fit: d2 at 1e12 FLOPs takes ~1 s at
    d2's measured 1e12 FLOP/s and must start; d1 at 1e12 (1,000 s at 1e9 FLOP/s) must not."""
    rate = {1: 1e9, 2: 1e12}
    ran = []

    def fake_run_one(cfg, depth, budget, *, epoch_tokens, launch):
        ran.append((depth, budget))
        return {"run_id": cfg.run_id(depth, budget), "status": "ok", "depth": depth,
                "budget_flops": budget, "flops": budget, "wall_s": budget / rate[depth],
                "val_bpb": 1.0}

    monkeypatch.setattr(sweep, "run_one", fake_run_one)
    cfg = _config(tmp_path, tiny_data, depths=[2, 1], budgets=[1e9, 1e12], time_budget_s=100,
                  started_at=time.perf_counter())
    sweep.run_sweep(cfg, epoch_tokens=0)
    assert ran == [(2, 1e9), (1, 1e9), (2, 1e12)]


def test_three_sizes_per_budget_give_no_bootstrap_interval():
    rows = [r for r in fit.synthetic_sweep(noise=0.01, points=3)]
    result = fit.fit_sweep(rows, n_boot=50)
    assert result.a.samples == 0 and math.isnan(result.a.low)
    assert "no bootstrap interval" in fit.summary(result)


@pytest.mark.slow
@pytest.mark.distributed
def test_sweep_runs_each_run_under_torchrun_with_nproc(tmp_path, tiny_data):
    """--nproc 2: the run goes through torchrun (2 gloo ranks on the CPU) and the row says so;
    the plan was resolved for 2 ranks (total batch = 2 x device batch x seq)."""
    import os

    args = [*TINY_ARGS[:TINY_ARGS.index("--total-batch-size")],
            "--total-batch-size", "1024",
            *TINY_ARGS[TINY_ARGS.index("--total-batch-size") + 2:]]
    cfg = _config(tmp_path, tiny_data, depths=[1], budgets=[1e9], nproc=2, train_args=args)
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        (row,) = sweep.run_sweep(cfg, epoch_tokens=tiny_data[3])
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    assert row["status"] == "ok", row.get("error")
    assert row["nproc"] == 2 and row["batch_tokens"] == 1024
    log = (cfg.runs / row["run_id"] / "train.log").read_text()
    assert "torch.distributed.run" in log.splitlines()[0] and "--nproc_per_node=2" in log


@pytest.mark.slow
def test_parallel_sweep_gives_the_sequential_rows(tmp_path, tiny_data, monkeypatch, capsys):
    """``parallel=2`` runs two trainer processes at once and writes the same rows (the same
    validation numbers, to the bit on one CPU thread) as running them one after another."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = {}
    for parallel in (1, 2):
        cfg = _config(tmp_path / f"p{parallel}", tiny_data, budgets=[1e9], parallel=parallel,
                      echo=parallel > 1)
        sweep.run_sweep(cfg, epoch_tokens=tiny_data[3])
        rows[parallel] = {r["run_id"]: r for r in sweep.numeric(sweep.read_results(cfg.results))}
    assert sorted(rows[1]) == sorted(rows[2]) == ["d1-c1e+09", "d2-c1e+09"]
    for run_id, row in rows[1].items():
        assert row["val_bpb"] == rows[2][run_id]["val_bpb"]
        assert row["steps"] == rows[2][run_id]["steps"]
    assert "2 at a time" in capsys.readouterr().out
    with pytest.raises(ValueError, match="subprocess launcher"):
        sweep.run_sweep(_config(tmp_path / "x", tiny_data, parallel=2),
                        epoch_tokens=tiny_data[3], launch=in_process([]))
