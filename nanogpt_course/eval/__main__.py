"""``python -m nanogpt_course.eval {bpb,core,chatcore,download}``, alone or under torchrun.

    python -m nanogpt_course.eval core --checkpoint runs/pretraining-d12 --max-per-task 500
    torchrun --nproc_per_node=8 -m nanogpt_course.eval core --checkpoint runs/pretraining-d12
    python -m nanogpt_course.eval chatcore --checkpoint runs/mid-d12 --tasks gsm8k,humaneval
    python -m nanogpt_course.eval bpb --checkpoint runs/pretraining-d12 [--data offline]
    python -m nanogpt_course.eval download all [--from http://host/mirror/]

``--checkpoint`` takes a step folder or a run folder (its latest complete step). Results go
to ``--out`` (default ``<run>/eval/<step>/``): ``core.csv``, ``core.json``, ``core.png``
(and the same for ``chatcore`` / ``bpb``). One progress line per task on rank 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nanogpt_course.eval",
                                description="Evaluate a checkpoint: bits per byte, CORE, ChatCORE.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("bpb", "validation bits per byte"), ("core", "CORE (base models)"),
                       ("chatcore", "ChatCORE (chat models)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--checkpoint", required=True, help="step folder or run folder")
        s.add_argument("--out", default=None, help="output folder (default <run>/eval/<step>)")
        s.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: auto)")
        if name == "bpb":
            s.add_argument("--data", default=None,
                           help="dataset name or prepared folder (default: the checkpoint's)")
            s.add_argument("--tokens", type=int, default=1 << 20,
                           help="validation tokens to score (default 1,048,576)")
            s.add_argument("--batch-size", type=int, default=8)
        else:
            s.add_argument("--max-per-task", type=int, default=-1,
                           help="examples per task (-1: all)")
            s.add_argument("--tasks", default=None, help="comma-separated task names")
    d = sub.add_parser("download", help="fetch the evaluation data (checksummed)")
    d.add_argument("which", nargs="?", default="all",
                   choices=["core", "chatcore", "mmlu", "gsm8k", "humaneval", "squad", "all"])
    d.add_argument("--from", dest="base_url", default=None,
                   help="a server laid out like the data mirror, instead of the upstream URLs")
    return p


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _out_dir(args, folder: Path) -> Path:
    return Path(args.out) if args.out else folder.parent / "eval" / folder.name


def _bpb(args, ckpt, rank: int, world: int) -> dict:
    from .. import data
    from ..data.loaders import make_loader
    from .bpb import evaluate_bpb

    class _Ranks:  # the two things evaluate_bpb needs from a runtime
        def autocast(self):
            import contextlib

            import torch
            dev = next(ckpt.model.parameters()).device
            return (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                    else contextlib.nullcontext())

        def all_reduce_sum(self, values):
            from .ranks import all_sum

            return all_sum(values, next(ckpt.model.parameters()).device)

    spec = args.data or ckpt.meta.get("data") or ckpt.meta["train_config"]["data"]
    prepared = Path(spec) if Path(str(spec)).is_dir() else data.prepare(spec, ckpt.tokenizer,
                                                                        progress=rank == 0)
    seq_len = ckpt.model.config.sequence_len
    rows = max(1, args.tokens // seq_len)
    mode = "sft" if ckpt.kind == "chat" else "pretrain"
    loader = make_loader(prepared, "val", batch_size=args.batch_size, seq_len=seq_len,
                         rank=rank, world_size=world, mode=mode, epochs=1, max_rows=rows,
                         device=next(ckpt.model.parameters()).device)
    t0 = time.perf_counter()
    value = evaluate_bpb(ckpt.model, loader, ckpt.tokenizer.token_bytes, runtime=_Ranks())
    return {"bpb": value, "data": str(prepared), "rows": rows, "seq_len": seq_len,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "download":
        from . import datasets

        try:
            files = datasets.fetch(args.which, base_url=args.base_url)
        except Exception as err:  # noqa: BLE001 - one clear line for the user
            _fail(str(err))
        print(f"{len(files)} file(s) ready")
        return 0

    from .. import checkpoint as ck
    from ..launch import finish_distributed, init_distributed
    from .ranks import rank_and_world

    try:  # the checkpoint first: it is the argument every command needs
        folder = ck.resolve(args.checkpoint)
        meta = ck.read_meta(folder)
    except (ck.CheckpointError, FileNotFoundError, ValueError) as err:
        _fail(f"cannot use checkpoint {args.checkpoint!r}: {err}")
    if args.command != "bpb" and args.tasks:
        from .chatcore import select_tasks as chat_tasks
        from .core import select_tasks as core_tasks
        try:
            (core_tasks if args.command == "core" else chat_tasks)(args.tasks)
        except ValueError as err:
            _fail(str(err))
    if args.command == "core":
        from .core import bundle_status, select_tasks
        if all(v == "missing" for v in bundle_status(select_tasks(args.tasks)).values()):
            _fail("no CORE task file found (looked in $NANOGPT_COURSE_DATA/eval_bundle and "
                  "<cache>/raw/eval_bundle). To fix: run `python -m nanogpt_course.eval download "
                  "core`, or point NANOGPT_COURSE_DATA at a data mirror")
    if args.command == "chatcore":
        from .chatcore import data_status, select_tasks
        if all(data_status()[t] is None for t in select_tasks(args.tasks)):
            _fail("no ChatCORE data found (ARC from the CORE bundle, mmlu/test, gsm8k/test.jsonl, "
                  "humaneval/HumanEval.jsonl). To fix: run `python -m nanogpt_course.eval "
                  "download all`, or point NANOGPT_COURSE_DATA at a data mirror")
    if args.command == "chatcore" and meta.get("kind", "base") != "chat":
        print(f"note: {folder} is a {meta.get('kind', 'base')} model; ChatCORE expects a chat "
              f"model (run mid-training or sft first)", flush=True)
    if args.device:
        import os
        os.environ["NANOGPT_COURSE_DEVICE"] = args.device
    info = init_distributed()
    rank, world = rank_and_world()
    device = info.device if world > 1 else None
    try:
        ckpt = ck.load(folder, device=device or args.device)
    except (ck.CheckpointError, RuntimeError, ValueError) as err:
        _fail(f"cannot load checkpoint {folder}: {err}")
    out = _out_dir(args, folder)
    say = (lambda line: print(line, flush=True)) if rank == 0 else (lambda line: None)
    say(f"{args.command}: {folder} ({ckpt.kind}, step {ckpt.step}) on {world} rank(s), "
        f"device {next(ckpt.model.parameters()).device}")
    max_per_task = getattr(args, "max_per_task", -1)
    max_per_task = None if max_per_task is None or max_per_task < 0 else max_per_task
    if args.command == "bpb":
        result = _bpb(args, ckpt, rank, world)
        say(f"bpb: {result['bpb']:.4f} ({result['rows']} rows of {result['seq_len']} tokens, "
            f"{result['seconds']:.1f} s)")
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "bpb.json").write_text(json.dumps(result, indent=2) + "\n")
            say(f"wrote {out / 'bpb.json'}")
    else:
        from . import evaluate_chatcore, evaluate_core

        run = evaluate_core if args.command == "core" else evaluate_chatcore
        t0 = time.perf_counter()
        result = run(ckpt.model, ckpt.tokenizer, max_per_task=max_per_task, tasks=args.tasks,
                     log=say)
        report = result["report"]
        report.meta.update(checkpoint=str(folder), step=ckpt.step,
                           seconds=time.perf_counter() - t0)
        if rank == 0:
            files = report.write(out, args.command)
            say("wrote " + ", ".join(str(f) for f in files.values()))
    finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
