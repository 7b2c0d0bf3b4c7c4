"""The chat models' identity data: the mirror's nanochat identity conversations are left out
and the course's own are generated deterministically."""

import json
import os
from pathlib import Path

import pytest

import nanogpt_course.data.sources  # noqa: F401  (registers the sources before tasks)
from nanogpt_course.data.identity import identity_conversations, is_foreign_identity
from nanogpt_course.data.tasks import identity_conversations as mixture_identity


def test_generated_conversations_are_deterministic_and_well_formed():
    a, b = identity_conversations(50, seed=3), identity_conversations(50, seed=3)
    assert a == b and a != identity_conversations(50, seed=4)
    for conv in a:
        roles = [m["role"] for m in conv]
        assert roles[::2] == ["user"] * len(roles[::2])
        assert roles[1::2] == ["assistant"] * len(roles[1::2])
        assert len(roles) % 2 == 0
        assert not is_foreign_identity(conv)
        assert "nanogpt-course" in conv[1]["content"]


def test_foreign_identity_detection():
    assert is_foreign_identity([{"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "I am NanoChat, by Andrej Karpathy"}])
    assert is_foreign_identity([{"role": "assistant", "content": "the d24 model costs $73"}])
    assert not is_foreign_identity([{"role": "assistant", "content": "Paris is the capital."}])


@pytest.mark.skipif(not os.environ.get("NANOGPT_COURSE_DATA"),
                    reason="needs the data mirror (NANOGPT_COURSE_DATA) for the chat sample")
def test_mixture_identity_part_never_says_nanochat():
    path = Path(os.environ["NANOGPT_COURSE_DATA"]) / "chat" / "identity_conversations.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert sum(is_foreign_identity(c) for c in raw) > 900  # the sample really is nanochat's
    convs = list(mixture_identity(path))
    kept = [c for c in raw if not is_foreign_identity(c)]
    assert convs[:len(kept)] == kept  # the generic ones are kept, in order
    assert len(convs) == len(kept) + len(identity_conversations())
    text = json.dumps(convs).lower()
    assert "nanochat" not in text and "karpathy" not in text


@pytest.mark.skipif(not os.environ.get("NANOGPT_COURSE_DATA"),
                    reason="needs the data mirror (NANOGPT_COURSE_DATA) for the chat sample")
def test_identity_copies_repeat_only_identity_and_keep_each_conversation_in_one_split():
    from nanogpt_course.data.tasks import TaskMixture

    def docs(copies):
        resolved = TaskMixture().resolve(download=False, online=False, identity_copies=copies)
        return list(resolved.documents())

    one, three = docs(1), docs(3)
    parts = lambda ds, p: [d for d in ds if d.key.split(":")[0] == p]
    assert len(parts(three, "identity")) == 3 * len(parts(one, "identity")) > 0
    for p in ("gsm8k", "mmlu_dev"):
        assert len(parts(three, p)) == len(parts(one, p)) > 0
    split_of = {d.key: d.split for d in one}
    for d in parts(three, "identity"):  # a copy lands where its original does: no leak into val
        assert d.split == split_of[d.key.split("#")[0]]
    assert len({d.key for d in three}) == len(three)  # copies have their own names
    with pytest.raises(ValueError, match="identity_copies"):
        TaskMixture().resolve(download=False, online=False, identity_copies=0)
