"""Where each parameter's optimizer state lives, and moving it between world sizes.

A **layout** is a JSON-safe dict, identical on every rank, that says for parameter ``i``
(numbered in ``param_groups`` order) which rank holds which part of its state::

    {"format": "nanogpt_course.optim.shards", "version": 1, "world_size": W,
     "small_param_numel": T,
     "params": [{"group": 0, "kind": "muon", "shape": [64, 64], "dtype": "float32",
                 "mode": "owned", "owner": 1}, ...,
                {"group": 1, "kind": "adamw", "shape": [50304, 768], "dtype": "float32",
                 "mode": "flat", "chunk": 4829184}, ...],
     "groups": [{"kind": "muon", "lr": 0.02, "initial_lr": 0.02, ...}, ...]}

Placement rules (:func:`place`):

- ``"owned"`` (muon matrices): a whole matrix belongs to one rank, because orthogonalization
  needs the whole matrix. Matrices are bucketed by (group, shape, dtype); within a bucket
  owners go round-robin, starting where the previous bucket stopped, so every rank owns
  about the same number of matrices of each shape.
- ``"flat"`` (AdamW tensors with at least ``small_param_numel`` elements, world size > 1):
  the flattened tensor is cut into ``W`` chunks of ``chunk = ceil(numel / W)`` elements;
  rank ``r`` owns ``[r * chunk, min((r + 1) * chunk, numel))``. Adam is elementwise, so a
  chunk is updated exactly like the whole.
- ``"replicated"`` (small AdamW tensors, and everything when W == 1): every rank holds the
  full state.

A rank's **shard** is ``{name: tensor}`` with names ``"{i}.momentum_buffer"`` (full matrix,
on its owner; with variance reduction also ``"{i}.second_moment"``, see ``MUON_STATE``),
``"{i}.exp_avg"`` / ``"{i}.exp_avg_sq"`` (flat 1-D: the rank's chunk, or the whole tensor
when replicated) and ``"{i}.step"``. A parameter that never had a gradient has
no entries.

Moving between world sizes: :func:`consolidate` turns the shards of world ``N`` into the
single full state (the world-1 layout); :func:`reshard` cuts a full state for rank ``r`` of
world ``M``; an optimizer's ``load_shard_state_dict`` does the cut itself, and
:func:`load_sharded` chains both. Nothing here touches files (the checkpoint module does).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

__all__ = [
    "FORMAT",
    "SMALL_PARAM_NUMEL",
    "param_entries",
    "place",
    "make_layout",
    "consolidate",
    "reshard",
    "load_sharded",
    "chunk_bounds",
]

FORMAT = "nanogpt_course.optim.shards"
MUON_STATE = ("momentum_buffer", "second_moment")  # per-matrix Muon state, on its owner
VERSION = 1

# AdamW tensors below this many elements (16 KiB in fp32) are all-reduced (all of them in one
# collective) and their state is replicated: sharding them would save at most 32 KiB of Adam
# state per tensor but cost two collective launches each (latency-bound at this size).
SMALL_PARAM_NUMEL = 4096

_HPARAM_TYPES = (bool, int, float, str, type(None))


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one buffer, e.g. the
    slices of a stacked Muon buffer, are counted once): memory actually held."""
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def chunk_bounds(numel: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s flat chunk of a tensor of ``numel`` elements.

    Chunks have ``ceil(numel / world_size)`` elements; the last ones may be short or empty.
    """
    chunk = math.ceil(numel / world_size)
    start = min(rank * chunk, numel)
    return start, min(start + chunk, numel)


def param_entries(param_groups: Sequence[dict]) -> list[dict]:
    """One JSON-safe entry per parameter, in group order: group, kind, shape, dtype."""
    return [
        {"group": gi, "kind": group["kind"], "shape": list(p.shape),
         "dtype": str(p.dtype).removeprefix("torch.")}
        for gi, group in enumerate(param_groups)
        for p in group["params"]
    ]


def place(entries: Sequence[dict], world_size: int, small_param_numel: int = SMALL_PARAM_NUMEL
          ) -> list[dict]:
    """Add the placement (``mode`` + ``owner`` or ``chunk``) to a copy of each entry."""
    placed = [dict(e) for e in entries]
    buckets: dict[tuple, list[int]] = {}
    for i, e in enumerate(placed):
        numel = math.prod(e["shape"])
        if e["kind"] == "muon":
            buckets.setdefault((e["group"], tuple(e["shape"]), e["dtype"]), []).append(i)
        elif world_size > 1 and numel >= small_param_numel:
            e.update(mode="flat", chunk=math.ceil(numel / world_size))
        else:
            e.update(mode="replicated")
    offset = 0
    for members in buckets.values():  # dicts keep insertion order: deterministic everywhere
        for j, i in enumerate(members):
            placed[i].update(mode="owned", owner=(offset + j) % world_size)
        offset += len(members)
    return placed


def _hparams(group: dict) -> dict:
    """The JSON-safe hyperparameters of a param group (no params, tuples as lists)."""
    out = {}
    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, (tuple, list)) and all(isinstance(v, _HPARAM_TYPES) for v in value):
            out[key] = list(value)
        elif isinstance(value, _HPARAM_TYPES):
            out[key] = value
    return out


def make_layout(param_groups: Sequence[dict], world_size: int,
                small_param_numel: int = SMALL_PARAM_NUMEL) -> dict:
    """The layout of an optimizer with these groups on ``world_size`` ranks."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "world_size": world_size,
        "small_param_numel": small_param_numel,
        "params": place(param_entries(param_groups), world_size, small_param_numel),
        "groups": [_hparams(g) for g in param_groups],
    }


def _check_layout(layout: dict) -> None:
    if not isinstance(layout, dict) or layout.get("format") != FORMAT:
        raise ValueError(f"not an optimizer shard layout (expected format {FORMAT!r}); "
                         "pass the layout returned by shard_state_dict()")
    if layout.get("version") != VERSION:
        raise ValueError(f"optimizer layout version {layout.get('version')} is not supported "
                         f"(this code reads version {VERSION})")


def _relayout(layout: dict, world_size: int, small_param_numel: int | None = None) -> dict:
    small = layout["small_param_numel"] if small_param_numel is None else small_param_numel
    entries = [{k: e[k] for k in ("group", "kind", "shape", "dtype")} for e in layout["params"]]
    return {**copy.deepcopy(layout), "world_size": world_size, "small_param_numel": small,
            "params": place(entries, world_size, small)}


def consolidate(shards: Sequence[dict[str, torch.Tensor]], layout: dict | Sequence[dict]
                ) -> tuple[dict[str, torch.Tensor], dict]:
    """Merge the shards of all ``W`` ranks (``shards[r]`` from rank ``r``) into one full state.

    ``layout``: the (rank-independent) layout, or the list of every rank's copy. Returns
    ``(tensors, layout)`` for world size 1: full momentum buffers and full flat Adam state.
    """
    layouts = [layout] if isinstance(layout, dict) else list(layout)
    for lay in layouts:
        _check_layout(lay)
    layout = layouts[0]
    if any(lay["params"] != layout["params"] for lay in layouts[1:]):
        raise ValueError("the ranks' layouts differ: were these shards saved by one run?")
    world = layout["world_size"]
    if len(shards) != world:
        raise ValueError(f"layout says world size {world} but {len(shards)} shards were given")
    full: dict[str, torch.Tensor] = {}
    for i, e in enumerate(layout["params"]):
        if e["mode"] == "owned":
            src = shards[e["owner"]]
            for name in MUON_STATE:
                if f"{i}.{name}" in src:
                    full[f"{i}.{name}"] = src[f"{i}.{name}"]
        elif e["mode"] == "replicated":
            for name in ("exp_avg", "exp_avg_sq", "step"):
                if f"{i}.{name}" in shards[0]:
                    full[f"{i}.{name}"] = shards[0][f"{i}.{name}"]
        else:
            _merge_flat(full, shards, i, math.prod(e["shape"]), world)
    return full, _relayout(layout, 1)


def _merge_flat(full: dict, shards: Sequence[dict], i: int, numel: int, world: int) -> None:
    owners = [r for r in range(world) if chunk_bounds(numel, world, r)[1]
              > chunk_bounds(numel, world, r)[0]]
    have = [f"{i}.exp_avg" in shards[r] for r in owners]
    if not any(have):
        return  # never stepped
    if not all(have):
        missing = [r for r, h in zip(owners, have) if not h]
        raise ValueError(f"parameter {i}: ranks {missing} lack their Adam state chunk")
    for name in ("exp_avg", "exp_avg_sq"):
        full[f"{i}.{name}"] = torch.cat([shards[r][f"{i}.{name}"].reshape(-1) for r in owners])
        if full[f"{i}.{name}"].numel() != numel:
            raise ValueError(f"parameter {i}: chunks hold {full[f'{i}.{name}'].numel()} "
                             f"elements, the parameter has {numel}")
    full[f"{i}.step"] = shards[owners[0]][f"{i}.step"]


def reshard(tensors: dict[str, torch.Tensor], layout: dict, *, world_size: int, rank: int,
            small_param_numel: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Cut a full (world-1, see :func:`consolidate`) state into rank ``rank``'s shard of a
    world of ``world_size``. Returns ``(shard, layout)``; the layout is the same on every rank.
    """
    _check_layout(layout)
    if layout["world_size"] != 1:
        raise ValueError(f"reshard() needs a consolidated state (world size 1), got one from "
                         f"world size {layout['world_size']}: call consolidate() first")
    new = _relayout(layout, world_size, small_param_numel)
    shard: dict[str, torch.Tensor] = {}
    for i, e in enumerate(new["params"]):
        if e["mode"] == "owned":
            for name in MUON_STATE:
                if e["owner"] == rank and f"{i}.{name}" in tensors:
                    shard[f"{i}.{name}"] = tensors[f"{i}.{name}"]
        elif f"{i}.exp_avg" in tensors:
            if e["mode"] == "replicated":
                start, stop = 0, math.prod(e["shape"])
            else:
                start, stop = chunk_bounds(math.prod(e["shape"]), world_size, rank)
            if stop > start:
                for name in ("exp_avg", "exp_avg_sq"):
                    shard[f"{i}.{name}"] = tensors[f"{i}.{name}"].reshape(-1)[start:stop]
                shard[f"{i}.step"] = tensors[f"{i}.step"]
    return shard, new


def load_sharded(optimizer, shards: Sequence[dict[str, torch.Tensor]],
                 layout: dict | Sequence[dict], **kwargs) -> None:
    """Load the shards saved by all ranks of any world size into ``optimizer`` (this rank).

    Same world size and placement: each rank takes its own shard. Otherwise the shards are
    consolidated and this rank cuts its part. ``kwargs`` go to ``load_shard_state_dict``.
    """
    layouts = [layout] if isinstance(layout, dict) else list(layout)
    mine = optimizer.shard_layout()
    if layouts[0]["world_size"] == optimizer.world_size and layouts[0]["params"] == mine["params"]:
        optimizer.load_shard_state_dict(shards[optimizer.rank], layouts[0], **kwargs)
        return
    full, full_layout = consolidate(shards, layouts)
    optimizer.load_shard_state_dict(full, full_layout, **kwargs)
