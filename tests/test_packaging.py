"""Packaging and tooling: environment.yml vs pyproject, the Makefile, lazy optional imports."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import tomllib
from conftest import REPO


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = _pyproject()["project"]
    wanted = {r for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        wanted |= {r for r in reqs if not r.startswith("nanogpt_course")}
    text = (REPO / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    listed = {m.group(1).strip() for m in re.finditer(r"^\s+- (?!-e )(\S.*)$", pip_section, re.M)}
    # same names AND the same version specifiers, so the two files cannot drift apart
    assert {r.replace(" ", "") for r in listed} == {r.replace(" ", "") for r in wanted}
    assert "python=3.11" in text and "- -e ." in text


def test_torch_is_never_pinned_to_a_cuda_build_in_metadata():
    deps = _pyproject()["project"]["dependencies"]
    torch_reqs = [d for d in deps if _requirement_name(d) == "torch"]
    assert torch_reqs == ["torch>=2.5"]


def test_jupytext_is_pinned_exactly():
    notebooks = _pyproject()["project"]["optional-dependencies"]["notebooks"]
    assert any(re.fullmatch(r"jupytext==[\d.]+", r) for r in notebooks)


def _make(*args):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_make_help_lists_every_target_once():
    makefile = (REPO / "Makefile").read_text()
    targets = re.findall(r"^([a-zA-Z_-]+):", makefile, re.M)
    out = _make("help").stdout
    for target in targets:
        assert re.search(rf"^  {re.escape(target)}\s+\S", out, re.M), f"make help misses {target}"
    required = {"help", "setup", "quickstart", "test", "lab", "sync", "lint", "format", "ddp-train",
                "chat-server", "run-scaling-law", "gpu-status", "kill-gpu"}
    assert required <= set(targets)
    assert _make().stdout == out  # help is the default target


def test_placeholder_targets_fail_and_say_which_issue():
    makefile = (REPO / "Makefile").read_text()
    for target in ("quickstart", "ddp-train", "chat-server", "run-scaling-law"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
        if "not built yet" not in recipe:
            continue  # implemented since
        result = _make(target)
        assert result.returncode != 0, f"placeholder make {target} must not pretend to work"
        assert "arrives with" in result.stderr


def test_gpu_status_without_gpu_says_so():
    result = _make("gpu-status")
    assert result.returncode == 0
    assert "GPU" in result.stdout


BLOCKED = ["datasets", "pyarrow", "fastapi", "uvicorn", "jupytext", "papermill", "nbval",
           "jupyterlab", "ipywidgets", "jupyter_client", "IPython", "playwright", "wandb"]


def test_library_imports_without_optional_dependencies():
    """Like the GPU machine: only torch, numpy, tiktoken, regex, safetensors (+ rustbpe)."""
    code = f"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {BLOCKED!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError('blocked optional dependency: ' + name)
sys.meta_path.insert(0, Block())
import nanogpt_course
names = [m.name for m in pkgutil.walk_packages(nanogpt_course.__path__, 'nanogpt_course.')
         if not m.name.endswith('__main__')]
for name in names:
    importlib.import_module(name)
print('imported', len(names))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported" in result.stdout


@pytest.mark.parametrize("script", ["scripts/setup.sh", "scripts/run_tests.sh", "scripts/gpu.sh", ".ci/run"])
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0


@pytest.mark.slow
@pytest.mark.distributed
def test_make_ddp_train_runs_two_gloo_ranks(tmp_path):
    """`make ddp-train` builds a working torchrun command: 2 CPU ranks, 2 steps, a checkpoint."""
    from test_train_helpers import tiny_assets

    from nanogpt_course import checkpoint as ck

    tok, data = tiny_assets()
    out = tmp_path / "run"
    args = (f"--tokenizer {tok} --aspect-ratio 32 --head-dim 32 --seq-len 32 --device-batch-size 2 "
            f"--total-batch-size 128 --device cpu --eval-every -1 --sample-every -1 --save-every 2")
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", "setup", "ddp-train", f"PY={sys.executable}", "NGPUS=2",
         "DEPTH=2", f"DATA={data}", "MAX_STEPS=2", f"OUT={out}", f"ARGS={args}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    meta = ck.read_meta(out)
    assert meta["step"] == 2 and meta["world_size"] == 2


def test_make_ddp_train_passes_window_pattern_short_window_and_fp8():
    result = subprocess.run(["make", "-n", "--no-print-directory", "-o", "setup", "ddp-train",
                             "PY=python", "WINDOW_PATTERN=SSSL", "SHORT_WINDOW=512", "FP8=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "--window-pattern SSSL" in result.stdout and "--fp8" in result.stdout
    assert "--short-window 512" in result.stdout
    plain = subprocess.run(["make", "-n", "--no-print-directory", "-o", "setup", "ddp-train",
                            "PY=python", "FP8=0"], cwd=REPO, capture_output=True, text=True,
                           timeout=60)
    assert "--fp8" not in plain.stdout and "--window-pattern" not in plain.stdout
    assert "--short-window" not in plain.stdout
