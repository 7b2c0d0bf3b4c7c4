"""Data: raw sources -> tokenized shards -> memory-mapped, packed, resumable batches.

The pipeline, one module per step:

- :mod:`.sources` (+ :mod:`.tasks`, :mod:`.hub`, :mod:`.offline`): the dataset registry;
  raw text or conversations as documents, each assigned to ``train`` or ``val``;
- :mod:`.download`: retries, checksums, temp-then-rename, disk/time estimates;
- :mod:`.shards`: the shard file format (header, uint16/uint32 tokens, checksum);
- :mod:`.preparation`: tokenize a dataset into a prepared folder (parallel, resumable);
- :mod:`.packing`: best-fit BOS-aligned packing and random windows (row planning);
- :mod:`.loaders`: memory-mapped, rank-sharded, resumable batches; mixtures; SFT masks.

Typical use::

    from nanogpt_course import data
    folder = data.prepare("offline", "gpt2")
    loader = data.make_loader(folder, "train", batch_size=8, seq_len=256, seed=0)
    inputs, targets = next(loader)          # int64 (8, 256); targets -1 where no loss
    state = loader.state_dict()             # JSON-safe; loader.load_state_dict(state) resumes

Attributes are imported lazily so that ``import nanogpt_course.data`` stays cheap (the
tokenizing worker processes never import torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "prepare": "preparation", "read_meta": "preparation", "is_prepared": "preparation",
    "resolve_tokenizer": "preparation",
    "make_loader": "loaders", "Loader": "loaders", "Split": "loaders",
    "best_fit_rows": "packing", "BestFitPacker": "packing", "WindowSampler": "packing",
    "write_shard": "shards", "read_shard": "shards", "open_shard": "shards",
    "verify_shard": "shards", "ShardError": "shards",
    "ByteTokenizer": "bytetok",
    "SOURCES": "sources", "Document": "sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
