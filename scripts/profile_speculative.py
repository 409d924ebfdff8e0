"""Where the time of our ``speculative`` decoder goes (dev tool; cProfile, one process).

    python scripts/profile_speculative.py --tiny                      # random 8-layer Llama, no files
    python scripts/profile_speculative.py --model smollm2-135m --draft self:layers=6 --k 4

Runs ``speculative:draft=D,k=K`` greedily over a few prompts under :mod:`cProfile` (one
untimed warm-up pass first) and splits the profiled time into:

* target prefill, draft prefill;
* draft steps (the draft's one-token forwards inside ``propose``);
* target verify (the one ``[x, d_1..d_k]`` forward per step);
* rollbacks of the target cache and of the draft cache (``Engine.rollback``);
* host work: everything else in the decoding loop (argmax + ``tolist`` syncs, acceptance,
  trace records, tensor building, Python).

``--hf`` profiles ``hf:assistant=D,k=K`` (transformers' assisted generation) the same way,
split coarsely: the assistant's drafting (``get_candidates``, i.e. one assistant
``generate()`` per round with its own setup), cache crops, and the rest (target forwards +
transformers' loop).

The target runs on :class:`ProfiledTargetEngine`, an :class:`~cllm_bench.engines.dynamic.Engine`
subclass whose ``prefill``/``forward``/``rollback`` are its own (delegating) methods, so
the profile tells the target's calls from the draft's (the draft engine is a plain
``Engine`` built by the decoder itself). Nothing in the decoder or in transformers is
changed.

It also lists the functions with the most *self* time, which is where host overhead
inside the model forwards shows (mask building, cache updates, module dispatch).

cProfile adds a cost to every Python call, so Python-heavy parts (host work, the
transformers module tree) are overstated relative to the kernels: read the split as
structure and proportions on one machine, not as timings for a figure. Counts (forwards,
rollbacks) are exact, and so is the number of Python function calls per generated token,
a machine-independent measure of host work (compare ours with ``--hf`` on it).
``--out FILE.prof`` keeps the raw profile (``python -m pstats``,
snakeviz).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from dataclasses import dataclass
from typing import Any

import torch

from cllm_bench.decoders.base import build_decoder
from cllm_bench.engines import Engine
from cllm_bench.models import load_model

FuncKey = tuple[str, int, str]


class ProfiledTargetEngine(Engine):
    """An :class:`Engine` whose forwards and rollbacks are separate functions in a profile."""

    def prefill(self, prompt_ids: Any) -> torch.Tensor:
        return super().prefill(prompt_ids)

    def forward(self, ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return super().forward(ids, *args, **kwargs)

    def rollback(self, length: int) -> None:
        super().rollback(length)


def tiny_model(layers: int = 8, vocab: int = 96, seed: int = 0) -> Any:
    """A random float32 Llama of ``layers`` layers (hidden 64), built in memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, num_hidden_layers=layers, hidden_size=64, intermediate_size=128,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=2, pad_token_id=0, bos_token_id=1)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_prompts(n: int, vocab: int = 96, length: int = 24) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(n)]


def text_prompts(tokenizer: Any, n: int) -> list[list[int]]:
    from cllm_bench.bench import BENCH_PROMPTS

    out = []
    for text in BENCH_PROMPTS[:n]:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)  # fmt: skip
            out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            out.append(list(tokenizer(text)["input_ids"]))
    return out


@dataclass
class Entry:
    """One function's numbers: calls, self seconds, cumulative seconds."""

    calls: int = 0
    self_s: float = 0.0
    cum_s: float = 0.0


def find(stats: dict[FuncKey, Any], name: str, path_part: str = "", owner: str = "") -> list[FuncKey]:
    """Profile keys whose function name is ``name`` (and whose file contains ``path_part``)."""
    return [k for k in stats if k[2] == name and path_part in k[0] and (not owner or owner in k[0])]


def entry(stats: dict[FuncKey, Any], keys: list[FuncKey], caller: tuple[str, str] | None = None) -> Entry:
    """Summed numbers of ``keys``; only the calls made from ``caller`` = (file part, name) when given.

    ``Engine.prefill``/``forward`` are wrapped by ``torch.inference_mode()``, so their direct
    caller is torch's wrapper: those are split by subtracting the target's own calls instead.
    """
    out = Entry()
    for k in keys:
        cc, nc, tt, ct, callers = stats[k]
        if caller is None:
            out.calls += nc
            out.self_s += tt
            out.cum_s += ct
            continue
        for ck, (c_cc, c_nc, c_tt, c_ct) in callers.items():
            if ck[2] == caller[1] and caller[0] in ck[0]:
                out.calls += c_nc
                out.self_s += c_tt
                out.cum_s += c_ct
    return out


def split(stats: dict[FuncKey, Any], total_s: float) -> list[tuple[str, Entry]]:
    """The buckets of the module docstring, from a profile of ``SpeculativeDecoder.generate``."""
    target_prefill = entry(stats, find(stats, "prefill", "profile_speculative"))
    all_prefill = entry(stats, find(stats, "prefill", "cllm_bench/engines/dynamic.py"))
    target_fwd = entry(stats, find(stats, "forward", "profile_speculative"))
    all_fwd = entry(stats, find(stats, "forward", "cllm_bench/engines/dynamic.py"))  # target (via super) + draft
    draft_fwd = Entry(all_fwd.calls - target_fwd.calls, 0.0, all_fwd.cum_s - target_fwd.cum_s)
    target_rb = entry(stats, find(stats, "rollback", "profile_speculative"))
    draft_rb = entry(stats, find(stats, "rollback", "cllm_bench/engines/dynamic.py"), caller=("speculative.py", "commit"))
    draft_prefill = Entry(all_prefill.calls - target_prefill.calls, 0.0, all_prefill.cum_s - target_prefill.cum_s)
    parts = [
        ("target prefill", target_prefill),
        ("draft prefill", draft_prefill),
        ("draft steps (one-token forwards)", draft_fwd),
        ("target verify (k+1 forward)", target_fwd),
        ("rollback: target cache", target_rb),
        ("rollback: draft cache", draft_rb),
    ]
    accounted = sum(e.cum_s for _, e in parts)
    parts.append(("host work (rest of the loop)", Entry(0, 0.0, max(total_s - accounted, 0.0))))
    return parts


def split_hf(stats: dict[FuncKey, Any], total_s: float) -> list[tuple[str, Entry]]:
    """A coarser split of ``hf:assistant=D,k=K`` (transformers' loop, observed only)."""
    drafting = entry(stats, find(stats, "get_candidates", "candidate_generator.py"))
    assistant_generate = entry(stats, find(stats, "generate", "generation/utils.py"))
    crops = entry(stats, find(stats, "crop", "cache_utils.py"))
    parts = [
        ("assistant drafting (get_candidates)", drafting),
        ("cache crops (target + assistant)", crops),
    ]
    rest = max(total_s - drafting.cum_s - crops.cum_s, 0.0)
    parts.append(("target forwards + HF loop (rest)", Entry(0, 0.0, rest)))
    parts.append(("generate() calls (target + 1/round)", Entry(assistant_generate.calls)))  # a count only
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a random 8-layer Llama built in memory (no model files)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--draft", default="self:layers=6")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--top", type=int, default=20, help="functions listed by self time")
    ap.add_argument("--out", default="", help="write the raw profile here (.prof)")
    ap.add_argument("--hf", action="store_true", help="profile hf:assistant=D,k=K (transformers' loop) instead")
    args = ap.parse_args()

    if args.tiny:
        model, prompts = tiny_model(), tiny_prompts(args.prompts)
    else:
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        model, prompts = loaded.model, text_prompts(loaded.tokenizer, args.prompts)
    spec = f"{'hf:assistant' if args.hf else 'speculative:draft'}={args.draft},k={args.k}"
    decoder = build_decoder(spec)
    engine = ProfiledTargetEngine(model)
    no_eos = frozenset()  # every prompt decodes exactly max_new_tokens
    with torch.inference_mode():
        for p in prompts:  # warm-up (allocator, lazy inits), not profiled
            decoder.generate(engine, p, min(args.max_new_tokens, 16), no_eos)
        profiler = cProfile.Profile()
        profiler.enable()
        traces = [decoder.generate(engine, p, args.max_new_tokens, no_eos) for p in prompts]
        profiler.disable()
    if args.out:
        profiler.dump_stats(args.out)
    ps = pstats.Stats(profiler)
    stats: dict[FuncKey, Any] = ps.stats  # type: ignore[attr-defined]
    gen = entry(stats, find(stats, "generate", "baselines/hf_generate.py" if args.hf else "baselines/speculative.py"))
    tokens = sum(len(t.tokens) for t in traces)
    target = sum(1 for t in traces for s in t.steps if s.kind in ("prefill", "target"))
    drafts = sum(1 for t in traces for s in t.steps if s.kind == "draft")
    print(f"{spec} on {'tiny random Llama (8 layers)' if args.tiny else args.model}: "
          f"{len(prompts)} prompts x {args.max_new_tokens} tokens = {tokens} tokens, {target} target forwards "
          f"({tokens / target:.2f} tok/fwd), {drafts} draft forwards")  # fmt: skip
    calls = ps.total_calls  # type: ignore[attr-defined]
    print(f"profiled generate(): {gen.cum_s:.3f} s under cProfile (proportions, not a timing); "
          f"{calls} Python function calls = {calls / tokens:.0f} per token (host work, machine-independent)\n")
    print(f"{'part':36s} {'calls':>7s} {'seconds':>9s} {'share':>7s}")
    for name, e in (split_hf if args.hf else split)(stats, gen.cum_s):
        share = e.cum_s / gen.cum_s if gen.cum_s else 0.0
        print(f"{name:36s} {e.calls if e.calls else '':>7} {e.cum_s:9.4f} {share:7.1%}")
    if args.top > 0:
        print(f"\ntop {args.top} functions by self time:")
        ps.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
