"""Checking a checkpoint before anything expensive happens: ``validate()`` and
``python -m nanogpt_course.checkpoint verify PATH``.

A broken checkpoint should cost one clear ``error:`` line, not a 30-line traceback after the
data was prepared. :func:`validate` reads only small things (``meta.json``, the JSON headers
of the safetensors files, ``tokenizer.json``) and a model built on the meta device, and
raises :class:`~nanogpt_course.checkpoint.CheckpointError` naming the file and the fix for:

- a missing file (``model.safetensors``, an optimizer shard, ``tokenizer.json``);
- a truncated file: a safetensors file shorter than its header says;
- a corrupt header or ``meta.json`` (not JSON, not this library's format, a model config
  that does not parse);
- tensors whose names, shapes or dtypes do not match the model config;
- a tokenizer whose vocabulary does not match the model's embedding;
- with ``hashes=True``: a file whose sha256 differs from the sum ``meta.json`` recorded when
  it was saved (a flipped bit). Checkpoints saved before the sums existed are checked
  without them.

Safetensors layout (what the header check relies on): 8 bytes little-endian header length
``N``, ``N`` bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then
the data; the largest ``end`` must equal the data's size.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

from . import checkpoint as ck

DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
          "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
          "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file, read in 16 MB chunks (no large allocation)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sums(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of every file in a (partial) step folder except meta.json."""
    return {p.name: sha256_file(p) for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.name != ck.META}


def read_header(path: Path) -> dict[str, dict]:
    """The tensor entries of a safetensors file's header, after checking that the file is
    as long as the header says. Raises CheckpointError for a missing, truncated or corrupt
    file."""
    path = Path(path)
    if not path.is_file():
        raise ck.CheckpointError(f"{path} is missing: the checkpoint is incomplete; use another "
                                 "step folder or save it again")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"only {size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in the file's {size} bytes")
            header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        ends = []
        for name, entry in tensors.items():
            begin, end = entry["data_offsets"]
            if entry["dtype"] not in DTYPES or not 0 <= begin <= end:
                raise ValueError(f"tensor {name!r} has a malformed entry {entry}")
            ends.append(end)
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as err:
        raise ck.CheckpointError(f"{path} has a corrupt header ({err}); the file is damaged: "
                                 "use another step folder or save it again") from err
    data = size - 8 - n
    if max(ends, default=0) > data:
        raise ck.CheckpointError(
            f"{path} is truncated: its header needs {max(ends, default=0):,} bytes of data but "
            f"the file holds {data:,} (an interrupted copy or a full disk?); copy it again or "
            "use another step folder")
    return tensors


def expected_model_tensors(model_config: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` of the state dict of a GPT with this config (built on the
    meta device: nothing is allocated)."""
    import torch

    from .model import GPT, GPTConfig

    config = GPTConfig.from_dict(model_config)
    with torch.device("meta"):
        model = GPT(config)
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()}


def _check_model_tensors(path: Path, header: dict, model_config: dict,
                         weights_dtype: str | None = None) -> None:
    """``weights_dtype``: meta.json's declared storage dtype of the floating-point tensors
    (an export such as the shipped models stores bfloat16; loading casts them back)."""
    want = expected_model_tensors(model_config)
    if weights_dtype:
        want = {k: (shape, weights_dtype if dtype.startswith(("float", "bfloat")) else dtype)
                for k, (shape, dtype) in want.items()}
    missing = sorted(set(want) - set(header))
    extra = sorted(set(header) - set(want))
    if missing or extra:
        raise ck.CheckpointError(
            f"{path} does not match the model config in meta.json: "
            + (f"missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected tensors {extra[:4]}{' ...' if len(extra) > 4 else ''}" if extra else "")
            + "; the checkpoint is inconsistent (weights of another model?)")
    for name, (shape, dtype) in want.items():
        got_shape, got_dtype = tuple(header[name]["shape"]), DTYPES[header[name]["dtype"]]
        if got_shape != shape or got_dtype != dtype:
            raise ck.CheckpointError(
                f"{path}: tensor {name!r} is {got_dtype}{list(got_shape)} but the model config "
                f"in meta.json needs {dtype}{list(shape)}; the checkpoint is inconsistent "
                "(weights of another model?)")


def _check_sums(folder: Path, meta: dict, names: list[str]) -> None:
    sums = meta.get("sha256") or {}
    for name in names:
        want = sums.get(name)
        if want is None:
            continue
        if sha256_file(folder / name) != want:
            raise ck.CheckpointError(
                f"{folder / name} is corrupt: its sha256 differs from the one recorded in "
                "meta.json when it was saved (flipped bits or an edited file); copy it again or "
                "use another step folder")


def validate(path, *, hashes: bool = True, optimizer: bool = False) -> dict:
    """Check a checkpoint (step or run folder) without loading its tensors; returns its
    ``meta.json``. ``optimizer=True`` also checks the optimizer shards (what ``--resume``
    reads). Raises :class:`~nanogpt_course.checkpoint.CheckpointError`."""
    from .tokenizer import TokenizerError

    folder = ck.resolve(path)
    meta = ck.read_meta(folder)
    config = meta.get("model_config")
    try:
        expected_model_tensors(config)
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise ck.CheckpointError(f"{folder / ck.META} is corrupt: its model_config does not "
                                 f"describe a model ({type(err).__name__}: {err})") from err
    header = read_header(folder / ck.MODEL)
    _check_model_tensors(folder / ck.MODEL, header, config, meta.get("weights_dtype"))
    names = [ck.MODEL]
    if optimizer:
        world = ck.optimizer_world_size(folder)
        for rank in range(world):
            name = f"optimizer_rank{rank}.safetensors"
            read_header(folder / name)
            names.append(name)
        names.append(ck.OPTIMIZER_LAYOUT)
    try:
        tokenizer = ck.read_tokenizer(folder)
    except (TokenizerError, OSError) as err:
        raise ck.CheckpointError(f"{folder}: its tokenizer cannot be read ({err})") from err
    vocab = config["vocab_size"]
    if tokenizer.vocab_size != vocab:
        raise ck.CheckpointError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} ids but the model's embedding "
            f"has {vocab} rows: the checkpoint's tokenizer does not belong to its model (was "
            "tokenizer.json replaced?); use the tokenizer it was trained with")
    if (folder / ck.TOKENIZER).is_file():
        names.append(ck.TOKENIZER)
    if hashes:
        _check_sums(folder, meta, names)
    return meta


def verify(path, *, out=print) -> int:
    """Every check of :func:`validate` plus every recorded sha256; prints one line per file.
    Returns the number of files whose sum was checked."""
    folder = ck.resolve(path)
    meta = validate(folder, hashes=True, optimizer=(folder / ck.OPTIMIZER_LAYOUT).is_file())
    sums = meta.get("sha256") or {}
    for name in sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != ck.META):
        if name in sums:
            if sha256_file(folder / name) != sums[name]:
                raise ck.CheckpointError(f"{folder / name} is corrupt: its sha256 differs from "
                                         "the one recorded in meta.json")
            out(f"ok       {name}")
        else:
            out(f"no sum   {name} (structure checked only)")
    if not sums:
        out("note: this checkpoint was saved before sha256 sums were recorded: headers, shapes, "
            "dtypes and the tokenizer were checked, flipped bits cannot be detected")
    out(f"checkpoint OK: {folder} (step {meta.get('step')}, kind {meta.get('kind', 'base')})")
    return len(sums)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nanogpt_course.checkpoint",
                                     description="Check checkpoint folders.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check files, headers, shapes, tokenizer and sha256 sums")
    v.add_argument("path", help="a step folder, or a run folder (its latest complete step)")
    args = parser.parse_args(argv)
    try:
        verify(args.path)
    except ck.CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
