"""--window-pattern / --short-window: the trainer builds the model with them, records them in
the checkpoint, prints them, and rejects bad patterns with one error line."""

import json
import subprocess
import sys

import pytest

from nanogpt_course import checkpoint as ck
from nanogpt_course.train import TrainConfig, tiny, train
from nanogpt_course.train.config import ConfigError, parse_args, validate


def test_flags_parse_and_validate():
    cfg = parse_args(["--window-pattern", "SSSL", "--short-window", "64"])
    assert (cfg.window_pattern, cfg.short_window) == ("SSSL", 64)
    validate(cfg)
    with pytest.raises(ConfigError, match="S .*and L"):
        validate(cfg.replace(window_pattern="SXL"))


def test_trained_model_uses_and_records_the_windows(tmp_path, capsys):
    out = tmp_path / "run"
    tok = tiny.tiny_tokenizer()
    cfg = TrainConfig(**{**tiny.BASE, "out": str(out), "max_steps": 2, "eval_every": -1,
                         "data": str(tiny.tiny_data(tok)), "tokenizer": str(tiny.corpus_tokenizer()),
                         "window_pattern": "SL", "short_window": 16, "device": "cpu"})
    train(cfg)
    meta = ck.read_meta(out)
    assert meta["model_config"]["window_pattern"] == "SL"
    assert meta["model_config"]["short_window"] == 16
    assert meta["train_config"]["window_pattern"] == "SL"
    c = ck.load(out, device="cpu")
    assert c.model.config.window_sizes() == [16, tiny.BASE["seq_len"]]
    assert "attention windows SL" in capsys.readouterr().out


def test_bad_pattern_is_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nanogpt_course.train", "--window-pattern", "SQ",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "SQ" in r.stderr
    assert not (tmp_path / "x").exists()
    json.dumps(r.stderr)  # printable
