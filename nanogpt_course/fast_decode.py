"""Fast decoding: weights cast once, a static KV cache, and a decode step replayed as a graph.

The readable decoder in :mod:`nanogpt_course.engine` runs the model eagerly: on a GPU every
one of the ~600 kernels of a d12 decode step is launched from Python (tens of ms per token
whatever the batch), and bf16 autocast re-casts every fp32 weight on every step. This module
keeps the same model code (``GPT.hidden`` / ``GPT.head``) and removes those costs:

- :class:`InferenceWeights` builds a *shadow* of the model whose linear weights are cast to
  bf16 once; embeddings and scalars alias the model's own tensors. The shadow follows the
  model: when a parameter changes in place (an optimizer step, ``load_state_dict``) its
  version counter moves and the cast weights are re-copied, into the same memory.
- :class:`StaticKVCache` holds every layer's keys and values for the model's whole context.
  It has two modes. *Host* mode is the prefill: an int position, flash/Flex attention, the
  same kernels as :class:`engine.KVCache`. *Device* mode is decoding: the position lives in a
  GPU tensor, new keys are written with ``index_copy_`` and queries attend over the whole
  buffer through a mask (:func:`attention.cached_attention`), so one step's shapes never
  change and one captured graph serves every position and every prompt.
- :class:`DecodeStep` compiles the one-token step (``torch.compile``, fused kernels) and
  captures it as a CUDA graph; a step is then one ``replay()``. One per batch size, made on
  first use (compile: tens of seconds once per process) and kept with the model.
- :class:`PrefillGraphs` replays the prefill too: the prompt is padded on the right to a
  bucket length (64, 96, 128, 192, 256, ...; causal attention means the padding changes
  nothing before it) and each bucket's eager prefill is captured once as a CUDA graph, so a
  prompt costs one replay instead of ~600 launches from Python. No compilation, so a new
  length costs one capture (two eager passes), not a recompile.
- :class:`FastDecoder` is what :func:`engine.generate` drives: ``start()`` prefills (a
  graph when one serves the prompt, else eagerly) and returns the first logits,
  ``step(token)`` replays the step. Sampling stays in the engine (on the GPU, one host read
  per token).

Prefill writes row 0 only; the prompt's keys are then copied to the other rows (several
samples of one prompt). Slots past the current position may hold keys of an earlier
generation: the mask hides them.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
import weakref

import torch
import torch.nn as nn

from .attention import cached_attention, prefix_attention, visible

__all__ = ["InferenceWeights", "StaticKVCache", "DecodeStep", "PrefillGraphs", "FastDecoder",
           "open_decoder", "prefill_bucket", "release"]

# NANOGPT_COURSE_PREFILL_GRAPH=0 keeps the prefill eager (the decode step is still graphed).
PREFILL_GRAPHS = os.environ.get("NANOGPT_COURSE_PREFILL_GRAPH", "1") != "0"


def check_close(got: torch.Tensor, reference: torch.Tensor, *, low_precision: bool,
                what: str) -> float:
    """Relative difference ``|got - reference| / |reference|`` (float64 norms); raises when
    it is not finite or beyond rounding (2e-2 in bf16, 1e-3 in fp32). The rule a fast path
    must pass against its plain version before it is used."""
    got, reference = got.double(), reference.double()
    err = float((got - reference).norm() / reference.norm().clamp_min(1e-30))
    tol = 2e-2 if low_precision else 1e-3
    if not math.isfinite(err) or err > tol:
        raise RuntimeError(f"{what} by {err:.2e} (tolerance {tol:g})")
    return err


class InferenceWeights:
    """A shadow of ``model`` whose ``nn.Linear`` weights are ``dtype`` copies, cast once.

    Every other tensor (embeddings, residual scalars) is the model's own, shared. Call
    :meth:`sync` before use: it re-copies cast weights whose source changed (cheap check of
    the parameters' version counters) and rebuilds everything if a parameter moved.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        # a weak reference: the per-model registry must not keep the model alive
        self._model, self.dtype = weakref.ref(model), dtype
        self.shadow = None
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._where = self._versions = None
        self.rebuilt = 0  # how many times the shadow was built (a rebuild drops the graphs)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of these inference weights was garbage-collected")
        return model

    def _signature(self):
        params = list(self.model.parameters())
        return [p.data_ptr() for p in params], [p._version for p in params]

    def sync(self) -> bool:
        """Bring the shadow up to date; True when it was rebuilt (new tensors)."""
        where, versions = self._signature()
        if self.shadow is None or where != self._where:
            self._build()
            self._where, self._versions = where, versions
            return True
        if versions != self._versions:
            with torch.no_grad():
                for src, dst in self.pairs:
                    dst.copy_(src)
            self._versions = versions
        self.shadow.attention_backend = self.model.attention_backend
        return False

    def _build(self):
        model, dtype = self.model, self.dtype
        linear = {f"{name}.weight" for name, m in model.named_modules()
                  if isinstance(m, nn.Linear)}
        state, pairs = {}, []
        with torch.no_grad():
            for name, t in model.state_dict(keep_vars=True).items():
                t = t.detach()
                if name in linear and t.dtype != dtype:
                    low = t.to(dtype)
                    pairs.append((t, low))
                    t = low
                state[name] = t
        with torch.device("meta"):
            shadow = type(model)(model.config)
        shadow.load_state_dict(state, assign=True)  # its load hook rebuilds the RoPE tables
        shadow.attention_backend = model.attention_backend
        self.shadow = shadow.eval().requires_grad_(False)
        self.pairs = pairs
        self.rebuilt += 1


class StaticKVCache:
    """Keys and values of ``n_layer`` layers: per layer (batch, n_kv_head, max_len, head_dim).

    Host mode (``pos`` an int): prefill of the first rows, like :class:`engine.KVCache`.
    Device mode (after :meth:`to_device_mode`; ``pos`` is None): the position is ``pos_t``,
    a GPU scalar that the step itself advances, so a captured graph can replay any step.
    """

    def __init__(self, batch_size: int, n_layer: int, n_kv_head: int, head_dim: int,
                 max_len: int, *, device, dtype: torch.dtype):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_len = batch_size, max_len
        self.slots = torch.arange(max_len, device=device)  # absolute position of each slot
        self.pos_t = torch.zeros((), dtype=torch.long, device=device)
        self.on_device = False
        self._pos = 0

    @property
    def pos(self) -> int | None:
        """Filled positions in host mode; None in device mode (the count is ``pos_t``)."""
        return None if self.on_device else self._pos

    def reset(self) -> None:
        self._pos, self.on_device = 0, False

    def rope(self, cos: torch.Tensor, sin: torch.Tensor, T: int):
        """Device mode: the RoPE rows (T, D/2) of positions ``pos_t .. pos_t+T-1``."""
        at = self.pos_t + self.slots[:T]
        return cos[at], sin[at]

    def attend(self, layer: int, q, k, v, *, window: int | None = None, backend: str = "auto"):
        """Store k/v (B, Hkv, T, D) at the current positions; attend q (B, H, T, D) over
        every filled position (host mode: the first B rows only)."""
        T = k.shape[2]
        if self.on_device:
            at = self.pos_t + self.slots[:T]
            kc, vc = self.k[layer], self.v[layer]
            kc.index_copy_(2, at, k.to(kc.dtype))
            vc.index_copy_(2, at, v.to(vc.dtype))
            return cached_attention(q, kc, vc, visible(at, self.slots, window))
        B, end = k.shape[0], self._pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        kc, vc = self.k[layer][:B], self.v[layer][:B]
        kc[:, :, self._pos:end] = k
        vc[:, :, self._pos:end] = v
        return prefix_attention(q, kc[:, :, :end], vc[:, :, :end], q_offset=self._pos,
                                window=window, backend=backend)

    def advance(self, n: int) -> None:
        if self.on_device:
            self.pos_t.add_(n)
        else:
            self._pos += n

    def set_filled(self, n: int) -> None:
        """Host mode: the first ``n`` positions hold the prompt (after a padded prefill
        wrote more; the slots past ``n`` are junk that the decode mask hides and the
        following steps overwrite)."""
        self._pos, self.on_device = n, False

    def to_device_mode(self, rows_filled: int = 1) -> None:
        """After a prefill of the first ``rows_filled`` rows: copy row 0's prompt to every
        other row (several samples of one prompt) and move the position to the device."""
        n = self._pos
        if rows_filled == 1 and self.batch_size > 1 and n:
            for buf in self.k + self.v:
                buf[1:, :, :n] = buf[:1, :, :n]
        self.pos_t.fill_(n)
        self.on_device = True


class DecodeStep:
    """One decode step for ``batch`` rows, optionally compiled and captured as a CUDA graph.

    Inputs and outputs are static buffers: write the tokens (batch,) into :attr:`tokens`,
    call :meth:`run`, read :attr:`logits` (batch, vocab_size) fp32. The step advances the
    cache's device position by one.
    """

    def __init__(self, weights: InferenceWeights, batch: int, *, compile: bool, graph: bool):
        shadow = weights.shadow
        cfg = shadow.config
        device = shadow.wte.weight.device
        self.low_precision = weights.dtype != torch.float32
        self.cache = StaticKVCache(batch, cfg.n_layer, cfg.n_kv_head, cfg.head_dim,
                                   cfg.sequence_len, device=device, dtype=weights.dtype)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.logits = torch.zeros(batch, cfg.vocab_size, dtype=torch.float32, device=device)
        self.lock = threading.Lock()  # one generation at a time owns the buffers
        cache, tokens, logits = self.cache, self.tokens, self.logits
        autocast = device.type == "cuda" and self.low_precision

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                h = shadow.hidden(tokens[:, None], cache)
                logits.copy_(shadow.head(h[:, -1]))

        fn = torch.compile(step, fullgraph=True, dynamic=False) if compile else step
        self.graph = None
        self.check_error: float | None = None  # self-check difference (compiled/graphed)
        cache.to_device_mode()
        with torch.no_grad():
            if graph:
                # warm up (compiles) on a side stream, as CUDA graph capture requires
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        fn()
                torch.cuda.current_stream(device).wait_stream(side)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    fn()
            else:
                fn()  # compile now, not in the middle of the first generation
        self._fn = fn
        if compile or graph:
            self.self_check(step)
        cache.pos_t.zero_()  # warm-up wrote junk at slots 0-2: the prefill overwrites them
        cache.reset()
        self.prefill = PrefillGraphs(shadow, cache, autocast=autocast) \
            if graph and PREFILL_GRAPHS else None

    def self_check(self, reference, steps: int = 3) -> float:
        """Run ``steps`` steps through :meth:`run` and through ``reference`` (the plain
        Python step) from the same state; raise if their logits differ by more than
        rounding (relative 2e-2 in bf16, 1e-3 in fp32). Returns the largest difference.

        Cheap (a few eager steps, once per batch size) and run on the device that decodes,
        so a compiler or graph-capture problem falls back instead of generating nonsense.
        """
        cache, tokens, logits = self.cache, self.tokens, self.logits
        outs = []
        for run in (reference, self.run):
            cache.pos_t.zero_()
            got = []
            for i in range(steps):
                tokens.copy_((torch.arange(tokens.numel(), device=tokens.device) * 31 + 7 * i)
                             % logits.shape[-1])
                with torch.no_grad():
                    run()
                got.append(logits.clone())
            outs.append(torch.stack(got))
        ref, fast = outs
        self.check_error = check_close(fast, ref, low_precision=self.low_precision,
                                       what="decode step self-check: logits differ from "
                                            "the plain step")
        return self.check_error

    def run(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            with torch.no_grad():
                self._fn()


def prefill_bucket(T: int, max_len: int, smallest: int = 64) -> int:
    """The padded prompt length that serves ``T`` tokens: the smallest of 64, 96, 128, 192,
    256, 384, ... (powers of two and 1.5x powers of two) that holds T, capped at ``max_len``.
    At most half of a bucket is padding, and a context of 2,048 needs 11 buckets."""
    b = smallest
    while b < T:
        b = b * 3 // 2 if b & (b - 1) == 0 else b // 3 * 4
    return min(b, max_len)


class PrefillGraphs:
    """The prefill of one prompt (1, T) into row 0 of a :class:`StaticKVCache`, padded to a
    bucket length and, on CUDA, replayed as one CUDA graph per bucket.

    Why padding is exact: every layer is causal (attention looks back only; norms, MLPs,
    RoPE and embeddings act per position), so the pad tokens after the prompt change neither
    the prompt's hidden states nor its keys and values. The logits are taken at position
    T-1 (an index held in a device tensor, so one graph serves every T of its bucket), and
    the cache is told that only T positions are filled.

    Built lazily per bucket, so that a prompt of a new length never waits for a capture:
    the bucket's first prompt runs the padded function eagerly (on CUDA on a side stream,
    the warm-up a capture needs) and keeps its tokens and logits; the second prompt captures
    the graph, replays the first prompt and checks the replay against the kept logits (bf16
    rounding tolerance), then replays its own tokens; later prompts replay. A failure turns
    graphs off for this cache with a warning (prefill then runs eagerly, as before).
    ``graph=False`` runs the same padded function eagerly: the CPU tests use it to check the
    padding.
    """

    def __init__(self, shadow: nn.Module, cache: StaticKVCache, *, autocast: bool,
                 graph: bool = True):
        self.shadow, self.cache, self.autocast = shadow, cache, autocast
        self.graph = graph
        self.pool = torch.cuda.graph_pool_handle() if graph else None  # shared by buckets
        self.stream = None  # the side stream of warm-ups and captures (CUDA, made on first use)
        self.entries: dict[int, dict] = {}
        self.failed: str | None = None
        self.check_error: dict[int, float] = {}  # bucket -> graph vs eager difference

    def serves(self, T: int) -> bool:
        """Whether a padded prefill serves a prompt of T tokens (else: eager prefill)."""
        if self.failed or self.shadow.attention_backend not in ("auto", "sdpa"):
            return False
        bucket = prefill_bucket(T, self.cache.max_len)
        # a sliding window shorter than the bucket needs a FlexAttention mask: not captured
        return T <= bucket and min(self.shadow.windows) >= bucket

    def _forward(self, tokens, last, logits) -> None:
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            self.cache.reset()
            h = self.shadow.hidden(tokens, self.cache)  # (1, bucket, C)
            logits.copy_(self.shadow.head(h.index_select(1, last)[:, 0]))

    def _entry(self, bucket: int, device) -> dict:
        """The static buffers of one bucket (its graph is captured on first use)."""
        if bucket not in self.entries:
            vocab = self.shadow.config.vocab_size
            self.entries[bucket] = dict(
                tokens=torch.zeros(1, bucket, dtype=torch.long, device=device),
                last=torch.zeros(1, dtype=torch.long, device=device),
                logits=torch.zeros(1, vocab, dtype=torch.float32, device=device), graph=None)
        return self.entries[bucket]

    @contextlib.contextmanager
    def _on_side_stream(self, device):
        """Run the block without gradients on this cache's side stream (made on first use),
        ordered after the current stream's work and before its later work."""
        if self.stream is None:
            self.stream = torch.cuda.Stream(device)
        current = torch.cuda.current_stream(device)
        self.stream.wait_stream(current)
        with torch.no_grad(), torch.cuda.stream(self.stream):
            yield
        current.wait_stream(self.stream)

    def _eager(self, e: dict, device) -> None:
        """One eager pass over ``e``'s buffers (on CUDA with graphs on: on the side stream,
        which warms it up for the capture)."""
        if not (self.graph and device.type == "cuda"):
            with torch.no_grad():
                self._forward(e["tokens"], e["last"], e["logits"])
            return
        with self._on_side_stream(device):
            self._forward(e["tokens"], e["last"], e["logits"])

    def _capture(self, e: dict, device) -> None:
        """Capture ``e``'s graph. ``capture_begin``/``capture_end`` on the warmed-up side
        stream: what ``torch.cuda.graph`` does, without its device sync, ``gc.collect()`` and
        cache flush (tens of milliseconds in a big Python process, paid by a user waiting)."""
        g = torch.cuda.CUDAGraph()
        with self._on_side_stream(device):
            g.capture_begin(pool=self.pool)
            try:
                self._forward(e["tokens"], e["last"], e["logits"])
            finally:
                g.capture_end()
        e["graph"] = g

    def run(self, prompt: torch.Tensor) -> torch.Tensor:
        """Prefill ``prompt`` (1, T); its last logits (1, vocab_size), a static buffer.

        A bucket's first prompt costs one eager pass, its second a capture and two
        replays, later ones a replay (see the class docstring)."""
        T = prompt.shape[1]
        bucket = prefill_bucket(T, self.cache.max_len)
        e = self._entry(bucket, prompt.device)
        e["tokens"][:, :T].copy_(prompt)
        e["tokens"][:, T:].zero_()
        e["last"].fill_(T - 1)
        if e["graph"] is not None:
            e["graph"].replay()
        elif self.graph and "reference" in e:
            self._capture_checked(bucket, e, prompt.device)
        else:
            self._eager(e, prompt.device)
            if self.graph:  # what the graph will be checked against
                e["reference"] = {k: e[k].clone() for k in ("tokens", "last", "logits")}
        self.cache.set_filled(T)
        return e["logits"]

    def _capture_checked(self, bucket: int, e: dict, device) -> None:
        """Capture; replay the bucket's first prompt and check it against that prompt's
        eager logits; then replay the current prompt (its tokens are back in place)."""
        reference = e.pop("reference")
        current = {k: e[k].clone() for k in ("tokens", "last")}
        for k in current:
            e[k].copy_(reference[k])
        self._capture(e, device)
        e["graph"].replay()
        try:
            self._check(bucket, e["logits"], reference["logits"])
        except RuntimeError:
            e["graph"] = None  # never replay a graph that failed its check
            raise
        for k in current:
            e[k].copy_(current[k])
        e["graph"].replay()

    def _check(self, bucket: int, got: torch.Tensor, reference: torch.Tensor) -> None:
        """A first replay against the eager pass over the same padded tokens; raises
        beyond rounding. (That padding changes nothing is the CPU tests' and gpu_check's
        job: token for token against the full forward.)"""
        self.check_error[bucket] = check_close(
            got, reference, low_precision=self.autocast,
            what=f"prefill graph (bucket {bucket}): logits differ from the eager prefill")


class _Runner:
    """What fast decoding keeps per model: the cast weights and one step per batch size."""

    def __init__(self, model, dtype, compile, graph):
        self.weights = InferenceWeights(model, dtype)
        self.compile, self.graph = compile, graph
        self.steps: dict[int, DecodeStep] = {}
        self.failed: dict[int, str] = {}  # batch sizes served by the eager decoder
        self.errors: dict[int, list[str]] = {}  # why a step was built in a simpler way

    def step_for(self, batch: int) -> DecodeStep | None:
        if self.weights.sync():
            self.steps.clear()  # new tensors: graphs captured on the old ones are stale
        if batch in self.failed:
            return None
        if batch not in self.steps:
            errors = []
            for compile in dict.fromkeys((self.compile, False)):  # compiled, then plain
                try:
                    self.steps[batch] = DecodeStep(self.weights, batch, compile=compile,
                                                   graph=self.graph)
                    break
                except Exception as err:  # a broken fast path must not break generation
                    errors.append(f"compile={compile}: {type(err).__name__}: {err}")
            self.errors[batch] = errors
            if batch not in self.steps:
                self.failed[batch] = "; ".join(errors)
                warnings.warn(f"fast decoding unavailable ({self.failed[batch]}); using the "
                              f"eager decoder", RuntimeWarning, stacklevel=3)
                return None
            if errors:
                warnings.warn(f"decode step not compiled ({errors[0]}); replaying it "
                              f"uncompiled", RuntimeWarning, stacklevel=3)
        return self.steps[batch]


_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _runner(model, *, dtype, compile, graph) -> _Runner:
    key = (dtype, compile, graph)
    per_model = _RUNNERS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _Runner(model, dtype, compile, graph)
    return per_model[key]


def release(model=None) -> None:
    """Free the cast weights, caches and graphs kept for ``model`` (every model if None)."""
    if model is None:
        _RUNNERS.clear()
    else:
        _RUNNERS.pop(getattr(model, "_orig_mod", model), None)


class FastDecoder:
    """The engine's decoder interface (``start``, ``step``, ``close``) on a static step."""

    def __init__(self, weights: InferenceWeights, step: DecodeStep, prompt: torch.Tensor,
                 n: int):
        self.weights, self.decode, self.prompt, self.n = weights, step, prompt, n
        self.device = prompt.device

    def start(self) -> torch.Tensor:
        """Prefill the prompt (1, T) into row 0; the first logits, (n, vocab_size)."""
        logits = self._prefill_padded()
        if logits is None:  # eager, unpadded
            shadow, cache, dev = self.weights.shadow, self.decode.cache, self.prompt.device
            cache.reset()
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16,
                                                 enabled=self.decode.low_precision
                                                 and dev.type == "cuda"):
                logits = shadow.head(shadow.hidden(self.prompt, cache)[:, -1])
        self.decode.cache.to_device_mode(rows_filled=1)
        return logits.expand(self.n, -1)

    def _prefill_padded(self) -> torch.Tensor | None:
        """The prefill graphs' logits (1, vocab_size), or None where they do not serve the
        prompt or just failed (then turned off with a warning)."""
        prefill = self.decode.prefill
        if prefill is None or not prefill.serves(self.prompt.shape[1]):
            return None
        try:
            return prefill.run(self.prompt)
        except Exception as err:  # a broken fast path must not break generation
            prefill.failed = f"{type(err).__name__}: {err}"
            warnings.warn(f"prefill graphs off ({prefill.failed}); prefilling eagerly",
                          RuntimeWarning, stacklevel=3)
            return None

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed the sampled tokens (n,); the next logits (a static buffer, n × vocab)."""
        self.decode.tokens.copy_(token)
        self.decode.run()
        return self.decode.logits

    def close(self) -> None:
        if self.decode.lock.locked():
            self.decode.lock.release()


def open_decoder(model, prompt: torch.Tensor, n: int, *, dtype: torch.dtype | None = None,
                 compile: bool = True, graph: bool = True) -> FastDecoder | None:
    """A :class:`FastDecoder` for ``n`` samples of ``prompt`` (1, T), or None when the fast
    path cannot serve this call (its step failed to build, or another generation holds it);
    the caller then decodes eagerly. ``dtype`` defaults to bf16 on CUDA, fp32 elsewhere."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    device = prompt.device
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    graph = graph and device.type == "cuda"
    runner = _runner(model, dtype=dtype, compile=compile, graph=graph)
    step = runner.step_for(n)
    if step is None or not step.lock.acquire(blocking=False):
        return None
    return FastDecoder(runner.weights, step, prompt, n)
