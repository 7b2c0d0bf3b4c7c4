"""A tiny trained checkpoint, built once and cached, for lessons and tests.

``tiny_checkpoint()`` returns the run folder of a 2-layer, 64-wide GPT trained for a few
seconds on the CPU on the ``offline`` corpus with a 512-token BPE tokenizer trained on the
same text; ``tiny_checkpoint("chat")`` fine-tunes it (``--mode sft``) on small synthetic
conversations (greetings and additions). Both are far too small to be smart: they exist so
that evaluation, chat and serving code can be exercised on a real checkpoint in seconds.

Cached under ``$NANOGPT_COURSE_CACHE/checkpoints/`` with a key that changes whenever the
recipe or the library version does; a file lock makes concurrent callers build it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

from .. import __version__, paths
from .. import checkpoint as ck

TINY_VERSION = 1
CORPUS_BYTES = 2_000_000
VOCAB_SIZE = 512
# The reference LRs as they are: the depth rules' sqrt(B) scaling, extrapolated 256x below
# the reference batch, gives LRs far too small to learn anything in 80 steps.
LRS = dict(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5,
           weight_decay=0.0)
BASE = dict(depth=2, aspect_ratio=32, head_dim=32, seq_len=128, device_batch_size=16,
            total_batch_size=16 * 128, max_steps=80, warmup_steps=8, eval_every=40,
            sample_every=-1, seed=0, **LRS)
CHAT = dict(device_batch_size=16, total_batch_size=16 * 128, max_steps=40, eval_every=-1,
            sample_every=-1, seed=0, **LRS)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # Windows: no lock, builds may race but stay atomic
            pass
        yield


def _key(kind: str) -> str:
    recipe = {"v": TINY_VERSION, "lib": __version__, "kind": kind, "base": BASE, "chat": CHAT,
              "vocab": VOCAB_SIZE, "bytes": CORPUS_BYTES, "ckpt": ck.VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def corpus_tokenizer(vocab_size: int = VOCAB_SIZE, max_bytes: int = CORPUS_BYTES) -> Path:
    """Folder of a BPE tokenizer with ``vocab_size`` ids trained on the first ``max_bytes``
    of the offline corpus (built once, cached). ``--tokenizer`` accepts the folder."""
    from ..data import offline
    from ..tokenizer.fast import train_fast

    folder = paths.cache_dir("tokenizers",
                             f"offline-{max_bytes}-{vocab_size}-v{TINY_VERSION}")
    with _locked(folder.with_suffix(".lock")):
        if not (folder / "tokenizer.json").is_file():
            corpus = offline.collect(max_bytes=max_bytes, progress=False)
            texts = (json.loads(line)["text"] for line in
                     (corpus / "corpus.jsonl").open(encoding="utf-8"))
            train_fast(texts, vocab_size).save(folder)
    return folder


def corpus_data(tokenizer, max_bytes: int = CORPUS_BYTES) -> Path:
    """The offline corpus, capped at ``max_bytes``, prepared for ``tokenizer`` (cached);
    ``--data`` accepts the folder."""
    from .. import data

    return data.prepare("offline", tokenizer, max_bytes=max_bytes, progress=False)


def tiny_tokenizer():
    """The tiny checkpoints' tokenizer: 512 ids, trained on 2 MB of the offline corpus."""
    from ..tokenizer import Tokenizer

    return Tokenizer.load(corpus_tokenizer())


def tiny_data(tokenizer) -> Path:
    """The offline corpus (2 MB) prepared for ``tokenizer``."""
    return corpus_data(tokenizer)


def synthetic_chats(n: int = 600, seed: int = 0) -> list[dict]:
    """Short deterministic conversations: greetings and small additions."""
    rng = random.Random(seed)
    greetings = [("Hello!", "Hello! How can I help you today?"),
                 ("Hi, who are you?", "I am a tiny language model trained in this course."),
                 ("Thanks!", "You are welcome!")]
    out = []
    for i in range(n):
        if i % 3 == 0:
            user, reply = greetings[rng.randrange(len(greetings))]
        else:
            a, b = rng.randrange(50), rng.randrange(50)
            user, reply = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        out.append({"messages": [{"role": "user", "content": user},
                                 {"role": "assistant", "content": reply}]})
    return out


def _write_chats(folder: Path) -> Path:
    path = folder / "chats.jsonl"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(c) + "\n" for c in synthetic_chats()))
        os.replace(tmp, path)
    return path


def _train(cfg) -> None:
    import torch

    from .modes import run_one
    from .runtime import Runtime

    run_one(cfg, Runtime(device=torch.device("cpu")), echo=False)  # one process, CPU, fp32


def tiny_checkpoint(kind: str = "base", *, verbose: bool = True) -> Path:
    """Run folder of the cached tiny checkpoint (``"base"`` or ``"chat"``); built on first
    use (about 15 s for base, 10 more for chat, on 2 CPU cores). ``checkpoint.load(tiny_checkpoint())`` loads it."""
    from .config import TrainConfig

    if kind not in ("base", "chat"):
        raise ValueError(f"kind must be 'base' or 'chat', got {kind!r}")
    root = paths.cache_dir("checkpoints")
    out = root / f"tiny-{kind}-{_key(kind)}"
    with _locked(root / f".tiny-{kind}.lock"):
        if ck.latest(out) is not None and ck.read_meta(out).get("finished"):
            return out
        base = tiny_checkpoint("base", verbose=verbose) if kind == "chat" else None
        if verbose:
            print(f"building the tiny {kind} checkpoint (once) in {out} ...", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        tmp = out.with_name(out.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        if kind == "base":
            tok = tiny_tokenizer()
            cfg = TrainConfig(mode="pretraining", data=str(tiny_data(tok)),
                              tokenizer=str(corpus_tokenizer()),
                              out=str(tmp), **BASE)
        else:
            chats = _write_chats(root / f"tiny-chat-data-v{TINY_VERSION}")
            cfg = TrainConfig(mode="sft", checkpoint=str(base), data=str(chats), out=str(tmp),
                              **CHAT)
        _train(cfg)
        os.replace(tmp, out)
    return out
