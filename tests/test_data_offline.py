"""The offline corpus: deterministic, de-duplicated, split by file content, capped, recorded."""

from __future__ import annotations

import hashlib
import json

import pytest

from nanogpt_course.data import offline


def _tree(root):
    """A fake stdlib + site-packages with duplicates, binaries, tests and generated files."""
    files = {
        "lib/json/__init__.py": '"""JSON encoder and decoder."""\n\ndef dumps(obj):\n    return repr(obj)\n',
        "lib/json/copy_of_init.py": '"""JSON encoder and decoder."""\n\ndef dumps(obj):\n    return repr(obj)\n',
        "lib/textwrap.py": '"""Text wrapping and filling."""\n' + "# wrap words nicely\n" * 40,
        "lib/test/test_json.py": "def test_everything():\n    assert True  # long enough to count\n",
        "lib/__pycache__/x.cpython-311.pyc.py": "compiled stuff that must be skipped entirely\n",
        "lib/notes.md": "# Notes\n\nThe standard library has many modules worth reading, slowly.\n",
        "lib/data.bin": "binary data that is not text at all, not collected anyway..",
        "site/pkg/README.rst": "pkg\n===\n\nA package that does useful things with words and sentences.\n",
        "site/pkg-1.0.dist-info/METADATA": "Name: pkg\nSummary: useful things\n\nA long description of the package.\n",
        "site/pkg/generated.py": "x = [" + ",".join(["1"] * 800) + "]\n",
        "site/pkg/tiny.py": "x = 1\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "site/pkg/latin1.txt").write_bytes("caf\xe9 au lait, served warm with bread and butter".encode("latin-1"))
    (root / "site/pkg/nul.py").write_bytes(b"print('x')\x00" * 10)
    return [("stdlib", root / "lib"), ("site", root / "site")], files


def _collect(tmp_path, name="out", **kw):
    if not (tmp_path / "tree").exists():
        _tree(tmp_path / "tree")
    roots = [("stdlib", tmp_path / "tree" / "lib"), ("site", tmp_path / "tree" / "site")]
    return offline.collect(roots=roots, out=tmp_path / name, include_pydoc=False,
                           progress=False, **kw)


def test_collect_filters_dedups_and_records(tmp_path):
    folder = _collect(tmp_path, val_fraction=0.5)
    manifest = offline.read_manifest(folder)
    records = list(offline.iter_corpus(folder))
    keys = sorted(r["key"] for r in records)
    assert keys == sorted(["stdlib/json/__init__.py", "stdlib/textwrap.py", "stdlib/notes.md",
                           "site/pkg/README.rst", "site/pkg-1.0.dist-info/METADATA"]) or \
        keys == sorted(["stdlib/json/copy_of_init.py", "stdlib/textwrap.py", "stdlib/notes.md",
                        "site/pkg/README.rst", "site/pkg-1.0.dist-info/METADATA"])
    # exactly one of the two identical files survives: the first in hash-of-key order
    first = min(["stdlib/json/__init__.py", "stdlib/json/copy_of_init.py"], key=offline._order)
    assert first in keys
    for r in records:  # split by the file's content hash, recorded in the manifest
        digest = hashlib.sha256(r["text"].encode()).hexdigest()
        assert r["split"] == ("val" if offline.in_val(digest, 0.5) else "train")
    entries = {e[0]: e for e in manifest["entries"]}
    assert manifest["files"] == len(records) == len(entries)
    assert manifest["bytes"] == sum(len(r["text"].encode()) for r in records)
    assert manifest["bytes"] == manifest["train_bytes"] + manifest["val_bytes"]
    assert all(entries[r["key"]][2] == hashlib.sha256(r["text"].encode()).hexdigest() for r in records)


def test_collect_is_deterministic_and_reused(tmp_path):
    a = _collect(tmp_path, "a")
    b = _collect(tmp_path, "b")
    assert (a / "corpus.jsonl").read_bytes() == (b / "corpus.jsonl").read_bytes()
    ma, mb = offline.read_manifest(a), offline.read_manifest(b)
    assert ma["content_sha256"] == mb["content_sha256"]
    assert ma["texts_sha256"] == offline.texts_sha256(ma["entries"])
    # other keys (paths on another machine), another order: only content_sha256 changes
    moved = [[f"elsewhere/{k}", size, digest, split]
             for k, size, digest, split in reversed(ma["entries"])]
    other = offline._manifest(moved, [], None, 0.5, "x")
    assert other["texts_sha256"] == ma["texts_sha256"]
    assert other["content_sha256"] != ma["content_sha256"]
    edited = [list(e) for e in ma["entries"]]
    edited[0][3] = "val" if edited[0][3] == "train" else "train"  # a file changes split
    assert offline.texts_sha256(edited) != ma["texts_sha256"]
    stamp = (a / "corpus.jsonl").stat().st_mtime_ns
    _collect(tmp_path, "a")
    assert (a / "corpus.jsonl").stat().st_mtime_ns == stamp  # same files: not rebuilt
    (tmp_path / "tree" / "lib" / "notes.md").write_text("# Notes\n\nEdited: a new version of the notes, long enough to be kept.\n")
    _collect(tmp_path, "a")
    assert "Edited" in (a / "corpus.jsonl").read_text()  # a changed file: rebuilt


def test_size_cap(tmp_path):
    full = offline.read_manifest(_collect(tmp_path, "full"))
    cap = full["bytes"] // 2
    capped = offline.read_manifest(_collect(tmp_path, "capped", max_bytes=cap))
    assert 0 < capped["bytes"] <= cap and capped["files"] < full["files"]


def test_real_machine_corpus_is_text_from_python(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    folder = offline.collect(max_bytes=1_000_000, progress=False)
    assert folder.is_relative_to(tmp_path / "cache")
    manifest = offline.read_manifest(folder)
    assert 900_000 < manifest["bytes"] <= 1_000_000
    roots = {key.split("/")[0] for key, *_ in manifest["entries"]}
    assert "stdlib" in roots and ("pydoc" in roots or "site" in roots)
    text = (folder / "corpus.jsonl").read_text()
    assert "def " in text and "the" in text
    json.loads(text.splitlines()[0])


def test_bad_val_fraction(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        _collect(tmp_path, val_fraction=1.5)
