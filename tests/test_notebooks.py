"""Lesson notebooks: pairing, no outputs, headers, parameters cell, a papermill run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

LESSON_PY = sorted((REPO / "lessons").glob("[0-9][0-9]_*.py"))
LESSON_NB = sorted((REPO / "lessons").glob("[0-9][0-9]_*.ipynb"))


def test_every_lesson_is_paired():
    assert LESSON_PY, "no lessons found"
    assert [p.stem for p in LESSON_PY] == [p.stem for p in LESSON_NB]


def test_jupytext_sync_leaves_no_drift(tmp_path):
    """On a clean copy: jupytext --sync from the .py files, then git diff --exit-code."""
    work = tmp_path / "copy"
    (work / "lessons").mkdir(parents=True)
    shutil.copy(REPO / "jupytext.toml", work)
    for path in LESSON_NB + LESSON_PY:  # .py copied last, so it is the newer side
        shutil.copy(path, work / "lessons" / path.name)
    git = lambda *a: subprocess.run(["git", *a], cwd=work, check=True, capture_output=True, text=True)
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy")
    for path in work.glob("lessons/*.py"):
        path.touch()
    sync = subprocess.run([sys.executable, "-m", "jupytext", "--sync", *sorted(map(str, work.glob("lessons/*.py")))],
                          cwd=work, capture_output=True, text=True)
    assert sync.returncode == 0, sync.stderr
    diff = subprocess.run(["git", "diff", "--exit-code", "--stat"], cwd=work, capture_output=True, text=True)
    assert diff.returncode == 0, f"lessons drifted from their .ipynb; run `make sync`:\n{diff.stdout}"


@pytest.mark.parametrize("nb_path", LESSON_NB, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(nb_path):
    nb = json.loads(nb_path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        # tags only (plus jupytext's own blank-line bookkeeping, which is layout, not content)
        extra = set(cell["metadata"]) - {"tags", "lines_to_next_cell"}
        assert not extra, f"extra cell metadata {extra} in {nb_path.name}"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"{nb_path.name} holds outputs: commit notebooks without them")
    params = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1, f"{nb_path.name} needs exactly one cell tagged 'parameters'"
    source = "".join(params[0]["source"])
    assert 'PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")' in source
    for line in source.splitlines():  # simple assignments only: papermill overrides them
        assert not line.strip() or line.lstrip().startswith("#") or "=" in line, line


def test_papermill_runs_lesson_00_with_a_parameter(tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "00_out.ipynb"
    papermill.execute_notebook(str(REPO / "lessons" / "00_setup.ipynb"), str(out),
                               parameters={"PRESET": "smoke"}, cwd=str(REPO / "lessons"),
                               kernel_name="python3", progress_bar=False)
    nb = json.loads(out.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "PRESET = \"smoke\"" in "".join(injected[0]["source"])
    text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert "preset 'smoke'" in text
