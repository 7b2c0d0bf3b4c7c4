"""TaskMixture: the chat data for mid-training and SFT, as conversations.

Online (the Hugging Face Hub): SmolTalk (general chat), MMLU ``auxiliary_train`` (multiple
choice) and GSM8K ``train`` (grade-school maths). Offline (the data mirror): the identity
chat sample (less the conversations that say the model is nanochat, plus this course's own
identity conversations, :mod:`.identity`), GSM8K ``train`` and MMLU ``dev``. Test splits are never read: they are what
ChatCORE scores. Every task becomes a list of ``{"role", "content"}`` messages; the chat
template (``Tokenizer.render_chat``) turns them into tokens and a loss mask at preparation.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .. import paths
from . import hub
from .documents import Document, Resolved, Source, check_messages, file_fingerprint, hash_split
from .identity import identity_conversations as own_identity_conversations
from .identity import is_foreign_identity

LETTERS = "ABCD"
_CALC = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: "<<48/2=24>>"


def mmlu_messages(question: str, choices: list[str], answer: int | str) -> list[dict]:
    """One MMLU item as a conversation; the assistant answers with the letter alone."""
    if isinstance(answer, str):
        answer = LETTERS.index(answer.strip().upper())
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    prompt = (f"{question.strip()}\n\n{options}\n\n"
              f"Answer with the letter of the correct choice.")
    return [{"role": "user", "content": prompt},
            {"role": "assistant", "content": LETTERS[int(answer)]}]


def gsm8k_messages(question: str, answer: str) -> list[dict]:
    """One GSM8K item: the worked answer without calculator annotations, ending ``#### N``."""
    return [{"role": "user", "content": question.strip()},
            {"role": "assistant", "content": _CALC.sub("", answer).strip()}]


# ---------------------------------------------------------------------------- row readers
def smoltalk_conversations(rows: Iterable[dict]) -> Iterator[list[dict]]:
    """SmolTalk rows ``{"messages": [...], ...}`` -> conversations."""
    for n, row in enumerate(rows):
        yield check_messages(row.get("messages"), f"SmolTalk row {n}")


def mmlu_conversations(rows: Iterable[dict]) -> Iterator[list[dict]]:
    """``cais/mmlu`` rows (``auxiliary_train`` nests each row under ``"train"``)."""
    for row in rows:
        row = row.get("train", row) if isinstance(row.get("train"), dict) else row
        yield mmlu_messages(row["question"], list(row["choices"]), row["answer"])


def gsm8k_conversations(rows: Iterable[dict]) -> Iterator[list[dict]]:
    """``openai/gsm8k`` rows (or the original jsonl) ``{"question", "answer"}``."""
    for row in rows:
        yield gsm8k_messages(row["question"], row["answer"])


def jsonl_rows(path: Path) -> Iterator[dict | list]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n + 1}: not valid JSON ({err})") from err


def identity_conversations(path: Path) -> Iterator[list[dict]]:
    """The mirror's chat sample without the conversations that state another project's
    identity (see :mod:`.identity`), followed by this course's own identity conversations."""
    for n, record in enumerate(jsonl_rows(path)):
        messages = check_messages(record, f"{path}:{n + 1}")
        if not is_foreign_identity(messages):
            yield messages
    yield from own_identity_conversations()


def mmlu_csv_rows(folder: Path) -> Iterator[dict]:
    """MMLU CSVs: the re-exported layout (header ``question,choice0..3,answer``, answer 0-3)
    or the original one (no header, answer letter)."""
    for file in sorted(folder.glob("*.csv")):
        with open(file, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if rows and rows[0][:1] == ["question"]:
            rows = rows[1:]
        for n, r in enumerate(rows):
            if len(r) != 6:
                raise ValueError(f"{file}: row {n + 1} has {len(r)} fields, expected 6")
            yield {"question": r[0], "choices": r[1:5], "answer": r[5]}


def _answer(value) -> int:
    value = str(value).strip()
    return LETTERS.index(value.upper()) if value.upper() in LETTERS else int(value)


# ---------------------------------------------------------------------------- the source
OFFLINE_PARTS = {  # part -> relative path in the data mirror (train/dev splits only)
    "identity": "chat/identity_conversations.jsonl",
    "gsm8k": "gsm8k/train.jsonl",
    "mmlu_dev": "mmlu/dev",
}
ONLINE_PARTS = {  # part -> (repo, config, split) on the Hub
    "smoltalk": (hub.SMOLTALK_REPO, None, "train"),
    "mmlu_aux": (hub.MMLU_REPO, "auxiliary_train", "train"),
    "gsm8k": (hub.GSM8K_REPO, "main", "train"),
}


def _offline_part(part: str, path: Path) -> Callable[[], Iterator[list[dict]]]:
    if part == "identity":
        return lambda: identity_conversations(path)
    if part == "gsm8k":
        return lambda: gsm8k_conversations(jsonl_rows(path))
    return lambda: (mmlu_messages(r["question"], r["choices"], _answer(r["answer"]))
                    for r in mmlu_csv_rows(path))


def _online_part(part: str) -> Callable[[], Iterator[list[dict]]]:
    repo, config, split = ONLINE_PARTS[part]
    reader = {"smoltalk": smoltalk_conversations, "mmlu_aux": mmlu_conversations,
              "gsm8k": gsm8k_conversations}[part]
    rows = hub.load_hub(repo, config, split)  # opened now: an offline machine fails here
    return lambda: reader(rows)


class TaskMixture(Source):
    name = "task_mixture"
    kind = "chat"
    description = ("chat data: SmolTalk + MMLU aux train + GSM8K train online; identity "
                   "chat + GSM8K train + MMLU dev offline")
    online = True

    def resolve(self, *, download: bool = True, online: bool | None = None,
                val_fraction: float = 0.02, identity_copies: int = 1, **options) -> Resolved:
        """``identity_copies``: how many times each identity conversation is seen per epoch
        (a small model needs several passes over the few hundred conversations that say who
        it is; the copies share their split, so none leaks into validation)."""
        if identity_copies < 1:
            raise ValueError(f"identity_copies must be >= 1, got {identity_copies}")
        if options:
            raise TypeError(f"dataset {self.name!r} does not take option(s) {sorted(options)}")
        local = {part: paths.find_raw(rel) for part, rel in OFFLINE_PARTS.items()}
        if online is None:  # local data when the mirror has it, else the Hub
            online = not all(local.values())
        if online and not download:
            online = False
        parts: dict[str, Callable[[], Iterator[list[dict]]]] = {}
        described: dict = {"online": online, "val_fraction": val_fraction, "parts": {}}
        if identity_copies != 1:  # recorded only when used: existing cache folders keep their names
            described["identity_copies"] = identity_copies
        if online:
            for part, (repo, config, split) in ONLINE_PARTS.items():
                parts[part] = _online_part(part)
                described["parts"][part] = f"{repo}:{config or 'default'}:{split}"
            if local["identity"] is not None:  # the identity sample rides along when present
                parts["identity"] = _offline_part("identity", local["identity"])
                described["parts"]["identity"] = file_fingerprint(local["identity"])
        else:
            missing = [OFFLINE_PARTS[p] for p, v in local.items() if v is None]
            if missing:
                raise paths.MissingDataError(
                    f"TaskMixture offline needs {', '.join(missing)} under $NANOGPT_COURSE_DATA "
                    f"(or <cache>/raw). To fix: point NANOGPT_COURSE_DATA at the data mirror, or "
                    f"run `python -m nanogpt_course.data prepare task_mixture --online` with "
                    f"internet access")
            for part, path in local.items():
                parts[part] = _offline_part(part, path)
                described["parts"][part] = (file_fingerprint(path) if path.is_file() else
                                            [file_fingerprint(p) for p in sorted(path.glob("*.csv"))])

        def documents() -> Iterator[Document]:
            for part, conversations in parts.items():
                copies = identity_copies if part == "identity" else 1
                for copy in range(copies):
                    for n, messages in enumerate(conversations()):
                        key = f"{part}:{n}"  # the split follows the conversation, not the copy
                        name = key if copy == 0 else f"{key}#{copy}"
                        yield Document(name, hash_split(key, val_fraction), messages=messages)

        return Resolved(self.name, "chat", documents, described)
