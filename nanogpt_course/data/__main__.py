"""``python -m nanogpt_course.data {prepare,list,info,verify}``.

Examples::

    python -m nanogpt_course.data prepare offline --max-mb 50
    python -m nanogpt_course.data prepare tinyshakespeare --tokenizer gpt2
    python -m nanogpt_course.data prepare fineweb_edu --max-files 2
    python -m nanogpt_course.data prepare task_mixture --online
    python -m nanogpt_course.data prepare notes/ --tokenizer runs/tok32k   # your own text
    python -m nanogpt_course.data list                  # needs no tokenizer files
    python -m nanogpt_course.data info tinyshakespeare  # a dataset name or a prepared folder
    python -m nanogpt_course.data verify ~/.cache/nanogpt_course/data/gpt2/offline
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import paths
from . import preparation, shards, sources


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nanogpt_course.data",
                                     description="Prepare and inspect tokenized datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize a dataset into shards (skips if present)")
    p.add_argument("name", help=f"one of {', '.join(sorted(sources.SOURCES))}, or a folder, "
                                f"glob or file of .txt/.md/.jsonl")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default) or a tokenizer folder")
    p.add_argument("--workers", type=int, default=None, help="tokenizing processes")
    p.add_argument("--force", action="store_true", help="prepare again from scratch")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    p.add_argument("--shard-tokens", type=int, default=preparation.SHARD_TOKENS)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--max-mb", type=float, default=None, help="offline: cap the corpus size")
    p.add_argument("--max-files", type=int, default=None, help="fineweb_edu: parquet files")
    p.add_argument("--max-docs", type=int, default=None, help="fineweb_edu/openwebtext")
    p.add_argument("--stream", action="store_true", help="fineweb_edu: stream with datasets")
    p.add_argument("--online", dest="online", action="store_true", default=None,
                   help="task_mixture: SmolTalk + MMLU + GSM8K from the Hub")
    p.add_argument("--offline", dest="online", action="store_false",
                   help="task_mixture: only the data mirror's files")
    p.add_argument("--quiet", action="store_true")
    lst = sub.add_parser("list", help="the datasets and where they are prepared")
    lst.add_argument("--tokenizer", default=None,
                     help="only folders prepared for this tokenizer (default: any)")
    for name, text in (("info", "summarize a prepared dataset"),
                       ("verify", "check every shard's checksum")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("path", help="a dataset name (as `list` shows it) or a prepared folder")
        cmd.add_argument("--tokenizer", default=None,
                         help="with a name: the tokenizer it was prepared for (default: any)")
    return parser


def _tokenizer_slugs(spec: str | None) -> list[str] | None:
    """Cache folder names to look in: None = every tokenizer. ``gpt2`` needs no files."""
    if spec is None:
        return None
    if spec == "gpt2":
        return ["gpt2"]
    return [preparation.slug(preparation.resolve_tokenizer(spec).identity)]


def prepared_folders(name: str, tokenizer: str | None = None) -> list[Path]:
    """Prepared folders of dataset ``name`` (``name`` or ``name-<options>``), per tokenizer."""
    root = paths.cache_dir("data", create=False)
    slugs = _tokenizer_slugs(tokenizer)
    tok_dirs = sorted(d for d in root.glob("*") if d.is_dir()) if root.is_dir() else []
    if slugs is not None:
        tok_dirs = [root / s for s in slugs]
    found = []
    for tok_dir in tok_dirs:
        for folder in sorted(tok_dir.glob(f"{name}*")):
            if folder.name in (name,) or folder.name.startswith(f"{name}-"):
                if preparation.is_prepared(folder):
                    found.append(folder)
    return found


def find_prepared(spec: str, tokenizer: str | None = None) -> Path:
    """A prepared folder from a path or a dataset name; a clear error when there is none or
    several (listing them)."""
    if preparation.is_prepared(spec):
        return Path(spec)
    if Path(spec).expanduser().exists():
        return Path(spec)  # read_meta explains what is wrong with it
    found = prepared_folders(spec, tokenizer)
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{spec} is prepared several times (tokenizers or options differ): "
                         + ", ".join(str(f) for f in found)
                         + "; pass one folder, or --tokenizer")
    known = spec in sources.SOURCES
    what = f"dataset {spec!r} is not prepared" if known else \
        f"{spec!r} is neither a prepared folder nor a dataset name ({', '.join(sorted(sources.SOURCES))})"
    for_tok = f" for tokenizer {tokenizer!r}" if tokenizer else ""
    raise FileNotFoundError(f"{what}{for_tok}; prepare it with: python -m nanogpt_course.data "
                            f"prepare {spec if known else 'NAME'}")


def _source_options(args) -> dict:
    options = {"val_fraction": args.val_fraction, "max_files": args.max_files,
               "max_docs": args.max_docs, "online": args.online,
               "max_bytes": int(args.max_mb * 1e6) if args.max_mb is not None else None,
               "stream": True if args.stream else None}
    return {k: v for k, v in options.items() if v is not None}


def cmd_prepare(args) -> int:
    folder = preparation.prepare(args.name, args.tokenizer, workers=args.workers,
                                 force=args.force, download=not args.no_download,
                                 progress=not args.quiet, shard_tokens=args.shard_tokens,
                                 **_source_options(args))
    print(folder)
    return 0


def cmd_list(args) -> int:
    root = paths.cache_dir("data", create=False)
    for name, source in sorted(sources.SOURCES.items()):
        done = [f"{p.parent.name}/{p.name}" for p in prepared_folders(name, args.tokenizer)]
        state = f"prepared: {', '.join(done)}" if done else "not prepared"
        print(f"{name:<16} {source.kind:<5} {state:<34} {source.description}")
    print(f"(prepared folders live in {root}/<tokenizer>/; `info NAME` summarizes one)")
    return 0


def cmd_info(args) -> int:
    args.path = str(find_prepared(args.path, args.tokenizer))
    print(args.path)
    meta = preparation.read_meta(args.path)
    print(f"{meta['name']} ({meta['kind']}), tokenizer {meta['tokenizer']}, {meta['dtype']}")
    for split, s in meta["splits"].items():
        ratio = s["text_bytes"] / s["tokens"] if s["tokens"] else 0
        print(f"  {split:<5} {s['tokens']:>14,} tokens {s['docs']:>10,} docs "
              f"{len(s['shards']):>4} shard(s) {ratio:.2f} bytes/token")
    return 0


def cmd_verify(args) -> int:
    args.path = str(find_prepared(args.path, args.tokenizer))
    meta = preparation.read_meta(args.path)
    n = 0
    for s in meta["splits"].values():
        for info in s["shards"]:
            for key in ("file", "index", "mask"):
                if key in info:
                    header = shards.verify_shard(Path(args.path) / info[key])
                    if key == "file" and header["sha256"] != info["sha256"]:
                        raise shards.ShardError(f"{info['file']}: checksum differs from "
                                                f"meta.json; prepare the dataset again")
                    n += 1
    print(f"{n} shard file(s) OK in {args.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"prepare": cmd_prepare, "list": cmd_list, "info": cmd_info,
               "verify": cmd_verify}[args.command]
    try:
        return handler(args)
    except (FileNotFoundError, ValueError, KeyError, ImportError, ConnectionError,
            RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
