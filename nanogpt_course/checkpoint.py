"""Checkpoint files: safetensors + JSON, written atomically, never unpickled.

Layout (DESIGN.md)::

    <run>/step_000500/
        model.safetensors              the model's state dict (fp32), rank 0
        optimizer_rank<R>.safetensors  rank R's optimizer state (its shard); the non-tensor
                                       part (step counts, hyperparameters) rides in the
                                       file's JSON header, so nothing is pickled
        optimizer.json                 the shard layout: world size + the optimizer's own plan
        tokenizer.json                 the tokenizer (its name is also in meta.json)
        meta.json                      written LAST: format, kind, step, model config,
                                       the sha256 of every other file, ...

Atomicity: a save fills a hidden ``<run>/.step_000500.partial/`` folder, writes
``meta.json`` in it last, then renames the folder to ``step_000500``. A process killed at
any moment leaves either the old latest checkpoint or the new one, never a half-written one
under a ``step_`` name; a ``step_`` folder without ``meta.json`` is treated as incomplete and
ignored anyway. "Latest" is the highest complete step.

Everything that takes a checkpoint takes a step folder or a run folder (its latest).
The optimizer module owns how state is sharded in memory; this module owns the files.

Broken checkpoints (missing or truncated files, corrupt headers, weights that do not fit the
config, a foreign tokenizer, flipped bits) are caught by :func:`validate` before anything is
allocated (see :mod:`.checkpoint_verify`); from the shell::

    python -m nanogpt_course.checkpoint verify runs/pretraining-d12
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "nanogpt_course.checkpoint"
VERSION = 1
STEP_RE = re.compile(r"^step_(\d{6,})$")
META = "meta.json"
MODEL = "model.safetensors"
OPTIMIZER_LAYOUT = "optimizer.json"
TOKENIZER = "tokenizer.json"
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"}


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or of an unknown format."""


def step_name(step: int) -> str:
    return f"step_{step:06d}"


# ------------------------------------------------------------------------- finding checkpoints
def complete_steps(run_dir: Path | str) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete step folder (it has ``meta.json``), ascending."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = STEP_RE.match(child.name)
        if match and child.is_dir() and (child / META).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest(run_dir: Path | str) -> Path | None:
    """The highest complete step folder of a run, or None."""
    steps = complete_steps(run_dir)
    return steps[-1][1] if steps else None


def resolve(path: Path | str) -> Path:
    """A step folder or a run folder (-> its latest complete step) -> the step folder.

    Raises :class:`CheckpointError` saying what was found instead.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path} looks like a pickled PyTorch checkpoint; this library never unpickles "
                "(loading a pickle can run arbitrary code). Convert it to this library's format "
                "(a step folder of safetensors + JSON) in a trusted environment first.")
        if path.name == META:
            return resolve(path.parent)
        raise CheckpointError(f"{path} is a file; pass a checkpoint step folder or run folder")
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: the folder does not exist")
    if STEP_RE.match(path.name) or (path / MODEL).exists():
        if not (path / META).is_file():
            raise CheckpointError(
                f"{path} is incomplete (no {META}: its save was interrupted); use the run folder "
                f"{path.parent} to get its latest complete step")
        return path
    found = latest(path)
    if found is None:
        partial = sorted(p.name for p in path.glob("step_*"))
        extra = f" (only incomplete step folders: {', '.join(partial)})" if partial else ""
        raise CheckpointError(f"{path} holds no complete checkpoint{extra}; train one with "
                              "python -m nanogpt_course.train --out DIR")
    return found


def read_meta(path: Path | str) -> dict:
    """``meta.json`` of a checkpoint (step or run folder), with its format checked."""
    folder = resolve(path)
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / META} is corrupt ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{folder} is not a nanogpt_course checkpoint: {META} has format "
            f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{folder} has checkpoint version {meta.get('version')!r}; this "
                              f"library reads version {VERSION}: upgrade nanogpt_course")
    return meta


# ------------------------------------------------------------------------- nested state <-> files
def flatten_state(obj: Any, tensors: dict[str, torch.Tensor] | None = None,
                  prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, numbers, strings) into a JSON
    skeleton and a flat ``{name: tensor}`` dict: each tensor is replaced by
    ``{"__tensor__": name}``, tuples by ``{"__tuple__": [...]}``, int keys are recorded."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        name = prefix or "tensor"
        tensors[name] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": name}, tensors
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"cannot store dict key {key!r} of type {type(key).__name__}")
            skel, _ = flatten_state(value, tensors, f"{prefix}.{key}" if prefix else str(key))
            items.append([key, skel])
        return {"__dict__": items}, tensors
    if isinstance(obj, (list, tuple)):
        skel = [flatten_state(v, tensors, f"{prefix}.{i}")[0] for i, v in enumerate(obj)]
        return ({"__tuple__": skel} if isinstance(obj, tuple) else skel), tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} without pickling")


def unflatten_state(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__tuple__" in skel:
            return tuple(unflatten_state(v, tensors) for v in skel["__tuple__"])
        if "__dict__" in skel:
            return {key: unflatten_state(v, tensors) for key, v in skel["__dict__"]}
        raise CheckpointError(f"unknown state node {sorted(skel)}")
    if isinstance(skel, list):
        return [unflatten_state(v, tensors) for v in skel]
    return skel


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then fsync + rename onto ``target``."""
    tmp = target.with_name(target.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


def write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1), encoding="utf-8"))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_tensors(path: Path, device: str | torch.device = "cpu"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file (no pickle involved)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete or corrupt")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is corrupt or truncated ({err})") from err


# ------------------------------------------------------------------------- RNG states as JSON
def rng_state() -> dict:
    """This process's RNG states (torch CPU, CUDA, Python) in JSON-safe form."""
    import random

    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
             "python": _jsonable(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode()
                         for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when CUDA is present)."""
    import random

    def as_tensor(text):
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(as_tensor(state["torch"]))
    random.setstate(_tupled(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(as_tensor(s), i)


def _jsonable(obj):
    return [_jsonable(v) for v in obj] if isinstance(obj, (list, tuple)) else obj


def _tupled(obj):
    return tuple(_tupled(v) for v in obj) if isinstance(obj, list) else obj


# ------------------------------------------------------------------------- saving
def save(run_dir: Path | str, step: int, *, meta: dict, rank: int = 0, world_size: int = 1,
         model_state: dict[str, torch.Tensor] | None = None,
         optimizer_state: Any = None, optimizer_layout: dict | None = None,
         tokenizer=None, barrier: Callable[[], None] | None = None,
         keep_last: int | None = None) -> Path:
    """Save one step; every rank calls it (collectively when ``world_size > 1``).

    Rank 0 writes the model, the optimizer layout, the tokenizer and ``meta.json``; each
    rank writes its own ``optimizer_rank<R>.safetensors``. ``barrier`` synchronizes ranks
    (``torch.distributed.barrier``); it is required when ``world_size > 1``. ``meta`` gets
    ``format``, ``version``, ``step`` and ``world_size`` added. After the rename, rank 0
    deletes all but the newest ``keep_last`` complete steps. Returns the step folder.
    """
    if world_size > 1 and barrier is None:
        raise ValueError("save() with world_size > 1 needs a barrier")
    sync = barrier or (lambda: None)
    run_dir = Path(run_dir)
    final = run_dir / step_name(step)
    partial = run_dir / f".{step_name(step)}.partial"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        for pattern in (".step_*.partial", ".step_*.old", ".step_*.deleting"):
            for stale in run_dir.glob(pattern):  # leftovers of interrupted saves/prunes
                shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir()
    sync()
    if optimizer_state is not None:
        skel, tensors = flatten_state(optimizer_state)
        write_tensors(partial / f"optimizer_rank{rank}.safetensors", tensors,
                      {"format": FORMAT, "state": json.dumps(skel)})
    if rank == 0:
        if model_state is None:
            raise ValueError("rank 0 must pass model_state")
        write_tensors(partial / MODEL, model_state, {"format": FORMAT})
        if optimizer_state is not None:
            write_json(partial / OPTIMIZER_LAYOUT,
                       {"world_size": world_size, "layout": optimizer_layout})
        if tokenizer is not None:
            tokenizer.save(partial)
    sync()
    if rank == 0:
        full_meta = {"format": FORMAT, "version": VERSION, **meta, "step": step,
                     "world_size": world_size,
                     "has_optimizer": optimizer_state is not None}
        if tokenizer is not None:
            full_meta["tokenizer"] = tokenizer.identity
        from .checkpoint_verify import file_sums

        full_meta["sha256"] = file_sums(partial)  # every rank's files are written (barrier)
        write_json(partial / META, full_meta)  # last: marks the folder complete
        _fsync_dir(partial)
        _replace_dir(partial, final)
        _fsync_dir(run_dir)
        if keep_last is not None and keep_last > 0:
            prune(run_dir, keep_last)
    sync()
    return final


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``; an existing ``dst`` (the same step saved again) is moved
    aside first, so a crash in between leaves the previous complete step as latest."""
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def prune(run_dir: Path | str, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete step folders; returns those deleted."""
    steps = complete_steps(run_dir)
    doomed = [p for _, p in steps[:-keep_last]] if keep_last > 0 else []
    for path in doomed:
        # rename first, so a crash mid-delete never leaves a step_ folder with half its files
        trash = path.with_name(f".{path.name}.deleting")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


# ------------------------------------------------------------------------- loading
def read_model_state(path: Path | str, device: str | torch.device = "cpu"
                     ) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint (step or run folder)."""
    tensors, _ = read_tensors(resolve(path) / MODEL, device)
    return tensors


def optimizer_world_size(path: Path | str) -> int:
    """How many ranks wrote the optimizer state (from ``optimizer.json``)."""
    folder = resolve(path)
    file = folder / OPTIMIZER_LAYOUT
    if not file.is_file():
        raise CheckpointError(f"{folder} has no optimizer state ({OPTIMIZER_LAYOUT} missing); "
                              "it can start a new run (--checkpoint) but not be resumed")
    try:
        return int(json.loads(file.read_text(encoding="utf-8"))["world_size"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{file} is corrupt ({type(err).__name__}: {err})") from err


def read_optimizer_layout(path: Path | str) -> dict | None:
    folder = resolve(path)
    return json.loads((folder / OPTIMIZER_LAYOUT).read_text(encoding="utf-8")).get("layout")


def read_optimizer_state(path: Path | str, rank: int, device: str | torch.device = "cpu") -> Any:
    """Rank ``rank``'s optimizer state exactly as it was passed to :func:`save`."""
    folder = resolve(path)
    tensors, header = read_tensors(folder / f"optimizer_rank{rank}.safetensors", device)
    if header.get("format") != FORMAT or "state" not in header:
        raise CheckpointError(f"{folder}/optimizer_rank{rank}.safetensors has no state header")
    return unflatten_state(json.loads(header["state"]), tensors)


def read_tokenizer(path: Path | str):
    """The checkpoint's tokenizer: its ``tokenizer.json``, else the named one (``gpt2``)."""
    from .tokenizer import Tokenizer

    folder = resolve(path)
    meta = read_meta(folder)
    if (folder / TOKENIZER).is_file():
        tok = Tokenizer.load(folder / TOKENIZER)
        if meta.get("tokenizer") not in (None, tok.identity):
            raise CheckpointError(f"{folder}: tokenizer.json is {tok.identity!r} but meta.json "
                                  f"says {meta['tokenizer']!r}; the checkpoint is inconsistent")
        return tok
    if meta.get("tokenizer") == "gpt2":
        return Tokenizer.gpt2()
    raise CheckpointError(f"{folder} has no {TOKENIZER} and names tokenizer "
                          f"{meta.get('tokenizer')!r}, which cannot be rebuilt by name")


def build_model(model_config: dict, device: str | torch.device = "cpu",
                state: dict[str, torch.Tensor] | None = None):
    """A GPT from a config dict (meta.json's ``model_config``), weights from ``state``."""
    from .model import GPT, GPTConfig

    config = GPTConfig.from_dict(model_config)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # also fills non-persistent buffers (rotary tables)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"the weights do not fit the model config: {err}") from err
    return model


@dataclass
class Checkpoint:
    """What :func:`load` returns."""

    path: Path
    meta: dict
    model: Any = None
    tokenizer: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "base")


def load(path: Path | str, *, device: str | torch.device | None = None,
         model: bool = True, tokenizer: bool = True) -> Checkpoint:
    """Load a checkpoint (step folder, or run folder = its latest complete step).

    Returns a :class:`Checkpoint` with ``.model`` (a ``GPT`` in eval mode on ``device``,
    default: the library's device choice), ``.tokenizer`` and ``.meta``. Reads only
    safetensors and JSON; refuses pickles, unknown formats and broken checkpoints (see
    :func:`validate`; the sha256 sums are checked by ``verify``) with a :class:`CheckpointError`.
    """
    folder = resolve(path)
    meta = validate(folder, hashes=False) if model else read_meta(folder)
    if device is None:
        from .device import pick_device

        device = pick_device()
    ckpt = Checkpoint(path=folder, meta=meta)
    if model:
        ckpt.model = build_model(meta["model_config"], device, read_model_state(folder, device))
        ckpt.model.eval()
    if tokenizer:
        ckpt.tokenizer = read_tokenizer(folder)
    return ckpt


def validate(path: Path | str, *, hashes: bool = True, optimizer: bool = False) -> dict:
    """Check a checkpoint without loading its tensors; returns its meta. See
    :func:`.checkpoint_verify.validate`."""
    from .checkpoint_verify import validate as _validate

    return _validate(path, hashes=hashes, optimizer=optimizer)


if __name__ == "__main__":
    import sys

    from nanogpt_course.checkpoint_verify import main

    sys.exit(main())
