"""Every exercise: its solution passes the checker, and the lesson still ships a stub."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from conftest import REPO

from nanogpt_course import exercises

LESSONS = sorted(p.stem for p in (REPO / "lessons").glob("[0-9][0-9]_*.py"))
WITH_EXERCISES = [
    name for name in LESSONS
    if (REPO / "nanogpt_course" / "exercises" / f"lesson{name[:2]}.py").exists()
]
KEYS = [key for lesson in WITH_EXERCISES for key in exercises.names(lesson)]


def _load_solutions(lesson: str):
    path = REPO / "solutions" / f"{lesson}.py"
    assert path.exists(), f"missing solutions/{lesson}.py"
    spec = importlib.util.spec_from_file_location(f"solutions_{lesson}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def _is_stub(fn: ast.FunctionDef) -> bool:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # docstring
    if len(body) != 1 or not isinstance(body[0], ast.Raise):
        return False
    exc = body[0].exc
    target = exc.func if isinstance(exc, ast.Call) else exc
    return isinstance(target, ast.Name) and target.id == "NotImplementedError"


def test_exercises_exist():
    assert "00_setup.softmax" in KEYS


@pytest.mark.parametrize("key", KEYS)
def test_solution_passes_its_checker(key):
    lesson, name = key.split(".", 1)
    fn = getattr(_load_solutions(lesson), name, None)
    assert fn is not None, f"solutions/{lesson}.py has no function {name}"
    report = exercises.run(key, fn)
    assert report.error is None, f"solution for {key} raised {report.error!r}"
    assert report.passed, report.table()
    assert report.rows, f"{key} has no cases"


@pytest.mark.parametrize("key", KEYS)
def test_lesson_ships_a_stub_and_checks_it(key):
    lesson, name = key.split(".", 1)
    path = REPO / "lessons" / f"{lesson}.py"
    fn = _functions(path).get(name)
    assert fn is not None, f"lessons/{lesson}.py defines no {name}"
    assert _is_stub(fn), f"lessons/{lesson}.py: {name} must stay a stub (raise NotImplementedError)"
    assert f'exercises.check("{key}"' in path.read_text(), f"no checker cell for {key}"


@pytest.mark.parametrize("lesson", WITH_EXERCISES)
def test_every_stub_in_a_lesson_is_a_registered_exercise(lesson):
    stubs = {n for n, fn in _functions(REPO / "lessons" / f"{lesson}.py").items() if _is_stub(fn)}
    registered = {k.split(".", 1)[1] for k in exercises.names(lesson)}
    assert stubs == registered
