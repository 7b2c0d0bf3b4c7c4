"""bench/bench_train.py side by side with nanochat (issue #18): its CPU dry run measures both
trainers and merges a ``train`` entry into a perf summary without touching the rest.

nanochat is not part of this repository: the dry run needs a local copy at commit 92d63d4
in ``$NANOCHAT_DIR`` or ``<repo>/.nanochat`` (git-ignored) and the test skips without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import nanochat_ref  # noqa: E402  (bench/ is not a package)
import perf_summary  # noqa: E402

UNRELATED = {"decode": {"d12": {"batch1": {"tok_per_sec": 1176.0}}, "device": "NVIDIA H200"},
             "train": {"d20": {"tok_per_sec": 1.0, "device": "NVIDIA H100"}},
             "device": "NVIDIA H200", "commit": "1c59cda"}


@pytest.fixture(scope="module")
def nanochat_dir(repo) -> Path:
    folder = Path(os.environ.get("NANOCHAT_DIR", repo / ".nanochat"))
    if not (folder / "nanochat" / "gpt.py").is_file():
        pytest.skip(f"side-by-side dry run: no local nanochat copy at {folder} (set NANOCHAT_DIR)")
    commit = (folder / "COMMIT").read_text().strip() if (folder / "COMMIT").is_file() else ""
    if not commit.startswith(nanochat_ref.PINNED):
        pytest.skip(f"{folder}/COMMIT says {commit!r}: the bench is pinned to nanochat "
                    f"{nanochat_ref.PINNED}")
    return folder


def test_dry_run_measures_both_sides_and_merges(repo, nanochat_dir, tmp_path):
    summary = tmp_path / "perf_summary.json"
    summary.write_text(json.dumps(UNRELATED))
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, str(repo / "bench" / "bench_train.py"), "--dry-run", "--nanochat",
           str(nanochat_dir), "--merge-summary", str(summary), "--json", str(report_path)]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    side = report["nanochat"]
    for key in ("tok_per_sec", "params", "flops_per_token", "step_ms"):
        assert report[key] > 0 and side[key] > 0, key
    assert report["ratio"] == pytest.approx(report["tok_per_sec"] / side["tok_per_sec"])
    assert side["commit"] == nanochat_ref.PINNED and side["window_pattern"] == "L"
    assert side["compute_dtype"] == "torch.float32"  # nanochat on the CPU: fp32

    merged = json.loads(summary.read_text())
    assert merged["decode"] == UNRELATED["decode"]  # other sections untouched
    assert merged["train"]["d20"] == UNRELATED["train"]["d20"]  # other depths kept
    assert merged["device"] == "NVIDIA H200" and merged["commit"] == "1c59cda"
    entry = merged["train"][f"d{report['depth']}"]
    for key in ("tok_per_sec", "flops_per_token", "params", "device_batch_size",
                "nanochat_tok_per_sec", "ratio"):
        assert entry[key] > 0, key
    assert {"mfu_percent", "peak_mem_gib", "nanochat_peak_mem_gib"} <= set(entry)  # None on CPU
    assert merged["train"]["device"] == "cpu" and entry["device"] == "cpu"


def test_merge_section_replaces_or_updates(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(UNRELATED))
    meta = {"device": "cpu", "torch": "x", "date": "2026-01-01", "commit": "abc"}
    perf_summary.merge_section(path, "train", {"d12": {"tok_per_sec": 2.0}}, meta,
                               replace=False)
    data = json.loads(path.read_text())
    assert set(data["train"]) >= {"d12", "d20"} and data["train"]["commit"] == "abc"
    perf_summary.merge_section(path, "decode", {"d4": {}}, meta)  # replace: decode's way
    data = json.loads(path.read_text())
    assert "d12" not in data["decode"] and data["decode"]["device"] == "cpu"
    assert data["train"]["d20"] == UNRELATED["train"]["d20"] and data["device"] == "NVIDIA H200"


def test_static_memory_counts_both_recipes(repo, nanochat_dir):
    """bench/bench_memory.py at d2: the same parameters on both sides; ours holds the
    embeddings (weights, gradients, two Adam moments) in fp32, nanochat in bf16, so the
    embedding bytes halve and every other byte matches within nanochat's extra scalars
    (smear/backout) and its Muon second-moment buffers."""
    import bench_memory

    ours = bench_memory.ours(2, 512, 64)
    theirs = bench_memory.nanochat(str(nanochat_dir), 2, 512, 64)
    n_emb = ours["num_embedding_params"]
    assert n_emb == theirs["num_embedding_params"] > 0
    assert ours["embedding_dtype"] == "torch.float32"
    assert theirs["embedding_dtype"] == "torch.bfloat16"
    assert ours["embedding_params"] == ours["embedding_grads"] == 4 * n_emb
    assert ours["embedding_state"] == 8 * n_emb  # exp_avg + exp_avg_sq in fp32
    assert theirs["embedding_params"] == 2 * n_emb and theirs["embedding_state"] == 4 * n_emb
    rest = lambda r: r["params"] - r["embedding_params"]  # noqa: E731
    assert abs(rest(ours) - rest(theirs)) <= 4 * 64  # nanochat's few extra scalars


def test_profile_phases_and_kernel_categories(repo, tmp_path):
    """--profile: the phases of the timed steps and the profiled steps' operator time add up
    to (no more than) the steps' time, and the table's matrix multiplies and attention are
    found; a window pattern with a short window reaches the model."""
    report_path, folder = tmp_path / "report.json", tmp_path / "prof"
    cmd = [sys.executable, str(repo / "bench" / "bench_train.py"), "--dry-run", "--json",
           str(report_path), "--profile", str(folder), "--profile-steps", "2",
           "--window-pattern", "SSSL", "--short-window", "16"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["short_window"] == 16 and report["window_pattern"] == "SSSL"
    phases, kernels = report["profile"]["phases"], report["profile"]["kernels"]
    assert phases["steps"] == report["steps"] - 2  # the timed steps after the warm-up ones
    parts = [phases[k] for k in ("forward_backward_ms", "optimizer_ms", "between_steps_ms")]
    assert all(v > 0 for v in parts)
    assert sum(parts) < 1.5 * report["step_ms"]  # the phases are parts of a step
    assert kernels["steps"] == 2
    assert {"matmul", "attention"} <= set(kernels["ms_per_step"])
    assert kernels["kernel_ms_per_step"] <= 1.05 * kernels["wall_ms_per_step"]
    assert json.loads((folder / "profile.json").read_text()) == report["profile"]
    assert "aten::" in (folder / "profile_ops.txt").read_text()


@pytest.mark.parametrize("flag, choices, reported", [
    ("--loss", ("standard", "fused"), "loss_impl"),
    ("--mlp", ("standard", "fused"), "mlp_impl")])
def test_fused_paths_train_as_the_standard_ones(repo, tmp_path, flag, choices, reported):
    """--loss fused and --mlp fused reach the trainer's model (the report says what ran)
    and, on the CPU where their operators run the PyTorch references in fp32, train to the
    standard path's final loss."""
    finals = {}
    for choice in choices:
        path = tmp_path / f"{choice}.json"
        cmd = [sys.executable, str(repo / "bench" / "bench_train.py"), "--dry-run", "--json",
               str(path), flag, choice]
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        report = json.loads(path.read_text())
        assert report[reported] == choice
        finals[choice] = report["final_loss"]
    assert finals["fused"] == pytest.approx(finals["standard"], rel=1e-5)


def test_kernel_categories_by_name():
    import train_profile

    names = {"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n": "matmul",
             "nvjet_tst_256x128_64x4_2x1_v_bz_coopA_TNT": "matmul",
             "pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel": "attention",
             "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0": "triton fused",
             "triton_tem_fused_mm_3": "matmul",
             "matmul_epilogue_kernel": "matmul",  # the fused MLP's (nanogpt_course/fused_mlp.py)
             "Memcpy HtoD (Pageable -> Device)": "copy / memset",
             "void at::native::vectorized_elementwise_kernel<4, ...>": "aten elementwise / reduce",
             "ncclDevKernel_AllReduce_Sum_f32_RING_LL": "nccl",
             "aten::bmm": "matmul", "something_new": "other"}
    assert {n: train_profile.category(n) for n in names} == names


def test_device_ranges_are_not_counted_as_kernels():
    import types

    import train_profile

    def ev(name, annotation=False):
        return types.SimpleNamespace(name=name, is_user_annotation=annotation)

    assert train_profile.is_annotation(ev("Optimizer.step#MuonAdamW.step"))
    assert train_profile.is_annotation(ev("my_range", annotation=True))
    assert not train_profile.is_annotation(ev("nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NNN"))


def test_summary_keys_name_what_differs_from_the_default_recipe():
    """perf_summary.json's train keys: one per recipe, so an A/B never overwrites d12."""
    import argparse

    import bench_train

    def key(**kw):
        base = dict(depth=12, window_pattern="L", short_window=None, fp8=False,
                    embedding_dtype="fp32", stochastic_rounding=False, compile_mode=None,
                    coordinate_tuning=None)
        return bench_train.summary_key(argparse.Namespace(**{**base, **kw}))

    assert key() == "d12" and key(depth=20) == "d20"
    assert key(window_pattern="SSSL", short_window=512) == "d12_SSSL_w512"
    assert key(compile_mode="max-autotune-no-cudagraphs") == "d12_autotune"
    assert key(coordinate_tuning="1") == "d12_coord" and key(coordinate_tuning="0") == "d12"
    assert key(gemm_autotune="1") == "d12_gemmtune" and key(gemm_autotune="tma") == "d12_gemmtma"
    assert key(gemm_autotune="0") == "d12"
    assert key(mlp="fused") == "d12_fusedmlp" and key(mlp="standard") == "d12"
    # the default loss ("auto": fused on CUDA) is d12; an explicit choice gets its own key
    assert key(loss="auto") == "d12" and key(loss="standard") == "d12_standardloss"
    assert key(loss="fused") == "d12_fusedloss"
    assert key(embedding_dtype="bf16", stochastic_rounding=True) == "d12_bf16emb_sr"
