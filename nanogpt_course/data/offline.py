"""The ``offline`` corpus: text that every machine with Python already has.

No large natural-language corpus can be downloaded here, so the quickstart trains on the
standard library's and the installed packages' own text: Python sources (full of English
docstrings, comments and identifiers), ``.pyi`` stubs, ``.md``/``.rst``/``.txt`` docs, each
distribution's ``METADATA`` (its README), the ``pydoc`` help topics and the rendered help
of the built-in modules. A fresh machine gives tens of MB, a GPU box with more packages
hundreds.

The collection is deterministic: the folders are walked in sorted order, each file is
keyed by ``<root>/<relative path>``, files are visited in the order of a hash of that key
(so a size cap takes an even sample of every package rather than the alphabet's first
ones), exact duplicates are dropped by content hash (the first key in that order wins),
and a file goes to the validation split when its *content* hash falls in the bottom
``val_fraction`` (the same file lands in the same split on every machine). What was taken
is recorded in ``manifest.json`` (key, bytes, sha256, split for every file, totals and a
hash of the whole corpus) next to ``corpus.jsonl`` (one ``{"key", "split", "text"}`` line
per file).

The full corpus depends on which packages happen to be installed. The *standard-library
subset* (:func:`collect_stdlib`: the standard library's files and the ``pydoc`` topics,
without the rendered help of built-in modules, which shows machine paths) has the same
content hash on every machine with the same Python build: the quickstart trains on it so
that its tokenizer and results do not change when a package is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from .. import paths
from .locks import file_lock

FORMAT = "nanogpt_course.offline"
VERSION = 1
EXTENSIONS = (".py", ".pyi", ".md", ".rst", ".txt")
SKIP_DIRS = {"__pycache__", "test", "tests", "site-packages", "dist-packages", "node_modules",
             "idle_test", "lib2to3"}
MAX_FILE_BYTES = 512 * 1024  # bigger files are generated tables or vendored bundles
MIN_FILE_BYTES = 64  # empty __init__.py files and one-liners carry nothing
MAX_LINE_CHARS = 1000  # a longer line means minified or generated text
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")  # reprs in rendered help change every run


def default_roots() -> list[tuple[str, Path]]:
    """``(label, folder)`` pairs walked by default: the standard library, then every
    distinct site-packages folder of this interpreter."""
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    seen = {roots[0][1].resolve()}
    for key in ("purelib", "platlib"):
        folder = Path(sysconfig.get_paths()[key])
        if folder.is_dir() and folder.resolve() not in seen:
            seen.add(folder.resolve())
            roots.append(("site" if key == "purelib" else "plat", folder))
    return roots


def _wanted(name: str) -> bool:
    return name.endswith(EXTENSIONS) or name == "METADATA"


def list_files(roots: list[tuple[str, Path]]) -> list[tuple[str, Path, int, int]]:
    """Every candidate file as ``(key, path, size, mtime_ns)``, in sorted key order."""
    found = []
    for label, root in roots:
        root = str(root)
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            prefix = f"{label}/" if rel == "." else f"{label}/{rel}/"
            for name in files:
                if not _wanted(name):
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if MIN_FILE_BYTES <= st.st_size <= MAX_FILE_BYTES:
                    found.append((prefix + name, Path(path), st.st_size, st.st_mtime_ns))
    found.sort(key=lambda item: item[0])
    return found


def _decode(raw: bytes) -> str | None:
    """UTF-8 text, or None for binary, non-UTF-8 or machine-generated files."""
    if b"\x00" in raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(len(line) > MAX_LINE_CHARS for line in text.splitlines()):
        return None
    return text.replace("\r\n", "\n")


def stdlib_roots() -> list[tuple[str, Path]]:
    """Only the standard library (what the standard-library subset walks)."""
    return default_roots()[:1]


def pydoc_texts(builtin_help: bool = True) -> Iterator[tuple[str, str]]:
    """``(key, text)`` for the pydoc help topics and (``builtin_help``) the built-in modules'
    rendered help, which includes machine-specific values such as ``sys.path``."""
    import importlib
    import pydoc

    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        topics = {}
    for name in sorted(topics):
        yield f"pydoc/topics/{name}", topics[name]
    if not builtin_help:
        return
    for name in sorted(sys.builtin_module_names):
        try:
            module = importlib.import_module(name)
            text = pydoc.render_doc(module, renderer=pydoc.plaintext)
        except Exception:  # a built-in whose help cannot render is simply left out
            continue
        yield f"pydoc/builtin/{name}", _ADDRESS.sub(" at 0x...", text)


def _order(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


def in_val(sha256_hex: str, val_fraction: float) -> bool:
    """Split rule: the file's content hash, read as a number, falls in the bottom fraction."""
    return int(sha256_hex[:8], 16) < val_fraction * 16**8


def _fingerprint(listing, max_bytes, val_fraction) -> str:
    h = hashlib.sha256(json.dumps([VERSION, sys.version, max_bytes, val_fraction]).encode())
    for key, _, size, mtime in listing:
        h.update(f"{key}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def corpus_dir(max_bytes: int | None = None) -> Path:
    """Where the corpus with this size cap lives: ``<cache>/raw/offline/<all|max-NNN>``."""
    label = "all" if max_bytes is None else f"max-{int(max_bytes)}"
    return paths.cache_dir("raw", "offline", label, create=False)


def collect(*, max_bytes: int | None = None, val_fraction: float = 0.02,
            roots: list[tuple[str, Path]] | None = None, out: Path | None = None,
            include_pydoc: bool = True, force: bool = False, progress: bool = True,
            builtin_help: bool = True) -> Path:
    """Build (or reuse) the offline corpus; returns its folder.

    ``max_bytes`` caps the UTF-8 size of the text taken (None = everything). The folder is
    reused when its manifest says it was built from the same files (keys, sizes, mtimes)
    with the same options; ``force`` rebuilds it.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    start = time.perf_counter()
    roots = default_roots() if roots is None else [(str(a), Path(b)) for a, b in roots]
    out = Path(out) if out is not None else corpus_dir(max_bytes)
    pydoc = "all" if include_pydoc and builtin_help else ("topics" if include_pydoc else "none")
    with file_lock(out.parent / f"{out.name}.lock"):
        return _collect_locked(out, roots, max_bytes, val_fraction, pydoc, force,
                               progress, start)


def collect_stdlib(*, max_bytes: int | None = None, val_fraction: float = 0.02,
                   force: bool = False, progress: bool = True) -> Path:
    """The standard-library subset (see the module docstring): deterministic for a given
    Python build, whatever packages are installed. Lives in
    ``<cache>/raw/offline/stdlib-<all|max-NNN>``; its manifest's ``content_sha256``
    identifies it."""
    label = "all" if max_bytes is None else f"max-{int(max_bytes)}"
    out = paths.cache_dir("raw", "offline", f"stdlib-{label}", create=False)
    return collect(max_bytes=max_bytes, val_fraction=val_fraction, roots=stdlib_roots(),
                   out=out, include_pydoc=True, builtin_help=False, force=force,
                   progress=progress)


def _collect_locked(out, roots, max_bytes, val_fraction, pydoc, force, progress,
                    start) -> Path:
    listing = list_files(roots)
    fingerprint = _fingerprint(listing, max_bytes, val_fraction) + \
        {"all": "", "none": "-", "topics": "-topics"}[pydoc]
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and (out / "corpus.jsonl").is_file() and not force:
        old = json.loads(manifest_path.read_text())
        if old.get("listing_sha256") == fingerprint:
            return out
    out.mkdir(parents=True, exist_ok=True)
    entries = _write_corpus(out, listing, max_bytes, val_fraction, pydoc, progress)
    manifest = _manifest(entries, roots, max_bytes, val_fraction, fingerprint)
    manifest["seconds"] = round(time.perf_counter() - start, 2)
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path)  # the manifest is written last: it marks the corpus done
    if progress:
        print(f"offline corpus: {manifest['files']:,} files, {manifest['bytes'] / 1e6:.1f} MB "
              f"({manifest['val_bytes'] / 1e6:.1f} MB val) in {manifest['seconds']:.1f} s "
              f"-> {out}", flush=True)
    return out


def _candidates(listing, pydoc) -> Iterator[tuple[str, int, object]]:
    """``(key, size, source)`` in hash-of-key order; ``source`` is a Path or the text itself
    (the pydoc texts are sorted in among the files). ``pydoc``: all | topics | none."""
    items = [(_order(key), key, size, path) for key, path, size, _ in listing]
    if pydoc != "none":
        items += [(_order(key), key, len(text.encode()), text)
                  for key, text in pydoc_texts(builtin_help=pydoc == "all")]
    items.sort(key=lambda item: (item[0], item[1]))
    for _, key, size, source in items:
        yield key, size, source


def _read(source) -> str | None:
    if not isinstance(source, Path):
        return source
    try:
        return _decode(source.read_bytes())
    except OSError:
        return None


def _write_corpus(out, listing, max_bytes, val_fraction, pydoc, progress) -> list:
    seen: set[str] = set()
    entries, total, last_report = [], 0, time.perf_counter()
    tmp = out / "corpus.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for key, size, source in _candidates(listing, pydoc):
            if max_bytes is not None and total + size > max_bytes:
                if max_bytes - total < MIN_FILE_BYTES:
                    break  # full
                continue  # this file would overshoot the cap; a smaller one may still fit
            text = _read(source)
            if not text:
                continue
            data = text.encode("utf-8")
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen or (max_bytes is not None and total + len(data) > max_bytes):
                continue
            seen.add(digest)
            split = "val" if in_val(digest, val_fraction) else "train"
            f.write(json.dumps({"key": key, "split": split, "text": text}) + "\n")
            entries.append((key, len(data), digest, split))
            total += len(data)
            if progress and time.perf_counter() - last_report > 5:
                print(f"  collected {len(entries):,} files, {total / 1e6:.1f} MB", flush=True)
                last_report = time.perf_counter()
    os.replace(tmp, out / "corpus.jsonl")
    return entries


def texts_sha256(entries) -> str:
    """A hash of the corpus's texts and their splits only: the sorted ``(sha256 of the text,
    split)`` pairs. Unlike ``content_sha256`` (which also hashes each file's key, a path
    that differs between machines and Python installs) it is the same wherever the same
    files were found, so results from two machines can be checked to share their data."""
    lines = sorted(f"{digest}\0{split}\n" for _key, _size, digest, split in entries)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _manifest(entries, roots, max_bytes, val_fraction, fingerprint) -> dict:
    corpus_hash = hashlib.sha256()
    for key, size, digest, split in entries:
        corpus_hash.update(f"{key}\0{size}\0{digest}\0{split}\n".encode())
    by_split = {s: sum(e[1] for e in entries if e[3] == s) for s in ("train", "val")}
    return {
        "format": FORMAT,
        "version": VERSION,
        "python": sys.version.split()[0],
        "roots": [[label, str(folder)] for label, folder in roots],
        "max_bytes": max_bytes,
        "val_fraction": val_fraction,
        "files": len(entries),
        "bytes": sum(by_split.values()),
        "train_bytes": by_split["train"],
        "val_bytes": by_split["val"],
        "content_sha256": corpus_hash.hexdigest(),
        "texts_sha256": texts_sha256(entries),
        "listing_sha256": fingerprint,
        "entries": [list(e) for e in entries],
    }


def read_manifest(folder: Path) -> dict:
    """The manifest of a collected corpus folder."""
    return json.loads((Path(folder) / "manifest.json").read_text())


def iter_corpus(folder: Path, split: str | None = None) -> Iterator[dict]:
    """The corpus records ``{"key", "split", "text"}`` in file order, optionally one split."""
    with open(Path(folder) / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if split is None or record["split"] == split:
                yield record
