"""Data pipeline benchmark: tokenization MB/s and loader tokens/s.

    NANOGPT_COURSE_DATA=../shared/data python bench/bench_data.py [--max-mb 50] [--workers 2]
    python bench/bench_data.py --device cuda --tokenizer bytes   # on a GPU box without BPE files

1. collects the ``offline`` corpus (capped at ``--max-mb``) and times tokenizing it with
   GPT-2 in ``--workers`` processes (a fresh cache folder, so nothing is reused);
2. times the loaders on the result at the GPU shape (batch 32 x 2048) on the CPU: BOS
   best-fit packing, random windows, a 2-way mixture, and SFT batches on the chat sample;
   the figure to beat is ~0.5M tokens/s, what one H100 consumes training d12. With
   ``--device cuda`` the batches are also copied to the GPU (pinned, asynchronous) and the
   clock stops after a final synchronize.

Prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _bench_tokenize(max_mb: float, workers: int, tokenizer: str) -> tuple[dict, Path]:
    from nanogpt_course.data import offline, preparation, read_meta

    corpus_start = time.perf_counter()
    folder = offline.collect(max_bytes=int(max_mb * 1e6), progress=False)
    collect_s = time.perf_counter() - corpus_start
    start = time.perf_counter()
    prepared = preparation.prepare("offline", tokenizer, workers=workers, progress=False,
                                   force=True, max_bytes=int(max_mb * 1e6))
    seconds = time.perf_counter() - start
    meta = read_meta(prepared)
    text_bytes = sum(s["text_bytes"] for s in meta["splits"].values())
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    return {"corpus_mb": round(offline.read_manifest(folder)["bytes"] / 1e6, 1),
            "collect_s (cached corpus reused if present)": round(collect_s, 2),
            "workers": workers, "prepare_s": round(seconds, 2),
            "tokenize_mb_per_s": round(text_bytes / seconds / 1e6, 2),
            "tokens": tokens, "bytes_per_token": round(text_bytes / tokens, 3)}, prepared


def _bench_loader(prepared, *, seconds: float = 3.0, device: str = "cpu", **kw) -> dict:
    import torch

    from nanogpt_course.data import make_loader

    loader = make_loader(prepared, "train", batch_size=32, seq_len=2048, seed=0,
                         device=device, **kw)
    next(loader)  # warm-up: opens and verifies the shards, builds the first epoch order
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, _ = next(loader)
        n += x.numel()
    if x.is_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    out = {"tokens_per_s": round(n / elapsed), "batches": n // x.numel()}
    stats = loader.stats()
    for key in ("crop_fraction", "pad_fraction"):
        if key in stats:
            out[key] = round(stats[key], 4)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-mb", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tokenizer", default="gpt2", help="gpt2, a tokenizer folder, or bytes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (copies batches to the GPU)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep-cache", action="store_true",
                        help="use NANOGPT_COURSE_CACHE instead of a temporary folder")
    args = parser.parse_args(argv)
    if args.keep_cache:
        return _run(args, parser)
    scratch = tempfile.mkdtemp(prefix="bench_data_")
    os.environ["NANOGPT_COURSE_CACHE"] = scratch
    try:
        return _run(args, parser)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(args, parser) -> dict:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here")
    torch.set_num_threads(1)
    report = {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
              "device": args.device, "tokenizer": args.tokenizer}
    report["tokenize"], prepared = _bench_tokenize(args.max_mb, args.workers, args.tokenizer)
    kw = dict(seconds=args.seconds, device=args.device)
    report["loader_bos"] = _bench_loader(prepared, **kw)
    report["loader_windows"] = _bench_loader(prepared, packing="windows", **kw)
    report["loader_mixture"] = _bench_loader([(prepared, 0.7), (prepared, 0.3)], **kw)
    from nanogpt_course import paths
    from nanogpt_course.data import preparation

    if paths.find_raw("chat/identity_conversations.jsonl"):
        chat = preparation.prepare("task_mixture", args.tokenizer, progress=False)
        report["loader_sft"] = _bench_loader(chat, mode="sft", **kw)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
