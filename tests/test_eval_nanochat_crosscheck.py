"""Cross-check against karpathy/nanochat's ``nanochat/core_eval.py`` (commit 92d63d4): the
same checkpoint, the same examples, the same verdict per example.

nanochat is not part of this repository: the test looks for a local copy in
``$NANOCHAT_DIR`` or ``<repo>/.nanochat`` (git-ignored) and skips without one. The full
table (every present task, 100 examples at context 128, 50 at context 2048) is in
docs/EVALUATION.md; this test re-runs a slice of it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from nanogpt_course.eval import core, icl

TASKS = ("copa", "arc_easy", "winograd", "lambada_openai", "bigbench_operators", "boolq")


@pytest.fixture(scope="module")
def core_eval(repo):
    folder = Path(os.environ.get("NANOCHAT_DIR", repo / ".nanochat"))
    if not (folder / "nanochat" / "core_eval.py").is_file():
        pytest.skip(f"cross-check: no local nanochat copy at {folder} (set NANOCHAT_DIR)")
    pytest.importorskip("jinja2")
    sys.path.insert(0, str(folder))
    try:
        from nanochat import core_eval
    finally:
        sys.path.remove(str(folder))
    return core_eval


@pytest.mark.slow
def test_same_verdict_as_nanochat_per_example(core_eval, tiny_checkpoint, shared_data):
    from nanogpt_course import checkpoint as ck

    c = ck.load(tiny_checkpoint, device="cpu")
    tok = c.tokenizer

    class Tok:  # the two calls nanochat's core_eval makes
        def __call__(self, texts, prepend=None):
            return [[prepend] + tok.encode(t) for t in texts]

        def get_bos_token_id(self):
            return tok.bos_id

    class Model(torch.nn.Module):  # nanochat left-truncates to max_seq_len, as we do
        def __init__(self, gpt):
            super().__init__()
            self.gpt, self.max_seq_len = gpt, gpt.config.sequence_len

        def forward(self, idx):
            return self.gpt(idx)

    ref_model = Model(c.model)
    for label in TASKS:
        task = core.TASKS_BY_LABEL[label]
        data = core.load_examples(task, 30)
        meta = {"task_type": task.kind, "num_fewshot": task.shots,
                "continuation_delimiter": task.delimiter}
        theirs = [float(core_eval.evaluate_example(i, ref_model, Tok(), data, "cpu", meta))
                  for i in range(len(data))]
        ours = []
        for i in range(len(data)):
            rows = icl.example_rows(task.kind, data[i], i, data, task.shots, task.delimiter,
                                    tok.encode, tok.bos_id, c.model.config.sequence_len)
            ours.append(icl.example_credit(task.kind, icl.score_rows(c.model, rows, pad=tok.bos_id),
                                           data[i].get("gold")))
        assert ours == theirs, label
        credit, n = core.evaluate_task(c.model, tok, task, data)  # the batched CLI path
        assert credit == sum(theirs), label
