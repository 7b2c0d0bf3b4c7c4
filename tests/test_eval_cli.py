"""``python -m nanogpt_course.eval`` end to end on the shared tiny checkpoints, 2 gloo ranks
against 1 process, the trainer's --core-every hook, and the downloads (local HTTP server)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from nanogpt_course.eval import datasets

CORE_TASKS = "arc_easy,winograd,lambada_openai,squad"


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nanogpt_course.eval", *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_core_cli_writes_csv_json_chart(tiny_checkpoint, shared_data, tmp_path):
    done = _run("core", "--checkpoint", str(tiny_checkpoint), "--max-per-task", "5",
                "--tasks", CORE_TASKS, "--out", str(tmp_path), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("CORE ") and "/4 " in line]
    assert len(lines) == 4 and all("n=5" in line for line in lines)  # a line per task
    report = json.loads((tmp_path / "core.json").read_text())
    assert report["label"] == "CORE (4/22 tasks)" and report["partial"]
    assert set(report["tasks"]) == set(CORE_TASKS.split(","))
    for row in report["tasks"].values():
        assert row["n"] == 5 and 0 <= row["accuracy"] <= 1 and row["seconds"] >= 0
    csv_lines = (tmp_path / "core.csv").read_text().splitlines()
    assert csv_lines[0].startswith("task,") and len(csv_lines) == 5
    assert (tmp_path / "core.png").read_bytes()[:4] == b"\x89PNG"


def test_bpb_cli(tiny_checkpoint, tmp_path):
    done = _run("bpb", "--checkpoint", str(tiny_checkpoint), "--tokens", "8192",
                "--out", str(tmp_path), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    value = json.loads((tmp_path / "bpb.json").read_text())["bpb"]
    assert 0.5 < value < 8


def test_cli_errors_are_one_line_exit_2(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from nanogpt_course.eval.__main__ import main

    def fails(*args):
        with pytest.raises(SystemExit) as stop:
            main(list(args))
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        return err

    assert "does not exist" in fails("core", "--checkpoint", str(tmp_path / "nope"))
    assert "unknown CORE task" in fails("core", "--checkpoint", str(tiny_checkpoint),
                                        "--tasks", "arc_easy,nope")
    monkeypatch.setenv("NANOGPT_COURSE_DATA", str(tmp_path))
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    assert "download core" in fails("core", "--checkpoint", str(tiny_checkpoint))
    assert "download all" in fails("chatcore", "--checkpoint", str(tiny_checkpoint))
    assert not (tmp_path / "eval").exists()


def _launch(nproc, out, *args):
    from nanogpt_course.launch import launch

    launch("nanogpt_course.eval", *args, nproc=nproc, device="cpu", out=str(out),
           on_line=None, timeout=600)
    return json.loads(next(out.glob("*.json")).read_text())


def _in_process(run, path, **kwargs):
    """The 1-process reference, with one thread like each gloo rank (same kernels)."""
    import torch

    from nanogpt_course import checkpoint as ck

    c = ck.load(path, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run(c.model, c.tokenizer, log=lambda line: None, **kwargs)["report"]
    finally:
        torch.set_num_threads(threads)
    return {r.task: (r.n, r.correct) for r in report.results}


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_ranks_equal_one_process(tiny_checkpoint, tiny_chat_checkpoint, shared_data,
                                          tmp_path):
    from nanogpt_course.eval import evaluate_chatcore, evaluate_core

    tasks = "arc_easy,winograd,lambada_openai"
    two = _launch(2, tmp_path / "core2", "core", "--checkpoint", str(tiny_checkpoint),
                  "--max-per-task", "24", "--tasks", tasks)
    one = _in_process(evaluate_core, tiny_checkpoint, max_per_task=24, tasks=tasks)
    assert two["meta"]["world_size"] == 2
    assert {t: (r["n"], r["correct"]) for t, r in two["tasks"].items()} == one
    chat = "ARC-Easy,GSM8K,HumanEval"
    two = _launch(2, tmp_path / "chat2", "chatcore", "--checkpoint", str(tiny_chat_checkpoint),
                  "--max-per-task", "20", "--tasks", chat)
    one = _in_process(evaluate_chatcore, tiny_chat_checkpoint, max_per_task=20, tasks=chat)
    assert {t: (r["n"], r["correct"]) for t, r in two["tasks"].items()} == one
    assert any("sandbox:" in note for note in two["notes"])


@pytest.mark.slow
def test_trainer_core_every_checks_data_and_logs_the_score(tiny_checkpoint, shared_data,
                                                           tmp_path, capsys):
    from nanogpt_course import checkpoint as ck
    from nanogpt_course.train import train

    cfg = ck.read_meta(tiny_checkpoint)["train_config"]
    train(mode="pretraining", data=cfg["data"], tokenizer=cfg["tokenizer"], depth=1,
          aspect_ratio=32, head_dim=32, seq_len=64, device_batch_size=4,
          total_batch_size=256, max_steps=2, eval_every=-1, sample_every=-1, core_every=2,
          out=str(tmp_path / "run"), device="cpu")
    console = capsys.readouterr().out
    assert "CORE every 2 steps: 21/22 tasks (missing: coqa), up to 40 examples per task" in console
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any(isinstance(r.get("core"), float) for r in records)
    assert "arrives" not in console


def test_trainer_core_every_fails_early_without_the_bundle(tmp_path, monkeypatch):
    from nanogpt_course.eval import training_plan

    monkeypatch.setenv("NANOGPT_COURSE_DATA", str(tmp_path))
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(datasets.EvalDataError, match="download core"):
        training_plan("core", "cpu", every=10)


# ---------------------------------------------------------------------------- downloads
@pytest.fixture
def server(shared_data, tmp_path):
    """A local HTTP server over a copy-free view: /mirror/ is the data mirror, /bad/ a
    folder with a corrupted gsm8k test file, /gz/ a gzipped HumanEval."""
    root = tmp_path / "www"
    (root / "bad" / "gsm8k").mkdir(parents=True)
    (root / "bad" / "gsm8k" / "test.jsonl").write_text('{"question": "x", "answer": "#### 1"}\n')
    (root / "gz").mkdir()
    raw = (shared_data / "humaneval" / "HumanEval.jsonl").read_bytes()
    (root / "gz" / "HumanEval.jsonl.gz").write_bytes(gzip.compress(raw))
    os.symlink(shared_data, root / "mirror")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def test_download_from_a_mirror_server_checks_sums(server, tmp_path, monkeypatch):
    url, root = server
    monkeypatch.delenv("NANOGPT_COURSE_DATA", raising=False)
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    files = datasets.fetch("gsm8k", base_url=url + "/mirror", progress=False)
    assert files[0] == tmp_path / "cache" / "raw" / "gsm8k" / "test.jsonl"
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == datasets.GSM8K_TEST_SHA256
    # git-blob-checked entry (hellaswag: the mirror's substitute is accepted by sha256)
    core = {e["relpath"]: e for e in datasets.manifest("core")}
    entry = core[f"{datasets.BUNDLE}/symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl"]
    got = datasets.fetch_file(entry, base_url=url + "/mirror", progress=False)
    assert datasets.git_blob_id(got) == "86621f10e7124ed6f3a61fb91493c1256c008f60"


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path, monkeypatch):
    url, root = server
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    from nanogpt_course.data.download import ChecksumError

    entry = datasets.manifest("gsm8k")[0]
    with pytest.raises(ChecksumError):
        datasets.fetch_file(entry, base_url=url + "/bad", progress=False, retries=0)
    folder = tmp_path / "cache" / "raw" / "gsm8k"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_upstream_style_gzip(server, tmp_path, monkeypatch):
    url, root = server
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    entry = dict(datasets.manifest("humaneval")[0])
    gz = (root / "gz" / "HumanEval.jsonl.gz").read_bytes()
    entry.update(url=url + "/gz/HumanEval.jsonl.gz", gunzip=hashlib.sha256(gz).hexdigest())
    got = datasets.fetch_file(entry, progress=False)
    assert hashlib.sha256(got.read_bytes()).hexdigest() == datasets.HUMANEVAL_SHA256
    assert sorted(p.name for p in got.parent.iterdir()) == ["HumanEval.jsonl"]


def test_lesson_10_takes_the_headless_parameters(repo):
    """papermill -p CHECKPOINT ... -p NPROC 8 -p MAX_PER_TASK -1 needs these names; nbval runs
    the lesson at smoke, where NPROC defaults to 2 (2 gloo ranks on the CPU)."""
    source = (repo / "lessons" / "10_evaluation.py").read_text()
    cell = source.split('# %% tags=["parameters"]', 1)[1].split("# %%", 1)[0]
    names = [line.split("=")[0].strip() for line in cell.strip().splitlines()]
    assert names == ["PRESET", "CHECKPOINT", "TASKS", "MAX_PER_TASK", "NPROC"]
    assert "smoke=2" in source.split("NPROC = int(", 1)[1].split("\n", 1)[0]
