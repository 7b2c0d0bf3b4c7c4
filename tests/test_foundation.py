"""Course infrastructure: paths, presets, device selection, exercises framework, env check."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from nanogpt_course import device, env, exercises, paths, presets
from nanogpt_course.exercises import Case

# --- paths -------------------------------------------------------------------------------

def test_cache_and_runs_follow_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "c"))
    monkeypatch.setenv(paths.RUNS_ENV, str(tmp_path / "r"))
    assert paths.cache_dir("shards", "x") == tmp_path / "c" / "shards" / "x"
    assert (tmp_path / "c" / "shards" / "x").is_dir()
    assert paths.runs_dir("run1") == tmp_path / "r" / "run1"


def test_find_raw_prefers_mirror_then_cache(tmp_path, monkeypatch):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    (mirror / "a").mkdir(parents=True)
    (cache / "raw" / "a").mkdir(parents=True)
    (mirror / "a" / "x.txt").write_text("mirror")
    (cache / "raw" / "a" / "x.txt").write_text("cache")
    (cache / "raw" / "a" / "only_cache.txt").write_text("cache")
    monkeypatch.setenv(paths.DATA_ENV, str(mirror))
    monkeypatch.setenv(paths.CACHE_ENV, str(cache))
    assert paths.find_raw("a/x.txt").read_text() == "mirror"
    assert paths.find_raw("a/only_cache.txt").read_text() == "cache"
    assert paths.find_raw("a/missing.txt") is None
    monkeypatch.delenv(paths.DATA_ENV)
    assert paths.find_raw("a/x.txt").read_text() == "cache"


def test_require_raw_error_says_where_and_what_to_run(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
    with pytest.raises(paths.MissingDataError) as info:
        paths.require_raw("tinyshakespeare/input.txt", what="tiny Shakespeare",
                          how="python -m nanogpt_course.data prepare tinyshakespeare")
    message = str(info.value)
    assert "tiny Shakespeare not found" in message
    assert "NANOGPT_COURSE_DATA is unset" in message
    assert str(tmp_path / "raw" / "tinyshakespeare" / "input.txt") in message
    assert "prepare tinyshakespeare" in message


# --- presets -----------------------------------------------------------------------------

def test_presets_choose_and_validate(monkeypatch):
    assert presets.choose("smoke", smoke=1, laptop=2, full=3) == 1
    assert presets.choose("full", smoke=1, laptop=2, full=3) == 3
    with pytest.raises(ValueError, match="choose one of smoke, laptop, full"):
        presets.choose("huge", smoke=1, laptop=2, full=3)
    monkeypatch.setenv(presets.ENV_VAR, "full")
    assert presets.default_preset() == "full"
    monkeypatch.delenv(presets.ENV_VAR)
    assert presets.default_preset() == "laptop"


# --- device ------------------------------------------------------------------------------

def test_pick_device_defaults_and_errors(monkeypatch):
    monkeypatch.delenv(device.ENV_VAR, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.pick_device().type == expected
    assert device.pick_device("cpu").type == "cpu"
    monkeypatch.setenv(device.ENV_VAR, "cpu")
    assert device.pick_device().type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        device.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            device.pick_device("cuda")
    assert device.compute_dtype("cpu") == torch.float32
    assert device.compute_dtype("cuda") == torch.bfloat16


# --- exercises framework -----------------------------------------------------------------

def _square(x):
    return x * x


@pytest.fixture
def square_exercise():
    key = "99_test.square"
    exercises.exercise(key, _square, lambda: [Case("two", (2.0,)), Case("tensor", (torch.arange(3.0),))])
    yield key
    exercises._REGISTRY.pop(key)


def test_check_passes_correct_function_and_returns_it(square_exercise, capsys):
    mine = lambda x: x**2
    assert exercises.check(square_exercise, mine) is mine
    out = capsys.readouterr().out
    assert "case" in out and "max diff" in out and "all 2 cases pass" in out


def test_check_falls_back_to_reference_for_stub(square_exercise, capsys):
    def stub(x):
        raise NotImplementedError

    assert exercises.check(square_exercise, stub) is _square
    assert "not attempted yet" in capsys.readouterr().out


def test_check_raises_with_table_on_wrong_answer(square_exercise):
    with pytest.raises(exercises.ExerciseFailed) as info:
        exercises.check(square_exercise, lambda x: x * 3, verbose=False)
    text = str(info.value)
    assert "2 of 2 cases differ" in text and "WRONG" in text


def test_check_does_not_hide_real_errors(square_exercise):
    def broken(x):
        raise TypeError("bug in learner code")

    with pytest.raises(TypeError, match="bug in learner code"):
        exercises.check(square_exercise, broken, verbose=False)


def test_max_diff_semantics():
    assert exercises.max_diff(torch.ones(2), torch.ones(3)) == math.inf
    assert exercises.max_diff(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5])) == pytest.approx(0.5)
    assert exercises.max_diff([1, 2], [1, 2]) == 0.0
    assert exercises.max_diff({"a": 1}, {"b": 1}) == math.inf
    assert exercises.max_diff("ab", "ab") == 0.0 and exercises.max_diff("ab", "ba") == math.inf
    assert exercises.max_diff(torch.tensor([1, 2]), torch.tensor([1, 3])) == math.inf


def test_unknown_exercise_key_is_a_clear_error():
    with pytest.raises(KeyError, match="known for 00_setup"):
        exercises.get("00_setup.nope")


# --- env check ---------------------------------------------------------------------------

def test_env_checks_report_each_requirement(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / "does-not-exist"))
    results = {c.name: c for c in env.run_checks()}
    assert {"python", "torch", "packages", "device", "data mirror", "cache", "jupyter kernel"} <= set(results)
    assert results["python"].status == "OK" and results["torch"].status == "OK"
    assert results["data mirror"].status == "FAIL"  # a mirror that is set but missing is an error
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
    assert {c.name: c for c in env.run_checks()}["data mirror"].status == "OK"


def test_env_cli_exit_code(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "nanogpt_course.env"], capture_output=True, text=True,
                        env={**__import__("os").environ, paths.DATA_ENV: str(tmp_path)})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "environment OK" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "nanogpt_course.env"], capture_output=True, text=True,
                         env={**__import__("os").environ, paths.DATA_ENV: str(tmp_path / "nope")})
    assert bad.returncode == 1 and "FAIL" in bad.stdout


def test_git_commit_prefers_the_explicit_variable(monkeypatch):
    """Results record the code's commit: $NANOGPT_COURSE_GIT_COMMIT wins (a GPU machine's
    copied tree carried a stale .git: its sweep rows named the session's first commit), else
    this checkout's HEAD, marked +dirty when tracked files changed."""
    monkeypatch.setenv(paths.COMMIT_ENV, "abc1234")
    assert paths.git_commit() == "abc1234"
    monkeypatch.delenv(paths.COMMIT_ENV)
    root = paths.repo_root()
    if root is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root,
                          capture_output=True, text=True).stdout.strip()
    assert paths.git_commit() in (head, head + "+dirty")
