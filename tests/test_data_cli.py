"""``python -m nanogpt_course.data``: ``list`` needs no tokenizer files; ``info`` and
``verify`` accept the dataset names that ``list`` shows, not only folders."""

from __future__ import annotations

import pytest

from nanogpt_course import paths
from nanogpt_course.data import preparation
from nanogpt_course.data.__main__ import main as cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _no_gpt2(monkeypatch):
    from nanogpt_course.tokenizer import Tokenizer

    def unavailable(*args, **kwargs):
        raise AssertionError("the GPT-2 tokenizer was loaded")

    monkeypatch.setattr(Tokenizer, "gpt2", classmethod(unavailable))


def test_list_needs_no_tokenizer(cache, monkeypatch, capsys):
    _no_gpt2(monkeypatch)
    assert cli(["list"]) == 0
    out = capsys.readouterr().out
    assert "tinyshakespeare" in out and "not prepared" in out and "offline" in out
    assert cli(["list", "--tokenizer", "gpt2"]) == 0


def test_info_and_verify_accept_a_dataset_name(tmp_path, cache, capsys, monkeypatch):
    src = tmp_path / "notes"
    src.mkdir()
    (src / "a.txt").write_text("hello world, " * 200)
    folder = preparation.prepare(str(src), "bytes", workers=0, progress=False)
    _no_gpt2(monkeypatch)
    assert cli(["list"]) == 0
    listed = capsys.readouterr().out
    assert f"prepared: {folder.parent.name}/{folder.name}" in listed
    assert cli(["info", "text"]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "bytes/token" in out
    assert cli(["verify", "text"]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli(["info", str(folder)]) == 0  # a folder still works
    capsys.readouterr()
    assert cli(["info", "tinyshakespeare"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'tinyshakespeare' is not prepared")
    assert "python -m nanogpt_course.data prepare tinyshakespeare" in err
    assert cli(["verify", "no_such_thing"]) == 1
    assert "neither a prepared folder nor a dataset name" in capsys.readouterr().err
    (src / "b.txt").write_text("another file " * 100)
    preparation.prepare(str(src / "b.txt"), "bytes", workers=0, progress=False)
    assert cli(["info", "text"]) == 1  # two prepared 'text' folders: say which ones
    assert "prepared several times" in capsys.readouterr().err
