"""ChatCORE pieces: GSM8K answer extraction on the real test answers, ARC/MMLU loading and
letter scoring, HumanEval program assembly, the chat prompt."""

from __future__ import annotations

import json
import re

import pytest
import torch

from nanogpt_course.eval import chatcore


def test_gsm8k_extraction_on_every_real_test_answer(shared_data):
    rows = [json.loads(line) for line in open(shared_data / "gsm8k" / "test.jsonl")]
    assert len(rows) == 1319
    for row in rows:
        last = row["answer"].strip().splitlines()[-1]
        assert last.startswith("#### ")
        want = float(last[5:].replace(",", ""))  # the gold line, read by hand
        assert chatcore.extract_number(row["answer"]) == want
        assert chatcore.gsm8k_correct(row["answer"], row["answer"])
    assert chatcore.extract_number(rows[0]["answer"]) == 18.0


@pytest.mark.parametrize("text,value", [
    ("so she makes 9 * 2 = 18 dollars.\n#### 18", 18.0),
    ("#### $1,250.50", 1250.5), ("#### -3", -3.0), ("#### 7.", 7.0),
    ("The answer is 42", None), ("#### none", None), ("#### 1\n more #### 2", 2.0)])
def test_gsm8k_extraction_cases(text, value):
    assert chatcore.extract_number(text) == value


def test_gsm8k_numeric_comparison():
    assert chatcore.gsm8k_correct("#### 1,000", "#### 1000")
    assert chatcore.gsm8k_correct("#### 18.0", "x\n#### 18")
    assert not chatcore.gsm8k_correct("#### 17", "#### 18")
    assert not chatcore.gsm8k_correct("18", "#### 18")


def test_arc_uses_the_bundle_gold_and_mmlu_loads_the_test_split(shared_data):
    easy = chatcore.load_task("ARC-Easy")
    challenge = chatcore.load_task("ARC-Challenge")
    assert (len(easy), len(challenge)) == (2376, 1172)
    first = json.loads(open(shared_data / "eval_bundle/eval_data/world_knowledge/arc_easy.jsonl").readline())
    assert easy[0]["gold"] == first["gold"] and easy[0]["choices"] == first["choices"]
    assert easy[0]["question"] == first["query"][len("Question: "):].strip()
    mmlu = chatcore.load_task("MMLU")
    assert len(mmlu) == 14042 and all(0 <= r["gold"] < 4 for r in mmlu)


def test_categorical_prompt_is_the_midtraining_layout(tiny_checkpoint):
    from nanogpt_course.train.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    item = {"question": "What is 2+2?", "choices": ["3", "4", "5", "22"], "gold": 1}
    messages = chatcore.categorical_messages(item)
    assert messages == [{"role": "user", "content":
                         "What is 2+2?\n\nA. 3\nB. 4\nC. 5\nD. 22\n\nAnswer with the letter of the correct choice."}]
    ids = tok.render_for_completion(messages)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert [tok.decode([i]) for i in chatcore.letter_ids(tok, 4)] == ["A", "B", "C", "D"]


class LetterModel(torch.nn.Module):
    """Puts the highest logit on ``pick(prompt_text)``'s letter at every position."""

    def __init__(self, tok, pick):
        super().__init__()
        self.tok, self.pick = tok, pick
        self.config = type("C", (), {"sequence_len": 1 << 20})()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.tok.vocab_size)
        for b, row in enumerate(idx.tolist()):
            letter = self.pick(self.tok.decode(row))
            if letter is not None:
                logits[b, :, self.tok.encode(letter)[0]] = 5.0
        return logits


def test_letter_scoring_oracle_first_letter_and_ties(shared_data):
    from nanogpt_course.train.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    items = chatcore.load_task("ARC-Challenge")[:40]
    by_question = {it["question"]: "ABCD"[it["gold"]] for it in items}

    def oracle(text):
        for q, letter in by_question.items():
            if q in text:
                return letter
        return None

    assert chatcore.run_categorical(LetterModel(tok, oracle), tok, items) == 40
    always_a = chatcore.run_categorical(LetterModel(tok, lambda t: "A"), tok, items)
    assert always_a == sum(it["gold"] == 0 for it in items)
    tied = chatcore.run_categorical(LetterModel(tok, lambda t: None), tok, items)
    assert tied == pytest.approx(40 / 4)  # every letter tied: 1/4 credit each, never "A"


def test_letter_credit():
    assert chatcore.letter_credit([0.1, 0.9, 0.2], 1) == 1.0
    assert chatcore.letter_credit([0.1, 0.9, 0.2], 0) == 0.0
    assert chatcore.letter_credit([0.5, 0.5, 0.2], 1) == 0.5


def test_humaneval_program_assembly(shared_data):
    problems = [json.loads(line) for line in open(shared_data / "humaneval" / "HumanEval.jsonl")]
    p = problems[0]
    body = chatcore.humaneval_program(p, p["canonical_solution"])
    assert body.startswith(p["prompt"] + p["canonical_solution"])
    assert body.rstrip().endswith(f"check({p['entry_point']})")
    whole = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    program = chatcore.humaneval_program(p, whole)
    assert program.startswith(p["prompt"].rstrip() + "\n\n\ndef has_close_elements(numbers, threshold):")
    assert re.search(r"^def check\(candidate\):", program, re.M)
    compile(program, "program.py", "exec")  # the stub, then the redefinition: valid Python
    helper = problems[10]  # make_palindrome uses is_palindrome, defined in the prompt
    assert "def is_palindrome" in helper["prompt"]
    full = "```python\ndef make_palindrome(string: str) -> str:\n" + helper["canonical_solution"] + "```"
    assert "def is_palindrome" in chatcore.humaneval_program(helper, full)


def test_task_selection():
    assert chatcore.select_tasks("gsm8k,arc-easy") == ["GSM8K", "ARC-Easy"]
    with pytest.raises(ValueError, match="unknown ChatCORE task"):
        chatcore.select_tasks("mmlu,nope")
