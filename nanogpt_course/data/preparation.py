"""Tokenize a dataset into shards: in parallel processes, resumable, kept per tokenizer.

``prepare("offline", "gpt2")`` returns a *prepared folder*
``<cache>/data/<tokenizer identity>/<dataset>/`` holding, for each split,

- ``<split>_NNNNNN.bin``: the token ids of whole documents, each starting with BOS;
- ``<split>_NNNNNN.idx``: the length of each document in that shard (uint32);
- ``<split>_NNNNNN.mask`` (chat data only): 1 where the loss counts (assistant tokens);

and ``meta.json``, written last: dataset, kind, tokenizer, dtype, token/document/byte
counts, each shard's checksum and a fingerprint of the raw input. A folder whose fingerprint
matches is reused (skip-if-present); a stopped preparation resumes from ``progress.json``
at the last finished shard (shard boundaries depend only on the documents, so a resumed
run writes the same files as an uninterrupted one). The read-only data mirror is never
written: everything goes to ``NANOGPT_COURSE_CACHE``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import numpy as np

from .. import paths
from . import shards, sources
from .download import DownloadError
from .locks import file_lock

FORMAT = "nanogpt_course.prepared"
VERSION = 1
SHARD_TOKENS = 50_000_000  # ~100 MB per uint16 shard
BATCH_CHARS = 1 << 20  # text per task sent to a worker
IN_PROCESS_BELOW = 8 << 20  # smaller inputs are tokenized in-process (no start-up cost)
SPLITS = ("train", "val")


def resolve_tokenizer(spec=None):
    """``None``/``"gpt2"``/a path -> ``Tokenizer.from_spec``; ``"bytes"`` -> ByteTokenizer;
    an object with ``encode``/``bos_id``/``identity`` is returned as is."""
    if spec is None:
        spec = "gpt2"
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    if str(spec) == "bytes":
        from .bytetok import ByteTokenizer

        return ByteTokenizer()
    from ..tokenizer import Tokenizer

    return Tokenizer.from_spec(spec)


def slug(identity: str) -> str:
    """A folder name for a tokenizer identity (``gpt2`` stays ``gpt2``)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", identity).strip("._")[:48]
    if clean == identity and clean:
        return clean
    return f"{clean or 'tok'}-{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def is_prepared(path: str | os.PathLike) -> bool:
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta.json`` of a prepared folder; a clear error when it is not one."""
    path = Path(path)
    if not is_prepared(path):
        raise FileNotFoundError(
            f"{path} is not a prepared dataset (no complete meta.json). Prepare one with "
            f"`python -m nanogpt_course.data prepare NAME`, NAME one of "
            f"{', '.join(sorted(sources.SOURCES))} or a folder of .txt/.jsonl files")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: prepared with format version {meta.get('version')}, this "
                         f"library reads {VERSION}; prepare it again with --force")
    return meta


def _options_tag(options: dict) -> str:
    if not options:
        return ""
    text = json.dumps(options, sort_keys=True, default=str)
    return "-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def _locate(name_or_path, options: dict) -> tuple[sources.Source, dict, str]:
    """(source, resolve options, folder name) for a dataset name or a path of text files."""
    text = str(name_or_path)
    if text in sources.SOURCES:
        return sources.get(text), options, text + _options_tag(options)
    if any(c in text for c in "*?[") or Path(text).expanduser().exists():
        spec = text if any(c in text for c in "*?[") else str(Path(text).expanduser().resolve())
        opts = dict(options, path=spec)
        return sources.get("text"), opts, "text" + _options_tag(opts)
    sources.get(text)  # raises the "unknown dataset" error listing the names
    raise AssertionError  # pragma: no cover


def prepare(name_or_path, tokenizer=None, *, workers: int | None = None, force: bool = False,
            download: bool = True, progress: bool = True, shard_tokens: int = SHARD_TOKENS,
            **options) -> Path:
    """Prepare a dataset for ``tokenizer`` and return its prepared folder.

    ``name_or_path``: a registered name (``offline``, ``tinyshakespeare``, ``task_mixture``,
    ``fineweb_edu``, ``openwebtext``), a folder/glob/file of .txt/.md/.jsonl (your own
    text), or an already prepared folder (returned as is after a tokenizer check).
    ``tokenizer``: ``"gpt2"`` (default), a tokenizer folder/file, or a Tokenizer.
    ``workers``: tokenizing processes (default: all cores for inputs over 8 MB, else 0 =
    in-process). ``download=False`` never touches the network: a dataset whose raw files are
    missing then raises :class:`~nanogpt_course.paths.MissingDataError` naming the prepare
    command. Other keyword arguments go to the source (``max_bytes=`` for offline,
    ``max_files=`` for fineweb_edu, ``online=`` for task_mixture, ...).
    """
    if is_prepared(name_or_path):
        meta = read_meta(name_or_path)
        if tokenizer is not None:
            _check_tokenizer(meta, resolve_tokenizer(tokenizer), Path(name_or_path))
        return Path(name_or_path)
    tok = resolve_tokenizer(tokenizer)
    options = {k: v for k, v in options.items() if v is not None}  # None = the default
    source, opts, folder_name = _locate(name_or_path, options)
    out = paths.cache_dir("data", slug(tok.identity), folder_name, create=False)
    # several ranks may ask at once: one prepares, the others wait and then find it done
    with file_lock(out.parent / f"{out.name}.lock"):
        return _prepare_locked(out, source, opts, tok, workers=workers, force=force,
                               download=download, progress=progress, shard_tokens=shard_tokens)


def _prepare_locked(out, source, opts, tok, *, workers, force, download, progress,
                    shard_tokens) -> Path:
    try:
        resolved = source.resolve(download=download, **opts)
    except (DownloadError, ConnectionError) as err:
        raise paths.MissingDataError(
            f"{source.name}: could not get the raw data ({err}). To fix: run "
            f"`{sources.prepare_command(source.name)}` on a machine with internet access, "
            f"or put the files under $NANOGPT_COURSE_DATA") from err
    fingerprint = {"source": resolved.name, **resolved.fingerprint}
    if is_prepared(out) and not force:
        old = read_meta(out)
        if old["source"] == fingerprint and old["tokenizer"] == tok.identity:
            return out
        if progress:
            print(f"{out}: the raw data or options changed since it was prepared; "
                  f"preparing again", flush=True)
    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return _Writer(out, resolved, tok, fingerprint, shard_tokens, progress).run(workers)


def _check_tokenizer(meta: dict, tok, path: Path) -> None:
    if meta["tokenizer"] != tok.identity:
        raise ValueError(f"{path} was prepared with tokenizer {meta['tokenizer']!r} but "
                         f"{tok.identity!r} was asked for: prepare the dataset with "
                         f"--tokenizer matching the model, or use that tokenizer")


# ---------------------------------------------------------------------------- workers
_TOKENIZER = None


def _init_worker(tokenizer) -> None:
    global _TOKENIZER
    _TOKENIZER = tokenizer


def encode_documents(batch: list[tuple[int, object]], tokenizer=None) -> tuple:
    """Tokenize ``[(split, text | messages), ...]``; every document starts with BOS.

    Returns ``(splits uint8 [n], lengths int64 [n], text_bytes int64 [n], ids uint32 [sum],
    mask uint8 [sum] | None)`` with the documents concatenated in order.
    """
    tok = tokenizer or _TOKENIZER
    bos = tok.bos_id
    ids_list, mask_list, nbytes = [], [], []
    for _, payload in batch:
        if isinstance(payload, str):
            ids = tok.encode(payload)
            ids_list.append(np.array([bos] + ids, dtype=np.uint32))
            nbytes.append(len(payload.encode("utf-8")))
        else:
            ids, mask = tok.render_chat(payload)
            if not ids or ids[0] != bos:  # every document starts with BOS
                ids, mask = [bos] + list(ids), [0] + list(mask)
            ids_list.append(np.array(ids, dtype=np.uint32))
            mask_list.append(np.array(mask, dtype=np.uint8))
            nbytes.append(sum(len(m["content"].encode("utf-8")) for m in payload))
    splits = np.array([s for s, _ in batch], dtype=np.uint8)
    lengths = np.array([len(a) for a in ids_list], dtype=np.int64)
    ids = np.concatenate(ids_list) if ids_list else np.zeros(0, np.uint32)
    mask = np.concatenate(mask_list) if mask_list else None
    return splits, lengths, np.array(nbytes, dtype=np.int64), ids, mask


def _batches(docs: Iterator[sources.Document]) -> Iterator[list[tuple[int, object]]]:
    batch, chars = [], 0
    for doc in docs:
        payload = doc.text if doc.messages is None else doc.messages
        batch.append((SPLITS.index(doc.split), payload))
        chars += len(doc.text) if doc.text is not None else 1000
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


@contextmanager
def _main_script_hidden():
    """Start spawned workers without re-running the main script.

    A spawned process first re-runs the script the parent was started with (``python
    run.py``), which is harmless only behind ``if __name__ == "__main__":``. A lesson run as
    a script, or any unguarded script that prepares data at its top level, would have every
    worker prepare the data again and wait for the lock the parent holds: a hang. The
    workers need nothing from the script (their functions live in this module), so its path
    is hidden while they start. ``python -m module`` is imported under another name and
    needs nothing.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _results(batches, tok, workers: int):
    """Tokenized batches in order; at most ``2 * workers`` batches in flight."""
    if workers <= 0:
        for batch in batches:
            yield encode_documents(batch, tok)
        return
    ctx = mp.get_context("spawn")  # never fork a process that may hold threads (torch, tqdm)
    with _main_script_hidden():  # the workers start here
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok,))
    with pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(encode_documents, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---------------------------------------------------------------------------- writer
class _Writer:
    """Accumulates tokenized documents into chunks and writes one shard per split per chunk."""

    def __init__(self, out: Path, resolved, tok, fingerprint, shard_tokens, progress):
        self.out, self.resolved, self.tok = out, resolved, tok
        self.fingerprint, self.shard_tokens, self.progress = fingerprint, shard_tokens, progress
        self.dtype = shards.token_dtype(tok.vocab_size)
        self.chat = resolved.kind == "chat"
        self.state = {"fingerprint": fingerprint, "tokenizer": tok.identity,
                      "shard_tokens": shard_tokens, "docs_done": 0, "chunks": []}
        self._reset_buffers()

    def _reset_buffers(self) -> None:
        self.buf = {s: {"ids": [], "lengths": [], "mask": [], "bytes": 0} for s in SPLITS}
        self.buf_docs = 0
        self.train_tokens = 0

    def _resume(self) -> int:
        """Documents already written by an earlier, interrupted run (0 when starting afresh)."""
        progress = self.out / "progress.json"
        if progress.is_file():
            old = json.loads(progress.read_text())
            same = all(old.get(k) == self.state[k]
                       for k in ("fingerprint", "tokenizer", "shard_tokens"))
            if same and self._shards_intact(old["chunks"]):
                self.state = old
                if self.progress and old["docs_done"]:
                    print(f"resuming after {len(old['chunks'])} chunk(s), "
                          f"{old['docs_done']:,} documents", flush=True)
                return old["docs_done"]
        for stale in self.out.iterdir():  # a different or damaged run: start over
            stale.unlink() if stale.is_file() else shutil.rmtree(stale)
        return 0

    def _shards_intact(self, chunks) -> bool:
        try:
            for chunk in chunks:
                for info in chunk["splits"].values():
                    for file in _files(info):
                        shards.read_header(self.out / file)
        except (OSError, ValueError):
            return False
        return True

    def run(self, workers: int | None) -> Path:
        start = time.perf_counter()
        skip = self._resume()
        total = _known_bytes(self.resolved.fingerprint)
        if workers is None:
            workers = 0 if total is not None and total < IN_PROCESS_BELOW else (os.cpu_count() or 1)
        docs = islice(self.resolved.documents(), skip, None)
        bar = _progress_bar(self.progress, total, f"tokenizing {self.resolved.name}")
        for result in _results(_batches(docs), self.tok, workers):
            self._add(result, bar)
        self._flush()
        bar.close()
        meta = self._meta(time.perf_counter() - start, workers)
        _write_json(self.out / "meta.json", meta)  # last: marks the folder complete
        (self.out / "progress.json").unlink(missing_ok=True)
        if self.progress:
            t, v = meta["splits"]["train"], meta["splits"]["val"]
            print(f"prepared {self.resolved.name}: {t['tokens']:,} train / {v['tokens']:,} val "
                  f"tokens ({t['docs']:,} / {v['docs']:,} docs) in {meta['seconds']:.1f} s "
                  f"-> {self.out}", flush=True)
            if v["docs"] == 0:
                print("  note: the val split is empty (too few documents); add data or raise "
                      "--val-fraction to measure validation loss", flush=True)
        return self.out

    def _add(self, result, bar) -> None:
        splits, lengths, nbytes, ids, mask = result
        ends = np.cumsum(lengths)
        first = 0
        while first < len(splits):
            # documents up to the one that fills the train buffer go into this chunk
            is_train = splits[first:] == 0
            room = self.shard_tokens - self.train_tokens
            cum = np.cumsum(np.where(is_train, lengths[first:], 0))
            full = np.flatnonzero(cum >= room)
            last = first + (int(full[0]) + 1 if full.size else len(splits) - first)
            self._take(splits, lengths, nbytes, ids, mask, ends, first, last)
            if full.size:
                self._flush()
            first = last
        bar.update(int(nbytes.sum()))

    def _take(self, splits, lengths, nbytes, ids, mask, ends, first, last) -> None:
        starts = ends - lengths
        for s, name in enumerate(SPLITS):
            pick = np.flatnonzero(splits[first:last] == s) + first
            if pick.size == 0:
                continue
            slices = [slice(int(starts[i]), int(ends[i])) for i in pick]
            buf = self.buf[name]
            buf["ids"].append(np.concatenate([ids[sl] for sl in slices]))
            if mask is not None:
                buf["mask"].append(np.concatenate([mask[sl] for sl in slices]))
            buf["lengths"].append(lengths[pick])
            buf["bytes"] += int(nbytes[pick].sum())
            if name == "train":
                self.train_tokens += int(lengths[pick].sum())
        self.buf_docs += last - first

    def _flush(self) -> None:
        if self.buf_docs == 0:
            return
        index = len(self.state["chunks"])
        chunk = {"index": index, "splits": {}}
        for name, buf in self.buf.items():
            if not buf["lengths"]:
                continue
            stem = self.out / f"{name}_{index:06d}"
            ids = np.concatenate(buf["ids"])
            lengths = np.concatenate(buf["lengths"])
            info = shards.write_shard(stem.with_suffix(".bin"), ids, self.dtype)
            info["docs"] = int(lengths.size)
            info["text_bytes"] = buf["bytes"]
            info["index"] = shards.write_shard(stem.with_suffix(".idx"), lengths, np.uint32)["file"]
            if self.chat:
                info["mask"] = shards.write_shard(stem.with_suffix(".mask"),
                                                  np.concatenate(buf["mask"]), np.uint8)["file"]
            chunk["splits"][name] = info
        self.state["chunks"].append(chunk)
        self.state["docs_done"] += self.buf_docs
        _write_json(self.out / "progress.json", self.state)
        self._reset_buffers()

    def _meta(self, seconds: float, workers: int) -> dict:
        splits = {}
        for name in SPLITS:
            infos = [c["splits"][name] for c in self.state["chunks"] if name in c["splits"]]
            splits[name] = {"tokens": sum(i["count"] for i in infos),
                            "docs": sum(i["docs"] for i in infos),
                            "text_bytes": sum(i["text_bytes"] for i in infos),
                            "shards": infos}
        return {"format": FORMAT, "version": VERSION, "name": self.resolved.name,
                "kind": self.resolved.kind, "tokenizer": self.tok.identity,
                "vocab_size": int(self.tok.vocab_size), "bos_id": int(self.tok.bos_id),
                "dtype": self.dtype.name, "source": self.fingerprint, "splits": splits,
                "seconds": round(seconds, 2), "workers": workers,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _files(info: dict) -> list[str]:
    return [info[k] for k in ("file", "index", "mask") if k in info]


def _known_bytes(fingerprint: dict) -> int | None:
    if "bytes" in fingerprint:
        return int(fingerprint["bytes"])
    files = fingerprint.get("files")
    if isinstance(files, list) and files and all("bytes" in f for f in files):
        return sum(f["bytes"] for f in files)
    return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _PlainBar(_NoBar):
    """A progress line every few seconds, for machines without tqdm."""

    def __init__(self, total: int | None, desc: str):
        self.total, self.desc, self.done = total, desc, 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if time.perf_counter() - self.last > 5:
            self.last = time.perf_counter()
            of = f" of {self.total / 1e6:,.1f}" if self.total else ""
            rate = self.done / (self.last - self.start) / 1e6
            print(f"{self.desc}: {self.done / 1e6:,.1f}{of} MB ({rate:.1f} MB/s)", flush=True)


def _progress_bar(enabled: bool, total: int | None, desc: str):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm  # plain text (not tqdm.auto): no widgets in notebooks
    except ImportError:
        return _PlainBar(total, desc)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, mininterval=2.0,
                file=sys.stderr, dynamic_ncols=False, ascii=True)
