"""KV cache, sampling, generate and stream_text."""

from __future__ import annotations

import pytest
import torch

from nanogpt_course import engine, fast_decode
from nanogpt_course.engine import KVCache, generate, sample_next_token, stream_text
from nanogpt_course.model import GPT, GPTConfig


def make_model(seed=0, **overrides) -> GPT:
    """A small fp32 model with every weight random (zero-init projections included)."""
    base = dict(sequence_len=48, vocab_size=256, n_layer=4, n_head=4, n_kv_head=2, n_embd=64)
    base.update(overrides)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**base))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambdas" in name:
                continue
            std = 1.0 if name.startswith(("wte", "value_embeds")) else 0.5 / p.shape[-1] ** 0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


class ByteTokenizer:
    """Bytes as tokens; decode replaces incomplete UTF-8 with U+FFFD like tiktoken does."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


# -- KV cache equals the full forward --------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("overrides", [{}, dict(window_pattern="SSSL", short_window=7),
                                       dict(value_embeds=False, residual_scalars=False,
                                            n_kv_head=4)])
def test_cached_decoding_matches_full_forward(batch, overrides):
    model = make_model(**overrides)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 256, (batch, 48), generator=g)
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.for_model(model, batch_size=batch)
        chunks = [model(idx[:, :5], kv_cache=cache)]  # prefill
        for t in range(5, 20):  # one token at a time
            chunks.append(model(idx[:, t:t + 1], kv_cache=cache))
        chunks.append(model(idx[:, 20:29], kv_cache=cache))  # a multi-token chunk mid-way
        for t in range(29, 48):
            chunks.append(model(idx[:, t:t + 1], kv_cache=cache))
    assert cache.pos == 48
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


def test_cache_refuses_overflow_and_wrong_batch():
    model = make_model()
    cache = KVCache.for_model(model, batch_size=2, max_len=8)
    with torch.no_grad():
        model(torch.zeros(2, 6, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="KV cache full"):
            model(torch.zeros(2, 3, dtype=torch.long), kv_cache=cache)
    cache = KVCache.for_model(model, batch_size=2)
    with pytest.raises(ValueError, match="batch"), torch.no_grad():
        model(torch.zeros(3, 2, dtype=torch.long), kv_cache=cache)
    cache = KVCache.for_model(model)
    with pytest.raises(ValueError, match="context"), torch.no_grad():
        model(torch.zeros(1, 40, dtype=torch.long), kv_cache=cache)
        model(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)


def test_cache_expand_copies_rows():
    model = make_model()
    cache = KVCache.for_model(model, max_len=16)
    with torch.no_grad():
        model(torch.arange(5)[None], kv_cache=cache)
    wide = cache.expand(3)
    assert wide.pos == 5 and wide.k.shape[1] == 3
    torch.testing.assert_close(wide.k[:, 2], cache.k[:, 0])
    wide.k[:, 1] += 1  # rows are independent copies
    torch.testing.assert_close(wide.k[:, 2], cache.k[:, 0])


# -- sampling --------------------------------------------------------------------------
def test_top_k_filter():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0]])
    out = engine.top_k_filter(logits, 2)
    assert torch.isinf(out[0, [0, 2, 3]]).all() and out[0, 1] == 5 and out[0, 4] == 4
    assert torch.equal(engine.top_k_filter(logits, 10), logits)


def test_top_p_filter_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    kept = lambda p: (~torch.isinf(engine.top_p_filter(logits, p))).nonzero()[:, 1].tolist()
    assert kept(0.5) == [0]  # the top token alone already has 0.5
    assert kept(0.6) == [0, 2]
    assert kept(0.81) == [0, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3]
    assert kept(0.01) == [0]  # never empty
    # a full vocabulary: the float32 running sum reaches 1.0 before the last token, so
    # without the p >= 1 rule thousands of tokens would be dropped at p = 1
    wide = torch.randn(50257, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.isfinite(engine.top_p_filter(wide, 1.0)).all()


def test_sample_next_token_modes():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g)
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next_token(logits, temperature=0), greedy)
    assert torch.equal(sample_next_token(logits, top_k=1, generator=g), greedy)
    assert torch.equal(sample_next_token(logits, top_p=1e-6, generator=g), greedy)
    picks = sample_next_token(logits, top_k=3, generator=g)
    top3 = logits.topk(3).indices
    assert all(p in row for p, row in zip(picks.tolist(), top3.tolist()))


def test_sampling_follows_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    g = torch.Generator().manual_seed(0)
    draws = sample_next_token(logits.expand(40000, 4), temperature=2.0, generator=g)
    freq = torch.bincount(draws, minlength=4).double() / 40000
    torch.testing.assert_close(freq, (logits / 2.0).softmax(-1).double(), atol=0.01, rtol=0)


# -- generate --------------------------------------------------------------------------
def test_greedy_generate_matches_argmax_loop_with_and_without_cache():
    model = make_model(window_pattern="SL", short_window=5)
    prompt = [3, 1, 4, 1, 5]
    expected, seq = [], list(prompt)
    with torch.no_grad():
        for _ in range(20):
            nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            expected.append(nxt)
            seq.append(nxt)
    assert list(generate(model, prompt, 20, temperature=0)) == expected
    assert list(generate(model, prompt, 20, temperature=0, use_cache=False)) == expected


def test_generate_is_deterministic_under_a_seed():
    model = make_model()
    run = lambda seed, **kw: list(generate(model, [7, 8], 25, seed=seed, top_k=50, top_p=0.9,
                                           **kw))
    assert run(1) == run(1)
    assert run(1) != run(2)
    assert run(3, use_cache=False) == run(3)  # same logits, same random stream
    many = run(4, num_samples=3)
    assert many == run(4, num_samples=3)
    assert len(many) == 25 and all(len(step) == 3 for step in many)
    rows = list(zip(*many))
    assert len(set(rows)) > 1  # independent continuations


def test_generate_stops_on_stop_tokens():
    model = make_model()
    free = list(generate(model, [1, 2, 3], 30, temperature=0))
    stop_tok = free[9]
    first = free.index(stop_tok)
    out = list(generate(model, [1, 2, 3], 30, temperature=0, stop=[stop_tok]))
    assert out == free[: first + 1]  # the stop token is yielded, then generation ends


def test_finished_samples_repeat_their_stop_token():
    model = make_model()
    sample = lambda **kw: list(generate(model, [1, 2, 3], 40, seed=0, num_samples=4,
                                        temperature=2.0, **kw))
    stop_tok = [list(r) for r in zip(*sample())][0][3]  # what row 0 samples at step 3
    steps = sample(stop=[stop_tok])
    rows = [list(r) for r in zip(*steps)]
    assert stop_tok in rows[0][:4]  # same random stream: row 0 stops by step 3
    for r in rows:
        if stop_tok in r:
            assert all(t == stop_tok for t in r[r.index(stop_tok):])
    if len(steps) < 40:  # generation ended early only because every row stopped
        assert all(stop_tok in r for r in rows)


def test_generate_respects_the_context():
    model = make_model()  # sequence_len 48
    out = list(generate(model, list(range(40)), 100, temperature=0))
    assert len(out) == 48 - 40 + 1  # the last token never needs to be fed back
    with pytest.raises(ValueError, match="longer than the model's context"):
        list(generate(model, list(range(49)), 5))


@pytest.mark.parametrize("kwargs,match", [
    (dict(ids=[]), "empty prompt"),
    (dict(ids=[300]), "outside the vocabulary"),
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(num_samples=0), "num_samples"),
])
def test_generate_argument_errors(kwargs, match):
    model = make_model()
    args = dict(ids=[1, 2], max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        list(generate(model, args.pop("ids"), args.pop("max_new_tokens"), **args))


def test_generate_leaves_grad_mode_alone():
    model = make_model()
    for _ in generate(model, [1], 3):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


# -- stream_text -----------------------------------------------------------------------
TEXT = "naïve café ☕ — 日本語 🎉 done"


def _fake_generate(tokens):
    def fake(model, ids, max_new_tokens, **kwargs):
        stop = set(kwargs.get("stop", ()))
        for t in tokens[:max_new_tokens]:
            yield t
            if t in stop:
                return
    return fake


def test_stream_text_never_splits_characters(monkeypatch):
    tokens = list(TEXT.encode())
    monkeypatch.setattr(engine, "generate", _fake_generate(tokens))
    pieces = list(stream_text(None, ByteTokenizer(), [0], max_new_tokens=1000))
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) == len(TEXT)  # one byte at a time: one piece per character


def test_stream_text_drops_stop_token(monkeypatch):
    tokens = list(b"hi there") + [0] + list(b"after")
    monkeypatch.setattr(engine, "generate", _fake_generate(tokens))
    assert "".join(stream_text(None, ByteTokenizer(), [1], max_new_tokens=99, stop=[0])) == \
        "hi there"


def test_stream_text_with_gpt2_tokenizer(monkeypatch, shared_data):
    """Real BPE: the emoji and CJK characters span several GPT-2 tokens."""
    tok_mod = pytest.importorskip("nanogpt_course.tokenizer")
    if not hasattr(tok_mod, "Tokenizer"):
        pytest.skip("nanogpt_course.tokenizer.Tokenizer not written yet")
    tok = tok_mod.Tokenizer.gpt2()  # from the data mirror's GPT-2 files, offline
    tokens = tok.encode(TEXT)
    assert len(tokens) < len(TEXT.encode())  # multi-byte tokens, not bytes
    monkeypatch.setattr(engine, "generate", _fake_generate(tokens))
    pieces = list(stream_text(None, tok, [0], max_new_tokens=1000))
    assert "".join(pieces) == TEXT and all("\ufffd" not in p for p in pieces)


def test_stream_text_with_a_real_model():
    model = make_model()
    tok = ByteTokenizer()
    pieces = list(stream_text(model, tok, list(b"Hello"), max_new_tokens=30, seed=0))
    tokens = list(generate(model, list(b"Hello"), 30, seed=0))
    assert "".join(pieces) == tok.decode(tokens) or len(tokens) >= 8
    with pytest.raises(ValueError, match="num_samples"):
        list(stream_text(model, tok, [1], max_new_tokens=3, num_samples=2))


# -- the fast decoder (static cache, cast weights) against the readable one ----------------
@pytest.fixture
def decode_mode(monkeypatch):
    def use(mode):
        monkeypatch.setattr(engine, "DECODE_MODE", mode)
    yield use
    fast_decode.release()


@pytest.mark.parametrize("overrides", [{}, dict(window_pattern="SSSL", short_window=7),
                                       dict(value_embeds=False, residual_scalars=False,
                                            n_kv_head=1)])
def test_static_decoder_matches_readable_decoder(overrides, decode_mode):
    """The device-position cache (masked attention over the whole buffer, index_copy_ writes,
    RoPE rows gathered on the device) gives the readable decoder's tokens, prompt after
    prompt through one reused step (the CUDA graph's situation), with several samples."""
    model = make_model(**overrides)
    cases = [([3, 1, 4, 1, 5], dict(temperature=0)), ([7, 7], dict(seed=3, top_k=50, top_p=0.9)),
             (list(range(20)), dict(seed=4, num_samples=3)), ([9], dict(temperature=0))]
    for prompt, kw in cases:
        decode_mode("eager")
        expected = list(generate(model, prompt, 40, **kw))
        decode_mode("static")
        assert list(generate(model, prompt, 40, **kw)) == expected, (prompt, kw)
    runner = next(iter(fast_decode._RUNNERS[model].values()))
    assert sorted(runner.steps) == [1, 3] and runner.weights.rebuilt == 1


def test_static_decoder_logits_match_full_forward(decode_mode):
    """Step by step, the fast decoder's logits equal the full forward's last position."""
    model = make_model(window_pattern="SL", short_window=5)
    seq = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(5))
    dec = fast_decode.open_decoder(model, seq[:, :6], 1, compile=False)
    try:
        logits = [dec.start()]
        logits += [dec.step(seq[0, t:t + 1]).clone() for t in range(6, 29)]
    finally:
        dec.close()
    with torch.no_grad():
        full = model(seq)[0, 5:29]
    torch.testing.assert_close(torch.cat(logits), full, atol=1e-5, rtol=0)


def test_fast_decoder_follows_weight_updates(decode_mode):
    """Cast weights are refreshed in place when the model's parameters change (training),
    and rebuilt when a parameter is replaced."""
    decode_mode("static")
    model = make_model()
    greedy = lambda: list(generate(model, [1, 2, 3], 12, temperature=0))
    before = greedy()
    runner = next(iter(fast_decode._RUNNERS[model].values()))
    with torch.no_grad():
        model.blocks[0].mlp.c_fc.weight.mul_(-3.0)  # an in-place update, like an optimizer
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    after = greedy()
    assert after != before and runner.weights.rebuilt == 1
    decode_mode("eager")
    assert greedy() == after
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    decode_mode("static")
    replaced = greedy()
    decode_mode("eager")
    assert greedy() == replaced and runner.weights.rebuilt == 2


def test_interleaved_generations_fall_back_to_the_readable_decoder(decode_mode):
    """Two live generations of one batch size cannot share the static buffers: the second
    decodes eagerly, and both give the tokens they would give alone."""
    decode_mode("static")
    model = make_model()
    alone = [list(generate(model, p, 15, temperature=0)) for p in ([1, 2], [5, 6, 7])]
    g1, g2 = generate(model, [1, 2], 15, temperature=0), generate(model, [5, 6, 7], 15,
                                                                 temperature=0)
    pairs = list(zip(g1, g2))
    assert [a for a, _ in pairs] == alone[0] and [b for _, b in pairs] == alone[1]
    assert list(generate(model, [1, 2], 15, temperature=0)) == alone[0]  # lock released


def test_unknown_decode_mode(decode_mode):
    decode_mode("turbo")
    with pytest.raises(ValueError, match="NANOGPT_COURSE_DECODE"):
        list(generate(make_model(), [1], 2))


def test_decode_step_self_check_catches_a_wrong_step():
    """A compiled/graphed step is compared with the plain step when it is built; a step
    that computes something else is refused (the runner then falls back)."""
    model = make_model(n_kv_head=1)
    weights = fast_decode.InferenceWeights(model, torch.float32)
    weights.sync()
    step = fast_decode.DecodeStep(weights, 2, compile=False, graph=False)
    plain = step._fn
    step.cache.to_device_mode()
    assert step.self_check(plain) < 1e-6
    step.run = lambda: (plain(), step.logits.mul_(1.01))
    with pytest.raises(RuntimeError, match="self-check"):
        step.self_check(plain)


def test_fast_decoder_does_not_keep_the_model_alive(decode_mode):
    import gc
    import weakref

    decode_mode("static")
    model = make_model()
    list(generate(model, [1, 2], 3, temperature=0))
    assert len(fast_decode._RUNNERS) == 1
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None and len(fast_decode._RUNNERS) == 0


# -- padded prefill (on CUDA replayed as one graph per bucket) ---------------------------
def test_prefill_buckets():
    sizes = [fast_decode.prefill_bucket(t, 2048) for t in (1, 64, 65, 96, 97, 129, 500, 2048)]
    assert sizes == [64, 64, 96, 96, 128, 192, 512, 2048]
    assert fast_decode.prefill_bucket(40, 48) == 48  # capped at the context
    # never more than half padding past the smallest bucket, 11 buckets up to 2,048
    assert all(fast_decode.prefill_bucket(t, 4096) < 1.5 * t + 1 for t in range(64, 4096))
    assert len({fast_decode.prefill_bucket(t, 2048) for t in range(1, 2049)}) == 11


def _padded_prefill(model, n, decode_mode):
    """The static decoder for ``n`` samples with a padded prefill run eagerly (the CUDA
    graph's function, uncaptured): what the graph computes, checkable on the CPU."""
    decode_mode("static")
    list(generate(model, [1], 2, temperature=0, num_samples=n))  # builds the step
    runner = next(iter(fast_decode._RUNNERS[model].values()))
    step = runner.steps[n]
    step.prefill = fast_decode.PrefillGraphs(runner.weights.shadow, step.cache, autocast=False,
                                             graph=False)
    return step.prefill


@pytest.mark.parametrize("overrides", [{}, dict(value_embeds=False, residual_scalars=False,
                                                n_kv_head=1)])
def test_padded_prefill_matches_the_readable_decoder(overrides, decode_mode):
    """Pad tokens after the prompt change nothing before them (every layer is causal): the
    padded prefill's logits equal the full forward's, and generation gives the readable
    decoder's tokens, for prompts in several buckets and with several samples."""
    model = make_model(sequence_len=200, **overrides)
    for n in (1, 3):
        prefill = _padded_prefill(model, n, decode_mode)
        for T in (1, 5, 64, 70, 150, 195):
            prompt = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(T))
            assert prefill.serves(T)
            logits = prefill.run(prompt).clone()
            with torch.no_grad():
                torch.testing.assert_close(logits, model(prompt)[:, -1], atol=1e-5, rtol=0)
            assert prefill.cache.pos == T
            kw = dict(temperature=0) if n == 1 else dict(seed=T, num_samples=n)
            decode_mode("eager")
            expected = list(generate(model, prompt[0].tolist(), 10, **kw))
            decode_mode("static")
            assert list(generate(model, prompt[0].tolist(), 10, **kw)) == expected, (n, T)
        assert sorted(prefill.entries) == [64, 96, 192, 200]
        fast_decode.release()


def test_padded_prefill_leaves_windows_to_the_eager_path(decode_mode):
    """A sliding window shorter than the bucket needs a mask that is not captured: such
    prompts are prefilled eagerly (and still decode correctly)."""
    model = make_model(sequence_len=200, window_pattern="SL", short_window=80)
    prefill = _padded_prefill(model, 1, decode_mode)
    assert prefill.serves(60) and not prefill.serves(90)  # buckets 64 (<= 80) and 96
    for T in (60, 90):
        prompt = list(range(3, 3 + T))
        decode_mode("eager")
        expected = list(generate(model, prompt, 8, temperature=0))
        decode_mode("static")
        assert list(generate(model, prompt, 8, temperature=0)) == expected
    assert sorted(prefill.entries) == [64]


def test_prefill_capture_flow_checks_the_first_replay(decode_mode, monkeypatch):
    """A bucket's first prompt runs eagerly (no capture: a new prompt length never waits for
    one); its second captures, replays the first prompt against that prompt's eager logits,
    then replays its own; a replay that differs is refused (the decoder then prefills
    eagerly). A CPU stand-in for the CUDA graph (replay = the same eager function) drives
    the flow."""
    model = make_model(sequence_len=200)
    prefill = _padded_prefill(model, 1, decode_mode)
    prefill.graph, captures, replayed = True, [], []

    class FakeGraph:
        def __init__(self, e, skew):
            self.e, self.skew = e, skew

        def replay(self):
            with torch.no_grad():
                prefill._forward(self.e["tokens"], self.e["last"], self.e["logits"])
            self.e["logits"].mul_(self.skew)
            replayed.append(int(self.e["last"]) + 1)

    def fake_capture(e, device, skew=1.0):
        captures.append(e["tokens"].shape[1])
        e["graph"] = FakeGraph(e, skew)

    monkeypatch.setattr(prefill, "_capture", fake_capture)
    for T in (5, 70, 9, 12, 71):  # buckets 64, 96, 64 (capture), 64 (replay), 96 (capture)
        prompt = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            torch.testing.assert_close(prefill.run(prompt), model(prompt)[:, -1], atol=1e-5,
                                       rtol=0)
    assert captures == [64, 96] and sorted(prefill.check_error) == [64, 96]
    assert replayed == [5, 9, 12, 70, 71]  # first prompt (the check), then the current one
    assert "reference" not in prefill.entries[64]
    monkeypatch.setattr(prefill, "_capture", lambda e, d: fake_capture(e, d, skew=1.01))
    prefill.run(torch.ones(1, 150, dtype=torch.long))  # bucket 192's first prompt: eager
    with pytest.raises(RuntimeError, match="prefill graph"):
        prefill.run(torch.ones(1, 150, dtype=torch.long))
    # through generate: the failure turns prefill graphs off and decoding still matches
    decode_mode("eager")
    expected = list(generate(model, list(range(1, 130)), 6, temperature=0))
    decode_mode("static")
    assert list(generate(model, list(range(1, 130)), 6, temperature=0)) == expected  # eager
    with pytest.warns(RuntimeWarning, match="prefill graphs off"):  # the capture fails
        got = list(generate(model, list(range(1, 130)), 6, temperature=0))
    assert got == expected and prefill.failed and not prefill.serves(5)
