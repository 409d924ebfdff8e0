"""Per-forward cost of the engine paths (dev tool; run on the machine you measure).

    python scripts/profile_engine.py --model smollm2-135m --widths 1,16,64

Prints, per engine (dynamic eager / static eager / static compiled) and block width, the
mean wall time of ``engine.forward`` over many calls with one device sync at the end
(host overhead included), and the cost of a full greedy token through the ``ar`` decoder.
"""

from __future__ import annotations

import argparse
import time

import torch

from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines.factory import build_engine, resolve_options
from cllm_bench.models import load_model
from cllm_bench.timing import synchronize


def time_forwards(engine, width: int, prompt: list[int], calls: int) -> float:
    engine.prefill(prompt)
    ids = engine.ids_tensor([prompt[-1]] * width)
    base = engine.length
    for _ in range(3):  # warm-up / compile
        engine.forward(ids)
        engine.rollback(base)
    synchronize(engine.device)
    t0 = time.perf_counter()
    for _ in range(calls):
        engine.forward(ids)
        engine.rollback(base)
    synchronize(engine.device)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--widths", default="1,16")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--engines", default="dynamic,static,static+compile")
    args = ap.parse_args()
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    prompt = loaded.tokenizer("Write a Python function that returns the n-th Fibonacci number.")["input_ids"]
    widths = [int(w) for w in args.widths.split(",")]
    for name in args.engines.split(","):
        kind, comp = name.split("+")[0], name.endswith("+compile")
        engine = build_engine(loaded.model, resolve_options(kind, "on" if comp else "off", loaded.device, 1024))
        costs = {w: time_forwards(engine, w, prompt, args.calls) * 1000 for w in widths}
        dec = build_decoder("ar")
        dec.generate(engine, prompt, 16, frozenset())
        synchronize(engine.device)
        t0 = time.perf_counter()
        trace = dec.generate(engine, prompt, 128, frozenset())
        synchronize(engine.device)
        per_token = (time.perf_counter() - t0) * 1000 / len(trace.tokens)
        cells = ", ".join(f"{w} tok: {c:.3f} ms" for w, c in costs.items())
        print(f"{name:16s} forward {cells} | ar loop {per_token:.3f} ms/token", flush=True)


if __name__ == "__main__":
    main()
