"""Benchmark: train a 32768-token BPE on ~100 MB of text with the fast trainer (rustbpe).

    .venv/bin/python bench/bench_tokenizer.py [--mb 100] [--vocab-size 32768] [--threads 2]

The corpus is the text that every Python machine has: .py/.md/.rst/.txt files under
``sys.prefix`` and the site-packages folders (sorted, de-duplicated by content, concatenated
into a temp file until ``--mb`` megabytes). Training runs as the real CLI in a child process
(``python -m nanogpt_course.tokenizer train``), so the time and peak memory are what a user
gets; peak RSS is the child's ``ru_maxrss``. Also times encoding with the trained tokenizer
and GPT-2. Prints one JSON line at the end. Not run in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUFFIXES = {".py", ".md", ".rst", ".txt"}


def build_corpus(target_bytes: int, out: Path) -> tuple[int, int]:
    """Concatenate text files (sorted, unique) into ``out`` until ``target_bytes``."""
    roots = sorted({Path(p) for p in [sys.prefix, *site.getsitepackages()] if Path(p).is_dir()})
    seen, n_files, n_bytes = set(), 0, 0
    with out.open("w", encoding="utf-8") as f:
        for root in roots:
            for path in sorted(root.rglob("*")):
                if n_bytes >= target_bytes:
                    return n_files, n_bytes
                if path.suffix not in SUFFIXES or not path.is_file():
                    continue
                raw = path.read_bytes()
                digest = hashlib.sha256(raw).digest()
                if digest in seen or b"\x00" in raw:
                    continue
                seen.add(digest)
                text = raw.decode("utf-8", errors="replace")
                f.write(text if text.endswith("\n") else text + "\n")
                n_files += 1
                n_bytes += len(text.encode("utf-8"))
    return n_files, n_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", help="use this text file instead of building one")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    corpus = Path(args.corpus) if args.corpus else work / "corpus.txt"
    if not args.corpus:
        t = time.perf_counter()
        n_files, n_bytes = build_corpus(int(args.mb * 1e6), corpus)
        print(f"corpus: {n_files} files, {n_bytes / 1e6:.1f} MB in {time.perf_counter() - t:.1f}s")
    n_bytes = corpus.stat().st_size

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "nanogpt_course.tokenizer", "train", "--data", str(corpus),
           "--vocab-size", str(args.vocab_size), "--out", str(work / "tok"),
           "--threads", str(args.threads), "--sample-chars", "0"]
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    train_secs = time.perf_counter() - t
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    from nanogpt_course.tokenizer import Tokenizer

    tok = Tokenizer.load(work / "tok")
    text = corpus.read_text(encoding="utf-8")[:20_000_000]
    pieces = [text[i:i + 100_000] for i in range(0, len(text), 100_000)]
    result = {"corpus_mb": round(n_bytes / 1e6, 1), "vocab_size": tok.vocab_size,
              "threads": args.threads, "train_s": round(train_secs, 1),
              "train_mb_per_s": round(n_bytes / 1e6 / train_secs, 2),
              "peak_rss_mib": round(peak_mib)}
    for name, enc in [("trained", tok), ("gpt2", None)]:
        try:
            enc = enc or Tokenizer.gpt2()
        except FileNotFoundError:
            continue
        t = time.perf_counter()
        n_tokens = sum(map(len, enc.encode_batch(pieces, num_threads=args.threads)))
        secs = time.perf_counter() - t
        result[f"{name}_bytes_per_token"] = round(len(text.encode()) / n_tokens, 3)
        result[f"{name}_encode_mb_per_s"] = round(len(text.encode()) / 1e6 / secs, 1)
    print(json.dumps(result))
    shutil.rmtree(work, ignore_errors=True)  # the corpus is 100 MB


if __name__ == "__main__":
    main()
