"""nanogpt_course.launch: torchrun as a subprocess (gloo on CPU), output, failures, timeouts."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from nanogpt_course.launch import (
    LaunchError,
    free_port,
    init_distributed,
    launch,
    torchrun_command,
)

pytestmark = pytest.mark.distributed

SCRIPT = textwrap.dedent("""
    import argparse, os, sys, time
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from nanogpt_course.launch import init_distributed

    ap = argparse.ArgumentParser()
    ap.add_argument("--fail-rank", type=int, default=-1)
    ap.add_argument("--sleep", type=float, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    info = init_distributed()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"pid{info.rank}").write_text(str(os.getpid()))
    total = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(total)
    print(f"rank {info.rank}/{info.world_size} sum={total.item():g} "
          f"omp={os.environ.get('OMP_NUM_THREADS')} backend={dist.get_backend()} "
          f"device={info.device}", flush=True)
    if info.rank == args.fail_rank:
        raise RuntimeError(f"boom on rank {info.rank}")
    time.sleep(args.sleep)
    dist.destroy_process_group()
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(SCRIPT)
    return path


def test_torchrun_command_script_and_module(tmp_path):
    script = tmp_path / "a.py"
    script.write_text("")
    cmd = torchrun_command(str(script), ["--x", "1"], nproc=3, port=1234, log_dir=tmp_path)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in cmd and "--master-port=1234" in cmd
    assert "--local-ranks-filter=0" in cmd and "-m" not in cmd[3:]
    assert cmd[-3:] == [str(script), "--x", "1"]
    mod = torchrun_command("nanogpt_course.optim.demo", [], nproc=2, port=1, all_ranks=True)
    assert mod[-2:] == ["-m", "nanogpt_course.optim.demo"]
    assert "--local-ranks-filter=0" not in mod


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_launch_two_ranks_streams_rank0_only(script, tmp_path):
    lines = []
    result = launch(str(script), nproc=2, device="cpu", out=tmp_path / "run",
                    on_line=lines.append, log_dir=tmp_path / "logs")
    assert result.returncode == 0 and result.run_dir == tmp_path / "run"
    assert "rank 0/2 sum=3 omp=1 backend=gloo device=cpu" in lines
    assert not any(line.startswith("rank 1/") for line in lines)  # rank 0 only on screen
    assert "rank 0/2" in result.stdout
    logs = sorted(result.log_dir.glob("*/attempt_*/1/stdout.log"))
    assert logs and "rank 1/2 sum=3" in logs[0].read_text()  # rank 1 is in its log
    assert lines[-1].startswith("[launch] 2 rank(s) on cpu finished")


def test_launch_failure_raises_with_the_failing_ranks_traceback(script, tmp_path):
    with pytest.raises(LaunchError) as err:
        launch(str(script), "--fail-rank", "1", nproc=2, device="cpu", on_line=None)
    assert err.value.returncode not in (0, None)
    assert "boom on rank 1" in str(err.value)  # from rank 1's stderr log
    assert "rank 0/2 sum=3" in str(err.value)  # the tail of the output


@pytest.mark.slow
def test_launch_timeout_stops_every_rank(script, tmp_path):
    started = time.monotonic()
    with pytest.raises(LaunchError, match="timed out"):
        launch(str(script), "--sleep", "120", nproc=2, device="cpu", out=tmp_path,
               timeout=10, on_line=None)
    assert time.monotonic() - started < 60
    pids = [int(p.read_text()) for p in tmp_path.glob("pid*")]
    assert len(pids) == 2
    time.sleep(0.5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_init_distributed_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)


@pytest.mark.slow
def test_demo_two_ranks_bitwise_equal_one_process(tmp_path):
    """The lesson-06 claim: DistMuonAdamW on 2 gloo ranks == MuonAdamW on 1 process."""
    from nanogpt_course.optim import demo

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = demo.main(["--steps", "6", "--out", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    launch("nanogpt_course.optim.demo", "--steps", "6", nproc=2, device="cpu",
           out=tmp_path / "two", on_line=None)
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert one["optimizer"] == "MuonAdamW" and two["optimizer"] == "DistMuonAdamW"
    a = load_file(tmp_path / "one" / "params.safetensors")
    b = load_file(tmp_path / "two" / "params.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-6)
    # the optimizer state is split: each rank holds about half
    total, halves = one["state_bytes_per_rank"][0], two["state_bytes_per_rank"]
    assert all(abs(h - total / 2) < 0.05 * total for h in halves)
