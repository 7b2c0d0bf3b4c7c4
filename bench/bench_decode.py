"""Decode and prefill speed through the public ``engine.generate`` (issue #14).

    python bench/bench_decode.py                          # CUDA: d12 batch 1/16, d20 batch 1
    python bench/bench_decode.py --nanochat .nanochat     # + nanochat's Engine beside ours
    python bench/bench_decode.py --device cpu             # CPU: a small model, every decoder
    python bench/bench_decode.py --merge report.json      # decode section -> perf_summary.json

What one CUDA run measures (random-weight models, fp32 master weights as a checkpoint loads
them, vocab 32768, ``sequence_len`` 2304 so a 2048-token prompt leaves room for 256 new
tokens; temperature 1, top-k 50):

- per (depth, batch, prompt length): time to first token (prefill + first sample + host read)
  and decode tokens/s over the following tokens, after a warm-up generation of another prompt
  length; the first prompt of the measured length is reported apart (``ttft_first_ms``: a
  new length, what recompiles or captures would cost), then the second (which captures
  that length's prefill graph), then the warm median (``ttft_ms``);
- the same through the other decoders (``NANOGPT_COURSE_DECODE`` = eager, static, graph) on a
  few rows, for the before/after table;
- the bandwidth limit: bytes one step must read (bf16 weights + the KV cache slots it reads)
  over the measured device-to-device copy bandwidth;
- FlexAttention compiled outside a model with static vs dynamic shapes over ten new sequence
  lengths (compiles, time per call, error against the masked reference);
- nanochat's Engine at commit 92d63d4 (``--nanochat PATH``, SDPA fallback, its own GPT with
  the same d12 shape), if given.

Writes ``--out`` (default ``$OUT/bench_decode.json`` or ``runs/bench_decode/``); prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import perf_summary  # noqa: E402  (bench/ is not a package)
import torch  # noqa: E402

from nanogpt_course import attention, engine  # noqa: E402
from nanogpt_course.model import GPT, GPTConfig  # noqa: E402

VOCAB = 32768
NEW_TOKENS = 256


def build(depth: int, device, *, seq_len: int, vocab: int = VOCAB, seed: int = 0,
          **overrides) -> GPT:
    """A model whose every weight is random (the zero-initialized projections too)."""
    cfg = GPTConfig.from_depth(depth, vocab_size=vocab, sequence_len=seq_len, **overrides)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("c_proj.weight", "ve_gate.weight")):
                p.normal_(0.0, 0.5 / math.sqrt(p.shape[1]), generator=g)
            elif name == "lm_head.weight":
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=g)
    return model.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompt_of(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def time_generate(model, prompt, new, batch, **kw) -> dict:
    """One generation: time to first token, then decode tokens/s over the rest."""
    device = next(model.parameters()).device
    sync(device)
    t0 = time.perf_counter()
    it = engine.generate(model, prompt, new, temperature=1.0, top_k=50, seed=0,
                         num_samples=batch, **kw)
    next(it)  # returns once the first token is on the host
    t1 = time.perf_counter()
    steps = 1 + sum(1 for _ in it)
    t2 = time.perf_counter()
    return {"ttft_ms": (t1 - t0) * 1e3, "steps": steps,
            "tok_per_sec": (steps - 1) * batch / (t2 - t1) if steps > 1 else None}


def measure(model, *, prompt_len, batch, new, mode="auto", repeats=4, seed=0) -> dict:
    """Warm up on another prompt length, then time ``repeats`` fresh prompts of
    ``prompt_len`` tokens. The first of them meets a new prompt length (``ttft_first_ms``:
    what a user's first prompt of that size waits), the second captures that length's
    prefill graph (``ttft_second_ms``); ``ttft_ms`` is the median of the later ones (warm),
    or of all of them when there are two or fewer."""
    engine.DECODE_MODE = mode
    vocab = model.config.vocab_size
    time_generate(model, prompt_of(prompt_len // 3 + 7, vocab, seed + 99), 8, batch)
    runs = [time_generate(model, prompt_of(prompt_len, vocab, seed + r), new, batch)
            for r in range(repeats)]
    engine.DECODE_MODE = "auto"
    warm = runs[2:] or runs
    med = lambda key, rs=runs: statistics.median(r[key] for r in rs)  # noqa: E731
    return {"mode": mode, "prompt": prompt_len, "batch": batch, "new_tokens": new,
            "tok_per_sec": round(med("tok_per_sec"), 1), "ttft_ms": round(med("ttft_ms", warm), 2),
            "ttft_first_ms": round(runs[0]["ttft_ms"], 2),
            "ttft_second_ms": round(runs[1]["ttft_ms"], 2) if len(runs) > 1 else None,
            "prefill_tok_per_sec": round(prompt_len / (med("ttft_ms", warm) / 1e3)),
            "runs": [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
                     for r in runs]}


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written), median of 10."""
    x = torch.empty(2**28, dtype=torch.float32, device=device)  # 1 GiB
    y = torch.empty_like(x)
    times = []
    for _ in range(12):
        sync(device)
        t0 = time.perf_counter()
        y.copy_(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    del x, y
    return 2 * 2**30 / statistics.median(times[2:])


def step_bytes(model, batch: int, context: int) -> dict:
    """Bytes a decode step reads: bf16 linear weights, and the KV cache (the whole static
    buffer the graphed step reads, and the filled part a perfect kernel would read)."""
    cfg = model.config
    weights = 2 * sum(m.weight.numel() for m in model.modules()
                      if isinstance(m, torch.nn.Linear))
    per_slot = cfg.n_layer * 2 * cfg.n_kv_head * cfg.head_dim * 2 * batch  # k and v, bf16
    return {"weights": weights, "kv_static": per_slot * cfg.sequence_len,
            "kv_filled": per_slot * context}


def add_bound(row: dict, model, bw: float) -> None:
    context = row["prompt"] + row["new_tokens"] // 2
    b = step_bytes(model, row["batch"], context)
    for name, kv in (("static", b["kv_static"]), ("ideal", b["kv_filled"])):
        step_s = (b["weights"] + kv) / bw
        row[f"bound_{name}_tok_per_sec"] = round(row["batch"] / step_s)
    row["fraction_of_bound"] = round(row["tok_per_sec"] / row["bound_ideal_tok_per_sec"], 3)
    row["step_ms"] = round(row["batch"] / row["tok_per_sec"] * 1e3, 3)
    row["bytes_per_step_mb"] = round((b["weights"] + b["kv_static"]) / 1e6, 1)


def flex_recompiles(device, mode: str) -> dict:
    """Stand-alone FlexAttention over 10 new sequence lengths ("static" or "dynamic")."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    attention._compiled_flex.clear()
    attention.FLEX_SHAPES = mode
    rows = []
    for T in [200 + 97 * i for i in range(10)]:
        g = torch.Generator(device=device).manual_seed(T)
        q, k, v = (torch.randn(1, 6, T, 128, device=device, generator=g, dtype=torch.bfloat16)
                   for _ in range(3))
        before = counters["stats"]["unique_graphs"]
        torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        y = attention.causal_attention(q, k, v, window=128, backend="flex")
        sync(device)
        dt = time.perf_counter() - t0
        ref = attention.masked_attention(q.float(), k.float(), v.float(), window=128)
        err = float((y.float() - ref).norm() / ref.norm())
        rows.append({"T": T, "ms": round(dt * 1e3, 1),
                     "new_graphs": counters["stats"]["unique_graphs"] - before,
                     "peak_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                     "rel_err": round(err, 5)})
    attention.FLEX_SHAPES = "dynamic"
    torch._dynamo.reset()
    attention._compiled_flex.clear()
    return {"calls": rows, "total_s": round(sum(r["ms"] for r in rows) / 1e3, 1),
            "graphs": sum(r["new_graphs"] for r in rows),
            "max_rel_err": max(r["rel_err"] for r in rows)}


def nanochat_engine(path: str, device, *, depth=12, seq_len=2304):
    """nanochat's GPT (same d12 shape, window L) and Engine, imported from ``path``."""
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        import nanochat_ref  # the pinned import helper, when the project has it

        modules = nanochat_ref.load(path)
        gpt_mod, engine_mod = modules.gpt, modules.engine
    except Exception:
        sys.path.insert(0, str(Path(path).resolve()))
        try:
            import rustbpe  # noqa: F401  (nanochat's tokenizer module imports it)
        except ImportError:
            sys.modules["rustbpe"] = types.ModuleType("rustbpe")
        import nanochat.engine as engine_mod
        import nanochat.gpt as gpt_mod
    width = depth * 64
    cfg = gpt_mod.GPTConfig(sequence_len=seq_len, vocab_size=VOCAB, n_layer=depth,
                            n_head=width // 128, n_kv_head=width // 128, n_embd=width,
                            window_pattern="L")
    with torch.device("meta"):
        model = gpt_mod.GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    model.eval()

    class Tok:  # the Engine asks for its special tokens; none of them is ever sampled
        def encode_special(self, s):
            return VOCAB + 1 + hash(s) % 1000

        def get_bos_token_id(self):
            return VOCAB + 2000

    return engine_mod.Engine(model, Tok())


def measure_nanochat(eng, *, prompt_len, batch, new, repeats=3) -> dict:
    device = next(eng.model.parameters()).device

    def once(prompt, n):
        sync(device)
        t0 = time.perf_counter()
        it = eng.generate(prompt, num_samples=batch, max_tokens=n, temperature=1.0, top_k=50)
        next(it)
        t1 = time.perf_counter()
        steps = 1 + sum(1 for _ in it)
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (steps - 1) * batch / (t2 - t1)

    once(prompt_of(prompt_len // 3 + 7, VOCAB, 99), 4)
    runs = [once(prompt_of(prompt_len, VOCAB, r), new) for r in range(repeats)]
    return {"prompt": prompt_len, "batch": batch, "new_tokens": new,
            "ttft_ms": round(statistics.median(r[0] for r in runs), 2),
            "ttft_first_ms": round(runs[0][0], 2),
            "tok_per_sec": round(statistics.median(r[1] for r in runs), 1)}


def fast_path_errors() -> dict:
    """Why the fast decoder fell back (compile or capture errors), per batch size."""
    from nanogpt_course import fast_decode

    return {f"{type(m).__name__}@{id(m):x}:{key}": r.errors for m, d in
            fast_decode._RUNNERS.items() for key, r in d.items() if any(r.errors.values())}


def bf16_vs_eager(model, steps: int = 32) -> dict:
    """The compiled, graphed bf16 step against the readable eager bf16 decoder: feed both the
    eager decoder's greedy tokens; per-step logits relative error and argmax agreement."""
    from nanogpt_course import fast_decode

    prompt = torch.tensor([prompt_of(300, model.config.vocab_size, 11)],
                          device=next(model.parameters()).device)
    eager = engine._Decoder(model, prompt, 1, steps + 1, True)
    fast = fast_decode.open_decoder(model, prompt, 1)
    errs, same = [], []
    try:
        a, b = eager.start(), fast.start()
        for _ in range(steps):
            errs.append(float((b.double() - a.double()).norm() / a.double().norm()))
            same.append(int(a.argmax()) == int(b.argmax()))
            t = a.argmax(-1)
            a, b = eager.step(t), fast.step(t).clone()
    finally:
        fast.close()
    return {"steps": steps, "max_rel_err": max(errs), "argmax_agreement": sum(same) / steps,
            "tolerance": 2e-2, "ok": max(errs) < 2e-2}


def profile_steps(model, out_dir: Path | None) -> None:
    """Kernel time table of 32 graphed decode steps (d12, batch 1) into profile.txt."""
    if out_dir is None:
        return
    from torch.profiler import ProfilerActivity, profile

    prompt = prompt_of(300, model.config.vocab_size, 5)
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in engine.generate(model, prompt, 32, top_k=50, seed=0):
                pass
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    except Exception as err:  # the profile is a diagnostic, never a reason to stop
        table = f"profile failed: {type(err).__name__}: {err}"
    (out_dir / "profile.txt").write_text(table)


def run_cuda(args, out: Path) -> dict:
    device = torch.device(getattr(args, "device", "cuda"))
    torch.backends.cuda.matmul.allow_tf32 = True
    report = {**perf_summary.run_meta(torch.cuda.get_device_name(device)), "rows": [],
              "notes": {}}
    bw = copy_bandwidth(device)
    report["copy_bandwidth_gb_s"] = round(bw / 1e9, 1)
    print(f"device {report['device']}, copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    save = lambda: out.write_text(json.dumps(report, indent=2))

    def depth_rows(depth, cases, extra=None):
        model = build(depth, device, seq_len=2048 + NEW_TOKENS)
        t0 = time.perf_counter()
        for batch, prompt in cases:
            row = measure(model, prompt_len=prompt, batch=batch, new=NEW_TOKENS)
            row["depth"] = depth
            add_bound(row, model, bw)
            report["rows"].append(row)
            show(row)
            report["fast_path_errors"] = fast_path_errors()
            save()
        report["notes"][f"d{depth}_cases_s_incl_compile"] = round(time.perf_counter() - t0, 1)
        if extra:
            extra(model)
        del model
        from nanogpt_course import fast_decode
        fast_decode.release()
        torch.cuda.empty_cache()

    def other_decoders(model):  # the before/after table (fewer tokens for the slow ones)
        report["bf16_vs_eager"] = bf16_vs_eager(model)
        print("graphed bf16 step vs eager bf16 decoder:", report["bf16_vs_eager"], flush=True)
        save()
        profile_steps(model, out.parent)
        for mode, batch in (("graph", 1), ("eager", 1)) + ((("static", 1),) if not args.quick
                                                          else ()):
            row = measure(model, prompt_len=512, batch=batch, new=32 if mode != "graph"
                          else NEW_TOKENS, mode=mode, repeats=2)
            row["depth"] = 12
            add_bound(row, model, bw)
            report["rows"].append(row)
            show(row)
            save()

    if args.nanochat:
        nanochat_rows(args, report, device)
        save()
    depth_rows(12, [(1, 512), (16, 512), (1, 2048), (16, 2048)], other_decoders)
    if args.quick:
        return report
    depth_rows(20, [(1, 512), (1, 2048)])
    # prefill of a windowed model goes through FlexAttention: no recompile per length
    model = build(12, device, seq_len=2048 + NEW_TOKENS, window_pattern="SSSL")
    for prompt in (512, 2048):
        row = measure(model, prompt_len=prompt, batch=1, new=8, mode="graph", repeats=2)
        row.update(depth=12, pattern="SSSL")
        report["rows"].append(row)
        show(row)
        save()
    del model
    torch.cuda.empty_cache()
    if args.flex:
        report["flex_recompiles"] = {}
        for mode in ("dynamic", "static"):
            r = report["flex_recompiles"][mode] = flex_recompiles(device, mode)
            print(f"flex {mode}: graphs {r['graphs']}, total {r['total_s']} s, max rel err "
                  f"{r['max_rel_err']}, ms per call {[c['ms'] for c in r['calls']]}",
                  flush=True)
            save()
    return report


def nanochat_rows(args, report, device) -> None:
    try:
        eng = nanochat_engine(args.nanochat, device)
        report["nanochat"] = []
        for batch, prompt, new in ((1, 512, 16), (1, 2048, 16)):
            r = measure_nanochat(eng, prompt_len=prompt, batch=batch, new=new)
            report["nanochat"].append(r)
            print(f"nanochat     b{batch:<3d} prompt {prompt:5d}: {r['tok_per_sec']:9.1f} "
                  f"tok/s  TTFT {r['ttft_ms']:7.2f} ms (first {r['ttft_first_ms']:.2f})",
                  flush=True)
        del eng
        torch.cuda.empty_cache()
    except Exception as err:  # nanochat is a reference, not part of the project
        report["nanochat_error"] = f"{type(err).__name__}: {err}"
        print("nanochat failed:", report["nanochat_error"], flush=True)


def run_cpu(args) -> dict:
    """CPU: a d4 model (vocab 32768, context 512); the readable decoder and the static one."""
    device = torch.device("cpu")
    report = {**perf_summary.run_meta("cpu"), "threads": torch.get_num_threads(), "rows": []}
    model = build(4, device, seq_len=512)
    modes = ["auto", "static"] if hasattr(engine, "DECODE_MODE") else ["auto"]
    for mode in modes:
        for batch in (1, 4):
            row = measure(model, prompt_len=128, batch=batch, new=64, mode=mode)
            row["depth"] = 4
            report["rows"].append(row)
            show(row)
    return report


def show(row: dict) -> None:
    extra = f" ({row['pattern']})" if "pattern" in row else ""
    bound = f"  {row['fraction_of_bound']:.1%} of bound" if "fraction_of_bound" in row else ""
    print(f"d{row['depth']}{extra} {row['mode']:6s} b{row['batch']:<3d} prompt "
          f"{row['prompt']:5d}: {row['tok_per_sec']:9.1f} tok/s  TTFT {row['ttft_ms']:7.2f} ms "
          f"(first {row['ttft_first_ms']:.2f}, second {row.get('ttft_second_ms')}), "
          f"prefill {row['prefill_tok_per_sec']} tok/s"
          f"{bound}", flush=True)


def summary(report: dict) -> dict:
    """The ``decode`` section of docs/results/perf_summary.json from a CUDA report."""
    pick = {}
    for row in report["rows"]:
        if row.get("mode") != "auto" or "pattern" in row:
            continue
        key = f"batch{row['batch']}"
        entry = pick.setdefault(f"d{row['depth']}", {}).setdefault(key, {})
        entry[f"prompt{row['prompt']}"] = {"tok_per_sec": row["tok_per_sec"],
                                          "ttft_ms": row["ttft_ms"],
                                          "ttft_first_ms": row.get("ttft_first_ms"),
                                          "fraction_of_bound": row.get("fraction_of_bound")}
    for depth in pick.values():  # the headline numbers: prompt 512
        for entry in depth.values():
            head = entry.get("prompt512") or next(iter(entry.values()))
            entry.update(tok_per_sec=head["tok_per_sec"], ttft_ms=head["ttft_ms"])
    return pick


def merge(report_path: Path, summary_path: Path) -> None:
    """Replace the ``decode`` section of ``summary_path`` with ``report_path``'s numbers."""
    report = json.loads(report_path.read_text())
    decode = summary(report)
    if report.get("nanochat"):
        decode["nanochat_d12"] = {f"batch{r['batch']}_prompt{r['prompt']}":
                                  {"tok_per_sec": r["tok_per_sec"], "ttft_ms": r["ttft_ms"],
                                   "ttft_first_ms": r.get("ttft_first_ms")}
                                  for r in report["nanochat"]}
    perf_summary.merge_section(summary_path, "decode", decode, report)
    print(f"decode section written to {summary_path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nanochat", default=None, help="path of a nanochat checkout")
    parser.add_argument("--quick", action="store_true",
                        help="d12 only (no d20, windowed prefill, FlexAttention compiles)")
    parser.add_argument("--no-flex", dest="flex", action="store_false",
                        help="skip the FlexAttention recompile measurement")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--merge", type=Path, default=None,
                        help="a CUDA report: write its decode section into --summary")
    parser.add_argument("--summary", type=Path,
                        default=perf_summary.DEFAULT_PATH)
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.summary)
        return 0
    out = args.out or (Path(os.environ["OUT"]) / "bench_decode.json" if os.environ.get("OUT")
                       else ROOT / "runs" / "bench_decode" / f"bench_decode_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = run_cuda(args, out) if args.device == "cuda" else run_cpu(args)
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
