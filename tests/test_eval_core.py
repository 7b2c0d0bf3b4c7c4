"""CORE: prompt rendering on real bundle examples, answer spans, truncation, scoring with an
oracle / a tied / a random model, centered arithmetic, the task table vs the bundle, and
bits per byte against a naive loop."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch

from nanogpt_course.eval import core, icl
from nanogpt_course.eval.results import Report, TaskResult, centered

BUNDLE = "eval_bundle/eval_data"


def _records(shared_data, uri):
    with open(shared_data / BUNDLE / uri, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------- rendering
def test_render_copa_zero_shot_real_example(shared_data):
    item = _records(shared_data, "commonsense_reasoning/copa.jsonl")[0]
    assert icl.render_mc(item, " ") == [
        "The man turned on the faucet, therefore the toilet filled with water.",
        "The man turned on the faucet, therefore water flowed from the spout."]
    assert item["gold"] == 1


def test_render_jeopardy_one_shot_real_example(shared_data):
    data = _records(shared_data, "world_knowledge/jeopardy_all.jsonl")
    without, with_ = icl.render_lm(data[0], "\nAnswer: ", [data[5]])
    shot = ("WORLD HISTORY: This dominion was created by the British North America Act on "
            "July 1, 1867\nAnswer: Canada\n\n")
    question = ("WORLD HISTORY: This Navy commander flew from a base at Little America to the "
                "South Pole & back Nov. 28-29, 1929\nAnswer:")
    assert without == shot + question  # stripped: no trailing space
    assert with_ == shot + question + " Admiral Richard Byrd"


def test_render_winograd_schema_real_example(shared_data):
    data = _records(shared_data, "language_understanding/winograd_wsc.jsonl")
    prompts = icl.render_schema(data[0], " ", [data[1]])
    shot = ("The city councilmen refused the demonstrators a permit because the demonstrators "
            "advocated violence.\n\n")
    assert prompts == [
        shot + "The city councilmen refused the demonstrators a permit because the city "
               "councilmen feared violence.",
        shot + "The city councilmen refused the demonstrators a permit because the "
               "demonstrators feared violence."]


def test_render_arc_ten_shot_layout(shared_data):
    data = _records(shared_data, "world_knowledge/arc_easy.jsonl")
    idx = icl.fewshot_indices(3, len(data), 10)
    assert len(idx) == 10 and 3 not in idx and len(set(idx)) == 10
    assert idx == icl.fewshot_indices(3, len(data), 10)  # fixed per-example seed
    assert idx == random.Random(1234 + 3).sample([i for i in range(len(data)) if i != 3], 10)
    prompts = icl.render_mc(data[3], "\nAnswer: ", [data[i] for i in idx])
    first = data[idx[0]]
    assert prompts[0].startswith(first["query"] + "\nAnswer: " + first["choices"][first["gold"]] + "\n\n")
    for p, choice in zip(prompts, data[3]["choices"]):
        assert p.endswith("\n\n" + data[3]["query"] + "\nAnswer: " + choice)
        assert p.count("\nAnswer: ") == 11


def test_fewshot_never_includes_the_example():
    for index in range(50):
        assert index not in icl.fewshot_indices(index, 12, 10)
    assert sorted(icl.fewshot_indices(0, 5, 10)) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- spans
def test_spans_by_task_type():
    mc = [[0, 5, 6, 7, 8], [0, 5, 6, 9], [0, 5, 6, 7, 3, 3]]
    assert icl.spans("multiple_choice", mc) == [(3, 5), (3, 4), (3, 6)]
    schema = [[0, 1, 2, 8, 9], [0, 4, 8, 9]]
    assert icl.spans("schema", schema) == [(3, 5), (2, 4)]
    assert icl.spans("language_modeling", [[0, 1, 2], [0, 1, 2, 3, 4]]) == [(3, 5)]
    # a tokenizer that merges across the boundary: score from the first difference
    assert icl.spans("language_modeling", [[0, 1, 2], [0, 1, 7, 4]]) == [(2, 4)]
    # a choice that is a prefix of another keeps a 1-token span
    assert icl.spans("multiple_choice", [[0, 1, 2], [0, 1, 2, 3]]) == [(2, 3), (2, 4)]


def test_left_truncation_keeps_the_end_and_shifts_the_span():
    tokens, s, e = icl.truncate_left(list(range(10)), 7, 10, 4)
    assert tokens == [6, 7, 8, 9] and (s, e) == (1, 4)
    assert tokens[s:e] == [7, 8, 9]
    assert icl.truncate_left([1, 2, 3], 1, 3, 8) == ([1, 2, 3], 1, 3)
    tokens, s, e = icl.truncate_left(list(range(10)), 2, 10, 4)  # span longer than context
    assert (s, e) == (1, 4)


# ---------------------------------------------------------------------------- centered
def test_centered_arithmetic():
    assert centered(0.25, 0.25) == 0.0
    assert centered(1.0, 0.25) == 1.0
    assert centered(0.5, 0.25) == pytest.approx(1 / 3)
    assert centered(0.0, 0.5) == -1.0
    assert centered(0.7, 0.62) == pytest.approx(0.08 / 0.38)
    assert centered(0.3, 0.0) == 0.3
    r = Report("CORE", [TaskResult("a", 10, 5, 0.5, 1.0), TaskResult("b", 4, 3, 0.25, 1.0)],
               expected=22, missing=["c"])
    assert r.score == pytest.approx((0.0 + (0.75 - 0.25) / 0.75) / 2)
    assert r.label == "CORE (2/22 tasks)" and r.partial
    assert Report("X", [TaskResult("a", 1, 1, 0, 0)], expected=1).label == "X"


def test_task_table_matches_the_bundle(shared_data):
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((shared_data / "eval_bundle" / "core.yaml").read_text())["icl_tasks"]
    with open(shared_data / "eval_bundle" / "eval_meta_data.csv", newline="") as f:
        baselines = {r["Eval Task"]: float(r["Random baseline"]) for r in csv.DictReader(f)}
    ours = [(t.label, t.uri, t.shots, t.kind, t.delimiter, t.baseline_percent) for t in core.CORE_TASKS]
    theirs = [(t["label"], t["dataset_uri"], t["num_fewshot"][0], t["icl_task_type"],
               t.get("continuation_delimiter", " "), baselines[t["label"]]) for t in config]
    assert ours == theirs and len(ours) == 22


def test_bundle_status_reports_missing_tasks(shared_data):
    status = core.bundle_status()
    assert status["coqa"] == "missing"
    assert status["arc_easy"] == "bundle"
    assert status["squad"].startswith("converted")  # from squad/dev-v1.1.json


def test_squad_conversion_real_first_rows(shared_data):
    from nanogpt_course.eval import datasets

    path = datasets.converted_squad()
    rows = datasets.read_jsonl(path)
    assert len(rows) == 10570
    assert rows[0]["context"].startswith("Context: Super Bowl 50 was an American football game")
    assert rows[0]["context"].endswith("\nQuestion: Which NFL team represented the AFC at Super Bowl 50?\nAnswer:")
    assert rows[0]["continuation"] == "Denver Broncos"


# ---------------------------------------------------------------------------- fake models
class _Fake(torch.nn.Module):
    def __init__(self, vocab: int, sequence_len: int = 1 << 20):
        super().__init__()
        self.vocab = vocab
        self.config = type("C", (), {"sequence_len": sequence_len})()
        self.anchor = torch.nn.Parameter(torch.zeros(1))


class Oracle(_Fake):
    """Knows every gold sequence: predicts its next token with certainty, else uniform."""

    MOD = (1 << 61) - 1

    def __init__(self, vocab, gold_sequences):
        super().__init__(vocab)
        self.next = {}
        for seq in gold_sequences:
            h = 0
            for t in range(len(seq) - 1):
                h = (h * 1_000_003 + seq[t] + 1) % self.MOD
                self.next[h] = seq[t + 1]

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        rows = idx.tolist()
        for b in range(B):
            h = 0
            for t in range(T):
                h = (h * 1_000_003 + rows[b][t] + 1) % self.MOD
                if h in self.next:
                    logits[b, t, self.next[h]] = 40.0
        return logits


class Constant(_Fake):
    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab)


class RandomScores(_Fake):
    """Random logits: each choice gets an independent random mean loss."""

    def __init__(self, vocab, seed=0):
        super().__init__(vocab)
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, idx):
        return 3 * torch.randn(*idx.shape, self.vocab, generator=self.gen)


@pytest.fixture(scope="module")
def tok():
    from nanogpt_course.train.tiny import tiny_tokenizer

    return tiny_tokenizer()


def _gold_sequences(task, data, tok):
    seqs = []
    for i, item in enumerate(data):
        rows = icl.example_rows(task.kind, item, i, data, task.shots, task.delimiter, tok.encode,
                                tok.bos_id, 1 << 20)
        gold = 0 if task.kind == "language_modeling" else item["gold"]
        seqs.append(rows[gold].tokens)
    return seqs


@pytest.mark.slow
def test_oracle_scores_one_on_every_task(shared_data, tok):
    for task in core.CORE_TASKS:
        data = core.load_examples(task, 8)
        if data is None:
            continue
        model = Oracle(tok.vocab_size, _gold_sequences(task, data, tok))
        credit, n = core.evaluate_task(model, tok, task, data)
        assert (credit, n) == (8, 8), task.label


def test_constant_model_ties_do_not_favour_the_first_choice(shared_data, tok):
    model = Constant(tok.vocab_size)
    for label in ("copa", "arc_easy", "winograd", "commonsense_qa"):
        task = core.TASKS_BY_LABEL[label]
        data = core.load_examples(task, 20)
        credit, n = core.evaluate_task(model, tok, task, data)
        k = len(data[0].get("choices") or data[0].get("context_options"))
        assert credit / n == pytest.approx(1 / k), label  # nanochat's min() would give P(gold == 0)
        if task.baseline == pytest.approx(1 / k):  # commonsense_qa: 4 letters, baseline 20 %
            assert centered(credit / n, task.baseline) == pytest.approx(0.0, abs=1e-12)


def test_random_independent_scorer_lands_near_zero(shared_data, tok):
    model = RandomScores(tok.vocab_size)
    tasks = ["copa", "piqa", "winogrande", "winograd", "openbook_qa", "hellaswag_zeroshot"]
    values, total = [], 0
    for label in tasks:
        task = core.TASKS_BY_LABEL[label]
        data = core.load_examples(task, 100)
        credit, n = core.evaluate_task(model, tok, task, data)
        values.append(centered(credit / n, task.baseline))
        total += n
    # 600 examples; the standard error of the mean centered accuracy is about 0.05
    assert abs(sum(values) / len(values)) < 0.15, values


# ---------------------------------------------------------------------------- bpb
def test_bpb_equals_a_naive_token_loop(tiny_checkpoint):
    from nanogpt_course import checkpoint as ck
    from nanogpt_course.eval import evaluate_bpb

    c = ck.load(tiny_checkpoint, device="cpu")
    g = torch.Generator().manual_seed(0)
    V = c.model.config.vocab_size
    x = torch.randint(0, V, (3, 40), generator=g)
    y = torch.randint(0, V, (3, 40), generator=g)
    y[0, :5] = -1
    y[1, 7] = c.tokenizer.bos_id  # a special token: 0 bytes, left out
    got = evaluate_bpb(c.model, [(x, y)], c.tokenizer.token_bytes)
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        logits = c.model(x)
    for b in range(3):
        for t in range(40):
            target = int(y[b, t])
            if target < 0 or len(c.tokenizer.decode_bytes([target])) == 0 or target in c.tokenizer.special_tokens.values():
                continue
            logp = torch.log_softmax(logits[b, t].double(), dim=-1)[target].item()
            nats -= logp
            nbytes += len(c.tokenizer.decode_bytes([target]))
    assert got == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-5)


def test_report_without_matplotlib_still_writes_csv_and_json(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    files = Report("CORE", [TaskResult("copa", 4, 3, 0.5, 0.1)], expected=22).write(tmp_path)
    assert sorted(files) == ["csv", "json"] and not (tmp_path / "core.png").exists()
    assert json.loads((tmp_path / "core.json").read_text())["tasks"]["copa"]["centered"] == 0.5
