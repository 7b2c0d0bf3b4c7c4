"""Checkpoint files: layout, atomic saves (also under SIGKILL), latest, keep-last, refusal of
pickles and unknown formats, and nested optimizer state through safetensors + JSON."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from nanogpt_course import checkpoint as ck


def _state(step: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 64), float(step)), "b": torch.arange(5.0) + step}


def _save(run, step, **kw):
    return ck.save(run, step, meta={"kind": "base", "model_config": {}}, model_state=_state(step),
                   **kw)


def test_layout_and_meta(tmp_path):
    opt = {"state": {0: {"exp_avg": torch.ones(3), "step": 4}}, "param_groups": [
        {"lr": 0.1, "betas": (0.9, 0.95), "kind": "adamw", "params": [0]}]}
    folder = _save(tmp_path, 12, optimizer_state=opt, optimizer_layout={"plan": [1, 2]})
    assert folder.name == "step_000012"
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json", "model.safetensors", "optimizer.json", "optimizer_rank0.safetensors"]
    meta = ck.read_meta(tmp_path)
    assert meta["format"] == ck.FORMAT and meta["step"] == 12 and meta["world_size"] == 1
    assert torch.equal(ck.read_model_state(folder)["w"], _state(12)["w"])
    back = ck.read_optimizer_state(tmp_path, 0)
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)  # tuples survive
    assert 0 in back["state"] and back["state"][0]["step"] == 4  # int keys survive
    assert torch.equal(back["state"][0]["exp_avg"], torch.ones(3))
    assert ck.read_optimizer_layout(folder) == {"plan": [1, 2]}
    assert ck.optimizer_world_size(folder) == 1
    assert not list(tmp_path.glob(".*"))  # no temp folder left behind


def test_flatten_roundtrip_and_refuses_objects():
    state = {"a": [torch.zeros(2), (1, 2.5, None, "x")], 3: {"t": torch.eye(2)}}
    skel, tensors = ck.flatten_state(state)
    json.dumps(skel)  # plain JSON
    back = ck.unflatten_state(skel, tensors)
    assert back["a"][1] == (1, 2.5, None, "x") and torch.equal(back[3]["t"], torch.eye(2))
    with pytest.raises(TypeError, match="without pickling"):
        ck.flatten_state({"f": object()})


def test_latest_ignores_incomplete_and_keep_last(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    (tmp_path / "step_000009").mkdir()  # a step folder without meta.json: incomplete
    (tmp_path / "step_000009" / "model.safetensors").write_bytes(b"junk")
    assert ck.latest(tmp_path).name == "step_000003"
    assert ck.resolve(tmp_path).name == "step_000003"
    with pytest.raises(ck.CheckpointError, match="incomplete"):
        ck.resolve(tmp_path / "step_000009")
    _save(tmp_path, 4, keep_last=2)
    assert [s for s, _ in ck.complete_steps(tmp_path)] == [3, 4]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    _save(tmp_path, 5)
    ck.save(tmp_path, 5, meta={"kind": "chat", "model_config": {}}, model_state=_state(6))
    assert ck.read_meta(tmp_path)["kind"] == "chat"
    assert torch.equal(ck.read_model_state(tmp_path)["b"], _state(6)["b"])


@pytest.mark.parametrize("crash_in", ["write_tensors", "write_json", "_replace_dir"])
def test_crash_during_save_keeps_previous_latest(tmp_path, monkeypatch, crash_in):
    _save(tmp_path, 1, optimizer_state={"x": torch.ones(2)})
    real = getattr(ck, crash_in)
    calls = {"n": 0}

    def boom(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 or crash_in == "_replace_dir":
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(ck, crash_in, boom)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, optimizer_state={"x": torch.ones(2)})
    monkeypatch.undo()
    assert ck.latest(tmp_path).name == "step_000001"
    assert torch.equal(ck.read_model_state(tmp_path)["w"], _state(1)["w"])
    _save(tmp_path, 3)  # the next save cleans the leftovers
    assert not list(tmp_path.glob(".step_*"))


SAVER = textwrap.dedent("""
    import sys, torch
    from nanogpt_course import checkpoint as ck
    run = sys.argv[1]
    step = 0
    while True:
        step += 1
        big = {"w": torch.full((512, 512), float(step)), "v": torch.full((300_000,), float(step))}
        opt = {"m": torch.full((400_000,), float(step)), "step": step}
        ck.save(run, step, meta={"kind": "base", "model_config": {}}, model_state=big,
                optimizer_state=opt, keep_last=2)
        print(step, flush=True)
""")


@pytest.mark.slow
def test_sigkill_at_random_moments_never_breaks_latest(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    run = tmp_path / "run"
    rng = random.Random(0)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        proc.stdout.readline()  # at least one save finished in this process
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        folder = ck.latest(run)
        assert folder is not None
        step = ck.read_meta(run)["step"]
        model = ck.read_model_state(run)
        assert torch.equal(model["w"], torch.full((512, 512), float(step)))
        opt = ck.read_optimizer_state(run, 0)
        assert opt["step"] == step and float(opt["m"][-1]) == step
    assert kills == 4


def test_refuses_pickles_unknown_formats_and_missing(tmp_path):
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pt)
    with pytest.raises(ck.CheckpointError, match="never unpickles"):
        ck.load(pt)
    folder = _save(tmp_path / "run", 1)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(ck.CheckpointError, match="not a nanogpt_course checkpoint"):
        ck.load(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ck.CheckpointError, match="version 99"):
        ck.read_meta(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.read_meta(folder)
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load(tmp_path / "nowhere")
    with pytest.raises(ck.CheckpointError, match="no complete checkpoint"):
        ck.load(tmp_path)


def test_truncated_tensor_file_is_a_clear_error(tmp_path):
    folder = _save(tmp_path, 1)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="corrupt or truncated"):
        ck.read_model_state(folder)


def test_rng_state_roundtrip():
    import random as pyrandom

    torch.manual_seed(3)
    pyrandom.seed(3)
    state = json.loads(json.dumps(ck.rng_state()))
    a, b = torch.rand(4), pyrandom.random()
    ck.set_rng_state(state)
    assert torch.equal(torch.rand(4), a) and pyrandom.random() == b


# ------------------------------------------------------------------------- broken checkpoints
def _real_checkpoint(run, *, optimizer: bool = True):
    """A real (tiny) GPT + tokenizer checkpoint, saved the way the trainer saves one."""
    from nanogpt_course.model import GPT, GPTConfig
    from nanogpt_course.tokenizer import Tokenizer

    tok = Tokenizer.from_ranks([bytes([b]) for b in range(256)], r"\S+|\s+")
    config = GPTConfig.from_depth(1, vocab_size=tok.vocab_size, sequence_len=16,
                                  aspect_ratio=32, head_dim=32)
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    opt = {"state": {0: {"exp_avg": torch.ones(3)}}} if optimizer else None
    return ck.save(run, 3, meta={"kind": "base", "model_config": config.to_dict()},
                   model_state=model.state_dict(), optimizer_state=opt,
                   optimizer_layout={"params": []} if optimizer else None, tokenizer=tok)


def _break(folder, case):
    """Damage a checkpoint in one of the ways the issue lists."""
    model = folder / "model.safetensors"
    if case == "missing model file":
        model.unlink()
    elif case == "missing optimizer shard":
        (folder / "optimizer_rank0.safetensors").unlink()
    elif case == "truncated":  # shorter than its header says
        data = model.read_bytes()
        model.write_bytes(data[: len(data) - 100])
    elif case == "corrupt header":
        data = bytearray(model.read_bytes())
        data[8:12] = b"\xff\xfe{{"
        model.write_bytes(bytes(data))
    elif case == "corrupt meta.json":
        (folder / "meta.json").write_text('{"format": "nanogpt_course.checkpoint", "vers')
    elif case == "model_config not a model":
        meta = json.loads((folder / "meta.json").read_text())
        meta["model_config"] = {"n_layers_typo": 3}
        (folder / "meta.json").write_text(json.dumps(meta))
    elif case in ("shape mismatch", "dtype mismatch"):
        from safetensors.torch import load_file, save_file

        state = load_file(str(model))
        if case == "shape mismatch":  # meta.json now says 2 layers' worth of width
            meta = json.loads((folder / "meta.json").read_text())
            meta["model_config"]["n_embd"] *= 2
            meta["model_config"]["n_head"] *= 2
            meta["model_config"]["n_kv_head"] = meta["model_config"]["n_head"]
            (folder / "meta.json").write_text(json.dumps(meta))
        else:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            save_file(state, str(model))
    elif case == "tokenizer vocab mismatch":
        from nanogpt_course.tokenizer import Tokenizer

        other = Tokenizer.from_ranks([bytes([b]) for b in range(256)] + [b"ab"], r"\S+|\s+")
        other.save(folder)
        meta = json.loads((folder / "meta.json").read_text())
        meta["tokenizer"] = other.identity  # consistent name, wrong size
        (folder / "meta.json").write_text(json.dumps(meta))
    elif case == "flipped bit":
        data = bytearray(model.read_bytes())
        data[-5] ^= 0x10  # inside a weight: the file still parses
        model.write_bytes(bytes(data))
    else:
        raise AssertionError(case)


BROKEN = {
    "missing model file": "model.safetensors is missing",
    "missing optimizer shard": "optimizer_rank0.safetensors is missing",
    "truncated": "is truncated",
    "corrupt header": "corrupt header",
    "corrupt meta.json": "meta.json is corrupt",
    "model_config not a model": "does not describe a model",
    "shape mismatch": "needs float32",
    "dtype mismatch": "is float16",
    "tokenizer vocab mismatch": "tokenizer has 260 ids but the model",
    "flipped bit": "sha256 differs",
}


def test_good_checkpoint_validates_and_records_sums(tmp_path):
    folder = _real_checkpoint(tmp_path / "run")
    meta = ck.validate(folder, optimizer=True)
    assert set(meta["sha256"]) == {"model.safetensors", "optimizer_rank0.safetensors",
                                   "optimizer.json", "tokenizer.json"}
    from nanogpt_course.checkpoint_verify import sha256_file

    assert meta["sha256"]["model.safetensors"] == sha256_file(folder / "model.safetensors")
    lines = []
    assert ck_verify().verify(tmp_path / "run", out=lines.append) == 4
    assert lines[-1].startswith("checkpoint OK") and all(" corrupt" not in x for x in lines)
    assert ck.load(folder, device="cpu").model is not None


def ck_verify():
    from nanogpt_course import checkpoint_verify

    return checkpoint_verify


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_checkpoint_is_named(tmp_path, case):
    folder = _real_checkpoint(tmp_path / "run")
    _break(folder, case)
    with pytest.raises(ck.CheckpointError, match=BROKEN[case]):
        ck.validate(folder, optimizer=True)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_trainer_rejects_broken_checkpoint_early(tmp_path, case, capsys, monkeypatch):
    """One error: line, exit code 2, before the data is prepared or weights allocated, and no
    run folder left behind — from --checkpoint (fine-tuning) and from --resume."""
    from nanogpt_course.train import __main__ as cli
    from nanogpt_course.train import build, modes

    def no_data(*args, **kwargs):
        raise AssertionError("data preparation started for a broken checkpoint")

    def no_weights(*args, **kwargs):
        raise AssertionError("weights allocated for a broken checkpoint")

    monkeypatch.setattr(modes, "_default_loaders", no_data)
    monkeypatch.setattr(build, "build_model", no_weights)
    folder = _real_checkpoint(tmp_path / "run")
    _break(folder, case)
    out = tmp_path / "finetune"
    if case != "missing optimizer shard":  # (fine-tuning reads no optimizer state)
        code = cli.main(["--mode", "mid-training", "--checkpoint", str(tmp_path / "run"),
                         "--out", str(out), "--max-steps", "1", "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(err) == 1 and err[0].startswith("error: ") and BROKEN[case] in err[0], err
        assert not out.exists()
    if "meta.json" in case:
        return  # (a run without a readable meta.json has no complete step to resume)
    code = cli.main(["--resume", "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and BROKEN[case] in err[0], err


def test_truncated_checkpoint_from_the_cli(tmp_path):
    """The real command: a missing folder and a truncated file each give one error: line."""
    env = {**os.environ, "NANOGPT_COURSE_RUNS": str(tmp_path / "runs")}
    _break(_real_checkpoint(tmp_path / "run"), "truncated")
    for ckpt in ("nope", "run"):
        out = subprocess.run([sys.executable, "-m", "nanogpt_course.train", "--mode",
                              "mid-training", "--checkpoint", str(tmp_path / ckpt), "--out",
                              str(tmp_path / "o")], capture_output=True, text=True, env=env,
                             timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert str(tmp_path / ckpt) in lines[0]
        assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()
    assert "is truncated" in lines[0]


def test_verify_cli(tmp_path):
    folder = _real_checkpoint(tmp_path / "run", optimizer=False)
    run = [sys.executable, "-m", "nanogpt_course.checkpoint", "verify", str(tmp_path / "run")]
    good = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "ok       model.safetensors" in good.stdout and "checkpoint OK" in good.stdout
    _break(folder, "flipped bit")
    bad = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
    assert "sha256 differs" in bad.stderr
