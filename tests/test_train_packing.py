"""--packing: the trainer's rows from whole documents (bos, the default) or random windows;
validated, reaching the training loader only (validation scores the same tokens either
way), and fixed for the rest of a run on --resume."""

from __future__ import annotations

import pytest
from test_train_helpers import tiny_cfg

from nanogpt_course.data.loaders import PACKINGS
from nanogpt_course.train import read_metrics, train
from nanogpt_course.train.config import PACKINGS as CONFIG_CHOICES
from nanogpt_course.train.config import ConfigError, parse_args, validate


def test_flag_parses_and_validates():
    assert CONFIG_CHOICES == PACKINGS  # config stays torch-free, so it keeps a copy
    assert parse_args([]).packing == "bos"
    cfg = parse_args(["--packing", "windows"])
    validate(cfg)
    with pytest.raises(ConfigError, match="bos, windows"):
        validate(cfg.replace(packing="random"))
    with pytest.raises(ConfigError, match="SFT"):
        validate(cfg.replace(mode="sft"))


def test_windows_reach_the_training_rows_not_validation(tmp_path, monkeypatch):
    from nanogpt_course.train import data as train_data

    seen = []
    real = train_data.DatasetLoaders._loader

    def spy(self, run, runtime, split, seed, **kw):
        seen.append((split, kw.get("packing", "bos")))
        return real(self, run, runtime, split, seed, **kw)

    monkeypatch.setattr(train_data.DatasetLoaders, "_loader", spy)
    bos = train(tiny_cfg(tmp_path / "bos", max_steps=3, eval_every=3), echo=False)
    win = train(tiny_cfg(tmp_path / "win", max_steps=3, eval_every=3, packing="windows"),
                echo=False)
    assert bos.status == win.status == "finished"
    assert ("train", "windows") in seen and ("train", "bos") in seen
    assert {packing for split, packing in seen if split == "val"} == {"bos"}
    first = lambda out: [r for r in read_metrics(out) if "loss" in r][0]["loss"]
    assert first(tmp_path / "bos") != first(tmp_path / "win")  # other rows, other loss
    val0 = lambda out: [r for r in read_metrics(out) if r["step"] == 0][0]["val_bpb"]
    assert val0(tmp_path / "bos") == val0(tmp_path / "win")  # same weights, same val tokens
    with pytest.raises(ConfigError, match="packing windows"):
        train(tiny_cfg(tmp_path / "bos", packing="windows", resume=True, max_steps=4),
              echo=False)


def test_a_windows_run_resumes_exactly(tmp_path):
    whole = tiny_cfg(tmp_path / "whole", max_steps=4, packing="windows")
    train(whole, echo=False)
    part = tiny_cfg(tmp_path / "part", max_steps=4, packing="windows", stop_at=2)
    assert train(part, echo=False).status == "stopped"
    train(tiny_cfg(tmp_path / "part", max_steps=4, resume=True), echo=False)
    losses = lambda out: [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert losses(tmp_path / "part") == losses(tmp_path / "whole")
