"""Sources: FineWeb-Edu, OpenWebText and TaskMixture preparation against local fixtures in
the Hub datasets' own schemas (no network), TaskMixture on the real data mirror, helpers."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_course.data import (
    ByteTokenizer,
    hub,
    preparation,
    read_meta,
    read_shard,
    sources,
    tasks,
)
from nanogpt_course.data.download import sha256_file

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # datasets must not touch ~/.cache
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    return tmp_path / "cache"


def _decode_docs(folder, split="train"):
    tok, out = ByteTokenizer(), []
    meta = read_meta(folder)
    for s in meta["splits"][split]["shards"]:
        tokens = read_shard(folder / s["file"])
        starts = np.flatnonzero(tokens == tok.bos_id).tolist() + [len(tokens)]
        out += [tok.decode(tokens[a + 1:b]) for a, b in zip(starts, starts[1:])]
    return out


def _fineweb_table(n, offset=0):
    """Rows in FineWeb-Edu's schema (the columns of HuggingFaceFW/fineweb-edu)."""
    texts = [f"Document {offset + i}: photosynthesis turns light into sugar. " * (1 + i % 4)
             for i in range(n)]
    return pa.table({
        "text": texts,
        "id": [f"<urn:uuid:{offset + i:08d}-0000-0000-0000-000000000000>" for i in range(n)],
        "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{offset + i}" for i in range(n)],
        "file_path": ["s3://commoncrawl/crawl-data/x.warc.gz"] * n,
        "language": ["en"] * n,
        "language_score": pa.array([0.97] * n, pa.float64()),
        "token_count": pa.array([12 * (1 + i % 4) for i in range(n)], pa.int64()),
        "score": pa.array([3.2] * n, pa.float64()),
        "int_score": pa.array([3] * n, pa.int64()),
    }), texts


def test_fineweb_edu_from_local_parquet(tmp_path, cache, monkeypatch):
    mirror = tmp_path / "mirror" / "fineweb_edu"
    mirror.mkdir(parents=True)
    expected = []
    for k in range(2):
        table, texts = _fineweb_table(40, offset=40 * k)
        pq.write_table(table, mirror / f"{k:03d}_00000.parquet", row_group_size=16)
        expected += texts
    monkeypatch.setenv("NANOGPT_COURSE_DATA", str(tmp_path / "mirror"))
    folder = preparation.prepare("fineweb_edu", "bytes", download=False, workers=0,
                                 progress=False, val_fraction=0.2)
    got = _decode_docs(folder, "train") + _decode_docs(folder, "val")
    assert got == [t for t in expected if sources.hash_split(_id(expected, t), 0.2) == "train"] + \
        [t for t in expected if sources.hash_split(_id(expected, t), 0.2) == "val"]
    meta = read_meta(folder)
    assert meta["splits"]["val"]["docs"] > 0 and meta["source"]["source"] == "fineweb_edu"
    one = preparation.prepare("fineweb_edu", "bytes", download=False, workers=0,
                              progress=False, val_fraction=0.2, max_files=1)
    assert one != folder and read_meta(one)["splits"]["train"]["docs"] < meta["splits"]["train"]["docs"]


def _id(texts, text):
    return f"<urn:uuid:{texts.index(text):08d}-0000-0000-0000-000000000000>"


@pytest.fixture
def http_folder(tmp_path):
    """Serve a folder on 127.0.0.1 (a stand-in for the Hub's resolve/main URLs)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fineweb_edu_download_path(http_folder, cache, monkeypatch):
    root, url = http_folder
    (root / "sample" / "10BT").mkdir(parents=True)
    table, texts = _fineweb_table(30)
    served = root / "sample" / "10BT" / "000_00000.parquet"
    pq.write_table(table, served)
    monkeypatch.delenv("NANOGPT_COURSE_DATA", raising=False)
    monkeypatch.setenv("NANOGPT_COURSE_FINEWEB_URL", url)
    monkeypatch.setattr(hub, "FINEWEB_SHA256", {0: "0" * 64})
    with pytest.raises(Exception, match="checksum mismatch"):
        preparation.prepare("fineweb_edu", "bytes", workers=0, progress=False, max_files=1)
    assert not list((cache / "raw" / "fineweb_edu").iterdir())  # no partial file left
    monkeypatch.setattr(hub, "FINEWEB_SHA256", {0: sha256_file(served)})
    folder = preparation.prepare("fineweb_edu", "bytes", workers=0, progress=False,
                                 max_files=1, val_fraction=0.0)
    assert (cache / "raw" / "fineweb_edu" / "000_00000.parquet").is_file()
    assert _decode_docs(folder) == texts


def test_openwebtext_through_datasets_on_local_parquet(tmp_path, cache, monkeypatch):
    pytest.importorskip("datasets")
    folder = tmp_path / "owt"
    folder.mkdir()
    texts = [f"Open web page number {i}.\nIt has two lines." for i in range(25)]
    pq.write_table(pa.table({"text": texts}), folder / "plain_text-train-00000.parquet")
    prepared = preparation.prepare("openwebtext", "bytes", workers=0, progress=False,
                                   files=str(folder), val_fraction=0.0)
    assert _decode_docs(prepared) == texts
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.arrow"))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_task_mixture_online_path_with_hub_schema_fixtures(tmp_path, cache, monkeypatch):
    datasets = pytest.importorskip("datasets")
    smol = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Say {i}"},
                          {"role": "assistant", "content": f"{i}"}], "source": "smol"}
            for i in range(12)]
    aux = [{"train": {"question": f"2+{i}=?", "subject": "", "choices": ["1", "2", f"{2 + i}", "4"],
                      "answer": 2}} for i in range(8)]
    gsm = [{"question": "Tom has 3 apples and buys 2. How many?",
            "answer": "3+2 = <<3+2=5>>5 apples\n#### 5"}] * 5
    files = {"smoltalk": smol, "mmlu_aux": aux, "gsm8k": gsm}
    for name, rows in files.items():
        _write_jsonl(tmp_path / f"{name}.jsonl", rows)
    repo_to_part = {hub.SMOLTALK_REPO: "smoltalk", hub.MMLU_REPO: "mmlu_aux",
                    hub.GSM8K_REPO: "gsm8k"}

    def fake_hub(repo, config, split):
        assert split == "train"  # never a test split
        return datasets.load_dataset("json", data_files=str(tmp_path / f"{repo_to_part[repo]}.jsonl"),
                                     split="train", streaming=True)

    monkeypatch.setattr(hub, "load_hub", fake_hub)
    monkeypatch.delenv("NANOGPT_COURSE_DATA", raising=False)
    folder = preparation.prepare("task_mixture", "bytes", workers=0, progress=False,
                                 online=True, val_fraction=0.0)
    meta = read_meta(folder)
    assert meta["kind"] == "chat" and meta["splits"]["train"]["docs"] == 12 + 8 + 5
    text = ByteTokenizer().decode(read_shard(folder / "train_000000.bin"))
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text
    assert "C. 2\nD. 4\n\nAnswer with the letter" in text and "assistant\nC<|im_end|>" in text
    assert "<<" not in text and "5 apples\n#### 5" in text
    mask = read_shard(folder / "train_000000.mask")
    assert 0 < mask.mean() < 0.5


def test_task_mixture_offline_on_the_data_mirror(shared_data, cache):
    folder = preparation.prepare("task_mixture", "bytes", progress=False, online=False)
    meta = read_meta(folder)
    parts = meta["source"]["parts"]
    assert set(parts) == {"identity", "gsm8k", "mmlu_dev"}
    used = [parts["identity"]["path"], parts["gsm8k"]["path"]] + [p["path"] for p in parts["mmlu_dev"]]
    assert len(used) == 2 + 57 and not any("test" in p.split("/")[-2:] for p in used)
    assert all("/test/" not in p and not p.endswith("test.jsonl") for p in used)
    docs = meta["splits"]["train"]["docs"] + meta["splits"]["val"]["docs"]
    # identity: the 17 of the sample's 1,000 conversations that do not state nanochat's
    # facts, plus the course's own 400 (data/identity.py)
    assert docs == 17 + 400 + 7473 + 285
    assert meta["splits"]["val"]["docs"] > 0


def test_message_renderers():
    m = tasks.mmlu_messages("What is 2+2?", ["3", "4", "5", "6"], 1)
    assert m[0]["content"] == "What is 2+2?\n\nA. 3\nB. 4\nC. 5\nD. 6\n\nAnswer with the letter of the correct choice."
    assert m[1] == {"role": "assistant", "content": "B"}
    assert tasks.mmlu_messages("q", ["a", "b", "c", "d"], "D")[1]["content"] == "D"
    g = tasks.gsm8k_messages("Q?", "Half is 48/2 = <<48/2=24>>24.\n#### 24")
    assert g[1]["content"] == "Half is 48/2 = 24.\n#### 24"
    with pytest.raises(ValueError, match="row 3"):
        sources.check_messages([{"role": "user"}], "row 3")


@settings(max_examples=80, deadline=None)
@given(text=st.text(alphabet="ab \n", max_size=300), fraction=st.floats(0.0, 0.5))
def test_split_tail_is_lossless_and_contiguous(text, fraction):
    head, tail = sources.split_tail(text, fraction)
    assert head + tail == text
    if fraction == 0:
        assert tail == ""


def test_documents_are_whole_files_split_per_file(tmp_path):
    """No document is cut by characters, and the train/val split is per file."""
    long = "\n\n".join(f"paragraph {i} " + "x" * 300 for i in range(100))  # 30 kB
    for i in range(40):
        (tmp_path / f"f{i:02d}.md").write_text(f"file {i}\n\n" + long)
    docs = list(sources.get("text").resolve(path=str(tmp_path), val_fraction=0.25).documents())
    assert len(docs) == 40  # one document per file, whatever its length
    assert all(d.text == f"file {i}\n\n" + long and d.key == f"f{i:02d}.md"
               for i, d in enumerate(docs))
    assert all(d.split == sources.hash_split(d.key, 0.25) for d in docs)
    assert {d.split for d in docs} == {"train", "val"}


def test_a_single_file_is_split_as_one_contiguous_tail(tmp_path):
    book = "".join(f"Chapter {i}.\n\nIt was a night like any other, number {i}.\n\n"
                   for i in range(400))
    (tmp_path / "book.txt").write_text(book)
    docs = list(sources.get("text").resolve(path=str(tmp_path / "book.txt"),
                                            val_fraction=0.1).documents())
    assert [d.split for d in docs] == ["train", "val"]
    assert docs[0].text + docs[1].text == book  # nothing interleaved, nothing lost
    assert docs[0].text.endswith("\n\n") and 0.09 < len(docs[1].text) / len(book) < 0.11


def test_jsonl_records_are_whole_documents_split_per_record(tmp_path):
    rows = [{"text": f"record {i} " + "y" * 5000} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = list(sources.get("text").resolve(path=str(tmp_path), val_fraction=0.3).documents())
    assert [d.text for d in docs] == [r["text"] for r in rows]
    assert [d.split for d in docs] == [sources.hash_split(f"d.jsonl:{i}", 0.3) for i in range(30)]


def test_hash_split_is_deterministic_and_near_the_fraction():
    keys = [f"doc{i}" for i in range(20000)]
    val = [k for k in keys if sources.hash_split(k, 0.1) == "val"]
    assert abs(len(val) / len(keys) - 0.1) < 0.01
    assert val == [k for k in keys if sources.hash_split(k, 0.1) == "val"]
    assert all(sources.hash_split(k, 0.0) == "train" for k in keys[:100])


def test_text_source_files_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "skip.bin").write_bytes(b"\0")
    found = sources.TextFiles.find_files(tmp_path)
    assert [p.name for p in found] == ["a.txt", "b.jsonl"]
    assert [p.name for p in sources.TextFiles.find_files(str(tmp_path / "**" / "*.jsonl"))] == ["b.jsonl"]
    with pytest.raises(FileNotFoundError, match="no .txt"):
        sources.TextFiles.find_files(tmp_path / "empty*")
    (tmp_path / "sub" / "c.jsonl").write_text('[{"role": "user", "content": "hi"}]\n')
    with pytest.raises(ValueError, match="mixes chat conversations and plain text"):
        sources.get("text").resolve(path=str(tmp_path))
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        sources.get("nope")
