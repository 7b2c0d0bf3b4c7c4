"""Inference: a preallocated KV cache, sampling, and token/text streaming.

Generation runs in two phases. **Prefill** runs the whole prompt through the model once,
filling the cache with every layer's keys and values. **Decode** then feeds one new token
per step: its query attends to the cached keys, so a step costs O(context) instead of a
full O(context²) forward pass.

- :class:`KVCache`: per layer, keys and values of shape (batch, kv_heads, time, head_dim),
  allocated once for the whole generation (no growing, no reallocation).
- :func:`sample_next_token`: temperature, top-k and top-p (nucleus) sampling; temperature 0
  is greedy.
- :func:`generate`: yields token ids as they are produced.
- :func:`stream_text`: yields text pieces that never split a multi-byte character.

The decoder here is the readable one: eager, bf16 autocast on CUDA. On CUDA,
:func:`generate` uses :mod:`nanogpt_course.fast_decode` instead (weights cast once, a
static cache, a compiled step replayed as a CUDA graph; ``NANOGPT_COURSE_DECODE`` picks the
decoder, see :data:`DECODE_MODE`); tests tie the two token for token. Either way the only
host synchronization per step is reading the sampled token(s) back, and the next step is
queued on the GPU before that read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch

from . import fast_decode
from .attention import prefix_attention
from .device import HostRead

__all__ = ["KVCache", "sample_next_token", "top_k_filter", "top_p_filter", "generate",
           "stream_text"]


class KVCache:
    """Keys and values of every layer for ``batch_size`` sequences of up to ``max_len`` tokens.

    Storage: ``k`` and ``v`` of shape (n_layer, batch, n_kv_head, max_len, head_dim),
    allocated on the first :meth:`update` with the dtype of the keys written (bf16 under
    autocast) unless ``dtype`` is given. ``pos`` is how many positions are filled.
    """

    def __init__(self, batch_size: int, n_layer: int, n_kv_head: int, head_dim: int,
                 max_len: int, *, device=None, dtype: torch.dtype | None = None):
        if min(batch_size, n_layer, n_kv_head, head_dim, max_len) < 1:
            raise ValueError("KVCache sizes must all be positive")
        self.shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.device, self.dtype = device, dtype
        self.k = self.v = None
        self.pos = 0
        if dtype is not None and device is not None:
            self._allocate(torch.device(device), dtype)

    @classmethod
    def for_model(cls, model, batch_size: int = 1, max_len: int | None = None, *,
                  dtype: torch.dtype | None = None) -> KVCache:
        """A cache sized for ``model`` (a GPT); ``max_len`` defaults to its context."""
        cfg = model.config
        device = next(model.parameters()).device
        return cls(batch_size, cfg.n_layer, cfg.n_kv_head, cfg.head_dim,
                   max_len or cfg.sequence_len, device=device, dtype=dtype)

    @property
    def batch_size(self) -> int:
        return self.shape[1]

    @property
    def max_len(self) -> int:
        return self.shape[3]

    def _allocate(self, device, dtype):
        self.k = torch.zeros(self.shape, device=device, dtype=dtype)
        self.v = torch.zeros(self.shape, device=device, dtype=dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write new keys/values (B, Hkv, T, D) of ``layer`` at positions ``pos .. pos+T-1``;
        return that layer's keys and values for positions ``0 .. pos+T-1``."""
        if self.k is None:
            self._allocate(k.device, self.dtype or k.dtype)
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        if k.shape[0] != self.batch_size:
            raise ValueError(f"batch of {k.shape[0]} sequences, cache holds {self.batch_size}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
               window: int | None = None, backend: str = "auto") -> torch.Tensor:
        """Store the new keys/values (B, Hkv, T, D) of ``layer`` and attend the T queries
        (B, H, T, D) over every position so far (the model's attention calls this)."""
        offset = self.pos
        k, v = self.update(layer, k, v)
        return prefix_attention(q, k, v, q_offset=offset, window=window, backend=backend)

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (the model calls this after its last layer)."""
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def expand(self, batch_size: int) -> KVCache:
        """A new cache of ``batch_size`` rows, each a copy of this batch-1 cache (prefill a
        prompt once, then sample several continuations of it)."""
        if self.batch_size != 1:
            raise ValueError("expand() copies a batch-1 cache")
        L, _, H, T, D = self.shape
        out = KVCache(batch_size, L, H, D, T, device=self.device, dtype=self.dtype)
        out.pos = self.pos
        if self.k is not None:
            out.k = self.k.expand(L, batch_size, H, T, D).clone()
            out.v = self.v.expand(L, batch_size, H, T, D).clone()
        return out


# -- sampling --------------------------------------------------------------------------
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to -inf. (..., V) → (..., V).

    Ties at the k-th value are all kept.
    """
    k = min(int(k), logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums
    to at least ``p`` (always at least the top token); the rest become -inf. ``p >= 1``
    keeps everything (the cumulative sum in float32 can reach 1 before the last token)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly better tokens
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(logits: torch.Tensor, *, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits (B, V) → (B,) int64. Temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:  # the filter itself keeps everything at top_p >= 1
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_sampling(temperature, top_k, top_p, num_samples, max_new_tokens):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if num_samples < 1 or max_new_tokens < 0:
        raise ValueError(f"need num_samples >= 1 and max_new_tokens >= 0, got "
                         f"{num_samples} and {max_new_tokens}")


# -- decoding --------------------------------------------------------------------------
class _Decoder:
    """Produces next-token logits (n, V); each call runs under no-grad (+ bf16 on CUDA).

    Contexts are entered per call, never across a ``yield``, so the caller's code between
    two tokens runs with its own grad/autocast state.
    """

    def __init__(self, model, prompt: torch.Tensor, n: int, steps: int, use_cache: bool):
        self.model, self.n, self.use_cache = model, n, use_cache
        self.device = prompt.device
        self.cache = None
        if use_cache:
            self.cache = KVCache.for_model(model, 1, max_len=prompt.shape[1] + max(steps - 1, 0))
        self.tokens = prompt  # the whole sequence so far (used without a cache)

    def _run(self, idx):
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.device.type == "cuda"):
            h = self.model.hidden(idx, self.cache)
            return self.model.head(h[:, -1])  # only the last position's logits are needed

    def start(self) -> torch.Tensor:
        logits = self._run(self.tokens)  # prefill: the prompt once, batch 1
        if self.cache is not None and self.n > 1:
            self.cache = self.cache.expand(self.n)
        self.tokens = self.tokens.expand(self.n, -1)
        return logits.expand(self.n, -1)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        if self.use_cache:
            return self._run(token[:, None])
        self.tokens = torch.cat([self.tokens, token[:, None]], dim=1)
        return self._run(self.tokens)

    def close(self) -> None:
        pass


def _prompt_tensor(model, ids) -> torch.Tensor:
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    cfg = model.config
    if not ids:
        raise ValueError("empty prompt: start it with at least one token (e.g. the BOS token)")
    if len(ids) > cfg.sequence_len:
        raise ValueError(f"prompt of {len(ids)} tokens is longer than the model's context of "
                         f"{cfg.sequence_len}: shorten it (keep its last {cfg.sequence_len} tokens)")
    bad = [t for t in ids if not 0 <= int(t) < cfg.vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {cfg.vocab_size})")
    device = next(model.parameters()).device
    return torch.tensor([ids], dtype=torch.long, device=device)


def generate(model, ids, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: Iterable[int] = (), num_samples: int = 1,
             use_cache: bool = True) -> Iterator[int] | Iterator[list[int]]:
    """Continue the prompt ``ids`` (a list of ints) token by token.

    Yields an int per step, or a list of ``num_samples`` ints (independent continuations of
    the same prompt) when ``num_samples > 1``. A stop token is yielded and then ends its
    sequence; with several samples a finished row keeps repeating its stop token until every
    row has stopped. Generation also ends after ``max_new_tokens`` steps or when the context
    (``sequence_len``) is full. ``seed`` makes sampling reproducible; ``use_cache=False``
    recomputes the full forward pass each step (slow; a reference for the cache).
    """
    _check_sampling(temperature, top_k, top_p, num_samples, max_new_tokens)
    prompt = _prompt_tensor(model, ids)
    stop = {int(t) for t in stop}
    steps = min(max_new_tokens, model.config.sequence_len - prompt.shape[1] + 1)
    if steps <= 0:
        return
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    decoder = _open_decoder(model, prompt, num_samples, steps, use_cache)
    try:
        yield from _decode(decoder, steps, num_samples, stop, generator,
                           dict(temperature=temperature, top_k=top_k, top_p=top_p))
    finally:
        decoder.close()  # frees the fast path's buffers for the next generation


def _decode(decoder, steps, num_samples, stop, generator, sampling):
    """The token loop of :func:`generate`: sample on the device, read the tokens once."""
    tokens = HostRead(decoder.device, num_samples, torch.long)
    finished: list[int | None] = [None] * num_samples  # the stop token that ended each row
    logits = decoder.start()
    for step in range(steps):
        with torch.inference_mode():
            token = sample_next_token(logits, generator=generator, **sampling)
            tokens.start(token)
        if step + 1 < steps:
            logits = decoder.step(token)  # queued on the GPU before we wait for the token
        row = [f if f is not None else t for f, t in zip(finished, tokens.values())]
        finished = [f if f is not None else (t if t in stop else None)
                    for f, t in zip(finished, row)]
        yield row[0] if num_samples == 1 else row
        if all(f is not None for f in finished):
            return


# Which decoder generate() uses (environment variable NANOGPT_COURSE_DECODE):
# "auto"   compiled step replayed as a CUDA graph on CUDA (fast_decode), eager elsewhere;
# "graph"  CUDA graph of the uncompiled step (no compile time; slower steps);
# "static" fast_decode's static cache and cast weights, no compile, no graph (any device);
# "eager"  the readable decoder below everywhere.
DECODE_MODE = os.environ.get("NANOGPT_COURSE_DECODE", "auto")
DECODE_MODES = ("auto", "graph", "static", "eager")


def _open_decoder(model, prompt, n, steps, use_cache):
    mode = DECODE_MODE
    if mode not in DECODE_MODES:
        raise ValueError(f"NANOGPT_COURSE_DECODE={mode!r}: choose one of {DECODE_MODES}")
    cuda = prompt.device.type == "cuda"
    if use_cache and (mode == "static" or (cuda and mode in ("auto", "graph"))):
        fast = fast_decode.open_decoder(model, prompt, n, compile=mode == "auto",
                                        graph=mode != "static")
        if fast is not None:
            return fast
    return _Decoder(model, prompt, n, steps, use_cache)


def stream_text(model, tokenizer, ids, max_new_tokens: int = 256, **kwargs) -> Iterator[str]:
    """Like :func:`generate` (same arguments, one sample) but yields text pieces.

    ``tokenizer`` needs ``decode(list[int]) -> str`` (invalid UTF-8 decoded as U+FFFD).

    Tokens are decoded in small groups: a group is held back while its text ends in an
    incomplete UTF-8 character (decoded as U+FFFD), so no piece ever splits a character.
    Stop tokens end the stream and are not turned into text.
    """
    if kwargs.get("num_samples", 1) != 1:
        raise ValueError("stream_text streams one sample; use generate() for num_samples > 1")
    stop = {int(t) for t in kwargs.get("stop", ())}
    pending: list[int] = []
    for token in generate(model, ids, max_new_tokens, **kwargs):
        if token in stop:
            break
        pending.append(token)
        text = tokenizer.decode(pending)
        # A UTF-8 character is at most 4 bytes, so a few tokens always complete it; past
        # that the replacement character is real (invalid bytes) and is emitted as is.
        if text.endswith("\ufffd") and len(pending) < 8:
            continue
        if text:
            yield text
        pending = []
    if pending:
        text = tokenizer.decode(pending)
        if text:
            yield text
