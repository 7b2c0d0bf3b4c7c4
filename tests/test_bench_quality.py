"""bench/bench_quality.py's job table, FLOP count and screening hooks (the GPU runs are
in docs/QUALITY.md; a whole dry run takes minutes on the CPU and is not run here)."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    yield from load_bench("bench_quality")


def _args(**kw):
    base = dict(seq_len=1024, device_batch_size=32, depth=6, flops=2.49e16, seeds=2,
                sweep=True, rule_wd=1.08, rule_wd_d6=0.817, tpp_d6=4.0)
    return argparse.Namespace(**{**base, **kw})


def test_closed_form_gives_the_measured_d6_run(bench):
    # the d6 side by side trained 457 steps of 262,144 tokens (docs/QUALITY.md)
    count = bench.closed_form(6, 50259, 1024, 2.49e16, 262144)
    assert count["steps"] == 457 and count["tokens"] == 457 * 262144
    assert count["flops"] == pytest.approx(2.49e16, rel=0.002)


def test_job_names_are_unique_and_every_refinement_is_screened_and_confirmed(bench):
    jobs = bench.default_jobs(_args(), 262144)
    names = [j["name"] for j in jobs]
    assert len(names) == len(set(names))
    for tag, extra in bench.REFINEMENTS.items():
        screen = next(j for j in jobs if j["name"] == f"screen_d4_{tag}")
        assert screen["depth"] == 4 and screen["tokens_per_param"] == 6
        # the screen's A is the rule's λ at the same horizon: only the refinement differs
        base = next(j for j in jobs if j["name"] == "wd_d4_tpp6_x1.0")
        assert screen["weight_decay"] == base["weight_decay"] == 1.08
        assert {k: v for k, v in screen.items() if k not in extra and k != "name"} == \
            {k: v for k, v in base.items() if k != "name"}
        for seed in (0, 1):
            confirm = next(j for j in jobs if j["name"] == f"project_d6_{tag}_s{seed}")
            assert confirm["seed"] == seed and confirm["depth"] == 6
            assert all(confirm[k] == v for k, v in extra.items()
                       if k != "weight_decay_horizon")  # resolved into weight_decay
    # the sweep brackets the rule's λ at both horizons
    for tpp in (2, 6):
        wds = sorted(j["weight_decay"] for j in jobs if j["name"].startswith(f"wd_d4_tpp{tpp}_"))
        assert wds[0] < 1.08 < wds[-1]
    assert not any(j["name"].startswith(("wd_", "screen_"))
                   for j in bench.default_jobs(_args(sweep=False), 262144))


def test_nanochat_init_screen_changes_exactly_what_it_says(bench, monkeypatch):
    from nanogpt_course.model import GPT, GPTConfig

    monkeypatch.setattr(GPT, "init_weights", GPT.init_weights)  # restored after the test
    config = GPTConfig.from_depth(4, vocab_size=300, sequence_len=32)
    torch.manual_seed(0)
    ours = GPT(config)
    bench._use_nanochat_init()
    torch.manual_seed(0)
    theirs = GPT(config)
    bound = (3.0 / config.n_embd) ** 0.5
    assert theirs.wte.weight.std().item() == pytest.approx(0.8, rel=0.05)
    assert ours.wte.weight.std().item() == pytest.approx(1.0, rel=0.05)
    fc = theirs.blocks[0].mlp.c_fc.weight
    assert fc.abs().max() <= 0.4 * bound and fc.abs().max() > 0.35 * bound
    assert theirs.resid_lambdas.tolist() == pytest.approx([1.15, 1.1167, 1.0833, 1.05], abs=1e-4)
    assert theirs.x0_lambdas.tolist() == pytest.approx([0.20, 0.15, 0.10, 0.05], abs=1e-6)
    gates = [b.attn.ve_gate.weight for b in theirs.blocks if b.attn.ve_gate is not None]
    assert gates and all(0 <= g.min() and g.max() <= 0.02 and g.max() > 0 for g in gates)
    # attention matrices keep our init (same seed, same draws before the overrides)
    torch.testing.assert_close(theirs.blocks[1].attn.c_q.weight, ours.blocks[1].attn.c_q.weight)


def test_each_recipe_fed_the_others_rows(bench):
    by_name = {j["name"]: j for j in bench.default_jobs(_args(), 262144)}
    for seed in (0, 1):
        ours = by_name[f"project_d6_windows_s{seed}"]
        theirs = by_name[f"nanochat_d6_packed_s{seed}"]
        assert ours["recipe"] == "project" and ours["packing"] == "windows"
        assert theirs["recipe"] == "nanochat" and theirs["stream"] == "packed"
        assert ours["seed"] == theirs["seed"] == seed
        assert not ours.get("side_by_side") and not theirs.get("side_by_side")
    rows = {r["job"]: r for r in bench.ab_table({"nanochat_d6_s1": 0.65352,
                                                 "nanochat_d6_packed_s1": 0.66})}
    assert rows["nanochat_d6_packed_s1"]["base"] == "nanochat_d6_s1"


def test_bf16_embeddings_with_stochastic_rounding_job(bench):
    by_name = {j["name"]: j for j in bench.default_jobs(_args(), 262144)}
    job = by_name["project_d6_bf16emb_sr_s0"]
    assert job["embedding_dtype"] == "bf16" and job["stochastic_rounding"] is True
    assert "stochastic_rounding" not in by_name["project_d6_bf16emb_s0"]
    rows = bench.ab_table({"project_d6_s0": 0.64587, "project_d6_bf16emb_sr_s0": 0.65})
    assert rows[0]["base"] == "project_d6_s0"


def test_more_seeds_add_confirmations(bench):
    names = {j["name"] for j in bench.default_jobs(_args(seeds=3), 262144)}
    assert {"project_d6_polar_s2", "project_d6_s2", "nanochat_d6_s2"} <= names
    assert "project_d6_polar_s2" not in {j["name"] for j in bench.default_jobs(_args(), 262144)}


def test_refinements_combine_with_plus(bench):
    by_name = {j["name"]: j for j in bench.default_jobs(_args(), 262144)}
    job = bench.combination_job("project_d6_polar+normuon+cautious_s1", by_name, _args())
    base = by_name["project_d6_polar_s1"]
    assert job["name"] == "project_d6_polar+normuon+cautious_s1"
    assert job["seed"] == 1 and job["depth"] == 6 and job["flops"] == base["flops"]
    assert job["orthogonalizer"] == "polar_express"
    assert job["muon"] == {"variance_beta2": 0.9} and job["cautious_weight_decay"] is True
    old_rule = bench.combination_job("project_d6_polar+nocautious_s0", by_name, _args())
    assert old_rule["cautious_weight_decay"] is False and "muon" not in old_rule
    screen = bench.combination_job("screen_d4_normuon+muoneq", by_name, _args())
    assert screen["depth"] == 4 and "orthogonalizer" not in screen
    assert screen["muon"] == {"variance_beta2": 0.9, "row_equilibrate": True}
    with_init = bench.combination_job("screen_d4_polar+nanochat_init", by_name, _args())
    assert with_init["init"] == "nanochat" and with_init["orthogonalizer"] == "polar_express"
    for bad in ("screen_d4_polar", "screen_d4_polar+nosuch", "wd_d4_tpp6_x1.0",
                "project_d6_polar+normuon_s7"):
        assert bench.combination_job(bad, by_name, _args()) is None, bad
    # the horizon factor of the weight-decay rule: λ × (6 / 4)^0.7 at the d6 benchmark
    horizon = round(0.817 * 1.5**0.7, 4)
    assert by_name["project_d6_wdhorizon_s0"]["weight_decay"] == horizon
    both = bench.combination_job("project_d6_polar+wdhorizon_s0", by_name, _args())
    assert both["weight_decay"] == horizon and both["orthogonalizer"] == "polar_express"
    assert "weight_decay_horizon" not in both
    assert by_name["project_d6_polar_s0"].get("weight_decay") is None  # the rule's own


def test_muon_screen_keywords_reach_the_optimizer(bench, monkeypatch):
    import functools

    from nanogpt_course import optim
    from nanogpt_course.model import GPT, GPTConfig

    extra = bench.REFINEMENTS["nanochat_muon"]["muon"]
    monkeypatch.setattr(optim, "build_optimizer",
                        functools.partial(optim.build_optimizer, **extra))
    model = GPT(GPTConfig.from_depth(2, vocab_size=100, sequence_len=32))
    groups = [g for g in optim.build_optimizer(model).param_groups if g["kind"] == "muon"]
    assert groups and all(g[key] == value for g in groups for key, value in extra.items())
    assert extra["variance_beta2"] == 0.9
    # the orthogonalizer and cautious decay go through the trainer's own flags (a keyword
    # the trainer passes would override a partial's)
    assert bench.REFINEMENTS["nanochat_muon"]["orthogonalizer"] == "polar_express"
    assert bench.REFINEMENTS["nanochat_muon"]["cautious_weight_decay"] is True
    assert "orthogonalizer" not in extra and "cautious_weight_decay" not in extra


def test_plot_sweep_writes_a_png_per_report_and_refuses_an_empty_one(bench, tmp_path):
    import json

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for tpp, mult, bpb in [(2, 1.0, 1.17), (2, 3.0, 1.15), (6, 1.0, 0.72), (6, 3.0, 0.75)]:
        (jobs / f"wd_d4_tpp{tpp}_x{mult}.json").write_text(json.dumps({"bpb": bpb}))
    (jobs / "screen_d4_polar.json").write_text(json.dumps({"bpb": 0.7}))  # not a sweep point
    path = bench.plot_sweep(tmp_path)
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no wd_d4_tpp"):
        bench.plot_sweep(tmp_path / "nothing")


def test_a_job_out_of_memory_is_queued_again_at_half_the_micro_batch(bench, tmp_path,
                                                                     monkeypatch):
    started = []

    class Finished:
        def __init__(self, code):
            self.code = code

        def poll(self):
            return self.code

    def launch(job, log_dir):
        started.append((job["name"], job["device_batch_size"]))
        (log_dir / f"{job['name']}.log").write_text("")
        # "a" runs out of memory until its micro-batch is 8; "b" always fits
        oom = job["name"] == "a" and job["device_batch_size"] > 8
        return Finished(bench.OOM_EXIT if oom else 0)

    monkeypatch.setattr(bench, "launch", launch)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    summaries = []
    jobs = [{"name": "a", "device_batch_size": 32}, {"name": "b", "device_batch_size": 32}]
    bench.run_queue(jobs, tmp_path, parallel=2, start_by=1e9, deadline=1e9,
                    summary=lambda: summaries.append(1), t0=bench.time.time())
    assert started == [("a", 32), ("b", 32), ("a", 16), ("a", 8)]
    assert len(summaries) == 2  # one per job that really finished
    assert bench.retry_smaller({"device_batch_size": 1}) is None


def test_ab_table_pairs_each_variant_with_its_own_baseline(bench):
    # the H200 run of docs/QUALITY.md, plus a d4 screen and jobs without a baseline
    bpb = {"project_d6_s0": 0.64587, "project_d6_s1": 0.64707, "project_d6_polar_s0": 0.64583,
           "project_d6_polar_s1": 0.64129, "project_d6_polar+normuon_s0": 0.64362,
           "project_d6_fp8_s1": 0.7, "nanochat_d6_s0": 0.65681, "wd_d4_tpp6_x1.0": 0.72116,
           "screen_d4_polar": 0.71768, "screen_d4_normuon": 0.8}
    rows = {r["job"]: r for r in bench.ab_table(bpb)}
    assert rows["project_d6_polar_s1"]["base"] == "project_d6_s1"
    assert rows["project_d6_polar_s1"]["delta"] == pytest.approx(0.64129 - 0.64707)
    assert rows["project_d6_polar+normuon_s0"]["base"] == "project_d6_s0"
    assert rows["screen_d4_polar"]["delta"] == pytest.approx(-0.00348)
    assert rows["screen_d4_normuon"]["base"] == "wd_d4_tpp6_x1.0"
    assert "project_d6_fp8_s1" in rows  # its seed's baseline is there
    for no_base in ("project_d6_s0", "nanochat_d6_s0", "wd_d4_tpp6_x1.0"):
        assert no_base not in rows
    assert "project_d6_fp8_s1" not in {r["job"] for r in
                                       bench.ab_table({"project_d6_fp8_s1": 0.7})}


def test_quarter_window_job_reaches_the_trainer(bench, monkeypatch, tmp_path):
    """project_d6_SSSLq_s0: SSSL with a window of a quarter of the context, passed to the
    trainer's TrainConfig (the run itself is stopped at the config)."""
    from nanogpt_course import train

    job = {j["name"]: j for j in bench.default_jobs(_args(), 262144)}["project_d6_SSSLq_s0"]
    assert job["window_pattern"] == "SSSL" and job["short_window"] == 256
    seen = {}

    def fake_train(cfg, echo=False):
        seen["cfg"] = cfg
        raise RuntimeError("stop here")

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(bench.data, "read_meta", lambda folder: {"vocab_size": 50304})
    with pytest.raises(RuntimeError, match="stop here"):
        bench.run_project(dict(job, device="cpu"), tmp_path, tmp_path)
    cfg = seen["cfg"]
    assert (cfg.window_pattern, cfg.short_window, cfg.seed) == ("SSSL", 256, 0)
