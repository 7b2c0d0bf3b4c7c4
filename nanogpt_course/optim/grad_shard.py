"""Gradient sharding during backward: the "2" of ZeRO-2.

:class:`GradSharder` registers a ``register_post_accumulate_grad_hook`` on every parameter
of a :class:`~nanogpt_course.optim.DistMuonAdamW`. When a parameter's gradient is complete
(autograd has summed every use of it in this backward pass), the hook takes the gradient,
sets ``p.grad = None`` and, once every member of its **bucket** has arrived, launches the
bucket's collective asynchronously; backward continues while it travels. At the end of
backward (a callback queued on the autograd engine) the buckets still incomplete (members
without gradients) are launched, every collective is waited for, and each rank holds only
the gradient it owns under the sharding plan (:mod:`~nanogpt_course.optim.sharding`).

Buckets (fixed at construction, identical on every rank):

- **slab** (Muon): the matrices of one (group, shape, dtype) are owned round-robin, so
  members ``[k W, (k + 1) W)`` have ``W`` different owners (the ``k``-th matrix each rank
  owns). Their gradients are stacked in owner order, ``(W, m, n)``, zeros for a missing
  member, and one reduce-scatter hands rank ``r`` the sum of its ``(m, n)`` matrix. In a
  GPT the members of a slab come from neighbouring layers, so a slab fills as backward
  moves down the network.
- **flat** (AdamW tensors with ``numel >= small_param_numel``): the gradient, flattened and
  zero-padded to ``W * chunk``, is reduce-scattered; rank ``r`` keeps ``chunk`` elements.
- **small** (the other AdamW tensors, one bucket per dtype): concatenated and all-reduced
  when the last one arrives (or at the end of backward); every rank keeps all of them.

Collectives are launched in the order buckets complete, which is the order autograd
produces gradients: deterministic for the same graph, so the same on every rank (DDP
relies on the same fact; the first step checks it). At most ``max_in_flight`` collectives
are in flight; the next launch first waits for the oldest.

Gradient accumulation (DeepSpeed's policy): *every* micro-step's backward reduce-scatters
its gradients, and the owned part is added into a sharded accumulator (the first
micro-step's result *is* the accumulator). So a rank never holds more than its share, at
the price of one set of collectives per micro-step; 1 rank x accumulation ``A N`` and
``N`` ranks x accumulation ``A`` sum the same gradients. The optimizer's ``step()``
consumes the accumulators (and ``zero_grad()`` drops them).

Gradients set by hand (``p.grad = ...`` without backward) are picked up by :meth:`collect`
at ``step()`` time and take the same path; with ``hooks=False`` that is the only path, i.e.
the pre-ZeRO-2 behaviour (full gradients until ``step()``), kept for benchmarks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch

from .sharding import storage_bytes

__all__ = ["GradSharder", "Bucket", "owned_grad_bytes", "rank_memory"]


@dataclass
class Bucket:
    """One collective's worth of gradients."""

    index: int
    kind: str  # "slab" | "flat" | "small"
    members: list[int]  # global parameter indices, in plan order
    owners: list[int] = field(default_factory=list)  # slab: owner of each member
    chunk: int = 0  # flat: elements per rank
    mine: int | None = None  # slab: the member this rank owns (None: owns none)
    ready: dict = field(default_factory=dict)  # param index -> gradient, this backward
    launched: bool = False


class GradSharder:
    """Reduce-scatters gradients into per-rank owned accumulators as backward produces them.

    Args:
        params: every optimizer parameter, in ``param_groups`` order (global indices).
        placed: the sharding plan's entries (``layout["params"]``), one per parameter.
        comm: the optimizer's :class:`~nanogpt_course.optim.distributed.Collectives`.
        hooks: register the backward hooks (False: shard everything at ``step()`` time).
        max_in_flight: collectives allowed in flight before a launch waits for the oldest.
    """

    def __init__(self, params: list, placed: list[dict], comm, *, hooks: bool = True,
                 max_in_flight: int = 4):
        self.params, self.comm = params, comm
        self.world, self.rank = comm.world_size, comm.rank
        self.max_in_flight = max_in_flight
        self.buckets = self._plan(placed)
        self.bucket_of = {i: b for b in self.buckets for i in b.members}
        self.owned: dict[int, torch.Tensor] = {}  # param index -> owned gradient (sum)
        self.small: dict[int, tuple[list[int], torch.Tensor]] = {}  # bucket -> (idx, sum)
        self.seen: set[int] = set()  # params that got a gradient since the last step
        self.launch_order: list[int] = []  # bucket indices, this backward
        self._in_flight: deque = deque()
        self._callback_queued = False
        self._order_checked = self.world == 1
        self._handles = []
        if hooks:
            self._handles = [p.register_post_accumulate_grad_hook(self._hook(i))
                             for i, p in enumerate(params) if p.requires_grad]

    # ------------------------------------------------------------------ plan
    def _plan(self, placed: list[dict]) -> list[Bucket]:
        slabs: dict[tuple, list[int]] = {}
        buckets, small = [], {}
        for i, e in enumerate(placed):
            if e["mode"] == "owned":
                slabs.setdefault((e["group"], tuple(e["shape"]), e["dtype"]), []).append(i)
            elif e["mode"] == "flat":
                buckets.append(Bucket(0, "flat", [i], chunk=e["chunk"]))
            else:
                small.setdefault(e["dtype"], []).append(i)
        for members in slabs.values():
            for k in range(0, len(members), self.world):
                part = members[k:k + self.world]
                owners = [placed[i]["owner"] for i in part]
                if len(set(owners)) != len(owners):  # sharding.place's round robin
                    raise AssertionError(f"slab {part} has repeated owners {owners}")
                mine = next((i for i, o in zip(part, owners) if o == self.rank), None)
                buckets.append(Bucket(0, "slab", part, owners=owners, mine=mine))
        buckets += [Bucket(0, "small", idx) for idx in small.values()]
        for n, b in enumerate(buckets):
            b.index = n
        return buckets

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ backward
    def _hook(self, i: int):
        def hook(p: torch.Tensor) -> None:
            if not self._callback_queued:  # first gradient of this backward pass
                self._callback_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)
                self.comm.mark("backward_start")
            self.comm.mark("grad_ready", i)
            self.accept(i, p.grad)
            p.grad = None  # the full gradient is freed; the bucket holds it until launch
        return hook

    def accept(self, i: int, grad: torch.Tensor) -> None:
        """Parameter ``i``'s gradient of this backward pass; launch its bucket when full."""
        bucket = self.bucket_of[i]
        if bucket.launched:
            raise RuntimeError(f"parameter {i} got a second gradient after its bucket was "
                               "reduced in this backward pass (a parameter used in two "
                               "separate backward calls without a step in between?)")
        bucket.ready[i] = grad
        self.seen.add(i)
        if len(bucket.ready) == len(bucket.members):
            self._launch(bucket)

    def _backward_done(self) -> None:
        self._callback_queued = False
        self.comm.mark("backward_end")
        self.flush()
        self.comm.mark("flushed")

    def flush(self) -> None:
        """Launch the buckets some of whose members got no gradient (in plan order), wait
        for every collective and add the results into the owned accumulators."""
        for bucket in self.buckets:
            if bucket.ready and not bucket.launched:
                self._launch(bucket)
        while self._in_flight:
            self._complete(self._in_flight.popleft())
        for bucket in self.buckets:
            bucket.launched = False
        if not self._order_checked and self.launch_order:
            self._check_order()
        self.launch_order = []

    def collect(self) -> None:
        """Take gradients assigned by hand (``p.grad`` set, no hook fired) and flush."""
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.accept(i, p.grad)
                p.grad = None
        self.flush()

    # ------------------------------------------------------------------ collectives
    def _launch(self, bucket: Bucket) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            self._complete(self._in_flight.popleft())
        grads, bucket.ready = bucket.ready, {}
        bucket.launched = True
        self.launch_order.append(bucket.index)
        tag = f"{bucket.kind}{bucket.index}"
        if bucket.kind == "slab":
            some = next(iter(grads.values()))
            by_owner = [some.new_zeros(some.shape)] * self.world  # missing members: zeros
            for i, owner in zip(bucket.members, bucket.owners):
                if i in grads:
                    by_owner[owner] = grads[i]
            send = torch.stack(by_owner).flatten(0, 1)  # (W m, n): rank r's rows r m..
            target = bucket.mine if bucket.mine in self.seen else None
            recv = self._receiver(target, some.shape, some)
            work = self.comm.reduce_scatter(recv, send, tag=tag)
        elif bucket.kind == "flat":
            (i, grad), = grads.items()
            flat = grad.reshape(-1)
            total = bucket.chunk * self.world
            send = flat if total == flat.numel() else torch.nn.functional.pad(
                flat, (0, total - flat.numel()))
            target, recv = i, self._receiver(i, (bucket.chunk,), flat)
            work = self.comm.reduce_scatter(recv, send, tag=tag)
        else:
            idx = [i for i in bucket.members if i in grads]
            recv = torch.cat([grads[i].reshape(-1) for i in idx])
            send, target = None, None
            if bucket.index in self.small and self.small[bucket.index][0] != idx:
                raise RuntimeError("the small AdamW parameters with gradients changed between "
                                   "micro-steps of one optimizer step; every micro-step must "
                                   "give the same parameters gradients")
            work = self.comm.all_reduce(recv, tag=tag)
            self._in_flight.append((work, send, recv, ("small", bucket.index, idx)))
            return
        self._in_flight.append((work, send, recv, target))

    def _receiver(self, target: int | None, shape, like: torch.Tensor) -> torch.Tensor:
        """Where a reduce-scatter writes: the owned accumulator itself on the first
        micro-step, a temporary to add into it on later ones (or for a slab this rank owns
        no member of)."""
        if target is not None and target not in self.owned:
            self.owned[target] = like.new_empty(shape)
            return self.owned[target]
        return like.new_empty(shape)

    def _complete(self, entry) -> None:
        work, _send, recv, target = entry
        work.wait()
        if isinstance(target, tuple):  # small bundle
            _, index, idx = target
            if index in self.small:
                self.small[index][1].add_(recv)
            else:
                self.small[index] = (idx, recv)
        elif target is not None and self.owned[target] is not recv:
            self.owned[target].add_(recv)

    def _check_order(self) -> None:
        """Every rank must have launched the same buckets in the same order (else the
        collectives were paired wrongly): compare with one all-reduce, once."""
        self._order_checked = True
        order = torch.tensor(self.launch_order, dtype=torch.float64,
                             device=self.params[0].device)  # NCCL reduces GPU tensors
        both = torch.stack([order, order * order])
        self.comm.all_reduce(both, tag="order-check").wait()
        mean = both[0] / self.world
        if bool((both[1] / self.world - mean * mean).abs().max() > 1e-6) or \
                not torch.equal(mean, order):
            raise RuntimeError(
                "ranks produced gradients in different orders, so their collectives did not "
                f"match (this rank: buckets {self.launch_order}); every rank must run the "
                "same model code on the same shapes")

    # ------------------------------------------------------------------ the optimizer's side
    def reset(self) -> None:
        """Drop the accumulated gradients (after ``step()``, or ``zero_grad()``)."""
        self.owned.clear()
        self.small.clear()
        self.seen.clear()
        for bucket in self.buckets:
            bucket.ready, bucket.launched = {}, False

    def live_grad_bytes(self) -> int:
        """Bytes of gradient tensors alive on this rank, measured: the storages behind the
        owned accumulators, the small bundles, gradients waiting in buckets and any
        ``p.grad`` (each storage counted once)."""
        tensors = list(self.owned.values()) + [t for _, t in self.small.values()]
        tensors += [g for b in self.buckets for g in b.ready.values()]
        tensors += [e[2] for e in self._in_flight] + [e[1] for e in self._in_flight
                                                      if e[1] is not None]
        tensors += [p.grad for p in self.params if p.grad is not None]
        return storage_bytes(tensors)


def owned_grad_bytes(placed: list[dict], world: int, rank: int) -> dict[str, int]:
    """Predicted gradient bytes of rank ``rank`` after backward, from the plan alone.

    ``owned``: the muon matrices it owns and its exact flat chunks (over all ranks these sum
    to the gradient bytes of every sharded parameter). ``bound``: what it holds beyond that:
    the small AdamW bundle (replicated on every rank) and the zero padding of its flat
    chunks (``chunk * W - numel`` elements at most, on the last ranks).
    """
    owned = bound = 0
    for e in placed:
        size = _dtype_bytes(e["dtype"])
        numel = math.prod(e["shape"])
        if e["mode"] == "owned":
            owned += numel * size if e["owner"] == rank else 0
        elif e["mode"] == "flat":
            start = min(rank * e["chunk"], numel)
            stop = min(start + e["chunk"], numel)
            owned += (stop - start) * size
            bound += (e["chunk"] - (stop - start)) * size
        else:
            bound += numel * size
    return {"owned": owned, "bound": bound}


def rank_memory(placed: list[dict], world: int, rank: int) -> dict[str, int]:
    """Predicted bytes of rank ``rank`` from the plan: ``params`` (all of them, stage 2 keeps
    the model whole), ``grads`` after backward (owned + bound, see :func:`owned_grad_bytes`),
    ``grads_unsharded`` (every full ``p.grad``: DDP / ZeRO-1) and ``state`` (Muon momentum
    of owned matrices, Adam's two moments of owned chunks and of the replicated tensors).
    Activations are not included (they depend on the batch, not on the optimizer)."""
    params = state = 0
    for e in placed:
        size = _dtype_bytes(e["dtype"])
        numel = math.prod(e["shape"])
        params += numel * size
        if e["mode"] == "owned":
            state += numel * size if e["owner"] == rank else 0
        elif e["mode"] == "flat":
            start = min(rank * e["chunk"], numel)
            state += 2 * (min(start + e["chunk"], numel) - start) * size
        else:
            state += 2 * numel * size
    grads = owned_grad_bytes(placed, world, rank)
    return {"params": params, "grads": grads["owned"] + grads["bound"],
            "grads_unsharded": params, "state": state}


def _dtype_bytes(name: str) -> int:
    return torch.empty((), dtype=getattr(torch, name)).element_size()
