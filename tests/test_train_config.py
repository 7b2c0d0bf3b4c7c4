"""The command line and its clear errors, raised before any model or data is allocated."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_train_helpers import tiny_cfg

from nanogpt_course.train import ConfigError, TrainConfig, build, parse_args, train
from nanogpt_course.train.config import build_parser, check_batch

DESIGN_FLAGS = """--mode --depth --data --tokenizer --target-flops --tokens-per-param --max-steps
--device-batch-size --seq-len --total-batch-size --matrix-lr --embedding-lr --unembedding-lr
--scalar-lr --weight-decay --checkpoint --resume --out --seed --compile --eval-every
--core-every --chatcore-every --sample-every --save-every --keep-last""".split()


def test_every_design_flag_exists_and_parses():
    options = {o for a in build_parser()._actions for o in a.option_strings}
    missing = [f for f in DESIGN_FLAGS if f not in options]
    assert not missing
    cfg = parse_args(["--mode", "sft", "--depth", "4", "--data", "x.jsonl", "--tokenizer", "t",
                      "--target-flops", "1e18", "--max-steps", "5", "--device-batch-size", "8",
                      "--seq-len", "256", "--total-batch-size", "4096", "--matrix-lr", "0.01",
                      "--weight-decay", "0", "--checkpoint", "c", "--resume", "--out", "o",
                      "--seed", "3", "--compile", "--eval-every", "10", "--core-every", "20",
                      "--chatcore-every", "30", "--sample-every", "-1", "--save-every", "7",
                      "--keep-last", "2"])
    assert cfg.mode == "sft" and cfg.depth == 4 and cfg.target_flops == 1e18
    assert cfg.resume and cfg.compile and cfg.keep_last == 2 and cfg.sample_every == -1
    assert parse_args([]) == TrainConfig()
    with pytest.raises(SystemExit):
        parse_args(["--mode", "finetune"])


def test_batch_divisibility():
    assert check_batch(2**19, 32, 2048, 8) == 1
    assert check_batch(2**19, 32, 2048, 1) == 8
    with pytest.raises(ConfigError, match="not divisible") as err:
        check_batch(2**19, 32, 2048, 3)
    assert "--total-batch-size 393,216 or 589,824" in str(err.value)


@pytest.fixture
def no_allocation(monkeypatch):
    """Fails the test if the trainer gets as far as building a model."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was allocated before the settings were checked")

    monkeypatch.setattr(build, "build_model", forbidden)
    from nanogpt_course.train import loop

    monkeypatch.setattr(loop, "build_model", forbidden)


@pytest.mark.parametrize("changes, message", [
    (dict(depth=0), "--depth must be >= 1"),
    (dict(total_batch_size=1000), "not divisible"),
    (dict(data="no_such_dataset"), "unknown dataset"),
    (dict(data="/no/such/folder/at/all"), "unknown dataset"),
    (dict(target_flops=1e15, tokens_per_param=20.0), "give one"),
    (dict(mode="mid-training"), "pass --checkpoint"),
    (dict(mode="sft", data=None, checkpoint="."), "needs --data"),
    (dict(tokenizer="/no/such/tokenizer"), "--tokenizer"),
    (dict(checkpoint="/no/such/ckpt", mode="mid-training"), "no such file"),
    (dict(matrix_lr=-1.0), "--matrix-lr must be > 0"),
])
def test_clear_errors_before_allocation(tmp_path, no_allocation, changes, message):
    with pytest.raises(ConfigError, match=message):
        train(tiny_cfg(tmp_path / "run", **changes), echo=False)


def test_checkpoint_mismatch_errors(tmp_path, no_allocation, monkeypatch):
    base = tmp_path / "base"
    monkeypatch.undo()  # the base run itself needs a model
    train(tiny_cfg(base, max_steps=1), echo=False)
    from nanogpt_course.train import loop

    monkeypatch.setattr(loop, "build_model", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("allocated")))
    start = dict(mode="mid-training", checkpoint=str(base), depth=None, tokenizer=None)
    from nanogpt_course.tokenizer.fast import train_fast

    other = train_fast(["a different corpus, a different tokenizer"] * 50, 300)
    other.save(tmp_path / "other_tok")
    with pytest.raises(ConfigError, match="does not match the checkpoint's tokenizer"):
        train(tiny_cfg(tmp_path / "a", **{**start, "tokenizer": str(tmp_path / "other_tok")}),
              echo=False)
    with pytest.raises(ConfigError, match="--depth 3 does not match the checkpoint's depth 2"):
        train(tiny_cfg(tmp_path / "b", **{**start, "depth": 3}), echo=False)
    with pytest.raises(ConfigError, match="longer than the checkpoint's context"):
        train(tiny_cfg(tmp_path / "c", **{**start, "seq_len": 4096}), echo=False)


def test_cli_exit_code_and_message():
    proc = subprocess.run([sys.executable, "-m", "nanogpt_course.train", "--depth", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: --depth must be >= 1" in proc.stderr


def test_help_runs():
    proc = subprocess.run([sys.executable, "-m", "nanogpt_course.train", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--tokens-per-param" in proc.stdout
