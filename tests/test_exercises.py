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


# ---------------------------------------------------------------------------- checkers that teach
@pytest.fixture
def tensor_exercise():
    """A registered exercise on tensors, small and large, with tiered hints."""
    import torch

    key = "98_teach.double"

    def cases():
        return [exercises.Case("small", (torch.tensor([1.0, 2.0, 3.0]),)),
                exercises.Case("large", (torch.arange(600.0).reshape(20, 30),)),
                exercises.Case("empty list", ([],))]

    def reference(x):
        return x * 2 if hasattr(x, "shape") else []

    exercises.exercise(key, reference, cases,
                       hints=("each entry is twice its input", "multiply by a number",
                              "return x * 2"))
    yield key
    exercises._REGISTRY.pop(key)
    exercises._HINTS_SHOWN.pop(key, None)


def test_right_answer_prints_the_table_once(tensor_exercise, capsys):
    mine = lambda x: x + x if hasattr(x, "shape") else []
    assert exercises.check(tensor_exercise, mine) is mine
    out = capsys.readouterr().out
    assert out.count("max diff") == 1 and "all 3 cases pass" in out
    assert "tensor([2.0, 4.0, 6.0], float32)" in out  # small tensors by value


def test_wrong_tensor_answer_shows_values_and_first_differences(tensor_exercise, capsys):
    import torch

    def wrong(x):
        if not hasattr(x, "shape"):
            return []
        y = x * 2
        if y.numel() > 3:
            y = y.clone()
            y[1, 2] += 1  # one wrong entry in the large case
            y[4, 0] -= 7
        else:
            y = y + torch.tensor([0.0, 0.5, 0.0])
        return y

    with pytest.raises(exercises.ExerciseFailed) as info:
        exercises.check(tensor_exercise, wrong)
    assert capsys.readouterr().out == ""  # nothing printed: the table appears once, in the error
    text = str(info.value)
    assert text.count("max diff") == 1
    assert "2 of 3 cases differ" in text
    assert "expected tensor([2.0, 4.0, 6.0], float32)" in text  # small: by value
    assert "got      tensor([2.0, 4.5, 6.0], float32)" in text
    assert "2 of 600 entries differ; first: [1, 2] expected 64 got 65; [4, 0] expected 240 got 233" in text
    assert "Hint 1 of 3: each entry is twice its input." in text  # the idea, not the code
    assert "return x * 2" not in text
    assert "exercises.hint('98_teach.double')" in text


def test_raising_answer_is_reported_per_case(tensor_exercise):
    def raises_on_large(x):
        if hasattr(x, "shape") and x.ndim == 2:
            return x[100]  # IndexError on the large case only
        return x * 2 if hasattr(x, "shape") else []

    with pytest.raises(exercises.ExerciseFailed) as info:
        exercises.check(tensor_exercise, raises_on_large, verbose=False)
    text = str(info.value)
    assert "1 of 3 cases differ" in text and "RAISED" in text
    assert "large: raised IndexError: index 100 is out of bounds" in text
    assert "raises_on_large() (return x[100]" in text  # the learner's line
    assert isinstance(info.value, IndexError)  # still catchable as the learner's error
    assert isinstance(info.value.__cause__, IndexError)
    report = exercises.run(tensor_exercise, raises_on_large)
    assert [ok for *_, ok in report.rows] == [True, False, True]  # the other cases still ran


def test_answer_that_edits_its_input_fails_and_cannot_corrupt_other_cases(tensor_exercise):
    import torch

    seen = []

    def doubles_in_place(x):
        if not hasattr(x, "shape"):
            return []
        seen.append(x)
        return x.mul_(2)  # right values, but the caller's tensor is changed

    report = exercises.run(tensor_exercise, doubles_in_place)
    assert [ok for *_, ok in report.rows] == [False, False, True]
    assert any("modified its input in place" in text for _, text in report.details)
    original = exercises.get(tensor_exercise).cases()[0].args[0]
    torch.testing.assert_close(original, torch.tensor([1.0, 2.0, 3.0]))
    assert all(x is not case.args[0] for x, case in zip(seen, exercises.get(tensor_exercise).cases()))


def test_input_comparison_is_exact_and_skips_objects_without_a_value():
    import copy

    import numpy as np
    import torch

    class Helper:  # e.g. a tokenizer passed to the function: compares by identity
        pass

    helper = Helper()
    assert not exercises._modified(copy.deepcopy(helper), helper)
    assert not exercises._modified(np.array([1.0, np.nan]), np.array([1.0, np.nan]))
    assert exercises._modified(np.array([1.0, 2.0]), np.array([1.0, 3.0]))
    assert not exercises._modified(torch.tensor([float("nan"), float("inf")]),
                                   torch.tensor([float("nan"), float("inf")]))
    assert exercises._modified([1, {"a": 2}], [1, {"a": 3}])


def test_mask_must_keep_its_bool_dtype():
    import torch

    mask = torch.tensor([[True, False], [True, True]])
    assert exercises.max_diff(mask.clone(), mask) == 0
    assert exercises.max_diff(mask.long(), mask) == float("inf")  # ~ and masked_fill need bool
    assert exercises.max_diff(mask.float(), mask) == float("inf")
    assert exercises.max_diff(torch.tensor([1, 2]), torch.tensor([1, 2])) == 0


def test_hints_come_in_tiers(tensor_exercise, capsys):
    assert exercises.hint(tensor_exercise).startswith("hint 1 of 3: each entry")
    assert exercises.hint(tensor_exercise).startswith("hint 2 of 3: multiply")
    assert "return x * 2 (last hint)" in exercises.hint(tensor_exercise)
    assert "return x * 2 (last hint)" in exercises.hint(tensor_exercise)  # stays at the last
    assert exercises.hint(tensor_exercise, level=1).startswith("hint 1 of 3")
    assert capsys.readouterr().out.count("hint ") == 5


def test_single_hint_exercises_still_work(tensor_exercise):
    ex = exercises.get("01_tokenizer.decode")
    assert ex.tiers and all(isinstance(t, str) for t in ex.tiers)
    old_style = exercises.Exercise(key="x.y", reference=abs, cases=list, hint="one hint")
    assert old_style.tiers == ["one hint"]


@pytest.mark.parametrize("key", [k for k in KEYS if k.startswith("01_")])
def test_lesson01_hints_do_not_give_the_solution_first(key):
    tiers = exercises.get(key).tiers
    assert len(tiers) >= 2, f"{key}: give the idea first, code-like help last"
    assert not any(code in tiers[0] for code in ("(", "[", "=", "zip", "join")), tiers[0]


# ---------------------------------------------------------------------------- lesson 11
def test_lesson11_checkers_catch_the_usual_mistakes():
    """Masking the user's tokens too, or not learning <|im_end|>, fails render_with_mask;
    counting masked or special targets fails assistant_bits_per_byte."""
    import math

    import torch

    solutions = _load_solutions("11_midtraining")

    def mask_everything(tok, messages):
        ids, mask = solutions.render_with_mask(tok, messages)
        return ids, [1] * len(mask)

    def forget_im_end(tok, messages):
        ids, mask = solutions.render_with_mask(tok, messages)
        end = tok.encode_special("<|im_end|>")
        return ids, [0 if i == end else m for i, m in zip(ids, mask)]

    def every_target(losses, targets, token_bytes):
        nbytes = token_bytes[targets.clamp(min=0)].double()
        return float(losses.double().sum() / math.log(2) / nbytes.sum())

    for key, wrong in [("11_midtraining.render_with_mask", mask_everything),
                       ("11_midtraining.render_with_mask", forget_im_end),
                       ("11_midtraining.assistant_bits_per_byte", every_target)]:
        report = exercises.run(key, wrong)
        assert not report.passed, f"{key} accepted {wrong.__name__}"
    # the reference agrees with the library's evaluate_bpb on a real masked batch
    from nanogpt_course.eval import evaluate_bpb

    g = torch.Generator().manual_seed(0)
    model = lambda x, y, reduction="none": torch.rand(y.shape, generator=g, dtype=torch.float64)
    model.parameters = lambda: iter([torch.zeros(1)])
    model.training, model.eval = False, lambda: None
    x = torch.zeros(2, 6, dtype=torch.long)
    y = torch.tensor([[-1, -1, 3, 4, 0, 5], [2, -1, 1, 7, 7, -1]])
    token_bytes = torch.tensor([0, 1, 2, 3, 1, 2, 4, 1])
    g.manual_seed(0)
    expected = evaluate_bpb(model, [(x, y)], token_bytes)
    g.manual_seed(0)
    losses = model(x, y)
    assert solutions.assistant_bits_per_byte(losses, y, token_bytes) == pytest.approx(expected)
