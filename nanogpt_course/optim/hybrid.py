"""MuonAdamW: one optimizer over "muon" groups (2-D block matrices) and "adamw" groups.

Groups look like ``{"kind": "muon" | "adamw", "params": [...], "lr": ..., ...}``; missing
hyperparameters get the defaults below, and every group gets ``initial_lr`` (= ``lr``) for
the trainer's schedule (``group["lr"] = group["initial_lr"] * lr_multiplier``). Each step
reads ``lr``, ``momentum`` and ``weight_decay`` from the groups, so schedules (LR, Muon
momentum warmup, weight decay) just write into ``param_groups``.

Muon matrices of one shape (in one group) are stacked and orthogonalized in one batched
call: a d12 GPT has 72 block matrices but only 3-4 shapes, so this is ~4 big kernels per
Newton-Schulz step instead of 72 small ones.

Gradient clipping: ``max_grad_norm`` (constructor or attribute) clips the global gradient
norm (all parameters, and in :class:`DistMuonAdamW` all ranks) before the update, without
touching ``p.grad``. The pre-clip norm is kept in ``optimizer.grad_norm`` (a 0-d tensor on
the parameters' device; read it with ``.item()`` when logging). It is also computed when
``track_grad_norm=True``; otherwise it is skipped (it costs a pass over the gradients and,
distributed, a synchronization) and ``grad_norm`` stays None.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from . import sharding
from .adamw import adamw_step_
from .muon import (
    ORTHOGONALIZERS,
    apply_muon_step_,
    muon_direction,
    renormalize,
    second_moment_shape,
    shape_lr_scale,
    variance_reduce,
)

__all__ = ["MUON_DEFAULTS", "ADAMW_DEFAULTS", "MuonAdamW", "HybridOptimizer"]

MUON_DEFAULTS = {
    "lr": 0.02,
    "momentum": 0.95,
    "nesterov": True,
    "weight_decay": 0.0,
    "ns_steps": 5,
    "orthogonalizer": "newton_schulz",
    "cautious_weight_decay": False,
    "shape_scaled_weight_decay": False,
    "row_equilibrate": False,
    "renormalize": False,
    "variance_beta2": None,
}
ADAMW_DEFAULTS = {
    "lr": 1e-3,
    "betas": (0.8, 0.95),
    "eps": 1e-10,
    "weight_decay": 0.0,
    "stochastic_rounding": False,
}
CLIP_EPS = 1e-6  # coef = max_norm / (norm + CLIP_EPS), as torch.nn.utils.clip_grad_norm_


def _normalize_groups(param_groups: Iterable[dict]) -> list[dict]:
    groups = []
    for i, group in enumerate(param_groups):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"param group {i} must be a dict with 'kind' and 'params'")
        kind = group.get("kind")
        if kind not in ("muon", "adamw"):
            raise ValueError(f"param group {i}: 'kind' must be 'muon' or 'adamw', got {kind!r}")
        group = {**(MUON_DEFAULTS if kind == "muon" else ADAMW_DEFAULTS), **group}
        group["params"] = list(group["params"])
        group.setdefault("initial_lr", group["lr"])
        if kind == "muon":
            bad = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
            if bad:
                raise ValueError(f"param group {i} (muon) holds non-matrix parameters of shapes "
                                 f"{bad}: Muon orthogonalizes 2-D matrices; put vectors and "
                                 "scalars in an 'adamw' group")
            beta2 = group["variance_beta2"]
            if beta2 is not None and not 0.0 <= beta2 < 1.0:
                raise ValueError(f"param group {i}: variance_beta2 must be in [0, 1) or None "
                                 f"(off), got {beta2!r}")
            if group["orthogonalizer"] not in ORTHOGONALIZERS:
                raise ValueError(f"param group {i}: orthogonalizer must be one of "
                                 f"{ORTHOGONALIZERS}, got {group['orthogonalizer']!r}")
        groups.append(group)
    if not groups:
        raise ValueError("optimizer got no parameter groups")
    return groups


class HybridOptimizer(torch.optim.Optimizer):
    """What MuonAdamW and DistMuonAdamW share: groups, clipping, state accounting, shards."""

    world_size = 1
    rank = 0
    small_param_numel = sharding.SMALL_PARAM_NUMEL

    def __init__(self, param_groups, *, max_grad_norm: float | None = None,
                 track_grad_norm: bool = False, batch_same_shape: bool = True):
        super().__init__(_normalize_groups(param_groups), defaults={})
        self.max_grad_norm = max_grad_norm
        self.track_grad_norm = track_grad_norm
        self.batch_same_shape = batch_same_shape
        self.grad_norm: torch.Tensor | None = None
        self._stacks: dict = {}  # (bucket key, state name) -> (param ids, stacked buffers)

    # torch.optim.Optimizer wraps add_param_group and zero_grad in torch._disable_dynamo,
    # whose first call imports torch._dynamo: ~3 s of CPU per process, paid by every rank of
    # a CPU launch. These two plain versions do the same job without that import.
    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.is_leaf:
                raise TypeError("optimizer parameters must be leaf tensors (nn.Parameter)")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or seen & {id(p) for p in params}:
            raise ValueError("a parameter appears twice in the optimizer's param groups")
        self.param_groups.append({**self.defaults, **param_group, "params": params})

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._all_params():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient; ``closure`` (optional) re-evaluates
        the loss first, with gradients on, and its value is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update()
        return loss

    def _update(self) -> None:
        """The update itself (no closure, no autograd), defined by each optimizer."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _all_params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    def _wants_norm(self) -> bool:
        return self.max_grad_norm is not None or self.track_grad_norm

    def _clip_coef(self, norm: torch.Tensor) -> torch.Tensor | None:
        self.grad_norm = norm
        if self.max_grad_norm is None:
            return None
        return (self.max_grad_norm / (norm + CLIP_EPS)).clamp(max=1.0)

    def _muon_buckets(self, group: dict) -> list[list[torch.nn.Parameter]]:
        """The group's matrices split by (shape, dtype, device); singletons if unbatched."""
        if not self.batch_same_shape:
            return [[p] for p in group["params"]]
        buckets: dict[tuple, list] = {}
        for p in group["params"]:
            buckets.setdefault((p.shape, p.dtype, p.device), []).append(p)
        return list(buckets.values())

    def _stacked_state(self, key, params: list[torch.nn.Parameter],
                       name: str = "momentum_buffer") -> torch.Tensor:
        """A ``(k, ...)`` tensor whose slice ``[j]`` *is* ``state[params[j]][name]``: the
        momentum buffers ``(k, m, n)``, or the second moments (``second_moment_shape``).

        Kept stacked so the batched update touches one tensor; rebuilt (by copying) when the
        set of params changes or ``load_state_dict`` replaced the buffers.
        """
        ids = tuple(id(p) for p in params)
        bufs = [self.state[p].get(name) for p in params]
        cached = self._stacks.get((key, name))
        if cached is not None and cached[0] == ids and all(
                b is not None and b.data_ptr() == cached[1][j].data_ptr()
                for j, b in enumerate(bufs)):
            return cached[1]
        shape = params[0].shape if name == "momentum_buffer" else second_moment_shape(
            tuple(params[0].shape))
        stacked = torch.stack([b if b is not None else params[0].new_zeros(shape)
                               for b in bufs])
        for j, p in enumerate(params):
            self.state[p][name] = stacked[j]
        self._stacks[(key, name)] = (ids, stacked)
        return stacked

    def _muon_update_(self, group: dict, key, params: list, grads: torch.Tensor,
                      targets: torch.Tensor | list, grad_scale=None) -> None:
        """Momentum + orthogonalize + step for ``k`` same-shape matrices ``params``.

        grads: ``(k, m, n)``, already averaged; ``grad_scale`` (clipping, 1 / world size) is
        applied on the way in. targets: what is updated in place, the ``(k, m, n)`` slab a
        rank owns, or the list ``params`` itself."""
        momentum = self._stacked_state(key, params)
        direction = muon_direction(grads.to(momentum.dtype), momentum,
                                   momentum=group["momentum"], nesterov=group["nesterov"],
                                   ns_steps=group["ns_steps"], method=group["orthogonalizer"],
                                   grad_scale=grad_scale, equilibrate=group["row_equilibrate"])
        if group["renormalize"]:
            direction = renormalize(direction)
        if group["variance_beta2"] is not None:
            direction = variance_reduce(direction,
                                        self._stacked_state(key, params, "second_moment"),
                                        group["variance_beta2"])
        decay = group["weight_decay"]
        if group["shape_scaled_weight_decay"]:  # decay at the matrix's own (shape-aware) LR
            decay *= shape_lr_scale(*params[0].shape[-2:])
        apply_muon_step_(targets, direction, lr=group["lr"], weight_decay=decay,
                         cautious=group["cautious_weight_decay"])

    def _adamw_update_(self, group: dict, params: list, grads: list,
                       targets: list | None = None) -> None:
        """AdamW on ``targets`` (default: ``params``), with state kept per param ``params[j]``
        shaped like ``targets[j]`` (a whole tensor or this rank's flat chunk)."""
        targets = params if targets is None else targets
        by_step: dict[int, list[int]] = {}
        for j, (p, t) in enumerate(zip(params, targets)):
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(t)
                state["exp_avg_sq"] = torch.zeros_like(t)
                if group.get("skip_first_step"):  # a gradient of pure rounding noise
                    continue
            state["step"] += 1
            by_step.setdefault(int(state["step"].item()), []).append(j)
        beta1, beta2 = group["betas"]
        for step, js in by_step.items():
            adamw_step_([targets[j] for j in js], [grads[j].to(targets[j].dtype) for j in js],
                        [self.state[params[j]]["exp_avg"] for j in js],
                        [self.state[params[j]]["exp_avg_sq"] for j in js], step=step,
                        lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                        weight_decay=group["weight_decay"],
                        stochastic_rounding=group["stochastic_rounding"])

    # ------------------------------------------------------------------ accounting
    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank, measured: the sizes of the distinct
        storages behind every state tensor (stacked buffers are counted once)."""
        return sharding.storage_bytes(value for state in self.state.values()
                                      for value in state.values() if torch.is_tensor(value))

    # ------------------------------------------------------------------ shards
    def shard_layout(self) -> dict:
        """This optimizer's layout (see :mod:`nanogpt_course.optim.sharding`); same on all ranks."""
        return sharding.make_layout(self.param_groups, self.world_size, self.small_param_numel)

    def shard_state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, layout)``: this rank's optimizer state (copies, on their device) and the
        JSON-safe layout. Save the tensors per rank and the layout once."""
        layout = self.shard_layout()
        tensors: dict[str, torch.Tensor] = {}
        for i, (p, entry) in enumerate(zip(self._all_params(), layout["params"])):
            state = self.state.get(p, {})
            if entry["kind"] == "muon":
                for name in sharding.MUON_STATE:
                    if name in state:
                        tensors[f"{i}.{name}"] = state[name].detach().clone()
            elif "step" in state:
                for name in ("exp_avg", "exp_avg_sq"):
                    tensors[f"{i}.{name}"] = state[name].detach().reshape(-1).clone()
                tensors[f"{i}.step"] = state["step"].detach().clone()
        return tensors, layout

    def load_shard_state_dict(self, tensors: dict[str, torch.Tensor], layout: dict, *,
                              restore_hyperparams: bool = True) -> None:
        """Load this rank's state from a shard saved with the same world size and placement,
        or from a consolidated (world size 1) state, which is cut for this rank here.

        ``restore_hyperparams``: also set the groups' saved hyperparameters (``lr``,
        ``initial_lr``, ``momentum``, ...), as ``torch.optim.Optimizer.load_state_dict`` does.
        """
        mine = self.shard_layout()
        sharding._check_layout(layout)
        if layout["world_size"] != self.world_size or layout["params"] != mine["params"]:
            if layout["world_size"] != 1:
                raise ValueError(
                    f"this shard comes from world size {layout['world_size']} (this optimizer "
                    f"runs on {self.world_size}); pass all ranks' shards to "
                    "optim.load_sharded(), or consolidate() them first")
            self._check_same_params(layout, mine)
            tensors, layout = sharding.reshard(tensors, layout, world_size=self.world_size,
                                              rank=self.rank,
                                              small_param_numel=self.small_param_numel)
        self._check_same_params(layout, mine)
        self.state.clear()
        self._stacks.clear()
        for i, (p, entry) in enumerate(zip(self._all_params(), mine["params"])):
            self._load_param_state(i, p, entry, tensors)
        if restore_hyperparams:
            for group, saved in zip(self.param_groups, layout["groups"]):
                for key, value in saved.items():
                    if key in group and key != "kind":
                        group[key] = tuple(value) if isinstance(group[key], tuple) else value

    @staticmethod
    def _check_same_params(layout: dict, mine: dict) -> None:
        strip = lambda entries: [(e["group"], e["kind"], e["shape"]) for e in entries]
        if strip(layout["params"]) == strip(mine["params"]):
            return
        groups = lambda lay: [f"{g.get('name')} ({g.get('kind')})" for g in lay.get("groups", [])]
        if groups(layout) != groups(mine):  # the same model under another role table
            raise ValueError(f"the optimizer state was saved with the groups {groups(layout)} "
                             f"and this optimizer has {groups(mine)} (build_optimizer's role "
                             "table has changed since): the optimizer state cannot be reused. "
                             "The weights still load: start from them with --checkpoint (a "
                             "fresh optimizer) instead of --resume")
        raise ValueError("the optimizer state was saved for different parameters (groups, "
                         "kinds or shapes differ): is this checkpoint from another model "
                         "or another build_optimizer grouping?")

    def _load_param_state(self, i: int, p: torch.nn.Parameter, entry: dict,
                          tensors: dict[str, torch.Tensor]) -> None:
        def get(name):
            return tensors[f"{i}.{name}"].detach().to(p.device)

        if entry["kind"] == "muon":
            for name in sharding.MUON_STATE:
                if f"{i}.{name}" in tensors:
                    self.state[p][name] = get(name).to(p.dtype).clone()
            return
        if f"{i}.exp_avg" not in tensors:
            return
        shape = p.shape if entry["mode"] == "replicated" else (-1,)
        state = self.state[p]
        for name in ("exp_avg", "exp_avg_sq"):
            state[name] = get(name).to(p.dtype).reshape(shape).clone()
        state["step"] = tensors[f"{i}.step"].detach().to("cpu", torch.float32).clone()


class MuonAdamW(HybridOptimizer):
    """Muon for the "muon" groups, AdamW for the "adamw" groups, on one process.

    Args:
        param_groups: ``[{"kind": "muon" | "adamw", "params": [...], "lr": ..., ...}]``.
            muon keys: ``lr`` (0.02), ``momentum`` (0.95), ``nesterov`` (True),
            ``weight_decay`` (0), ``ns_steps`` (5), ``orthogonalizer``
            ("newton_schulz" | "polar_express"), ``cautious_weight_decay`` (False),
            ``shape_scaled_weight_decay`` (False: when True a tall matrix decays at
            ``lr * sqrt(fan_out / fan_in) * wd``, its own step's LR, as nanochat does),
            ``row_equilibrate`` (False: MuonEq), ``renormalize`` (False: Muon+),
            ``variance_beta2`` (None: off; a float turns on NorMuon's variance reduction
            with that EMA rate, see :func:`~nanogpt_course.optim.muon.variance_reduce`).
            adamw keys: ``lr`` (1e-3), ``betas`` ((0.8, 0.95)), ``eps`` (1e-10),
            ``weight_decay`` (0), ``skip_first_step`` (False: when True a parameter's first
            update is skipped, for gradients that are zero in exact arithmetic at init),
            ``stochastic_rounding`` (False: bf16 parameters rounded to nearest after each
            step; True: unbiased random rounding, see ``adamw.round_stochastic``).
        max_grad_norm: clip the global gradient norm to this before the update (None: off).
        track_grad_norm: compute ``grad_norm`` even without clipping.
        batch_same_shape: orthogonalize same-shape matrices in one batched call (True) or
            one matrix at a time (False; for benchmarks and teaching).
    """

    def _update(self) -> None:
        coef = None
        if self._wants_norm():
            grads = [p.grad for p in self._all_params() if p.grad is not None]
            norms = torch._foreach_norm(grads) if grads else [torch.zeros(())]
            coef = self._clip_coef(torch.linalg.vector_norm(torch.stack(norms)))
        for gi, group in enumerate(self.param_groups):
            if group["kind"] == "muon":
                for bi, bucket in enumerate(self._muon_buckets(group)):
                    self._step_muon_bucket(group, (gi, bi), bucket, coef)
            else:
                params = [p for p in group["params"] if p.grad is not None]
                grads = [p.grad for p in params]
                if coef is not None and grads:
                    grads = torch._foreach_mul(grads, coef)
                self._adamw_update_(group, params, grads)

    def _step_muon_bucket(self, group, key, bucket, coef) -> None:
        params = [p for p in bucket if p.grad is not None]
        if not params:
            return
        grads = torch.stack([p.grad for p in params])  # (k, m, n): one batched call
        self._muon_update_(group, key, params, grads, params, grad_scale=coef)
