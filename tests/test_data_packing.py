"""Row planning: the classic best-fit reference, document packing without lost tokens
(pieces of long documents), the streaming packer, random windows."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_course.data.packing import (
    BestFitPacker,
    WindowSampler,
    best_fit_rows,
    pack_rows,
    piece_counts,
    piece_spans,
)

lengths_st = st.lists(st.integers(1, 80), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, row_len=st.integers(4, 64), crop=st.booleans())
def test_best_fit_invariants(lengths, row_len, crop):
    rows = best_fit_rows(lengths, row_len, crop=crop)
    used = Counter()
    for row in rows:
        assert row, "no empty rows"
        assert sum(t for _, t in row) <= row_len
        for doc, take in row:
            assert 1 <= take <= lengths[doc]
            used[doc] += 1
        # only the last segment of a row may be cut, and only when the row is then full
        for doc, take in row[:-1]:
            assert take == lengths[doc]
        last_doc, last_take = row[-1]
        if last_take < lengths[last_doc]:
            assert sum(t for _, t in row) == row_len
            assert crop or len(row) == 1  # SFT cuts only a conversation longer than a row
    assert all(n == 1 for n in used.values()) and len(used) == len(lengths)
    placed = sum(t for row in rows for _, t in row)
    cropped = sum(lengths[d] - t for row in rows for d, t in row)
    assert placed + cropped == sum(lengths)  # nothing lost but the crop
    if crop:
        assert all(sum(t for _, t in row) == row_len for row in rows[:-1])


def test_best_fit_takes_the_longest_that_fits():
    # row of 10: 7 fits first, then the longest that fits in 3 is 3, leaving 1 which 1 fills
    assert best_fit_rows([3, 7, 5, 1], 10) == [[(1, 7), (0, 3)], [(2, 5), (3, 1)]]
    # nothing fits the remaining 2 tokens: crop the shortest (5) rather than a longer doc
    assert best_fit_rows([8, 5, 9], 10) == [[(2, 9), (1, 1)], [(0, 8)]]
    assert best_fit_rows([8, 5, 9], 10, crop=False) == [[(2, 9)], [(0, 8)], [(1, 5)]]


def _targets(rows, lengths):
    """Per document, how often each token index is a target in ``rows`` of (doc, start, end);
    a piece's first token is a target only when it starts its document (its BOS, predicted
    after the previous piece of the row) and is not at the row's start."""
    hits = [Counter() for _ in lengths]
    for row in rows:
        pos = 0
        for doc, s, e in row:
            first = s if (s == 0 and pos > 0) else s + 1
            for t in range(first, e):
                hits[doc][t] += 1
            pos += e - s
    return hits


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=40),
       row_len=st.integers(4, 64), split=st.booleans(), seed=st.integers(0, 9))
def test_pack_rows_loses_no_token_and_keeps_rows_within_bounds(lengths, row_len, split, seed):
    rows = pack_rows(lengths, row_len, seed=seed, split=split)
    for row in rows:
        assert row and sum(e - s for _, s, e in row) <= row_len
        for doc, s, e in row:
            assert 0 <= s < e <= lengths[doc]
    for doc, hits in enumerate(_targets(rows, lengths)):
        # every token after a document's BOS is a target exactly once: nothing cropped
        assert all(hits[t] == 1 for t in range(1, lengths[doc])), doc
    if split:  # rows are full except at the very end, where the pieces run out
        full = [sum(e - s for _, s, e in row) >= row_len - 1 for row in rows]
        assert all(full[:-1]) or len(rows) <= 1 or sum(not f for f in full) <= 2


def test_a_long_document_becomes_full_rows_of_context():
    assert piece_spans(10, 4) == [(0, 4), (3, 7), (6, 10)]  # overlap by one: targets once
    assert piece_spans(4, 4) == [(0, 4)] and piece_spans(5, 4) == [(0, 4), (3, 5)]
    rows = pack_rows([1000], 101)
    assert sum(1 for row in rows if row[0][2] - row[0][1] == 101) == 9
    hits = _targets(rows, [1000])[0]
    assert sorted(hits) == list(range(1, 1000)) and set(hits.values()) == {1}


def test_nothing_fits_splits_the_shortest_piece_or_pads():
    # row of 10: 9 first, one token left: padded (a one-token head would have no target)
    assert pack_rows([8, 5, 9], 10) == [[(2, 0, 9)], [(0, 0, 8), (1, 0, 2)], [(1, 1, 5)]]
    rows = pack_rows([7, 5, 9], 10)
    assert rows[0] == [(2, 0, 9)] and rows[1] == [(0, 0, 7), (1, 0, 3)]
    assert rows[2] == [(1, 2, 5)]  # the tail of the split piece, overlapping by one
    assert pack_rows([7, 5, 9], 10, split=False) == [[(2, 0, 9)], [(0, 0, 7)], [(1, 0, 5)]]


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 200), min_size=1, max_size=40),
       row_len=st.integers(4, 64), split=st.booleans(), seed=st.integers(0, 9))
def test_streaming_packer_equals_reference_when_the_buffer_holds_everything(
        lengths, row_len, split, seed):
    pieces = sum(len(piece_spans(n, row_len)) for n in lengths)
    packer = BestFitPacker(np.array(lengths), row_len, seed=seed, buffer_size=pieces,
                           split=split, epochs=1)
    rows = []
    while (row := packer.plan()) is not None:
        rows.append(row)
    assert rows == pack_rows(lengths, row_len, seed=seed, split=split)
    assert packer.cropped == 0
    assert packer.tokens == sum(e - s for row in rows for _, s, e in row)


def _rows(packer, n):
    return [packer.plan() for _ in range(n)]


def test_packer_state_resumes_exactly_and_is_json_safe():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    a = BestFitPacker(lengths, 128, seed=3, buffer_size=32)
    _rows(a, 50)
    state = json.loads(json.dumps(a.state_dict()))
    expected = _rows(a, 700)  # crosses into the next epoch
    b = BestFitPacker(lengths, 128, seed=3, buffer_size=32)
    b.load_state_dict(state)
    assert _rows(b, 700) == expected
    assert b.state_dict() == a.state_dict()
    assert a.epoch >= 1  # the test did cross an epoch boundary


def test_packer_epochs_cover_every_token_once_per_epoch():
    lengths = np.arange(1, 101)
    packer = BestFitPacker(lengths, 64, seed=1, buffer_size=10, epochs=2)
    rows = []
    while (row := packer.plan()) is not None:
        rows.append(row)
    for doc, hits in enumerate(_targets(rows, lengths)):
        assert all(hits[t] == 2 for t in range(1, lengths[doc])), doc


def test_long_context_statistic():
    packer = BestFitPacker(np.array([5000]), 2049, epochs=1, context=1024)
    while packer.plan() is not None:
        pass
    # pieces of 2049, 2049 and 904 tokens: 1025 + 1025 + 0 tokens see >= 1024 of their own
    assert packer.long_context == 2 * (2049 - 1024)
    assert packer.tokens == 5000 + 2  # two overlap tokens


def test_the_piece_index_matches_piece_spans():
    """The packer addresses pieces by a corpus-wide index (piece_counts + a cumulative sum);
    it must give exactly piece_spans' pieces, in order, for every length near a boundary."""
    for row_len in (2, 3, 11):
        lengths = np.arange(0, 4 * row_len)
        counts = piece_counts(lengths, row_len)
        assert [len(piece_spans(int(n), row_len)) for n in lengths] == counts.tolist()
        packer = BestFitPacker(lengths, row_len)
        pieces = [packer._piece(i) for i in range(packer.num_pieces)]
        assert pieces == [(d, s, e) for d, n in enumerate(lengths)
                          for s, e in piece_spans(int(n), row_len)]


def test_long_documents_are_spread_over_the_epoch():
    """Pieces, not documents, are shuffled: a long file's rows are spread over the whole
    stream instead of arriving as a run of consecutive rows (issue #12: the run cost 0.1
    bits per byte). With documents fed whole, each long file's pieces sat within ~200
    consecutive rows of a ~1,800-row epoch."""
    lengths = np.array([20_000] * 3 + [40] * 3000)
    packer = BestFitPacker(lengths, 101, seed=0, buffer_size=64, epochs=1)
    rows = []
    while (row := packer.plan()) is not None:
        rows.append(row)
    for doc in range(3):
        where = [i for i, row in enumerate(rows) if any(d == doc for d, _, _ in row)]
        assert len(where) >= 20_000 // 101
        assert where[-1] - where[0] > 0.8 * len(rows), (doc, where[0], where[-1], len(rows))
    # no stretch of 50 rows is mostly one document
    for i in range(0, len(rows) - 50, 25):
        docs = [d for row in rows[i:i + 50] for d, _, _ in row]
        assert max(docs.count(d) for d in range(3)) < 25


def test_packer_refuses_a_position_saved_by_the_document_order_packer():
    packer = BestFitPacker(np.arange(1, 50), 16, seed=0)
    old = {"epoch": 0, "cursor": 7, "buffer": [[3, 0, 4]], "rows": 2, "tokens": 30,
           "padded": 0, "splits": 0, "long_context": 0}
    with pytest.raises(ValueError, match="drew whole documents.*--checkpoint instead of --resume"):
        packer.load_state_dict(old)


def test_different_seeds_give_different_orders():
    lengths = np.arange(1, 200)
    a, b = (BestFitPacker(lengths, 256, seed=s, buffer_size=8) for s in (0, 1))
    assert _rows(a, 20) != _rows(b, 20)


def test_windows_cover_each_epoch_without_overlap_and_resume():
    sizes = [1000, 37, 2500]
    sampler = WindowSampler(sizes, 65, seed=5, epochs=1)
    starts = []
    while (plan := sampler.plan()) is not None:
        shard, start = plan
        assert 0 <= start and start + 65 <= sizes[shard]
        starts.append(plan)
    offset = sampler._layout(0)[0]
    assert len(starts) == sum(max(0, (n - offset) // 65) for n in sizes)
    for shard in range(3):  # non-overlapping windows inside each shard
        s = sorted(st for sh, st in starts if sh == shard)
        assert all(b - a >= 65 for a, b in zip(s, s[1:]))
    a = WindowSampler(sizes, 65, seed=5)
    _rows(a, 30)
    state = json.loads(json.dumps(a.state_dict()))
    expected = _rows(a, 100)
    b = WindowSampler(sizes, 65, seed=5)
    b.load_state_dict(state)
    assert _rows(b, 100) == expected
