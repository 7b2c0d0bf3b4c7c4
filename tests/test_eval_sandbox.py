"""The HumanEval sandbox, one layer at a time. A test whose layer is not active on this
machine skips and names the layer; nothing here runs uncontained."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from nanogpt_course.eval import sandbox
from nanogpt_course.eval.chatcore import humaneval_program

LAYERS = sandbox.layers()
FAST = sandbox.Limits(timeout=4.0, cpu_seconds=4)


def need(*names):
    for name in names:
        active, why = LAYERS[name]
        if not active:
            pytest.skip(f"sandbox layer {name!r} is not active on this machine: {why}")


def test_layers_are_reported():
    assert set(LAYERS) == set(sandbox.LAYERS)
    text = sandbox.describe_layers()
    assert "active" in text
    for name, (_active, why) in LAYERS.items():
        assert why and (name in text)


@pytest.fixture(scope="module")
def problems(shared_data):
    with open(shared_data / "humaneval" / "HumanEval.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_every_canonical_solution_passes_and_a_wrong_one_fails(problems):
    programs = [humaneval_program(p, p["canonical_solution"]) for p in problems]
    outcomes = sandbox.run_many(programs, sandbox.Limits(timeout=20.0), workers=4)
    failed = [(p["task_id"], o.status, o.stderr[-300:]) for p, o in zip(problems, outcomes)
              if not o.passed]
    assert not failed, failed[:3]
    wrong = sandbox.run_program(humaneval_program(problems[0], "    return None\n"), FAST)
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr


def test_a_whole_function_using_a_prompt_helper_passes(problems):
    p = problems[10]  # make_palindrome calls is_palindrome from the prompt
    completion = ("```python\ndef make_palindrome(string: str) -> str:\n"
                  + p["canonical_solution"] + "```\n")
    assert sandbox.run_program(humaneval_program(p, completion), FAST).passed


def test_a_whole_function_in_a_code_block_counts(problems):
    p = problems[2]  # truncate_number
    completion = ("Here you go:\n```python\ndef truncate_number(number: float) -> float:\n"
                  "    return number % 1.0\n```\n")
    assert sandbox.run_program(humaneval_program(p, completion), FAST).passed


def test_exit_zero_half_way_does_not_pass():
    out = sandbox.run_program("import sys\nsys.exit(0)\nassert False\n", FAST)
    assert out.status == "failed"


def test_infinite_loop_times_out_and_the_evaluator_keeps_going():
    need("timeout")
    out = sandbox.run_program("while True:\n    pass\n", sandbox.Limits(timeout=2.0))
    assert out.status == "timeout" and out.seconds < 30
    assert sandbox.run_program("print('still here')", FAST).passed


def test_cpu_limit_stops_a_spinning_child():
    need("rlimits")
    out = sandbox.run_program("while True:\n    pass\n",
                              sandbox.Limits(timeout=60.0, cpu_seconds=1))
    assert out.status == "timeout" and out.seconds < 30


def test_writing_outside_the_temp_dir_fails_by_uid(tmp_path):
    need("uid")
    os.chmod(tmp_path, 0o755)  # readable by all, writable by its owner (root) only
    target = tmp_path / "escaped.txt"
    out = sandbox.run_program(f"open({str(target)!r}, 'w').write('x')\n",
                              sandbox.Limits(timeout=10.0, guard=False))
    assert out.status == "failed" and "PermissionError" in out.stderr
    assert not target.exists()
    assert sandbox.run_program("open('inside.txt', 'w').write('ok')\n", FAST).passed


def test_writing_outside_the_temp_dir_fails_by_guard():
    need("guard")
    target = f"/tmp/nanogpt-sandbox-escape-{uuid.uuid4().hex}"  # world-writable: guard's job
    try:
        for code in (f"open({target!r}, 'w').write('x')\n",
                     f"import os\nos.open({target!r}, os.O_CREAT | os.O_WRONLY)\n"):
            out = sandbox.run_program(code, FAST)
            assert out.status == "failed" and "blocked by the sandbox guard" in out.stderr
            assert not os.path.exists(target)
    finally:
        if os.path.exists(target):
            os.remove(target)


def test_temp_dir_is_removed_and_env_is_cleared(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_SECRET_TEST", "leak")
    code = ("import os, json\nprint(json.dumps({'cwd': os.getcwd(), "
            "'env': sorted(os.environ)}))\n")
    out = sandbox.run_program(code, FAST)
    assert out.passed
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert "NANOGPT_SECRET_TEST" not in seen["env"] and seen["env"] == ["LC_ALL"]
    assert not os.path.exists(seen["cwd"])


def test_ten_gigabyte_allocation_is_contained():
    need("rlimits")
    out = sandbox.run_program("x = bytearray(10 * 1024**3)\n", sandbox.Limits(timeout=20.0))
    assert out.status == "failed" and "MemoryError" in out.stderr
    assert sandbox.run_program("print(1)", FAST).passed


def test_fork_bomb_is_contained_by_the_process_limit():
    need("rlimits", "timeout")
    bomb = "import os\nwhile True:\n    os.fork()\n"
    out = sandbox.run_program(bomb, sandbox.Limits(timeout=10.0, guard=False))
    assert out.status in ("failed", "timeout")
    assert sandbox.run_program("print(1)", FAST).passed


def test_guard_blocks_destructive_calls(tmp_path):
    need("guard")
    victim = tmp_path / "keep.txt"
    victim.write_text("x")
    os.chmod(tmp_path, 0o755)
    for code in (f"import os\nos.remove({str(victim)!r})\n", "import os\nos.fork()\n",
                 "import subprocess\nsubprocess.run(['true'])\n",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n"):
        out = sandbox.run_program(code, FAST)
        assert out.status == "failed" and "blocked by the sandbox guard" in out.stderr, code
    assert victim.exists()
