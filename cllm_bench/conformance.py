"""``cllm-bench check-decoder NAME``: the battery every built-in decoder passes.

:func:`check_decoder` runs a decoder spec (``name[:key=value,...]``) on two tiny random
models built here from a config (a Llama and a Qwen2: 2 layers, hidden 64, vocabulary
96, float64, CPU, one thread — no download, a few seconds) and checks, per model:

* **builds**: the spec parses and ``prepare(target)`` succeeds;
* **runs**: ``generate`` returns without raising, on 4 prompts (1 to 18 tokens) x
  ``max_new_tokens`` in (1, 7, 33), plus 2 prompts with a forced EOS (a token ``ar``
  emits mid-way: the output must stop right after it);
* **same tokens as ar**: token-for-token equality with ``ar`` (lossless decoders; a
  decoder declaring ``lossless = False`` is exempt); a failure shows the first
  divergence index and both sequences around it;
* **stops at EOS**: the forced-EOS cases end exactly where ``ar`` ends;
* **trace invariants**: :func:`~cllm_bench.trace.check_trace` (prefill first, accepted
  tokens sum to the output, cap and EOS respected) and ``prompt_len`` recorded;
* **forwards counted**: ``engine.forwards`` equals the non-draft steps (not for ``hf``,
  which runs ``model.generate``);
* **cache consistent**: after generating, the cache holds the exact KV of prompt +
  output (rejected tokens were rolled back): continuing from the engine's cache gives the
  logits of a clean forward (:func:`cache_problem`); the decoder's engine is reused across
  cases as the runner reuses it, and **rerun**: generating again on the same engine gives
  the same tokens;
* **batched = single** (decoders with ``supports_batch``): ``generate_batch`` on all
  prompts at once (left padding, rows of different lengths, rows stopping at different
  EOS steps) gives every row the tokens ``ar`` gives it alone, and valid traces.

A rich table shows one row per check; :func:`check_decoder` returns True iff all pass.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cllm_bench.decoders.base import Decoder, build_decoder

NO_EOS = frozenset({10_000})  # an id the tiny vocabulary never produces
MAX_NEW = (1, 7, 33)
EOS_BUDGET = 40
VOCAB = 96
WINDOW = 6  # tokens shown on each side of a divergence
CHECKS = (
    ("builds", "spec parses, prepare(target) succeeds"),
    ("runs", "generate returns without raising"),
    ("same tokens as ar", "token-for-token equal to ar"),
    ("stops at EOS", "forced EOS mid-output ends the output there"),
    ("trace invariants", "check_trace: prefill first, accepted sum = output, cap, EOS"),
    ("forwards counted", "engine.forwards == non-draft steps"),
    ("cache consistent", "cached KV = prompt + output's (continue from the engine, compare logits)"),
    ("rerun", "generate again on the same engine: same tokens"),
    ("batched = single", "generate_batch on all prompts: each row as ar alone"),
)


@dataclass
class CheckRow:
    """Outcome of one check over all cases: counts, the first failures, or why it was skipped."""

    name: str
    what: str
    passed: int = 0
    failed: int = 0
    skipped: str = ""
    failures: list[str] = field(default_factory=list)

    def record(self, ok: bool, detail: Callable[[], str]) -> None:
        if ok:
            self.passed += 1
            return
        self.failed += 1
        if len(self.failures) < 3:
            self.failures.append(detail())

    @property
    def ok(self) -> bool:
        return self.failed == 0


@dataclass
class Case:
    """One generation: model, prompt, budget, EOS set and the reference (ar) output."""

    model: str
    prompt_index: int
    prompt: list[int]
    max_new: int
    eos: frozenset[int]
    expected: list[int]

    def label(self) -> str:
        eos = "no EOS" if self.eos == NO_EOS else f"EOS={sorted(self.eos)}"
        return f"{self.model} · prompt {self.prompt_index} ({len(self.prompt)} tok) · max_new={self.max_new} · {eos}"


# ------------------------------------------------------------------ tiny models
def tiny_llama(seed: int = 0) -> Any:
    """A 2-layer random Llama (float64, eval), deterministic for ``seed``; EOS id 2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2, bos_token_id=1, pad_token_id=0,
        attn_implementation="sdpa",
    )  # fmt: skip
    return _finish(LlamaForCausalLM(config))


def tiny_qwen2(seed: int = 1) -> Any:
    """A 2-layer random Qwen2 (float64, eval), deterministic for ``seed``; EOS id 2."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2, pad_token_id=0,
        attn_implementation="sdpa",
    )  # fmt: skip
    return _finish(Qwen2ForCausalLM(config))


def _finish(model: Any) -> Any:
    import torch

    model = model.to(torch.float64).eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    return model


MODELS: tuple[tuple[str, Callable[[], Any]], ...] = (("llama", tiny_llama), ("qwen2", tiny_qwen2))


def battery_prompts() -> list[list[int]]:
    """A one-token prompt and three random prompts of 12, 15 and 18 tokens (ids 3..95)."""
    import torch

    g = torch.Generator().manual_seed(0)
    return [[7]] + [torch.randint(3, VOCAB, (12 + 3 * i,), generator=g).tolist() for i in range(3)]


# ------------------------------------------------------------------ the battery
def check_decoder(spec: str, console: Console) -> bool:
    """Run the conformance battery on decoder ``spec``; print a pass/fail table on
    ``console``; True iff every check passed. An unknown name or a malformed spec raises
    :class:`~cllm_bench.errors.UserError` (the CLI prints it and exits 2)."""
    import torch

    build_decoder(spec)  # fail fast on a bad spec, before building models
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny float64 models: one thread is ~20x faster than two
    try:
        with torch.random.fork_rng(devices=[]):
            rows = run_battery(spec)
    finally:
        torch.set_num_threads(threads)
    print_report(spec, rows, console)
    return all(row.ok for row in rows.values())


def run_battery(spec: str) -> dict[str, CheckRow]:
    """Every check of the module docstring, on every tiny model; rows keyed by check name."""
    rows = {name: CheckRow(name, what) for name, what in CHECKS}
    for model_name, make in MODELS:
        _run_model(spec, model_name, make(), rows)
    return rows


def _run_model(spec: str, model_name: str, model: Any, rows: dict[str, CheckRow]) -> None:
    from cllm_bench.engines.factory import build_engine
    from cllm_bench.engines.protocols import EngineOptions
    from cllm_bench.models import LoadedModel

    decoder = build_decoder(spec)
    target = LoadedModel(spec=f"tiny-{model_name}", model=model, tokenizer=None, source="conformance",
                         eos_ids=frozenset({2}))  # fmt: skip
    try:
        decoder.prepare(target)
    except Exception as exc:
        rows["builds"].record(False, lambda exc=exc: f"{model_name}: prepare failed: {exception_line(exc)}")
        return
    rows["builds"].record(True, str)
    cases = build_cases(model_name, model, build_engine(model, EngineOptions()))
    engine = build_engine(model, EngineOptions())  # reused across cases, as the runner reuses it
    longest = max(c.max_new for c in cases if c.eos == NO_EOS)
    reruns = {max(i for i, c in enumerate(cases) if c.max_new == longest and c.eos == NO_EOS), len(cases) - 1}
    for i, case in enumerate(cases):
        trace = _generate(decoder, engine, case, rows["runs"])
        if trace is None:
            continue
        check_case(decoder, engine, case, trace, rows)
        if i in reruns and decoder.lossless:
            again = _generate(decoder, engine, case, rows["runs"])
            if again is not None:
                rows["rerun"].record(again.tokens == trace.tokens,
                                     lambda: f"{case.label()}: {divergence(trace.tokens, again.tokens, 'first', 'rerun')}")  # fmt: skip
    check_batch(decoder, model_name, model, cases, rows["batched = single"])


def check_batch(decoder: Decoder, model_name: str, model: Any, cases: list[Case], row: CheckRow) -> None:
    """All battery prompts in one ``generate_batch`` per (budget, EOS set) of the cases."""
    import torch

    from cllm_bench.engines.factory import build_batch_engine, build_engine
    from cllm_bench.engines.protocols import EngineOptions
    from cllm_bench.trace import check_trace

    if not decoder.supports_batch:
        row.skipped = "no batched path (supports_batch = False)"
        return
    prompts = battery_prompts()
    ar, ref = build_decoder("ar"), build_engine(model, EngineOptions())
    engine = build_batch_engine(model, EngineOptions())  # reused across batches, as bench reuses it
    for max_new, eos in dict.fromkeys((c.max_new, c.eos) for c in cases):
        label = f"{model_name} · batch of {len(prompts)} · max_new={max_new} · " + (
            "no EOS" if eos == NO_EOS else f"EOS={sorted(eos)}")  # fmt: skip
        try:
            with torch.inference_mode():
                traces = decoder.generate_batch(engine, [list(p) for p in prompts], max_new, eos)
            for trace in traces:
                check_trace(trace, max_new, eos)
        except Exception as exc:  # a raising decoder or a broken trace (TraceError)
            row.record(False, lambda exc=exc: f"{label}: {exception_line(exc)}")
            continue
        if not decoder.lossless:
            row.record(len(traces) == len(prompts), lambda: f"{label}: {len(traces)} traces for {len(prompts)} prompts")
            continue
        for i, (prompt, trace) in enumerate(zip(prompts, traces)):
            expected = ar.generate(ref, prompt, max_new, eos).tokens
            row.record(trace.tokens == expected, lambda: f"{label} · row {i}: {divergence(expected, trace.tokens)}")


def build_cases(model_name: str, model: Any, ref_engine: Any) -> list[Case]:
    """No-EOS cases (every prompt x MAX_NEW) and two forced-EOS cases, with ar's outputs.

    The forced EOS is the first token of ar's free run at index >= 8 that did not occur
    before it, so ar stops exactly there, mid-output. The three last no-EOS cases before
    the EOS cases are the longest prompt's; the forced-EOS cases come last.
    """
    ar = build_decoder("ar")
    prompts = battery_prompts()
    cases = []
    for p, prompt in enumerate(prompts):
        free = ar.generate(ref_engine, prompt, max(MAX_NEW), NO_EOS).tokens
        cases += [Case(model_name, p, prompt, m, NO_EOS, free[:m]) for m in MAX_NEW]
    for p in (1, 3):
        prompt = prompts[p]
        free = ar.generate(ref_engine, prompt, EOS_BUDGET, NO_EOS).tokens
        pos = next((i for i in range(8, len(free)) if free[i] not in free[:i]), 11)
        eos = frozenset({free[pos]})
        expected = ar.generate(ref_engine, prompt, EOS_BUDGET, eos).tokens
        cases.append(Case(model_name, p, prompt, EOS_BUDGET, eos, expected))
    return cases


def _generate(decoder: Decoder, engine: Any, case: Case, row: CheckRow) -> Any:
    import torch

    try:
        with torch.inference_mode():
            trace = decoder.generate(engine, list(case.prompt), case.max_new, case.eos)
    except Exception as exc:
        row.record(False, lambda exc=exc: f"{case.label()}: {exception_line(exc)}")
        return None
    row.record(True, str)
    return trace


def check_case(decoder: Decoder, engine: Any, case: Case, trace: Any, rows: dict[str, CheckRow]) -> None:
    """Record every per-case check of one generation."""
    from cllm_bench.trace import TraceError, check_trace

    label = case.label()
    try:
        check_trace(trace, case.max_new, case.eos)
        if trace.prompt_len != len(case.prompt):
            raise TraceError(f"trace.prompt_len = {trace.prompt_len} but the prompt has {len(case.prompt)} tokens")
        rows["trace invariants"].record(True, str)
    except TraceError as err:
        rows["trace invariants"].record(False, lambda err=err: f"{label}: {err}")
    if decoder.lossless:
        same = trace.tokens == case.expected
        row = rows["same tokens as ar"] if case.eos == NO_EOS else rows["stops at EOS"]
        row.record(same, lambda: f"{label}: {divergence(case.expected, trace.tokens)}")
    else:
        for name in ("same tokens as ar", "stops at EOS", "rerun"):
            rows[name].skipped = "decoder declares lossless = False"
    if decoder.registered_name == "hf":
        for name in ("forwards counted", "cache consistent"):
            rows[name].skipped = "hf runs model.generate, not the engine"
        return
    steps = sum(1 for s in trace.steps if s.kind != "draft")
    rows["forwards counted"].record(engine.forwards == steps,
                                    lambda: f"{label}: engine.forwards = {engine.forwards} but the trace has {steps} non-draft steps")  # fmt: skip
    problem = cache_problem(engine, case.prompt + trace.tokens)
    rows["cache consistent"].record(problem is None, lambda: f"{label}: {problem}")


def cache_problem(engine: Any, text: list[int]) -> str | None:
    """None when the engine's cache holds exact KV for ``text`` (prompt + output).

    The newest output token may be missing (it is fed at the next step), and positions
    past the output may remain at the end (tokens a verifier accepted beyond the budget or
    EOS); what the cache holds for the first ``m = min(engine.length, len(text) - 1)``
    positions must be the text's own KV: continuing from there gives the logits of a clean
    forward of ``text``. Leaves the engine's cache at ``len(text)`` positions.
    """
    import torch

    m = min(engine.length, len(text) - 1)
    if m < 1:
        return f"engine.length = {engine.length}: the cache lost the prompt"
    with torch.inference_mode():
        clean = engine.model(input_ids=engine.ids_tensor(text)).logits[0, -1]
        engine.rollback(m)
        cached = engine.forward(engine.ids_tensor(text[m:]))[0, -1]
    diff = float((cached.double() - clean.double()).abs().max())
    if diff > 1e-6:
        return (f"the cache's first {m} positions are not the KV of prompt + output (logits differ by {diff:.3g} "
                f"after continuing from it): roll back rejected tokens before the next forward")  # fmt: skip
    return None


# ------------------------------------------------------------------ messages
def divergence(expected: list[int], got: list[int], left: str = "ar", right: str = "decoder") -> str:
    """Where two token sequences first differ, with both shown around that index."""
    i = next((j for j, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    if i == len(expected) == len(got):
        return "identical"
    lo = max(0, i - WINDOW)
    note = ""
    if i == min(len(expected), len(got)):
        note = f" ({left} has {len(expected)} tokens, {right} {len(got)})"
    return (
        f"first divergence at index {i}{note}: "
        f"{left} {_window(expected, lo, i)} vs {right} {_window(got, lo, i)}"
    )


def _window(tokens: list[int], lo: int, i: int) -> str:
    before = " ".join(str(t) for t in tokens[lo:i])
    at = f"[{tokens[i]}]" if i < len(tokens) else "[end]"
    after = " ".join(str(t) for t in tokens[i + 1 : i + 1 + WINDOW])
    return ("… " if lo else "") + " ".join(x for x in (before, at, after) if x) + (" …" if i + 1 + WINDOW < len(tokens) else "")


def exception_line(exc: BaseException) -> str:
    """``Type: message (at file:line)`` of the deepest frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


def print_report(spec: str, rows: dict[str, CheckRow], console: Console) -> None:
    """The pass/fail table, then the first failures of each failed check."""
    table = Table(title=f"check-decoder {spec} (tiny Llama + Qwen2, float64, CPU)")
    for col in ("check", "result", "cases", "what"):
        table.add_column(col)
    for row in rows.values():
        if row.skipped and not row.failed:
            result, cases = "[yellow]skipped[/]", row.skipped
        else:
            result = "[green]pass[/]" if row.ok else "[bold red]FAIL[/]"
            cases = f"{row.passed}/{row.passed + row.failed}"
        table.add_row(row.name, result, cases, row.what)
    console.print(table)
    for row in rows.values():
        for failure in row.failures:
            console.print(Text.assemble((f"{row.name}: ", "bold red"), failure), soft_wrap=True, highlight=False)
    ok = all(r.ok for r in rows.values())
    console.print("[bold green]all checks passed[/]" if ok else "[bold red]some checks failed[/]")
