"""Static training memory, ours vs nanochat: parameters, gradients and optimizer state.

    python bench/bench_memory.py --nanochat .nanochat --depths 12,20      # CPU, a minute

Peak GPU memory (``bench_train.py``) is static memory plus activations and workspace. This
bench measures the static part exactly, on the CPU, for both recipes at the same depth,
vocabulary and sequence length: each model is built as its trainer builds it (ours: fp32
everywhere, bf16 only inside autocast; nanochat 92d63d4 with ``NANOCHAT_DTYPE=bfloat16``, its
CUDA setting from SM 80: fp32 linears, token and value embeddings stored in bf16), every
parameter gets a zero gradient, and one optimizer step creates the optimizer's state. Bytes
are counted per role (distinct storages, so stacked buffers count once). What is left of a
peak-memory difference after this is activations and workspace.

Prints a table and one JSON object (``--json PATH`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
import nanochat_ref  # noqa: E402  (bench/ is not a package)

from nanogpt_course.model import GPT, GPTConfig  # noqa: E402
from nanogpt_course.optim import build_optimizer  # noqa: E402
from nanogpt_course.optim.sharding import storage_bytes  # noqa: E402

GIB = 2**30


def embedding_role(name: str) -> bool:
    """Token and value embeddings, in either model's parameter names."""
    return "wte" in name or "value_embeds" in name


def measure(model: torch.nn.Module, optimizer) -> dict:
    """Bytes of parameters, gradients and optimizer state, split embeddings / the rest,
    after one optimizer step on zero gradients."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    named = dict(model.named_parameters())
    emb = {n for n in named if embedding_role(n)}
    state = {n: [v for v in optimizer.state.get(p, {}).values()
                 if torch.is_tensor(v) and v.numel() > 1] for n, p in named.items()}
    all_state = [t for ts in state.values() for t in ts]
    emb_state = [t for n in emb for t in state[n]]
    out = {"params": storage_bytes(named.values()),
           "grads": storage_bytes(p.grad for p in named.values()),
           "optimizer_state": max(storage_bytes(all_state), _stacked_state(optimizer)),
           "embedding_params": storage_bytes(named[n] for n in emb),
           "embedding_grads": storage_bytes(named[n].grad for n in emb),
           "embedding_state": storage_bytes(emb_state),
           "embedding_dtype": str(named[sorted(emb)[0]].dtype),
           "num_params": sum(p.numel() for p in named.values()),
           "num_embedding_params": sum(named[n].numel() for n in emb)}
    out["total"] = out["params"] + out["grads"] + out["optimizer_state"]
    return out


def _stacked_state(optimizer) -> int:
    """Our optimizer's own count (its Muon momentum lives in stacked buffers)."""
    return int(optimizer.state_bytes()) if hasattr(optimizer, "state_bytes") else 0


def ours(depth: int, vocab: int, seq_len: int) -> dict:
    cfg = GPTConfig.from_depth(depth, vocab_size=vocab, sequence_len=seq_len)
    torch.manual_seed(0)
    model = GPT(cfg)
    return measure(model, build_optimizer(model))


def nanochat(path: str, depth: int, vocab: int, seq_len: int) -> dict:
    with mock.patch.dict(os.environ, {"NANOCHAT_DTYPE": "bfloat16", "TORCHDYNAMO_DISABLE": "1"}):
        ref = nanochat_ref.load(path)
        model, _, optimizer = nanochat_ref.build_recipe(ref, depth, vocab_size=vocab,
                                                        sequence_len=seq_len, device="cpu",
                                                        seed=0)
        return measure(model, optimizer)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nanochat", required=True, help="a nanochat checkout at commit 92d63d4")
    p.add_argument("--depths", default="12")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--json")
    args = p.parse_args(argv)
    report = {}
    for depth in (int(d) for d in args.depths.split(",")):
        a, b = ours(depth, args.vocab, args.seq_len), nanochat(args.nanochat, depth, args.vocab,
                                                               args.seq_len)
        report[f"d{depth}"] = {"ours": a, "nanochat": b}
        print(f"\nd{depth} (vocab {args.vocab}): GiB        ours   nanochat   difference")
        for key in ("params", "grads", "optimizer_state", "total", "embedding_params",
                    "embedding_grads", "embedding_state"):
            print(f"  {key:<24} {a[key] / GIB:8.2f} {b[key] / GIB:10.2f} "
                  f"{(a[key] - b[key]) / GIB:+12.2f}")
        print(f"  embeddings: {a['num_embedding_params']:,} parameters, ours "
              f"{a['embedding_dtype']}, nanochat {b['embedding_dtype']}")
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
