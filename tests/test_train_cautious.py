"""--cautious-weight-decay (on by default): the trainer's choice of Muon decay reaches every
Muon group, changes training only through the decay, and stays fixed on --resume (a run
saved before the flag existed resumes with the plain decay it was trained with)."""

from __future__ import annotations

import json

import pytest
from test_train_helpers import cli_args, optimizer_groups, tiny_cfg

from nanogpt_course.checkpoint import META, latest
from nanogpt_course.train import read_metrics, train
from nanogpt_course.train.config import ConfigError, parse_args


def _losses(out):
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


def test_flag_parses_and_reaches_the_muon_groups(tmp_path):
    assert parse_args([]).cautious_weight_decay is True
    assert parse_args(["--no-cautious-weight-decay"]).cautious_weight_decay is False
    assert "--no-cautious-weight-decay" in cli_args(tiny_cfg(tmp_path, cautious_weight_decay=False))
    on = optimizer_groups(tiny_cfg(tmp_path / "on", weight_decay=0.5), "muon")
    off = optimizer_groups(tiny_cfg(tmp_path / "off", weight_decay=0.5,
                                    cautious_weight_decay=False), "muon")
    assert on and {g["cautious_weight_decay"] for g in on} == {True}
    assert off and {g["cautious_weight_decay"] for g in off} == {False}
    assert {g["weight_decay"] for g in on} == {g["weight_decay"] for g in off} != {0.0}


def test_cautious_changes_training_only_through_the_decay(tmp_path):
    run = lambda name, **kw: train(tiny_cfg(tmp_path / name, max_steps=4, **kw), echo=False)
    for name, kw in {"on": {}, "off": {"cautious_weight_decay": False}}.items():
        assert run(name, weight_decay=0.5, **kw).status == "finished"
        assert run(name + "_nowd", weight_decay=0.0, **kw).status == "finished"
    on, off = _losses(tmp_path / "on"), _losses(tmp_path / "off")
    assert on[0] == off[0] and on[-1] != off[-1]  # same first step, then the decay differs
    assert _losses(tmp_path / "on_nowd") == _losses(tmp_path / "off_nowd")  # no decay: equal


def test_resume_keeps_the_runs_own_decay_rule(tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(out, max_steps=4, save_every=2, weight_decay=0.5), echo=False)
    with pytest.raises(ConfigError, match="cautious-weight-decay False"):
        train(tiny_cfg(out, resume=True, max_steps=6, weight_decay=0.5,
                       cautious_weight_decay=False), echo=False)
    # a checkpoint written before the flag existed: its config has no such key
    meta_path = latest(out) / META
    meta = json.loads(meta_path.read_text())
    del meta["train_config"]["cautious_weight_decay"]
    meta_path.write_text(json.dumps(meta))
    groups = optimizer_groups(tiny_cfg(out, resume=True, max_steps=6, weight_decay=0.5),
                              "muon")
    assert {g["cautious_weight_decay"] for g in groups} == {False}
