"""Command line: train a tokenizer, or compare one with GPT-2.

    python -m nanogpt_course.tokenizer train --data FILE_OR_DIR --vocab-size 32768 --out DIR
    python -m nanogpt_course.tokenizer compare --tokenizer DIR --text FILE
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from .patterns import GPT2_PATTERN, GPT4_PATTERN

PATTERNS = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}


def _limited(texts, max_chars: int | None):
    """Stop after about ``max_chars`` characters (whole pieces)."""
    if max_chars is None:
        yield from texts
        return
    seen = 0
    for text in texts:
        if seen >= max_chars:
            return
        seen += len(text)
        yield text


def bytes_per_token(tok, texts) -> tuple[int, int]:
    """(UTF-8 bytes, tokens) of ``texts`` under ``tok``: compression = bytes / tokens."""
    texts = list(texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts, num_threads=os.cpu_count() or 1))
    return n_bytes, n_tokens


def cmd_train(args) -> int:
    from .bpe import train_reference
    from .fast import iter_texts, train_fast

    if args.threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # read when rustbpe first runs
    start = time.perf_counter()
    texts = _limited(iter_texts(args.data), args.max_chars)
    print(f"training a {args.vocab_size}-token BPE ({args.trainer} trainer, {args.pattern} "
          f"split pattern) on {args.data}", flush=True)
    if args.trainer == "fast":
        tok = train_fast(texts, args.vocab_size, pattern=PATTERNS[args.pattern],
                         log=lambda line: print(line, flush=True))
    else:
        tok = train_reference(texts, args.vocab_size, pattern=PATTERNS[args.pattern], verbose=True)
    train_secs = time.perf_counter() - start
    path = tok.save(args.out)
    print(f"saved {path}")
    print(f"vocab size:  {tok.vocab_size} ({tok.n_ranks} byte tokens + specials "
          f"{', '.join(tok.special_tokens)})")
    print(f"identity:    {tok.identity}")
    if args.sample_chars > 0:
        sample = itertools.islice(_limited(iter_texts(args.data), args.sample_chars), 100_000)
        n_bytes, n_tokens = bytes_per_token(tok, sample)
        print(f"compression: {n_bytes / max(n_tokens, 1):.3f} bytes/token "
              f"(on the first {n_bytes / 1e6:.1f} MB of the data)")
    print(f"time:        {train_secs:.1f}s training, {time.perf_counter() - start:.1f}s total")
    return 0


def cmd_compare(args) -> int:
    from .core import Tokenizer
    from .fast import iter_texts

    texts = list(_limited(iter_texts(args.text), args.max_chars))
    tok = Tokenizer.from_spec(args.tokenizer)
    rows = [(tok.identity, tok.vocab_size, *bytes_per_token(tok, texts))]
    try:
        gpt2 = Tokenizer.gpt2()
    except FileNotFoundError as err:
        gpt2 = None
        print(f"GPT-2 is not available, so nothing to compare with:\n{err}", file=sys.stderr)
    if gpt2 is not None and gpt2 is not tok:
        rows.append(("gpt2", gpt2.vocab_size, *bytes_per_token(gpt2, texts)))
    print(f"{'tokenizer':<24} {'vocab':>7} {'bytes':>12} {'tokens':>11} {'bytes/token':>11}")
    for name, vocab, n_bytes, n_tokens in rows:
        print(f"{name:<24} {vocab:>7} {n_bytes:>12} {n_tokens:>11} "
              f"{n_bytes / max(n_tokens, 1):>11.3f}")
    if len(rows) == 2:
        ratio = rows[1][3] / max(rows[0][3], 1)
        print(f"{rows[0][0]} uses {1 / ratio:.3f}x the tokens of GPT-2 "
              f"({'fewer' if ratio > 1 else 'more'} tokens = {'better' if ratio > 1 else 'worse'}"
              f" compression on this text)")
    return 0 if gpt2 is not None else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanogpt_course.tokenizer",
                                     description="Train a BPE tokenizer or compare one with GPT-2.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a byte-level BPE tokenizer")
    train.add_argument("--data", required=True, help="a text file, or a folder of text files")
    train.add_argument("--vocab-size", type=int, default=32768,
                       help="ids in all, special tokens included (default 32768)")
    train.add_argument("--out", required=True, help="folder to write tokenizer.json into")
    train.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4",
                       help="pre-tokenization split pattern (default gpt4)")
    train.add_argument("--trainer", choices=["fast", "reference"], default="fast",
                       help="rustbpe (fast) or the readable pure-Python loop (small data only)")
    train.add_argument("--max-chars", type=int, default=None,
                       help="train on about this many characters only")
    train.add_argument("--threads", type=int, default=None, help="rustbpe threads (default: all)")
    train.add_argument("--sample-chars", type=int, default=10_000_000,
                       help="characters used to report the compression ratio")
    compare = sub.add_parser("compare", help="compression of a tokenizer vs GPT-2")
    compare.add_argument("--tokenizer", required=True, help="a saved tokenizer folder, or gpt2")
    compare.add_argument("--text", required=True, help="a text file, or a folder of text files")
    compare.add_argument("--max-chars", type=int, default=50_000_000,
                         help="use about this many characters of the text")
    args = parser.parse_args(argv)
    try:
        return cmd_train(args) if args.command == "train" else cmd_compare(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
