"""DistMuonAdamW: MuonAdamW sharded over ranks (ZeRO-2: gradients and optimizer state), no
DDP wrapper.

Every rank runs the same model on its own micro-batches and calls ``loss.backward()`` (once
per micro-step) then ``opt.step()``; the caller's code is the single-GPU code.

Ownership (the plan in :mod:`~nanogpt_course.optim.sharding`, the same on every rank):
Muon needs whole matrices for Newton-Schulz, so each Muon matrix is **owned** whole by one
rank (round-robin within each (group, shape, dtype)). AdamW is elementwise, so an AdamW
tensor with ``numel >= small_param_numel`` (4096) is cut **flat** into ``W`` chunks of
``c = ceil(numel / W)`` elements, rank ``r`` owning ``[r c, (r + 1) c)``. Smaller AdamW
tensors are **replicated** (every rank keeps and updates them).

Who holds what during one step on rank ``r`` of ``W`` (``P`` = all parameter elements,
``b`` = bytes per element of the parameters and gradients, fp32 here: 4; ``P_r`` = the
elements rank ``r`` owns, ~``P / W``; ``S`` = the small replicated tensors, a few KiB):

=====================  ===========================================  ========================
point                  gradients on rank r                          on the wire (per rank)
=====================  ===========================================  ========================
forward                the owned accumulators of earlier micro-     nothing
                       steps (``P_r b``; none on the first)
backward, as each      that parameter's full ``p.grad`` (autograd   slab: ``(W, m, n)`` sent,
gradient completes     made it), moved into its bucket and          ``(m, n)`` received;
(post-accumulate-      ``p.grad = None``; a bucket launches when    flat: ``W c`` sent, ``c``
grad hook)             full; at most ``max_in_flight`` (4) launched received; small: ``S``
                       buckets' send + receive buffers alive, plus  all-reduced
                       partly filled slabs (< ``W`` matrices each)
end of backward        ``P_r b`` owned accumulators (+ ``S b``,     the buckets that waited
(engine callback)      + flat zero padding < ``W`` elements per     for absent gradients
                       tensor); no ``p.grad``, nothing in flight
``step()``             the same, consumed: Muon on owned matrices   all-gather: ``P_r`` sent,
                       (a ``(k, m, n)`` stack of them), AdamW on    ``P`` received (updated
                       owned chunks; then freed                     parameters)
=====================  ===========================================  ========================

Parameters: every rank holds all ``P b`` (stage 2 does not shard them). Optimizer state:
Muon momentum (``m n`` per owned matrix) and Adam moments (``2 c`` per owned chunk, ``2 n``
per small tensor) on the owner only: ~``state / W`` per rank. Traffic per step is one
reduce-scatter of the gradients per micro-step plus one all-gather of the parameters: for
accumulation 1, the bytes of DDP's all-reduce (a ring all-reduce *is* a reduce-scatter then
an all-gather); slabs add the zero-padding of a last, partly filled slab per shape.

Gradient accumulation: every micro-step's backward reduce-scatters, and the owned part is
added into the accumulator (DeepSpeed's choice: memory stays ``P_r b`` at the price of one
reduce-scatter per micro-step; see :mod:`~nanogpt_course.optim.grad_shard`), so ``N`` ranks
x accumulation ``A`` sum exactly the gradients of 1 rank x ``A N``. ``step()`` divides by
``W`` (the trainer already divided the loss by ``A``).

``step()``: (only with clipping / ``track_grad_norm``) all-reduce the squared norm of the
owned parts, the global norm; then per unit (a Muon shape, a flat tensor, the small bundle)
update what this rank owns and launch an async **all-gather** of the result; then wait for
them and write the gathered values into every rank's parameters. Parameters that get no
gradient on any rank are skipped (they must lack it on every rank); gradients assigned by
hand (``p.grad = ...``) are sharded at ``step()`` time. World size 1 (no process group)
works: the collectives become copies.

Hooks fire when autograd accumulates a parameter's gradient, so a model compiled as *one*
graph produces every gradient at the end of its compiled backward: nothing would overlap
and the peak would hold every full gradient. The trainer compiles block by block instead
(:mod:`nanogpt_course.train.compiling`). ``grad_hooks=False`` gives the older path (full
gradients until ``step()``, which reduce-scatters them all at once) for comparisons.

The collectives go through :class:`Collectives` (one object per optimizer), which tests and
lesson 06 wrap (:class:`RecordingCollectives`) to record launches, waits and the marks
``backward_start`` / ``grad_ready`` / ``backward_end``. On gloo (CPU) ``reduce_scatter``
returns a work handle whose ``wait()`` is all we use (gloo has no futures for it); NCCL
works the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from . import sharding
from .grad_shard import GradSharder, owned_grad_bytes
from .hybrid import HybridOptimizer

__all__ = ["DistMuonAdamW", "Collectives", "RecordingCollectives"]


class _Done:
    """The work handle of a collective that finished synchronously (world size 1)."""

    def wait(self, timeout=None) -> bool:
        return True


def _pick(*names):
    for name in names:  # torch 2.13 renamed these; the GPU machine runs 2.11
        fn = getattr(dist, name, None) if dist.is_available() else None
        if fn is not None:
            return fn
    return None


class Collectives:
    """The three collectives DistMuonAdamW uses, all async, on one process group.

    Without an initialized process group it acts as a world of one (copies, no-ops).
    """

    def __init__(self, group=None):
        self.group = group
        self.active = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size(group) if self.active else 1
        self.rank = dist.get_rank(group) if self.active else 0
        self._rs = _pick("reduce_scatter_single", "reduce_scatter_tensor")
        self._ag = _pick("all_gather_single", "all_gather_into_tensor")

    def mark(self, event: str, tag="") -> None:
        """A point in the program worth seeing next to the collectives (no-op here)."""

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, tag: str = ""):
        """``output`` (n, ...) <- sum over ranks of ``input[rank * n:(rank + 1) * n]``.
        ``tag`` names the bucket for recordings."""
        if not self.active:
            output.copy_(input)
            return _Done()
        return self._rs(output, input, op=dist.ReduceOp.SUM, group=self.group, async_op=True)

    def all_gather(self, output: torch.Tensor, input: torch.Tensor, tag: str = ""):
        """``output[r * n:(r + 1) * n]`` <- rank r's ``input`` (n, ...)."""
        if not self.active:
            output.copy_(input)
            return _Done()
        return self._ag(output, input, group=self.group, async_op=True)

    def all_reduce(self, tensor: torch.Tensor, tag: str = ""):
        """``tensor`` <- sum over ranks, in place."""
        if not self.active:
            return _Done()
        return dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group, async_op=True)


class RecordingCollectives(Collectives):
    """:class:`Collectives` that record every launch, every wait and every mark, in order,
    in ``log`` as ``(event, op, tag, seconds)`` tuples: ``event`` is "launch" | "wait" |
    "mark", ``op`` the collective (or the mark's name), ``tag`` its bucket, ``seconds``
    since the recorder was made (``time.perf_counter``). How tests and lesson 06 see the
    overlap with backward. ``grad_ready`` marks (one per parameter gradient) are only
    logged with ``mark_grads=True``."""

    def __init__(self, group=None, *, mark_grads: bool = False):
        super().__init__(group)
        self.log: list[tuple[str, str, str, float]] = []
        self.mark_grads = mark_grads
        self._t0 = time.perf_counter()

    def _add(self, event: str, op: str, tag: str) -> None:
        self.log.append((event, op, tag, time.perf_counter() - self._t0))

    def _recorded(self, name: str, tag: str, work):
        self._add("launch", name, tag)
        add = self._add

        class Handle:
            def wait(self, timeout=None):
                add("wait", name, tag)
                return work.wait()

        return Handle()

    def mark(self, event: str, tag="") -> None:
        if self.mark_grads or event != "grad_ready":
            self._add("mark", event, tag)

    def reduce_scatter(self, output, input, tag=""):
        return self._recorded("reduce_scatter", tag, super().reduce_scatter(output, input))

    def all_gather(self, output, input, tag=""):
        return self._recorded("all_gather", tag, super().all_gather(output, input))

    def all_reduce(self, tensor, tag=""):
        return self._recorded("all_reduce", tag, super().all_reduce(tensor))


@dataclass
class _Unit:
    """What ``step()`` updates (and all-gathers) in one go: a muon shape (stacked, one
    batched Newton-Schulz), a flat AdamW tensor, or the bundle of small AdamW tensors of one
    dtype. (The gradients arrive through :class:`GradSharder`'s buckets.)"""

    kind: str  # "muon" | "flat" | "small"
    indices: list[int]  # global parameter indices
    group: int = -1  # param group (muon, flat)
    positions: list[int] = field(default_factory=list)  # muon: slot in the stacked buffer
    per_rank: int = 0  # muon: slots per rank; flat: chunk length
    # filled during a step:
    recv: torch.Tensor | None = None  # this rank's summed gradient (see _owned_grad)
    active: list[int] = field(default_factory=list)  # small: the members with gradients
    gathered: torch.Tensor | None = None
    gather_work: object = None


class DistMuonAdamW(HybridOptimizer):
    """MuonAdamW whose gradients, optimizer state and updates are sharded over ranks.

    Same groups and options as :class:`~nanogpt_course.optim.MuonAdamW`, plus:

    Args:
        process_group: the group to shard over (default: the default group; none
            initialized means a world of one).
        small_param_numel: AdamW tensors with fewer elements are all-reduced and their
            state replicated (default 4096).
        collectives: a :class:`Collectives` to use instead (tests wrap it).
        grad_hooks: shard gradients during backward (default). False: gradients stay whole
            in ``p.grad`` until ``step()`` reduce-scatters them (ZeRO-1 memory; the path
            benchmarks compare against).
        max_in_flight: collectives in flight during backward before a launch waits for
            the oldest (bounds the send buffers alive at once).
    """

    def __init__(self, param_groups, *, process_group=None,
                 small_param_numel: int = sharding.SMALL_PARAM_NUMEL,
                 collectives: Collectives | None = None, grad_hooks: bool = True,
                 max_in_flight: int = 4, **options):
        super().__init__(param_groups, **options)
        self.comm = collectives if collectives is not None else Collectives(process_group)
        self.world_size, self.rank = self.comm.world_size, self.comm.rank
        self.small_param_numel = small_param_numel
        self._units = self._plan()
        self.sharder = GradSharder(self._all_params(), self.shard_layout()["params"],
                                   self.comm, hooks=grad_hooks, max_in_flight=max_in_flight)

    @property
    def shards_grads_in_backward(self) -> bool:
        """True while the backward hooks are registered (the trainer then compiles the
        model block by block, so that they fire as backward goes)."""
        return bool(self.sharder._handles)

    # ------------------------------------------------------------------ plan
    def _plan(self) -> list[_Unit]:
        placed = self.shard_layout()["params"]
        params = self._all_params()
        small: dict[torch.dtype, list[int]] = {}
        muon: dict[tuple, list[int]] = {}
        units = []
        for i, e in enumerate(placed):
            if e["mode"] == "owned":
                key = (e["group"], tuple(e["shape"]), e["dtype"])
                if not self.batch_same_shape:
                    key = key + (i,)
                muon.setdefault(key, []).append(i)
            elif e["mode"] == "flat":
                if not params[i].is_contiguous():
                    raise ValueError(f"parameter {i} of shape {e['shape']} is not contiguous; "
                                     "DistMuonAdamW updates flat views of AdamW tensors")
                units.append(_Unit("flat", [i], e["group"], per_rank=e["chunk"]))
            else:
                small.setdefault(params[i].dtype, []).append(i)
        for key, members in muon.items():
            owners = [placed[i]["owner"] for i in members]
            per_rank = max(owners.count(r) for r in range(self.world_size))
            seen = [0] * self.world_size
            positions = []
            for owner in owners:
                positions.append(owner * per_rank + seen[owner])
                seen[owner] += 1
            units.append(_Unit("muon", members, key[0], positions, per_rank))
        # the small bundle goes first: tiny, so its result is ready by the time we need it
        return [_Unit("small", idx) for idx in small.values()] + units

    # ------------------------------------------------------------------ step
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the sharded gradient accumulators (and any ``p.grad``)."""
        super().zero_grad(set_to_none)
        self.sharder.reset()

    def remove_hooks(self) -> None:
        """Stop sharding in backward (gradients then stay in ``p.grad`` until ``step()``)."""
        self.sharder.remove_hooks()

    def grad_bytes(self) -> int:
        """Bytes of gradients alive on this rank now, measured from the tensors."""
        return self.sharder.live_grad_bytes()

    def predicted_grad_bytes(self) -> dict[str, int]:
        """``{"owned", "bound"}`` for this rank after backward, from the plan (see
        :func:`~nanogpt_course.optim.grad_shard.owned_grad_bytes`)."""
        return owned_grad_bytes(self.shard_layout()["params"], self.world_size, self.rank)

    def _update(self) -> None:
        params = self._all_params()
        self.sharder.collect()  # gradients set by hand; a no-op after a hooked backward
        seen = self.sharder.seen
        units = [u for u in self._units if any(i in seen for i in u.indices)]
        for unit in units:
            unit.recv = self._owned_grad(unit)
        coef = None
        if self._wants_norm():
            coef = self._clip_coef(self._global_norm(units))
        scale = 1.0 / self.world_size
        try:
            for unit in units:
                factor = scale if coef is None else coef * scale
                getattr(self, f"_update_{unit.kind}")(unit, params, factor)
            for unit in units:
                self._finish(unit, params)
        finally:
            self.sharder.reset()  # step() consumes the accumulated gradients

    def _owned_grad(self, unit: _Unit) -> torch.Tensor | None:
        """This rank's reduced (summed over ranks) gradient for ``unit``: muon ``(k, m, n)``
        for its owned matrices with gradients, flat ``(stop - start,)``, small: the bundle."""
        sh = self.sharder
        if unit.kind == "small":
            index = sh.bucket_of[unit.indices[0]].index
            if index not in sh.small:
                return None
            unit.active, bundle = sh.small[index]
            return bundle
        if unit.kind == "flat":
            i = unit.indices[0]
            if i not in sh.owned:
                return None
            start, stop = sharding.chunk_bounds(self._all_params()[i].numel(),
                                                self.world_size, self.rank)
            return sh.owned[i][: stop - start]
        live = [i for _, i in self._mine(unit) if i in sh.seen]
        if not live:
            return None
        return torch.stack([sh.owned[i] for i in live])

    def _global_norm(self, units: list[_Unit]) -> torch.Tensor:
        """The norm of the rank-averaged gradient over all parameters (same on every rank)."""
        parts = []
        for unit in units:
            if unit.recv is not None and (unit.kind != "small" or self.rank == 0):
                parts.append(unit.recv.float().pow(2).sum())  # small grads: on every rank
        device = self._all_params()[0].device
        total = torch.stack(parts).sum() if parts else torch.zeros((), device=device)
        self.comm.all_reduce(total, tag="grad-norm").wait()
        return total.sqrt() / self.world_size

    def _mine(self, unit: _Unit) -> list[tuple[int, int]]:
        """``(slot, param index)`` of the muon matrices this rank owns in ``unit``."""
        lo = self.rank * unit.per_rank
        return sorted((pos - lo, i) for i, pos in zip(unit.indices, unit.positions)
                      if lo <= pos < lo + unit.per_rank)

    def _update_muon(self, unit: _Unit, params: list, factor) -> None:
        mine = self._mine(unit)
        first = params[unit.indices[0]]
        stacked = first.new_zeros(unit.per_rank, *first.shape)
        for slot, i in mine:
            stacked[slot].copy_(params[i])
        live = [(slot, i) for slot, i in mine if i in self.sharder.seen]
        if live:
            slots = [slot for slot, _ in live]
            contiguous = slots == list(range(len(slots)))
            grads = unit.recv  # (len(live), m, n), in slot order
            target = stacked[: len(slots)] if contiguous else stacked[slots]
            self._muon_update_(self.param_groups[unit.group], tuple(unit.indices),
                               [params[i] for _, i in live], grads, target, grad_scale=factor)
            if not contiguous:
                stacked[slots] = target
        unit.gathered = stacked.new_empty(unit.per_rank * self.world_size, *first.shape)
        unit.gather_work = self.comm.all_gather(unit.gathered, stacked, tag="muon")

    def _update_flat(self, unit: _Unit, params: list, factor) -> None:
        p = params[unit.indices[0]]
        flat = p.detach().view(-1)
        start, stop = sharding.chunk_bounds(flat.numel(), self.world_size, self.rank)
        chunk = flat.new_zeros(unit.per_rank)
        chunk[: stop - start].copy_(flat[start:stop])
        if stop > start and unit.recv is not None:
            grad = unit.recv[: stop - start].mul_(factor)
            self._adamw_update_(self.param_groups[unit.group], [p], [grad],
                                targets=[chunk[: stop - start]])
        exact = unit.per_rank * self.world_size == flat.numel()
        unit.gathered = flat if exact else flat.new_empty(unit.per_rank * self.world_size)
        unit.gather_work = self.comm.all_gather(unit.gathered, chunk, tag="flat")

    def _update_small(self, unit: _Unit, params: list, factor) -> None:
        unit.recv.mul_(factor)
        grads, offset = {}, 0
        for i in unit.active:
            n = params[i].numel()
            grads[i] = unit.recv[offset: offset + n].view(params[i].shape)
            offset += n
        start = 0
        for group in self.param_groups:  # replicated state: every rank updates all of them
            stop = start + len(group["params"])
            idx = [i for i in unit.active if start <= i < stop]
            if idx:
                self._adamw_update_(group, [params[i] for i in idx], [grads[i] for i in idx])
            start = stop

    def _finish(self, unit: _Unit, params: list) -> None:
        if unit.gather_work is None:
            return
        unit.gather_work.wait()
        if unit.kind == "flat":
            flat = params[unit.indices[0]].detach().view(-1)
            if unit.gathered.data_ptr() != flat.data_ptr():
                flat.copy_(unit.gathered[: flat.numel()])
        else:
            live = [i for i in unit.indices if i in self.sharder.seen]
            pos = dict(zip(unit.indices, unit.positions))
            torch._foreach_copy_([params[i] for i in live],
                                 [unit.gathered[pos[i]] for i in live])
        unit.recv = unit.gathered = unit.gather_work = None

