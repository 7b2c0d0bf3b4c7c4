"""A tiny training run that shows DistMuonAdamW giving the same model on 1 or N ranks.

    python -m nanogpt_course.optim.demo --steps 10 --out runs/demo1          # 1 process
    torchrun --nproc-per-node 2 -m nanogpt_course.optim.demo --out runs/demo2   # 2 ranks

(or ``nanogpt_course.launch.launch("nanogpt_course.optim.demo", nproc=2, out=...)``).

Every rank builds the same tiny GPT (same seed), draws the same global batch each step and
trains on its own rows of it, ``--device-batch`` rows per forward pass, accumulating
gradients over as many passes as it takes (``batch / (device_batch * ranks)``): so 1 rank
and N ranks run exactly the same forward passes, the trainer's rule too. ``build_optimizer``
picks MuonAdamW on one process and DistMuonAdamW on several. The data is a random bigram chain (each token has 3 possible
successors, so the best loss is ln 3 ~ 1.10): learnable, deterministic and free.

``--out`` receives ``params.safetensors`` (rank 0), ``optimizer_rank<R>.safetensors`` (each
rank's shard), ``optimizer_layout.json`` and ``report.json`` (losses, world size, and per rank,
measured from the live tensors: optimizer-state bytes after the last step and gradient bytes
after its last backward, next to the sharding plan's prediction). ``--no-grad-hooks`` keeps
full gradients until ``step()`` (the pre-ZeRO-2 path) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from .sharding import storage_bytes

__all__ = ["bigram_batch", "demo_config", "main"]


def bigram_batch(step: int, *, vocab: int = 64, batch: int = 8, seq: int = 32,
                 table_seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``(batch, seq)`` int64 from a fixed random bigram chain; the
    batch depends only on ``step`` (every rank can draw the same global batch)."""
    table = torch.randint(0, vocab, (vocab, 3), generator=torch.Generator().manual_seed(table_seed))
    g = torch.Generator().manual_seed(step)
    x = torch.empty(batch, seq + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
    for t in range(seq):
        x[:, t + 1] = table[x[:, t], torch.randint(0, 3, (batch,), generator=g)]
    return x[:, :-1], x[:, 1:]


def demo_config(*, vocab: int = 64, seq: int = 32, depth: int = 2, width: int = 64):
    from ..model import GPTConfig

    return GPTConfig(sequence_len=seq, vocab_size=vocab, n_layer=depth, n_head=width // 32,
                     n_kv_head=width // 32, n_embd=width)


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m nanogpt_course.optim.demo",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8, help="global batch (rows), all ranks")
    ap.add_argument("--device-batch", type=int, default=4, help="rows per forward pass")
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--width", type=int, default=64, help="n_embd, a multiple of 32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--small-param-numel", type=int, default=None,
                    help="AdamW tensors below this are all-reduced (default: the library's)")
    ap.add_argument("--no-grad-hooks", action="store_true",
                    help="DistMuonAdamW: shard gradients in step(), not during backward")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from ..launch import finish_distributed, init_distributed
    from ..model import GPT
    from . import build_optimizer

    args = _parse(argv)
    info = init_distributed()
    world, rank = info.world_size, info.rank
    if args.batch % (world * args.device_batch):
        raise SystemExit(f"--batch {args.batch} must be a multiple of --device-batch "
                         f"{args.device_batch} x {world} ranks: every rank runs whole "
                         "forward passes of device_batch rows")
    accum = args.batch // (world * args.device_batch)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "0")) or
                              torch.get_num_threads()))
    torch.manual_seed(args.seed)
    model = GPT(demo_config(seq=args.seq, depth=args.depth, width=args.width)).to(info.device)
    extra = {} if args.small_param_numel is None else {"small_param_numel": args.small_param_numel}
    opt = build_optimizer(model, max_grad_norm=args.max_grad_norm, **extra)
    if args.no_grad_hooks and hasattr(opt, "remove_hooks"):
        opt.remove_hooks()
    rows = args.batch // world
    losses, started = [], time.time()
    for step in range(args.steps):
        x, y = bigram_batch(step, batch=args.batch, seq=args.seq)
        x, y = x[rank * rows:(rank + 1) * rows], y[rank * rows:(rank + 1) * rows]
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=info.device)
        for xs, ys in zip(x.split(args.device_batch), y.split(args.device_batch)):
            micro = model(xs.to(info.device), ys.to(info.device)) / accum
            micro.backward()
            loss += micro.detach()
        grad_bytes = _live_grad_bytes(model, opt)  # after this step's last backward
        opt.step()
        if world > 1:  # the global mean loss, for the log only
            dist.all_reduce(loss)
            loss /= world
        losses.append(loss.item())
        if rank == 0:
            print(f"step {step:3d}  loss {losses[-1]:.4f}  grad norm {opt.grad_norm.item():.3f}"
                  f"  ({type(opt).__name__}, {world} rank{'s' if world > 1 else ''})", flush=True)
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    predicted = opt.predicted_grad_bytes() if hasattr(opt, "predicted_grad_bytes") \
        else {"owned": full, "bound": 0}
    mine = [opt.state_bytes(), grad_bytes, predicted["owned"], predicted["bound"]]
    per_rank = torch.tensor([mine], dtype=torch.long)
    if world > 1:
        gathered = [torch.zeros_like(per_rank) for _ in range(world)]
        dist.all_gather(gathered, per_rank)
        per_rank = torch.cat(gathered)
    columns = per_rank.T.tolist()
    report = {"world_size": world, "optimizer": type(opt).__name__, "losses": losses,
              "state_bytes_per_rank": columns[0], "seconds": time.time() - started,
              "num_params": model.num_params(), "param_bytes": full,
              "grad_hooks": bool(getattr(opt, "shards_grads_in_backward", False)),
              "grad_bytes_after_backward_per_rank": columns[1],
              "predicted_owned_grad_bytes_per_rank": columns[2],
              "predicted_bound_grad_bytes_per_rank": columns[3]}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        shard, layout = opt.shard_state_dict()
        save_file({k: v.cpu() for k, v in shard.items()}, args.out / f"optimizer_rank{rank}.safetensors")
        if rank == 0:
            params = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()}
            save_file(params, args.out / "params.safetensors")
            (args.out / "optimizer_layout.json").write_text(json.dumps(layout, indent=1))
            (args.out / "report.json").write_text(json.dumps(report, indent=1))
    finish_distributed()
    if rank == 0:
        print(f"optimizer state bytes per rank: {report['state_bytes_per_rank']}")
    return report


def _live_grad_bytes(model, opt) -> int:
    """Gradient bytes alive now: DistMuonAdamW's accumulators (+ any ``p.grad``), or the
    ``p.grad`` storages of a one-process optimizer."""
    if hasattr(opt, "grad_bytes"):
        return opt.grad_bytes()
    return storage_bytes(p.grad for p in model.parameters() if p.grad is not None)


if __name__ == "__main__":
    main()
