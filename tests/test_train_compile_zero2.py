"""The trainer's --compile path with ZeRO-2 hooks: blocks compiled one by one, so each
block's gradients are sharded while the blocks below it are still differentiating.

Runs torch.compile on the CPU with the ``aot_eager`` backend: dynamo + AOTAutograd build the
same per-block backward nodes as Inductor (which decides when gradients appear), without a C
compiler. The GPU run of the real Inductor path is in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import copy

import pytest
import torch

from nanogpt_course.model import GPT
from nanogpt_course.optim import DistMuonAdamW, MuonAdamW, RecordingCollectives, build_optimizer
from nanogpt_course.optim.demo import bigram_batch, demo_config
from nanogpt_course.train.compiling import BlockwiseCompiled, compile_for_training


def test_whole_model_compile_without_backward_sharding(monkeypatch):
    # one GPU (MuonAdamW) keeps the single graph; DistMuonAdamW gets the blockwise one
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    model = GPT(demo_config())
    assert not isinstance(compile_for_training(model, MuonAdamW(
        [{"kind": "adamw", "params": list(model.parameters())}])), BlockwiseCompiled)
    dist_opt = build_optimizer(model, distributed=True)
    assert dist_opt.shards_grads_in_backward
    assert isinstance(compile_for_training(model, dist_opt), BlockwiseCompiled)
    assert compiled[0] is model and len(compiled) == 1 + len(model.blocks) + 1
    dist_opt.remove_hooks()
    assert not dist_opt.shards_grads_in_backward


@pytest.fixture
def recorded_compile(monkeypatch):
    """torch.compile replaced by a recorder of its keyword arguments (the list ``seen``),
    a demo GPT, a one-GPU optimizer for it, and no compile mode in the environment."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    monkeypatch.delenv("NANOGPT_COURSE_COMPILE_MODE", raising=False)
    model = GPT(demo_config())
    return seen, model, MuonAdamW([{"kind": "adamw", "params": list(model.parameters())}])


def test_compile_mode_from_the_environment(recorded_compile, monkeypatch):
    """NANOGPT_COURSE_COMPILE_MODE reaches torch.compile (whole model and block by block);
    a mode torch does not have is refused with the list of those it has."""
    seen, model, adamw = recorded_compile
    monkeypatch.setenv("NANOGPT_COURSE_COORDINATE_TUNING", "0")
    compile_for_training(model, adamw)
    assert seen[-1] == {"dynamic": False}
    monkeypatch.setenv("NANOGPT_COURSE_COMPILE_MODE", "max-autotune-no-cudagraphs")
    compile_for_training(model, adamw)
    assert seen[-1] == {"dynamic": False, "mode": "max-autotune-no-cudagraphs"}
    dist_opt = build_optimizer(model, distributed=True)
    compile_for_training(model, dist_opt)
    assert all(kw.get("mode") == "max-autotune-no-cudagraphs" for kw in seen[-len(model.blocks) - 1:])
    dist_opt.remove_hooks()
    monkeypatch.setenv("NANOGPT_COURSE_COMPILE_MODE", "fastest")
    with pytest.raises(ValueError, match="not a torch.compile mode.*max-autotune"):
        compile_for_training(model, adamw)


def test_coordinate_tuning_from_the_environment(recorded_compile, monkeypatch):
    """NANOGPT_COURSE_COORDINATE_TUNING turns Inductor's coordinate-descent tuning on per
    compile call: as options (with a mode spelled out as its own options, since torch.compile
    refuses both), never for another backend, and a value other than 0/1 is refused."""
    from torch._inductor import list_mode_options

    seen, model, adamw = recorded_compile
    monkeypatch.setenv("NANOGPT_COURSE_COORDINATE_TUNING", "1")
    compile_for_training(model, adamw)
    assert seen[-1] == {"dynamic": False, "options": {"coordinate_descent_tuning": True}}
    monkeypatch.setenv("NANOGPT_COURSE_COMPILE_MODE", "reduce-overhead")
    compile_for_training(model, adamw)
    assert seen[-1]["options"] == {**list_mode_options("reduce-overhead"),
                                   "coordinate_descent_tuning": True}
    assert "mode" not in seen[-1] and seen[-1]["options"]["triton.cudagraphs"] is True
    compile_for_training(model, adamw, backend="aot_eager")
    assert seen[-1] == {"dynamic": False, "backend": "aot_eager"}
    compile_for_training(model, adamw, mode="default")  # a caller's mode is not overridden
    assert seen[-1] == {"dynamic": False, "mode": "default"}
    monkeypatch.setenv("NANOGPT_COURSE_COORDINATE_TUNING", "0")
    compile_for_training(model, adamw)
    assert seen[-1] == {"dynamic": False, "mode": "reduce-overhead"}
    monkeypatch.setenv("NANOGPT_COURSE_COORDINATE_TUNING", "yes")
    with pytest.raises(ValueError, match="use 1 .on. or 0"):
        compile_for_training(model, adamw)


def test_gemm_autotune_from_the_environment(recorded_compile, monkeypatch):
    """NANOGPT_COURSE_GEMM_AUTOTUNE asks Inductor to time its Triton matmul templates
    against cuBLAS (``tma``: with Hopper's persistent TMA templates too) and nothing else:
    no coordinate-descent pass, other options kept, and other values refused."""
    seen, model, adamw = recorded_compile
    monkeypatch.setenv("NANOGPT_COURSE_GEMM_AUTOTUNE", "1")
    compile_for_training(model, adamw)
    assert seen[-1] == {"dynamic": False, "options": {"max_autotune_gemm": True}}
    monkeypatch.setenv("NANOGPT_COURSE_GEMM_AUTOTUNE", "tma")
    monkeypatch.setenv("NANOGPT_COURSE_COORDINATE_TUNING", "1")
    compile_for_training(model, adamw)
    assert seen[-1]["options"] == {"max_autotune_gemm": True, "coordinate_descent_tuning": True,
                                   "triton.enable_persistent_tma_matmul": True}
    monkeypatch.setenv("NANOGPT_COURSE_COORDINATE_TUNING", "0")
    monkeypatch.setenv("NANOGPT_COURSE_GEMM_AUTOTUNE", "0")
    compile_for_training(model, adamw)
    assert seen[-1] == {"dynamic": False}
    monkeypatch.setenv("NANOGPT_COURSE_GEMM_AUTOTUNE", "all")
    with pytest.raises(ValueError, match="GEMM_AUTOTUNE='all'.*tma"):
        compile_for_training(model, adamw)


@pytest.mark.slow
def test_blockwise_compile_shards_gradients_during_backward():
    torch.manual_seed(0)
    model = GPT(demo_config(depth=3))
    twin = copy.deepcopy(model)
    comm = RecordingCollectives(mark_grads=True)
    groups = [dict(g) for g in build_optimizer(twin).param_groups]
    for g, src in zip(groups, build_optimizer(model).param_groups):
        g["params"] = src["params"]
    opt = DistMuonAdamW(groups, collectives=comm)
    forward = compile_for_training(model, opt, backend="aot_eager")
    assert isinstance(forward, BlockwiseCompiled)

    class Mark(torch.autograd.Function):  # logs where block i's backward begins
        @staticmethod
        def forward(ctx, x, i):
            ctx.i = i
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            comm.mark("block_backward", ctx.i)
            return grad, None

    calls = forward.block_calls
    forward.block_calls = [lambda *a, c=c, i=i, **k: Mark.apply(c(*a, **k), i)
                           for i, c in enumerate(calls)]
    x, y = bigram_batch(0)
    loss = forward(x, y)
    assert all(b._compiled_call_impl is None for b in model.blocks)  # eval stays eager
    want = twin(x, y)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    loss.backward()
    want.backward()
    assert all(p.grad is None for p in model.parameters())  # sharded and freed

    index = {id(p): i for i, p in enumerate(opt._all_params())}
    log = [(e[1], e[2]) for e in comm.log if e[0] in ("mark", "launch")]
    starts = {tag: n for n, (op, tag) in enumerate(log) if op == "block_backward"}
    assert sorted(starts, key=starts.get) == [2, 1, 0]  # backward runs top block first
    for i, block in enumerate(model.blocks):
        for p in block.parameters():
            at = log.index(("grad_ready", index[id(p)]))
            # block i's gradients are ready (and sharded) before block i - 1 differentiates
            assert starts[i] < at < starts.get(i - 1, len(log)), (i, at, starts)
            if p.ndim == 2 and index[id(p)] in opt.sharder.owned:  # a Muon matrix
                torch.testing.assert_close(opt.sharder.owned[index[id(p)]],
                                           dict(twin.named_parameters())[
                                               _name(model, p)].grad, rtol=1e-5, atol=1e-7)
    launches = [n for n, (op, _) in enumerate(log) if op == "reduce_scatter"]
    assert launches[0] < starts[0]  # communication began before the last block's backward


def _name(model, p) -> str:
    return next(n for n, q in model.named_parameters() if q is p)
