"""Train the small base and chat models that ship with the course (nanogpt_course/models/).

The same code a learner runs, in four resumable stages (a finished stage is skipped):

1. the ``offline`` corpus (Python docs and sources of this machine), capped at ``--corpus-mb``;
2. a BPE tokenizer of ``--vocab`` ids trained on it (small, so the model is not all embedding);
3. pretraining (``python -m nanogpt_course.train --mode pretraining``) at ``--depth``;
4. mid-training on the offline TaskMixture (GSM8K train, MMLU dev, identity conversations:
   needs ``NANOGPT_COURSE_DATA``), kind ``chat``.

Then both models are exported in bfloat16 without optimizer state (``--export DIR``).
On one H100 the defaults take about four minutes; ``--tiny`` runs the same stages in
seconds on a CPU (a smoke test of this script, not a useful model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch


def say(text: str) -> None:
    print(f"[shipped] {text}", flush=True)


def build_tokenizer(folder: Path, corpus: Path, vocab: int, max_chars: int):
    from nanogpt_course.tokenizer import Tokenizer
    from nanogpt_course.tokenizer.fast import train_fast

    if (folder / "tokenizer.json").is_file():
        return Tokenizer.load(folder)
    start = time.perf_counter()
    def texts():  # the first max_chars characters of the corpus: plenty for a small vocabulary
        seen = 0
        with open(corpus / "corpus.jsonl", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                yield text
                seen += len(text)
                if seen >= max_chars:
                    return

    tok = train_fast(texts(), vocab)
    tok.save(folder)
    say(f"tokenizer: {vocab} ids in {time.perf_counter() - start:.0f} s")
    return tok


def export(run: Path, dest: Path) -> None:
    """Copy the latest step of ``run`` to ``dest`` with bfloat16 weights and no optimizer."""
    from safetensors.torch import load_file, save_file

    from nanogpt_course import checkpoint as ck
    from nanogpt_course.checkpoint_verify import file_sums

    step = ck.latest(run)
    dest.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(step / "model.safetensors"))
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, str(dest / "model.safetensors"))
    if (step / "tokenizer.json").is_file():
        shutil.copy2(step / "tokenizer.json", dest / "tokenizer.json")
    meta = ck.read_meta(step)
    meta.update(weights_dtype="bfloat16", has_optimizer=False, exported_from=str(step))
    meta["sha256"] = file_sums(dest)  # the bf16 file's own sums, so `verify` checks it
    (dest / "meta.json").write_text(json.dumps(meta, indent=1))
    say(f"exported {step} -> {dest} ({(dest / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/shipped", help="work folder (resumable)")
    p.add_argument("--export", help="write the bf16 base/ and chat/ folders here")
    p.add_argument("--corpus-mb", type=float, default=150)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--aspect-ratio", type=int, default=48)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--tokenizer-mb", type=float, default=100, help="text the BPE is trained on")
    p.add_argument("--tokens-per-param", type=float, default=35,
                   help="pretraining horizon (a small model to ship: trained well past 12)")
    p.add_argument("--total-batch-size", type=int, help="default: the depth rule")
    p.add_argument("--device-batch-size", type=int, default=64)
    p.add_argument("--mid-epochs", type=float, default=3.0)
    p.add_argument("--identity-copies", type=int, default=3,
                   help="passes over the identity conversations per mid-training epoch")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cpu", action="store_true",
                   help="the CPU recipe (no GPU lent): 24 MB corpus, seq 512, 8,192-token "
                        "steps, the quickstart's explicit LRs, --pretrain-steps/--mid-steps")
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--mid-steps", type=int, default=150)
    p.add_argument("--tiny", action="store_true", help="seconds on a CPU: checks the stages")
    args = p.parse_args(argv)
    if args.tiny:
        args.corpus_mb, args.vocab, args.depth, args.seq_len = 2, 512, 2, 128
        args.tokens_per_param, args.total_batch_size, args.device_batch_size = 0.5, 4096, 8
        args.mid_epochs = 0.02
    lrs, pre_steps, mid_steps = {}, None, None
    if args.cpu:  # depth rules are anchored at 2^19-token batches: too timid at 8k tokens
        args.corpus_mb, args.tokenizer_mb, args.seq_len = 24, 24, 512
        args.total_batch_size, args.device_batch_size = 8192, 16
        lrs = dict(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5)
        pre_steps, mid_steps = args.pretrain_steps, args.mid_steps
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    from nanogpt_course import checkpoint as ck
    from nanogpt_course import data
    from nanogpt_course.data import offline
    from nanogpt_course.train import TrainConfig, train

    corpus = offline.collect(max_bytes=int(args.corpus_mb * 1e6))
    manifest = offline.read_manifest(corpus)
    say(f"corpus: {manifest['files']:,} files, {manifest['bytes'] / 1e6:.1f} MB, "
        f"sha256 {manifest.get('content_sha256', manifest.get('listing_sha256'))}")
    tok = build_tokenizer(root / "tokenizer", corpus, args.vocab, int(args.tokenizer_mb * 1e6))
    prepared = data.prepare("offline", tok, max_bytes=int(args.corpus_mb * 1e6))
    say(f"data ready after {time.perf_counter() - t0:.0f} s")

    model = dict(depth=args.depth, aspect_ratio=args.aspect_ratio, head_dim=args.head_dim,
                 seq_len=args.seq_len, total_batch_size=args.total_batch_size,
                 device_batch_size=args.device_batch_size, compile=args.compile, seed=0)
    base, chat = root / "base", root / "chat"
    if not (ck.latest(base) and ck.read_meta(base).get("finished")):
        train(TrainConfig(mode="pretraining", data=str(prepared), tokenizer=str(root / "tokenizer"),
                          out=str(base), eval_every=50, sample_every=-1, log_every=10,
                          **({"max_steps": pre_steps, "weight_decay": 0.1} if pre_steps
                             else {"tokens_per_param": args.tokens_per_param}), **lrs,
                          resume=ck.latest(base) is not None, **model))
    say(f"base model done after {time.perf_counter() - t0:.0f} s")
    if not (ck.latest(chat) and ck.read_meta(chat).get("finished")):
        mix = data.prepare("task_mixture", tok, online=False,
                           identity_copies=args.identity_copies)
        tokens = data.read_meta(mix)["splits"]["train"]["tokens"]
        batch = args.total_batch_size or ck.read_meta(base)["plan"]["total_batch_size"]
        steps = mid_steps or max(1, int(args.mid_epochs * tokens // batch))
        resume = ck.latest(chat) is not None
        train(TrainConfig(mode="mid-training", data=str(mix), out=str(chat), max_steps=steps,
                          checkpoint=None if resume else str(base), resume=resume,
                          eval_every=max(1, steps // 5), sample_every=-1,
                          log_every=max(1, steps // 40), seq_len=args.seq_len,
                          total_batch_size=batch, device_batch_size=args.device_batch_size,
                          compile=args.compile, seed=0, **lrs))
    say(f"chat model done after {time.perf_counter() - t0:.0f} s")
    if args.export:
        for name, run in (("base", base), ("chat", chat)):
            export(run, Path(args.export) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
