"""DistMuonAdamW on 2 and 4 gloo ranks against single-process MuonAdamW.

Each world is spawned once (module-scoped fixtures) and runs every scenario; the tests then
compare what the ranks wrote with references computed here in the main process. The ranks
accumulate ``ACCUM`` micro-batches per step, so W ranks x accumulation A are compared with
1 process x accumulation A W (gradients are reduce-scattered in every micro-step's backward).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nanogpt_course.optim import (
    DistMuonAdamW,
    MuonAdamW,
    RecordingCollectives,
    consolidate,
    load_sharded,
)

pytestmark = pytest.mark.distributed

STEPS = 10
ACCUM = 2  # micro-batches per step on every rank
SAVE_AT = 5  # the resharding scenario saves after this many steps
BATCH, SEQ = 8, 6
SMALL = 64  # small_param_numel for the tiny model: its embeddings get sharded flat
CONFIGS = {
    "plain": {},
    "clip": {"max_grad_norm": 0.3, "wd": 0.1, "cautious": True, "method": "polar_express"},
    # MuonEq + Muon+ + NorMuon: the second moments are sharded and resharded with the rest
    "normuon": {"equilibrate": True, "renormalize": True, "variance_beta2": 0.9},
    # today's path before ZeRO-2 (reduce-scatter inside step()): must give the same model
    "step_only": {"grad_hooks": False},
}


class TinyLM(nn.Module):
    """Shapes chosen to be awkward: (2d+1, d) matrices in buckets of 3, a 31x11 embedding
    (341 elements, odd), a matrix and a scalar vector that never get gradients."""

    def __init__(self, vocab: int = 31, d: int = 11, layers: int = 3):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.q = nn.ParameterList(nn.Parameter(torch.randn(d, d) / d**0.5) for _ in range(layers))
        self.up = nn.ParameterList(
            nn.Parameter(torch.randn(2 * d + 1, d) / d**0.5) for _ in range(layers))
        self.down = nn.ParameterList(
            nn.Parameter(torch.randn(d, 2 * d + 1) / d**0.5) for _ in range(layers))
        self.unused = nn.Parameter(torch.randn(d, d))
        self.unused_scale = nn.Parameter(torch.ones(3))
        self.gain = nn.Parameter(torch.ones(layers))
        self.lm_head = nn.Parameter(torch.randn(vocab, d) / d**0.5)

    def parameter_kinds(self):
        return {"matrix": [*self.q, *self.up, *self.down, self.unused],
                "embedding": [self.wte.weight], "unembedding": [self.lm_head],
                "scalar": [self.gain, self.unused_scale]}

    def forward(self, idx, targets):
        x = self.wte(idx)
        for q, up, down, g in zip(self.q, self.up, self.down, self.gain):
            x = x + g * torch.relu(x @ q.T @ up.T) @ down.T
        logits = x @ self.lm_head.T
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_model(seed: int = 0, **kw) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(**kw)


def groups_for(model: TinyLM, cfg: dict) -> list[dict]:
    kinds = model.parameter_kinds()
    return [
        {"kind": "muon", "params": kinds["matrix"], "lr": 0.02, "momentum": 0.9,
         "weight_decay": cfg.get("wd", 0.0), "cautious_weight_decay": cfg.get("cautious", False),
         "orthogonalizer": cfg.get("method", "newton_schulz"),
         "row_equilibrate": cfg.get("equilibrate", False),
         "renormalize": cfg.get("renormalize", False),
         "variance_beta2": cfg.get("variance_beta2")},
        {"kind": "adamw", "params": kinds["embedding"], "lr": 0.05, "betas": (0.8, 0.95)},
        {"kind": "adamw", "params": kinds["unembedding"], "lr": 0.01, "betas": (0.9, 0.99),
         "weight_decay": 0.01},
        {"kind": "adamw", "params": kinds["scalar"], "lr": 0.02},
    ]


def batch(step: int, vocab: int = 31):
    g = torch.Generator().manual_seed(1000 + step)
    idx = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    return idx, torch.randint(0, vocab, (BATCH, SEQ), generator=g)


def train(model, opt, steps, *, start=0, rank=0, world=1, micro=1, record=None):
    """``steps`` optimizer steps; this rank takes its rows of the global batch and (for the
    one-process reference) accumulates ``micro`` equal micro-batches of them."""
    rows = BATCH // world
    for step in range(start, start + steps):
        idx, tgt = batch(step)
        idx, tgt = idx[rank * rows:(rank + 1) * rows], tgt[rank * rows:(rank + 1) * rows]
        opt.zero_grad(set_to_none=True)
        for i, j in zip(idx.chunk(micro), tgt.chunk(micro)):
            (model(i, j) / micro).backward()
        opt.step()
        if record is not None and opt.grad_norm is not None:
            record.append(float(opt.grad_norm))


# ----------------------------------------------------------------------------- the ranks
def dist_optimizer(model, cfg, **kw):
    return DistMuonAdamW(groups_for(model, cfg), small_param_numel=SMALL,
                         max_grad_norm=cfg.get("max_grad_norm"), track_grad_norm=True,
                         grad_hooks=cfg.get("grad_hooks", True), **kw)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _run_rank(rank: int, world: int, load_from: str | None, configs: dict) -> dict:
    result = {}
    for name, cfg in configs.items():
        model = make_model()
        comm = RecordingCollectives(mark_grads=True)
        opt = dist_optimizer(model, cfg, collectives=comm)
        norms: list[float] = []
        logs = []
        for step in range(STEPS):
            comm.log = []
            train(model, opt, 1, start=step, rank=rank, world=world, micro=ACCUM, record=norms)
            logs.append(comm.log)
            if step + 1 == SAVE_AT:
                shard, layout = opt.shard_state_dict()
                at_save = snapshot(model)
            if step == SAVE_AT:
                after_next = snapshot(model)
        result[name] = {"final": snapshot(model), "norms": norms, "logs": logs, "shard": shard,
                        "layout": layout, "at_save": at_save, "after_next": after_next,
                        "buckets": {f"{b.kind}{b.index}": b.members
                                    for b in opt.sharder.buckets}}
        if load_from is not None:  # resume from another world size's shards
            saved = [torch.load(f, weights_only=False)[name]
                     for f in sorted(Path(load_from).glob("rank*.pt"))]
            model = make_model()
            model.load_state_dict(saved[0]["at_save"])
            opt = dist_optimizer(model, cfg)
            load_sharded(opt, [s["shard"] for s in saved], [s["layout"] for s in saved])
            train(model, opt, 1, start=SAVE_AT, rank=rank, world=world, micro=ACCUM)
            result[name]["resumed"] = snapshot(model)
    result["memory"] = _measure_memory(rank, world)
    return result


def _measure_memory(rank: int, world: int) -> dict:
    """Gradient bytes alive after each micro-step's backward (live tensors), the plan's
    prediction, and the optimizer state after the step, on a larger TinyLM."""
    big = make_model(vocab=257, d=32, layers=8)
    opt = dist_optimizer(big, {})
    rows = BATCH // world
    idx, tgt = batch(0, vocab=257)
    idx, tgt = idx[rank * rows:(rank + 1) * rows], tgt[rank * rows:(rank + 1) * rows]
    after_backward = []
    for i, j in zip(idx.chunk(ACCUM), tgt.chunk(ACCUM)):
        (big(i, j) / ACCUM).backward()
        assert all(p.grad is None for p in big.parameters())  # full gradients were freed
        after_backward.append(opt.grad_bytes())
    opt.step()
    return {"after_backward": after_backward, "after_step": opt.grad_bytes(),
            "predicted": opt.predicted_grad_bytes(), "state_bytes": opt.state_bytes(),
            "full": sum(p.numel() * p.element_size() for p in big.parameters())}


def _worker(rank: int, world: int, init_file: str, out_dir: str, load_from: str | None,
            configs: dict):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        result = _run_rank(rank, world, load_from, configs)
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def spawn_world(world: int, out_dir: Path, load_from: Path | None = None,
                configs: dict = CONFIGS) -> list[dict]:
    """Run ``_worker`` on ``world`` gloo ranks; returns what each rank saved."""
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the ranks
    out_dir.mkdir(parents=True, exist_ok=True)
    init_file = tempfile.mktemp(dir=out_dir, prefix="init")
    # forkserver: torch and this module are imported once in the server, and every rank
    # forks from it (a fresh "spawn" would import torch once per rank: seconds on 2 cores)
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "forkserver":
        multiprocessing.get_context(method).set_forkserver_preload(["torch", __name__])
    mp.start_processes(_worker, args=(world, init_file, str(out_dir),
                                      None if load_from is None else str(load_from), configs),
                       nprocs=world, start_method=method)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


# ----------------------------------------------------------------------------- references
def reference_run(cfg: dict, micro: int) -> dict:
    """Single-process MuonAdamW on the full batch, accumulated over ``micro`` micro-batches
    (``micro`` = the world size gives the same per-rank forward passes)."""
    model = make_model()
    opt = MuonAdamW(groups_for(model, cfg), max_grad_norm=cfg.get("max_grad_norm"),
                    track_grad_norm=True)
    norms: list[float] = []
    out = {}
    for step in range(STEPS):
        train(model, opt, 1, start=step, micro=micro, record=norms)
        if step == SAVE_AT:
            out["after_next"] = snapshot(model)
    out.update(final=snapshot(model), norms=norms)
    return out


def max_rel(a: dict, b: dict) -> float:
    """max over parameters of ||a - b|| / ||b||."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


@pytest.fixture(scope="module")
def references():
    """``references[micro][config]``: one process, the batch in 1, 2 A or 4 A micro-batches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: CPU matmul rounding depends on the split
    try:
        return {micro: {name: reference_run(cfg, micro) for name, cfg in CONFIGS.items()
                    if name != "step_only"}
                for micro in (1, 2 * ACCUM, 4 * ACCUM)}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return spawn_world(2, tmp_path_factory.mktemp("world2"))


@pytest.fixture(scope="module")
def world4(tmp_path_factory, world2):
    src = tmp_path_factory.getbasetemp() / "world2_saved"
    src.mkdir(exist_ok=True)
    for r, res in enumerate(world2):  # what each rank of the 2-rank run saved
        torch.save({n: {k: res[n][k] for k in ("shard", "layout", "at_save")} for n in CONFIGS},
                   src / f"rank{r}.pt")
    return spawn_world(4, tmp_path_factory.mktemp("world4"), load_from=src), src


# ----------------------------------------------------------------------------- tests
TOL = 1e-6


def _check_world(results, references):
    world = len(results)
    for name in CONFIGS:
        # the same per-rank forward passes on one process (accumulation A N): equal up to
        # summation order
        ref = references[world * ACCUM][name if name != "step_only" else "plain"]
        # the whole batch in one forward pass: equal up to float rounding of the loss
        whole = references[1][name if name != "step_only" else "plain"]
        for rank, res in enumerate(results):
            err = max_rel(res[name]["final"], ref["final"])
            assert err <= TOL, f"{name}, rank {rank}: params differ from 1 process by {err:.2e}"
            assert max_rel(res[name]["final"], whole["final"]) <= 10 * TOL
            norm_err = max(abs(a - b) / b for a, b in zip(res[name]["norms"], ref["norms"]))
            assert len(res[name]["norms"]) == STEPS and norm_err <= TOL
            for key, value in res[name]["final"].items():  # all-gathered: identical everywhere
                assert torch.equal(value, results[0][name]["final"][key])


def test_two_ranks_equal_one_process(world2, references):
    _check_world(world2, references)


def test_four_ranks_equal_one_process(world4, references):
    _check_world(world4[0], references)


def test_clipping_was_binding(references):
    # otherwise the "clip" config would not test global clipping at all
    clip, plain = references[1]["clip"], references[1]["plain"]
    assert max(clip["norms"]) > CONFIGS["clip"]["max_grad_norm"]
    assert max_rel(clip["final"], plain["final"]) > 1e-3


def test_unused_parameters_untouched(world2):
    init = snapshot(make_model())
    for name in CONFIGS:
        for key in ("unused", "unused_scale"):
            assert torch.equal(world2[0][name]["final"][key], init[key])


def test_state_bytes_per_rank_is_total_over_world(world2, world4):
    model = make_model(vocab=257, d=32, layers=8)
    opt = MuonAdamW(groups_for(model, {}))
    idx, tgt = batch(0, vocab=257)
    model(idx, tgt).backward()
    opt.step()
    total = opt.state_bytes()
    replicated = 256  # >= Adam state of the small `gain` (8 floats x 2) + step counters
    for world, results in ((2, world2), (4, world4[0])):
        per_rank = [r["memory"]["state_bytes"] for r in results]
        for b in per_rank:
            assert abs(b - total / world) <= 0.02 * total / world + replicated, (per_rank, total)
        # and nothing is held twice except the replicated small tensors
        assert sum(per_rank) <= total + (world - 1) * replicated


def test_reduce_scatters_launched_during_backward_in_bucket_order(world2, world4):
    """The recorded log of every step: each bucket's collective is launched as soon as its
    last gradient is ready (while backward still runs), in the order buckets complete;
    only buckets with a member that never gets a gradient wait for the end of backward."""
    for results in (world2, world4[0]):
        for res in results:
            for name in ("plain", "clip"):
                members = res[name]["buckets"]
                for log in res[name]["logs"]:
                    starts = [n for n, e in enumerate(log) if e[:2] == ("mark", "backward_start")]
                    ends = [n for n, e in enumerate(log) if e[:2] == ("mark", "backward_end")]
                    assert len(starts) == len(ends) == ACCUM  # one backward per micro-step
                    for start, end in zip(starts, ends):
                        _check_one_backward(log[start:end + 1], members)


def _check_one_backward(log, members):
    ready: list[int] = []  # parameter indices, in the order their gradients were ready
    early = []
    in_flight = 0
    for event, op, tag, _ in log:
        in_flight += {"launch": 1, "wait": -1}.get(event, 0)
        assert in_flight <= 4  # max_in_flight: the send buffers alive at once are bounded
        if (event, op) == ("mark", "grad_ready"):
            ready.append(tag)
        elif event == "launch" and op in ("reduce_scatter", "all_reduce"):
            bucket = members[tag]
            # launched right when its last member arrived: that member is the latest gradient
            assert set(bucket) <= set(ready) and ready[-1] in bucket, (tag, bucket, ready)
            early.append(tag)
    assert len(early) >= 4, early  # most of the work overlaps backward (<= 2 flushed later)
    assert log[-1][:2] == ("mark", "backward_end")
    # the first reduce-scatter leaves before layer 0's first matrix (parameter 0) has its
    # gradient: communication overlaps the rest of backward
    first = next(n for n, e in enumerate(log) if e[:2] == ("launch", "reduce_scatter"))
    assert first < log.index(next(e for e in log if e[:3] == ("mark", "grad_ready", 0)))


def test_gradient_memory_is_sharded_after_backward(world2, world4):
    """Live gradient bytes after each backward <= what the rank owns + the documented bound
    (small bundle + flat padding), owned bytes over ranks sum to the sharded total, and
    step() releases them."""
    for results in (world2, world4[0]):
        mem = [r["memory"] for r in results]
        full = mem[0]["full"]
        owned = [m["predicted"]["owned"] for m in mem]
        replicated = mem[0]["predicted"]["bound"]  # rank 0: the small bundle, no padding
        # every sharded gradient byte is owned by exactly one rank
        assert sum(owned) + replicated == full
        for m in mem:
            for live in m["after_backward"]:
                assert live <= m["predicted"]["owned"] + m["predicted"]["bound"], (live, m)
                assert live < 0.75 * full  # not the whole gradient (the point of ZeRO-2)
            assert m["after_step"] == 0


def test_layout_is_the_same_on_every_rank(world2):
    for name in CONFIGS:
        assert world2[0][name]["layout"] == world2[1][name]["layout"]
        assert world2[0][name]["layout"]["world_size"] == 2


def test_save_on_2_resume_on_4(world2, world4, references):
    results, _ = world4
    for name in CONFIGS:
        for res in results:
            assert max_rel(res[name]["resumed"], world2[0][name]["after_next"]) <= TOL
            ref = references[2 * ACCUM][name if name != "step_only" else "plain"]
            assert max_rel(res[name]["resumed"], ref["after_next"]) <= TOL


@pytest.mark.parametrize("cls", [MuonAdamW, DistMuonAdamW])
def test_save_on_2_resume_on_1(world2, references, cls):
    for name, cfg in CONFIGS.items():
        model = make_model()
        model.load_state_dict(world2[0][name]["at_save"])
        opt = cls(groups_for(model, cfg), max_grad_norm=cfg.get("max_grad_norm"))
        load_sharded(opt, [r[name]["shard"] for r in world2], world2[0][name]["layout"])
        train(model, opt, 1, start=SAVE_AT, micro=2 * ACCUM)
        assert max_rel(snapshot(model), world2[0][name]["after_next"]) <= TOL
        ref = references[2 * ACCUM][name if name != "step_only" else "plain"]
        assert max_rel(snapshot(model), ref["after_next"]) <= TOL


def test_consolidated_state_equals_one_process_state(world2):
    cfg = CONFIGS["plain"]
    model = make_model()
    opt = MuonAdamW(groups_for(model, cfg))
    train(model, opt, SAVE_AT)
    expected, expected_layout = opt.shard_state_dict()
    full, layout = consolidate([r["plain"]["shard"] for r in world2],
                               [r["plain"]["layout"] for r in world2])
    assert layout["params"] == expected_layout["params"]
    assert full.keys() == expected.keys()
    for key in full:
        err = float((full[key] - expected[key]).norm() / expected[key].norm())
        assert err <= TOL, key


def test_world_of_one_accumulation_zero_grad_and_hand_set_gradients():
    """Without a process group (a world of one) the hooked path must equal MuonAdamW:
    two micro-steps accumulate into the owned buffers, zero_grad() drops a stale gradient,
    and gradients assigned by hand (no backward, no hook) are taken at step()."""
    for how in ("backward", "by_hand"):
        ref_model, model = make_model(), make_model()
        ref = MuonAdamW(groups_for(ref_model, {}))
        opt = DistMuonAdamW(groups_for(model, {}), small_param_numel=SMALL)
        model(*batch(99)).backward()  # stale: must not leak into step 0
        assert opt.grad_bytes() > 0 and all(p.grad is None for p in model.parameters())
        opt.zero_grad()
        assert opt.grad_bytes() == 0
        for step in range(3):
            ref.zero_grad()
            for i, j in zip(*(t.chunk(2) for t in batch(step))):
                (ref_model(i, j) / 2).backward()
            if how == "by_hand":
                for p, q in zip(model.parameters(), ref_model.parameters()):
                    p.grad = None if q.grad is None else q.grad.clone()
            else:
                for i, j in zip(*(t.chunk(2) for t in batch(step))):
                    (model(i, j) / 2).backward()
            ref.step()
            opt.step()
            assert opt.grad_bytes() == 0  # step() consumed the accumulators
        for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"{how}: {name}")
        assert torch.equal(dict(model.named_parameters())["unused"], make_model().unused)
