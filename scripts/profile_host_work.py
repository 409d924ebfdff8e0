"""Per-token host work of our ``ar``, Jacobi and speculative loops: what is ours, not the model's.

    python scripts/profile_host_work.py --tiny                 # random Llama built in memory (a check, no files)
    python scripts/profile_host_work.py --out results/profile-host-cpu

For each decoder (default ``ar``, ``jacobi:n=16``, ``speculative:draft=self:layers=10,k=4``)
it decodes the bench prompts greedily with EOS ignored (every prompt gives exactly
``--max-new-tokens``), after an untimed warm-up, twice:

1. **Timed, no profiler.** Global module forward hooks (``torch.nn.modules.module``'s
   ``register_module_forward_pre_hook`` / ``..._forward_hook``, removed afterwards) time
   every *outermost* module call: the target's forwards and the draft's. Host work is the
   rest of the decode time: ``host = total - model forwards``, reported in ms per token
   and as a share. This is the figure; it is not inflated by any profiler (the hooks cost
   two clock reads per forward).
2. **Under cProfile**, to say where the host work goes. Self time of our own code
   (``cllm_bench/``) plus the torch builtins it calls directly (argmax, ``tolist``,
   ``item``, tensor building, rollbacks' copies), grouped:

   * trace recording (``trace.py``, ``metrics.py``, ``forward_trace.py``);
   * stop checks and output (``OutputBuffer`` in ``decoders/base.py``);
   * cache bookkeeping (``engines/``: rollback, keep, masks, positions);
   * tensor <-> list and small torch ops called from our loop (argmax, ``tolist``,
     ``item``, ``torch.tensor``, ``cat``);
   * Python per step (the decoders' own code: ``decoders/``, ``baselines/``).

   Python function calls per generated token (exact, machine-independent) are reported
   for our code and in total; cProfile inflates Python-heavy parts, so read the groups
   as shares.

Writes ``summary.json`` and one ``<decoder>.txt`` (the split and the top functions by self
time) per decoder into ``--out``. Run it on an idle machine: step 1 is a timing.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules import module as nn_module

FuncKey = tuple[str, int, str]

DEFAULT_DECODERS = ["ar", "jacobi:n=16", "speculative:draft=self:layers=10,k=4"]

#: our files -> group (first match wins); anything else under cllm_bench/ is "Python per step"
GROUPS = [
    ("trace recording", ("cllm_bench/trace.py", "cllm_bench/metrics.py", "cllm_bench/forward_trace.py")),
    ("stop checks and output (OutputBuffer)", ("cllm_bench/decoders/base.py",)),
    ("cache bookkeeping (engines/)", ("cllm_bench/engines/",)),
]
OURS = ("cllm_bench/", "/baselines/")
TENSOR_GROUP = "tensor <-> list and small torch ops from our loop"
PYTHON_GROUP = "Python per step (decoders' own code)"


class ForwardClock:
    """Wall time inside outermost module calls (the models' forwards), via global module hooks.

    ``depth`` counts nested module calls so only the outermost call of each forward is
    timed; ``calls`` counts those. Use as a context manager: the hooks are removed on exit.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        self._start = 0.0
        self._handles: list[Any] = []

    def _pre(self, module: Any, args: Any) -> None:
        if self._depth == 0:
            self._start = time.perf_counter()
        self._depth += 1

    def _post(self, module: Any, args: Any, output: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._start
            self.calls += 1

    def __enter__(self) -> "ForwardClock":
        self._handles = [nn_module.register_module_forward_pre_hook(self._pre),
                         nn_module.register_module_forward_hook(self._post)]  # fmt: skip
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


@dataclass
class HostSplit:
    """One decoder's numbers. Times in seconds over the whole timed pass."""

    decoder: str
    tokens: int
    total_s: float
    forward_s: float
    outer_forwards: int
    host_ms_per_token: float = 0.0
    host_share: float = 0.0
    forward_ms_per_token: float = 0.0
    groups_profiled_s: dict[str, float] = field(default_factory=dict)
    python_calls_per_token: float = 0.0
    our_python_calls_per_token: float = 0.0

    def finish(self) -> "HostSplit":
        host = max(self.total_s - self.forward_s, 0.0)
        self.host_ms_per_token = 1000 * host / self.tokens
        self.forward_ms_per_token = 1000 * self.forward_s / self.tokens
        self.host_share = host / self.total_s
        return self


def is_ours(path: str) -> bool:
    return any(part in path for part in OURS)


def group_of(path: str) -> str:
    for name, parts in GROUPS:
        if any(p in path for p in parts):
            return name
    return PYTHON_GROUP


def host_groups(stats: dict[FuncKey, Any]) -> tuple[dict[str, float], int]:
    """Profiled self seconds per group (see the module docstring) and our Python calls.

    Builtins (``~`` file) count in the tensor group for the calls made directly from our
    frames; module calls (``_call_impl``) are the models' forwards and are left out.
    """
    groups: dict[str, float] = {name: 0.0 for name, _ in GROUPS}
    groups[TENSOR_GROUP] = 0.0
    groups[PYTHON_GROUP] = 0.0
    our_calls = 0
    for (path, _line, name), (_cc, nc, tt, _ct, callers) in stats.items():
        if is_ours(path):
            groups[group_of(path)] += tt
            our_calls += nc
        elif path == "~":  # a builtin: charge the share called from our frames
            groups[TENSOR_GROUP] += sum(c_tt for ck, (_a, _b, c_tt, _c) in callers.items() if is_ours(ck[0]))
    return groups, our_calls


def decode_all(decoder: Any, engine: Any, prompts: list[list[int]], budget: int) -> int:
    with torch.inference_mode():
        return sum(len(decoder.generate(engine, p, budget, frozenset()).tokens) for p in prompts)


def measure(spec: str, model: Any, loaded: Any, prompts: list[list[int]], budget: int, top: int) -> tuple[HostSplit, str]:
    from cllm_bench.decoders.base import build_decoder
    from cllm_bench.engines import Engine

    decoder = build_decoder(spec)
    decoder.prepare(loaded)
    engine = Engine(model)
    decode_all(decoder, engine, prompts, min(budget, 16))  # warm-up: allocator, lazy inits, draft load
    with ForwardClock() as clock:
        start = time.perf_counter()
        tokens = decode_all(decoder, engine, prompts, budget)
        total = time.perf_counter() - start
    split = HostSplit(spec, tokens, total, clock.seconds, clock.calls)
    profiler = cProfile.Profile()
    profiler.enable()
    decode_all(decoder, engine, prompts, budget)
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[FuncKey, Any] = stats.stats  # type: ignore[attr-defined]
    groups, our_calls = host_groups(raw)
    split.groups_profiled_s = {k: round(v, 4) for k, v in groups.items()}
    split.python_calls_per_token = round(sum(v[1] for v in raw.values()) / tokens, 1)
    split.our_python_calls_per_token = round(our_calls / tokens, 1)
    split.finish()
    return split, report_text(split, stats, top)


def report_text(split: HostSplit, stats: pstats.Stats, top: int) -> str:
    lines = [
        f"decoder: {split.decoder}",
        f"tokens: {split.tokens}; outermost module forwards: {split.outer_forwards}",
        f"timed pass (no profiler): total {split.total_s:.3f} s, model forwards {split.forward_s:.3f} s",
        f"host work: {split.host_ms_per_token:.3f} ms/token ({100 * split.host_share:.2f}% of decode time); "
        f"forwards {split.forward_ms_per_token:.2f} ms/token",
        f"Python calls per token: {split.python_calls_per_token} in all, {split.our_python_calls_per_token} in cllm_bench",
        "",
        "host work under cProfile (self seconds, inflated; read as shares):",
    ]
    total_host = sum(split.groups_profiled_s.values()) or 1.0
    for name, sec in split.groups_profiled_s.items():
        lines.append(f"  {name:55s} {sec:8.4f} s  {100 * sec / total_host:5.1f}%")
    lines += ["", f"top {top} functions by self time (whole decode, models included):"]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    for (path, line, name), (_cc, nc, tt, ct, _callers) in rows:
        lines.append(f"  {tt:8.3f} s self {ct:8.3f} s cum {nc:8d} calls  {Path(path).name}:{line}({name})")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a random Llama built in memory (checks the script, no files)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--decoders", default=";".join(DEFAULT_DECODERS))
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="", help="folder for summary.json and <decoder>.txt (default: print only)")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from profile_speculative import text_prompts, tiny_model, tiny_prompts

    from cllm_bench.models import LoadedModel, load_model
    from cllm_bench.provenance import now_iso

    if args.tiny:
        model = tiny_model()
        loaded: Any = LoadedModel(spec="tiny", model=model, tokenizer=None, source="memory", eos_ids=frozenset())
        prompts = tiny_prompts(args.prompts)
    else:
        loaded = load_model(args.model, dtype="float32", device="cpu")
        model, prompts = loaded.model, text_prompts(loaded.tokenizer, args.prompts)
    results, texts = [], {}
    for spec in [s for s in args.decoders.split(";") if s]:
        split, text = measure(spec, model, loaded, prompts, args.max_new_tokens, args.top)
        results.append(split)
        texts[spec] = text
        print(text)
    doc = {
        "time": now_iso(), "model": "tiny" if args.tiny else args.model, "dtype": "float32", "device": "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "prompts": [len(p) for p in prompts], "max_new_tokens": args.max_new_tokens,
        "command": " ".join(sys.argv), "results": [asdict(r) for r in results],
    }  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
        for spec, text in texts.items():
            (out / f"{spec.split(':')[0]}.txt").write_text(text)


if __name__ == "__main__":
    main()
