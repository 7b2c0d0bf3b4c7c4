"""Every command in the README's ```bash blocks works as written, inside the existing .venv
(PATH starts with the venv's bin/, as after `source .venv/bin/activate`).

CPU commands run for real with small arguments (a 300-token tokenizer, a 0.5 MB corpus, a
lesson at PRESET=smoke); GPU-sized ones are checked without training: `--help`, `make -n`
(the command a target would run) or `papermill --help-notebook` (the parameters a notebook
takes). A README command that matches no rule fails the test, so new commands get checked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BIN = Path(sys.executable).parent  # the venv's bin/ (tests run in .venv)


def readme_commands() -> list[str]:
    """Command lines of the README's ```bash blocks, comments stripped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = readme_commands()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A sandbox: its own cache and runs folders, a small text file and a small tokenizer."""
    root = tmp_path_factory.mktemp("readme")
    text = root / "text.txt"
    source = (Path(os.__file__).parent / "textwrap.py").read_text(encoding="utf-8")
    text.write_text(source * 3, encoding="utf-8")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "NANOGPT_COURSE_CACHE": str(root / "cache"), "NANOGPT_COURSE_RUNS": str(root / "runs"),
           "NANOGPT_COURSE_PRESET": "smoke", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    tok = root / "tok"
    out = subprocess.run(["python", "-m", "nanogpt_course.tokenizer", "train", "--data", str(text),
                          "--vocab-size", "300", "--out", str(tok)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {"root": root, "env": env, "text": text, "tok": tok}


def _substitute(cmd: str, work: dict) -> str:
    """README placeholders -> sandbox paths, sizes -> small ones."""
    cmd = cmd.replace("FILE_OR_DIR", str(work["text"])).replace("runs/tok", str(work["tok"]))
    cmd = cmd.replace("/tmp/out.ipynb", str(work["root"] / "out.ipynb"))
    return cmd.replace("--vocab-size 32768", "--vocab-size 300")


def _plan(cmd: str, work: dict) -> tuple[list[str], str | list[str]]:
    """(argv to run, what must appear in its output) for one README command."""
    if " | " in cmd:  # `echo ... | python -m ...`: check the command the text is piped into
        return _plan(cmd.rsplit(" | ", 1)[1], work)
    argv = shlex.split(_substitute(cmd, work))
    head = argv[0]
    if head == "source":  # activation: the script must exist
        return ["test", "-f", str(REPO / argv[1])], ""
    if head == "make":
        target = argv[1]
        if target == "lesson":  # CPU, small: run it for real at the smoke preset
            return argv + [f"RUNS={work['root'] / 'runs'}"], "Executing notebook"
        if target == "help":
            return argv, "lesson"
        # everything else (setup, test, quickstart, lab, ddp-train, ...): the command it
        # would run, without running it (setup must not run while others use the venv)
        expect = {"ddp-train": "-m nanogpt_course.train", "quickstart": "scripts/quickstart.py",
                  "setup": "scripts/setup.sh", "test": "scripts/run_tests.sh"}.get(target, "")
        if target == "ddp-train":  # each variable must reach the trainer as its flag
            flags = {"MODE": "--mode {}", "DEPTH": "--depth {}", "TARGET_FLOPS": "--target-flops {}",
                     "CHECKPOINT": "--checkpoint {}", "RESUME": "--resume",
                     "NGPUS": "--nproc_per_node={}"}
            expect = [flags[k].format(v) for k, v in (a.split("=", 1) for a in argv[2:])]
        return ["make", "-n", *argv[1:]], expect
    if head == "papermill":
        notebook = argv[1]
        if "PRESET" in argv and argv[argv.index("PRESET") + 1] == "smoke":
            return argv, "Executing notebook"  # CPU, small: run it
        return ["papermill", "--help-notebook", notebook], "PRESET"  # GPU-sized: parameters
    if head == "torchrun":
        return ["torchrun", "--help"], "nproc"
    if head == "python" and argv[1:2] == ["-m"]:
        module, rest = argv[2], argv[3:]
        if module == "nanogpt_course.train":  # GPU-sized
            return ["python", "-m", module, "--help"], "--depth"
        if module == "nanogpt_course.data" and rest[:2] == ["prepare", "offline"]:
            return argv + ["--max-mb", "0.5", "--quiet"], "offline"
        if module == "nanogpt_course.data" and rest[:2] == ["prepare", "tinyshakespeare"]:
            if not os.environ.get("NANOGPT_COURSE_DATA"):
                return ["python", "-m", module, "prepare", "--help"], "tokenizer"
            return argv + ["--quiet"], "tinyshakespeare"
        if module == "nanogpt_course.data" and rest[:1] == ["info"]:
            if not os.environ.get("NANOGPT_COURSE_DATA"):
                return ["python", "-m", module, "info", "--help"], "dataset name"
            subprocess.run(["python", "-m", module, "prepare", rest[1], "--quiet"], cwd=REPO,
                           env=work["env"], check=True, timeout=300)
            return argv, "tokens"
        if module == "nanogpt_course.tokenizer" and rest[:1] == ["train"]:
            return argv + ["--out", str(work["root"] / "tok2")], "saved"
        if module in ("nanogpt_course.tokenizer", "nanogpt_course.data", "nanogpt_course.env"):
            return argv, ""  # CPU, small: run as written (with the sandbox's paths)
        return ["python", "-m", module, "--help"], ""  # other CLIs: they must at least start
    if head == "python" and argv[1].endswith(".py"):  # a script: it must at least start
        return ["python", argv[1], "--help"], "usage"
    raise AssertionError(f"README command {cmd!r} has no rule in tests/test_readme_commands.py; "
                         "add how to check it (run it small, --help, or make -n)")


@pytest.mark.slow
@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command(cmd, work):
    argv, expect = _plan(cmd, work)
    out = subprocess.run(argv, cwd=REPO, env=work["env"], capture_output=True, text=True,
                         timeout=300)
    both = out.stdout + out.stderr
    assert out.returncode == 0, f"{cmd!r} -> {argv}: exit {out.returncode}\n{both[-3000:]}"
    for piece in [expect] if isinstance(expect, str) else expect:
        assert piece in both, f"{cmd!r} -> {argv}: {piece!r} not in the output\n{both[-2000:]}"


def test_readme_has_the_commands_a_newcomer_needs():
    assert any(c.startswith("source .venv/bin/activate") for c in COMMANDS)
    assert any(c.startswith("make lesson N=") for c in COMMANDS)
    assert "make quickstart" in COMMANDS and "make setup" in COMMANDS
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--minutes" in readme and "--fresh" in readme  # the quickstart's knobs are documented
