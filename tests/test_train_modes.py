"""Modes (sft, mid-training, all), loading what they write, validation bpb, eval hooks."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from test_train_helpers import tiny_cfg

from nanogpt_course import checkpoint as ck
from nanogpt_course.train import read_metrics, tiny, train
from nanogpt_course.train.validation import evaluate_bpb

FINETUNE = dict(depth=None, tokenizer=None, max_steps=3)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    train(tiny_cfg(out, max_steps=3), echo=False)
    return out


def test_load_returns_model_tokenizer_meta(base):
    for path in (base, ck.latest(base)):  # run folder or step folder
        c = ck.load(path, device="cpu")
        assert c.step == 3 and c.kind == "base" and c.meta["finished"]
        assert c.model.config.n_layer == 2 and not c.model.training
        ids = c.tokenizer.encode("hello world")
        logits = c.model(torch.tensor([ids]))
        assert logits.shape == (1, len(ids), c.tokenizer.vocab_size)
    state = ck.read_model_state(base)
    for name, tensor in c.model.state_dict().items():
        assert torch.equal(tensor, state[name])


def test_sft_on_your_own_chat_jsonl(base, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(c) + "\n" for c in tiny.synthetic_chats(200)))
    out = tmp_path / "sft"
    res = train(tiny_cfg(out, mode="sft", checkpoint=str(base), data=str(chats), **FINETUNE),
                echo=False)
    assert res.status == "finished"
    meta = ck.read_meta(out)
    assert meta["kind"] == "chat" and meta["init_from"].endswith("step_000003")
    assert meta["plan"]["weight_decay"] == 0.0  # fine-tuning: no decay unless asked


def test_sft_needs_chat_data(base, tmp_path):
    from nanogpt_course.train import ConfigError

    text = tmp_path / "notes.txt"
    text.write_text("plain text, no conversations\n" * 100)
    with pytest.raises(ConfigError, match="SFT needs chat data"):
        train(tiny_cfg(tmp_path / "x", mode="sft", checkpoint=str(base), data=str(text),
                       **FINETUNE), echo=False)


def test_mid_training_one_pass_by_default(base, tmp_path):
    chats = tmp_path / "c.jsonl"
    chats.write_text("".join(json.dumps(c) + "\n" for c in tiny.synthetic_chats(60)))
    out = tmp_path / "mid"
    res = train(tiny_cfg(out, mode="mid-training", checkpoint=str(base), data=str(chats),
                         **{**FINETUNE, "max_steps": None}), echo=False)
    meta = ck.read_meta(out)
    assert "one pass over" in meta["plan"]["steps_from"]
    assert res.step == meta["plan"]["num_steps"] >= 1


def test_all_makes_two_runs(tmp_path, shared_data):
    out = tmp_path / "all"
    results = train(tiny_cfg(out, mode="all", max_steps=2), echo=False)
    assert [r.status for r in results] == ["finished", "finished"]
    assert ck.read_meta(out / "pretraining")["kind"] == "base"
    mid = ck.read_meta(out / "mid-training")
    assert mid["kind"] == "chat" and mid["data"] == "task_mixture"
    assert mid["init_from"] == str(out / "pretraining" / "step_000002")
    # --resume on a finished `all` run goes straight through both stages
    again = train(tiny_cfg(out, mode="all", max_steps=2, resume=True), echo=False)
    assert again[-1].status == "finished"


def test_val_bpb_matches_a_naive_sum(base):
    c = ck.load(base, device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, c.tokenizer.vocab_size, (2, 16), generator=g)
    y = torch.randint(0, c.tokenizer.vocab_size, (2, 16), generator=g)
    y[0, :3] = -1
    y[1, 5] = c.tokenizer.bos_id  # a special token: 0 bytes, left out of both sums
    got = evaluate_bpb(c.model, [(x, y)], c.tokenizer.token_bytes)
    with torch.no_grad():
        logits = c.model(x).double()
    nats = nbytes = 0.0
    for b in range(2):
        for t in range(16):
            tgt = int(y[b, t])
            if tgt < 0 or int(c.tokenizer.token_bytes[tgt]) == 0:
                continue
            nats += float(-torch.log_softmax(logits[b, t], -1)[tgt])
            nbytes += int(c.tokenizer.token_bytes[tgt])
    assert got == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)


def test_core_hooks_announce_or_run(tmp_path, capsys, shared_data):  # CORE needs the bundle
    out = tmp_path / "run"
    train(tiny_cfg(out, max_steps=2, core_every=1, chatcore_every=1), echo=True)
    text = capsys.readouterr().out
    if importlib.util.find_spec("nanogpt_course.eval") is None:
        lines = text.splitlines()
        assert sum(ln.startswith("CORE evaluation arrives with the evaluation issue")
                   for ln in lines) == 1
        assert sum(ln.startswith("ChatCORE evaluation arrives with the evaluation issue")
                   for ln in lines) == 1
        assert not any("core" in r for r in read_metrics(out))
    else:
        assert any("core" in r for r in read_metrics(out))


def test_fine_tuning_refuses_a_used_out_folder(base, tmp_path):
    from nanogpt_course.train import ConfigError

    chats = tmp_path / "c.jsonl"
    chats.write_text("".join(json.dumps(c) + "\n" for c in tiny.synthetic_chats(60)))
    out = tmp_path / "sft"
    kw = dict(mode="sft", checkpoint=str(base), data=str(chats), **{**FINETUNE, "max_steps": None})
    train(tiny_cfg(out, **kw), echo=False)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(tiny_cfg(out, **kw), echo=False)
