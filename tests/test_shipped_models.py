"""The small base and chat models shipped in nanogpt_course/models/: they load offline, the
chat model answers in the template, knows who it is, and learned the assistant's side."""

import json
from pathlib import Path

import pytest
import torch

from nanogpt_course import checkpoint
from nanogpt_course.chat import default_checkpoint
from nanogpt_course.checkpoint_verify import verify
from nanogpt_course.engine import generate
from nanogpt_course.eval.bpb import evaluate_bpb

PROMPTS = [
    "Hello!", "Who are you?", "What is 12 plus 30?", "Tell me about yourself.",
    "What can you do?", "Write a Python function that adds two numbers.", "Hi, how are you?",
    "What is the capital of France?", "Can you browse the internet?", "Thanks!",
    "What is a list in Python?", "How were you trained?", "Are you ChatGPT?", "What is 7 times 8?",
    "Explain recursion briefly.", "Good morning!", "Who made you?", "How big are you?",
    "What does import do?", "Can I train a model like you?",
]
HELD_OUT = [  # conversations that are in no training file (written for this test)
    [{"role": "user", "content": "What is 3 plus 4?"},
     {"role": "assistant", "content": "3 plus 4 is 7.\n#### 7"}],
    [{"role": "user", "content": "Hi! Who am I talking to?"},
     {"role": "assistant", "content": "I am a small GPT language model trained with "
                                      "nanogpt-course."}],
    [{"role": "user", "content": "Tom has 5 apples and eats 2. How many are left?"},
     {"role": "assistant", "content": "Tom has 5 - 2 = 3 apples left.\n#### 3"}],
]


@pytest.fixture(scope="module")
def models():
    return {kind: checkpoint.load(default_checkpoint(kind), device="cpu")
            for kind in ("base", "chat")}


def test_shipped_models_verify_and_fit_the_size_budget():
    total = 0
    for kind in ("base", "chat"):
        folder = default_checkpoint(kind)
        assert verify(folder, out=lambda line: None) == 2
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["kind"] == kind and meta["weights_dtype"] == "bfloat16"
        total += sum(p.stat().st_size for p in Path(folder).iterdir())
    assert total <= 20 * 2**20


def _reply(c, prompt, **kw):
    tok = c.tokenizer
    ids = tok.render_for_completion([{"role": "user", "content": prompt}])
    end = tok.encode_special("<|im_end|>")
    out = list(generate(c.model, ids, 96, stop=[end], **kw))
    return out, end


def test_chat_replies_end_their_turn(models):
    ended = 0
    for prompt in PROMPTS:
        out, end = _reply(models["chat"], prompt, temperature=0.0)
        ended += out[-1] == end
    assert ended >= 18, f"only {ended} of 20 replies ended with <|im_end|>"


def test_reply_is_stable_for_a_fixed_seed(models):
    a, _ = _reply(models["chat"], "Who are you?", temperature=0.8, top_k=50, seed=123)
    b, _ = _reply(models["chat"], "Who are you?", temperature=0.8, top_k=50, seed=123)
    assert a == b


def test_chat_model_knows_who_it_is(models):
    c = models["chat"]
    for prompt in ("Who are you?", "What is your name?", "Who made you?"):
        out, end = _reply(c, prompt, temperature=0.0)
        text = c.tokenizer.decode([t for t in out if t != end]).lower()
        assert "nanochat" not in text and "karpathy" not in text
    out, end = _reply(c, "Who are you?", temperature=0.0)
    assert "nanogpt-course" in c.tokenizer.decode([t for t in out if t != end])


def _assistant_bpb(c) -> float:
    """Bits per byte on the assistant tokens of HELD_OUT (the rest masked to -1)."""
    batches = []
    for conv in HELD_OUT:
        ids, mask = c.tokenizer.render_chat(conv)
        x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
        batches.append((x, torch.where(torch.tensor([mask[1:]]).bool(), y, -1)))
    return evaluate_bpb(c.model, batches, c.tokenizer.token_bytes)


def test_chat_model_learned_the_assistant_side(models):
    base, chat = _assistant_bpb(models["base"]), _assistant_bpb(models["chat"])
    assert chat < base, (chat, base)
