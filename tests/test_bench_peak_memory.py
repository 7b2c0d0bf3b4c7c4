"""bench/bench_peak_memory.py: the allocator-trace replay that finds what is live at the peak."""

import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def bpm():
    yield from load_bench("bench_peak_memory")


def ev(action, addr, size, name="f"):
    frames = [{"filename": "/x/torch/nn/functional.py", "line": 1, "name": "linear"},
              {"filename": "/repo/model.py", "line": 7, "name": name}]
    return {"action": action, "addr": addr, "size": size, "frames": frames}


def test_replay_finds_the_peak_and_what_is_live_then(bpm):
    events = [ev("alloc", 1, 100, "a"), ev("alloc", 2, 50, "b"),
              ev("free_requested", 1, 100), ev("free_completed", 1, 100),
              ev("alloc", 3, 120, "c"),          # 170 live: the peak
              ev("free_completed", 2, 50), ev("alloc", 4, 10, "d")]
    peak, index, live = bpm.live_at_peak(events)
    assert (peak, index) == (170, 4)
    assert sorted(live) == [2, 3]
    # a request alone frees nothing: the block counts until its free completes
    assert bpm.live_at_peak(events[:3])[0] == 150


def test_summary_groups_by_size_and_by_frame_outside_torch(bpm):
    events = [ev("alloc", i, 2**20, "act") for i in range(3)] + [ev("alloc", 9, 2**30, "logits")]
    r = bpm.summarize("m", {"device_traces": [events]})
    assert r["by_size"][0] == {"block_mib": 1024.0, "count": 1, "gib": 1.0}
    assert r["by_size"][1]["count"] == 3
    assert r["by_frame"][0]["frame"] == "model.py:7:logits"  # torch's own frame skipped
    assert r["peak_event_frame"] == "model.py:7:logits"


def test_needs_cuda(bpm, monkeypatch):
    monkeypatch.setattr(bpm.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        bpm.main([])
