"""--orthogonalizer: the trainer's choice of Muon iteration reaches every Muon group, is
validated, recorded, and fixed for the rest of a run on --resume."""

from __future__ import annotations

import pytest
from test_train_helpers import optimizer_groups, tiny_cfg

from nanogpt_course.optim.muon import ORTHOGONALIZERS
from nanogpt_course.train import read_metrics, train
from nanogpt_course.train.config import ORTHOGONALIZERS as CONFIG_CHOICES
from nanogpt_course.train.config import ConfigError, parse_args, validate


def test_flag_parses_validates_and_matches_the_optimizer():
    assert CONFIG_CHOICES == ORTHOGONALIZERS  # config stays torch-free, so it keeps a copy
    assert parse_args([]).orthogonalizer == "newton_schulz"
    cfg = parse_args(["--orthogonalizer", "polar_express"])
    assert cfg.orthogonalizer == "polar_express"
    validate(cfg)
    with pytest.raises(ConfigError, match="newton_schulz, polar_express"):
        validate(cfg.replace(orthogonalizer="svd"))


def test_polar_express_reaches_the_muon_groups_and_trains(tmp_path):
    cfg = tiny_cfg(tmp_path / "pe", orthogonalizer="polar_express")
    groups = optimizer_groups(cfg, "muon")
    assert groups and {g["orthogonalizer"] for g in groups} == {"polar_express"}
    ns = train(tiny_cfg(tmp_path / "ns", max_steps=4), echo=False)
    pe = train(cfg.replace(max_steps=4), echo=False)
    assert ns.status == pe.status == "finished"
    loss = lambda out: [r["loss"] for r in read_metrics(out) if "loss" in r]
    # the same first step (identical weights and batch), different updates afterwards
    assert loss(tmp_path / "ns")[0] == loss(tmp_path / "pe")[0]
    assert loss(tmp_path / "ns")[-1] != loss(tmp_path / "pe")[-1]
    # --resume keeps the run's own iteration: asking for another one is refused
    with pytest.raises(ConfigError, match="orthogonalizer polar_express"):
        train(tiny_cfg(tmp_path / "ns", orthogonalizer="polar_express", resume=True,
                       max_steps=6), echo=False)
