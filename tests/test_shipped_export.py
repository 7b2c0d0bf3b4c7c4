"""The shipped models' export: bfloat16 weights without optimizer state that load, verify and
generate like the checkpoint they came from; an undeclared dtype change is still refused."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from nanogpt_course import checkpoint
from nanogpt_course.checkpoint_verify import validate, verify

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("train_shipped_models",
                                                  ROOT / "scripts" / "train_shipped_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_is_bf16_verifies_and_loads(tiny_chat_checkpoint, tmp_path):
    src = checkpoint.latest(Path(tiny_chat_checkpoint))
    _script().export(src.parent, tmp_path / "chat")
    out = tmp_path / "chat"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors",
                                                     "tokenizer.json"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["weights_dtype"] == "bfloat16" and meta["has_optimizer"] is False
    assert verify(out, out=lambda line: None) == 2  # both files checked against their sums
    c, ref = checkpoint.load(out, device="cpu"), checkpoint.load(src, device="cpu")
    assert c.meta["kind"] == "chat"
    for (name, a), (_, b) in zip(c.model.state_dict().items(), ref.model.state_dict().items()):
        torch.testing.assert_close(a, b.to(torch.bfloat16).to(a.dtype), msg=name)


def test_undeclared_half_weights_are_still_refused(tiny_chat_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    src = checkpoint.latest(Path(tiny_chat_checkpoint))
    _script().export(src.parent, tmp_path / "chat")
    out = tmp_path / "chat"
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in load_file(str(out / "model.safetensors")).items()}
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match="float16"):
        validate(out, hashes=False)
