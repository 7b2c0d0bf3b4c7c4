"""bench/bench_attention.py (issue #19): its FLOP count is the exact number of visible
query-key pairs, the tile count it quotes is what the block mask computes, and its CPU dry
run writes every row without an error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nanogpt_course import attention

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import bench_attention  # noqa: E402  (bench/ is not a package)


@pytest.mark.parametrize("seq_len,window", [(16, None), (16, 5), (33, 8), (64, 64), (64, 100)])
def test_visible_pairs_counts_the_mask(seq_len, window):
    mask = attention.visible_mask(seq_len, seq_len, window=window)
    assert bench_attention.visible_pairs(seq_len, window) == int(mask.sum())


def test_flops_are_4d_per_pair_forward_and_3_5x_with_backward():
    pairs = bench_attention.visible_pairs(2048, 1024)
    fwd = bench_attention.attention_flops(32, 6, 128, 2048, 1024, backward=False)
    assert fwd == 32 * 6 * pairs * 4 * 128
    assert bench_attention.attention_flops(32, 6, 128, 2048, 1024, backward=True) == 3.5 * fwd


def test_half_context_window_computes_108_of_136_tiles():
    """The docstring's claim: at T = 2048 with 128-token tiles a window of 1024 touches 108
    tiles (partial or full), the causal triangle 136."""
    def touched(window):
        partial, full = attention._window_blocks(2048, window, 128, "cpu")
        return int((partial | full).sum())

    assert touched(2048) == 136 and touched(1024) == 108


def test_dry_run_writes_every_row(tmp_path):
    out = tmp_path / "attn.json"
    assert bench_attention.main(["--dry-run", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["sdpa_causal", "flex_causal", "flex_window"]
    assert all("error" not in r and r["fwd_bwd_ms"] > 0 for r in rows)
    assert rows[2]["max_abs_diff"] == 0.0  # the window row is its own reference



def test_a_candidate_that_changes_the_output_is_marked_invalid():
    rows = [{"name": "sdpa_causal", "fwd_bwd_ms": 2.0},
            {"name": "ok", "fwd_bwd_ms": 1.5, "max_abs_diff": 0.0},
            {"name": "nan", "fwd_bwd_ms": 1.0, "max_abs_diff": float("nan")},
            {"name": "far", "fwd_bwd_ms": 1.0, "max_abs_diff": 0.5}]
    out = bench_attention.annotate(rows, "d12")
    assert [r.get("invalid", False) for r in out] == [False, False, True, True]
    assert out[1]["vs_sdpa_causal"] == 0.75 and all(r["shape"] == "d12" for r in out)


def test_a_forced_sdpa_backend_computes_the_default_attention():
    """``sdpa_causal[BACKEND]`` runs SDPA under that backend alone (MATH on the CPU) and
    gives the default call's output; an unknown backend name fails at build time."""
    import torch

    cpu = torch.device("cpu")
    q, k, v = torch.randn(3, 1, 2, 16, 8).unbind(0)
    forced = bench_attention.make_kernel("sdpa_causal[MATH]", 16, None, device=cpu)
    default = bench_attention.make_kernel("sdpa_causal", 16, None, device=cpu)
    torch.testing.assert_close(forced(q, k, v), default(q, k, v))
    with pytest.raises(AttributeError):
        bench_attention.make_kernel("sdpa_causal[FASTEST]", 16, None, device=cpu)
