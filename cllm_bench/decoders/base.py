"""The decoder contract and the pieces every decoder shares.

A decoder is a dataclass whose fields are its parameters (``jacobi:n=16`` sets ``n``),
registered by name with ``@register_decoder("name")``. It implements::

    generate(engine, prompt_ids, max_new_tokens, eos_ids) -> Trace

Decoders that can decode several prompts at once also implement::

    generate_batch(batch_engine, prompts, max_new_tokens, eos_ids) -> list[Trace]

on a :class:`~cllm_bench.engines.protocols.BatchedEngine` (left padding, per-row acceptance);
each row's trace follows the same rules and, for greedy decoders, the same tokens as
``generate`` on that prompt alone (``supports_batch = True`` marks them).

Rules (checked by ``cllm-bench check-decoder`` and the tests):
  * record one :class:`~cllm_bench.trace.Step` per model forward, the first being the
    target prefill, and attribute every output token to exactly one step;
  * feed tokens to the output only through :class:`OutputBuffer` so that every decoder
    stops by the same rule (first EOS included, ``max_new_tokens`` cap);
  * leave the engine's cache holding exactly the accepted text (roll back what was
    rejected) before the next forward;
  * greedy decoders (``lossless = True``) must return exactly what ``ar`` returns;
  * never time anything or compute metrics.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from cllm_bench.errors import UserError
from cllm_bench.trace import Trace

if TYPE_CHECKING:  # the protocols import torch; the registry and `cllm-bench list` need not
    import torch

    from cllm_bench.engines.protocols import BatchedEngine, SingleEngine


class OutputBuffer:
    """The output of one generation, with the stopping rule every decoder shares.

    Tokens are accepted in order; acceptance stops after the first EOS (kept) or when
    ``max_new_tokens`` tokens are held. :meth:`accept` returns how many of the offered
    tokens were taken, which is what a trace step records as ``accepted``.
    """

    def __init__(self, max_new_tokens: int, eos_ids: Iterable[int]) -> None:
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self.tokens: list[int] = []
        self.stop_reason: str = ""

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    @property
    def remaining(self) -> int:
        return 0 if self.done else self.max_new_tokens - len(self.tokens)

    def accept(self, tokens: Iterable[int]) -> int:
        taken = 0
        for tok in tokens:
            if self.done:
                break
            tok = int(tok)
            self.tokens.append(tok)
            taken += 1
            if tok in self.eos_ids:
                self.stop_reason = "eos"
            elif len(self.tokens) >= self.max_new_tokens:
                self.stop_reason = "length"
        return taken

    def finish(self, trace: Trace) -> Trace:
        trace.tokens = list(self.tokens)
        trace.stop_reason = self.stop_reason or "length"  # type: ignore[assignment]
        return trace


@dataclasses.dataclass
class Decoder(ABC):
    """Base class of every decoder; subclasses are dataclasses whose fields are parameters."""

    #: True when the decoder must reproduce ``ar`` token for token (greedy, exact arithmetic)
    lossless: ClassVar[bool] = True
    #: one-line description for ``cllm-bench list``
    description: ClassVar[str] = ""
    #: set by the registry
    registered_name: ClassVar[str] = ""
    #: parameters always shown in the label (e.g. Jacobi's block size ``n``)
    label_params: ClassVar[tuple[str, ...]] = ()
    #: True when :meth:`generate_batch` is implemented
    supports_batch: ClassVar[bool] = False
    #: cache positions the decoder may write beyond prompt + budget (a block, a window, a
    #: tree fed past the last accepted token); a static cache is sized prompt + budget + this.
    #: The default is the engine factory's ``HEADROOM`` (512), enough for every decoder here;
    #: a decoder that feeds one token at a time says 1, and its static cache (whose
    #: attention reads every position) stays as short as HF's.
    cache_headroom: ClassVar[int] = 512

    def prepare(self, target: Any) -> None:
        """Load what the decoder needs besides the target (draft model, Medusa heads).

        ``target`` is the :class:`~cllm_bench.models.LoadedModel` being evaluated. Called
        once per model before any timed generation (so loading is never timed).
        """

    def validate_target(self, target: Any) -> None:
        """Raise :class:`UserError` when the decoder cannot run on ``target`` (a
        :class:`~cllm_bench.models.LoadedModel`), e.g. a draft head of another hidden size.

        Cheap (reads configs, loads no weights); the runner calls it for every decoder right
        after a model is loaded, before any cell of that model runs.
        """

    @abstractmethod
    def generate(
        self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]
    ) -> Trace:
        """Decode greedily after ``prompt_ids``; see the module docstring for the rules."""

    def generate_batch(
        self, engine: BatchedEngine, prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]
    ) -> list[Trace]:
        """Decode all ``prompts`` together on a :class:`~cllm_bench.engines.protocols.BatchedEngine`;
        one trace per prompt, in order."""
        raise UserError(
            f"decoder {self.label!r} has no batched path (batch size > 1); decoders that have one: "
            f"{', '.join(batched_decoder_names())}"
        )

    @property
    def label(self) -> str:
        """Canonical ``name:key=value,...`` string, parameters that differ from defaults only."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in self.label_params and f.default is not dataclasses.MISSING and value == f.default:
                continue
            parts.append(f"{f.name}={_format_value(value)}")
        return self.registered_name + (":" + ",".join(parts) if parts else "")

    @classmethod
    def parameters(cls) -> list[tuple[str, str, Any]]:
        """(name, type name, default) of every parameter, for ``cllm-bench list``."""
        out = []
        for f in dataclasses.fields(cls):
            default = None if f.default is dataclasses.MISSING else f.default
            out.append((f.name, _type_name(f.type), default))
        return out


def batched_decoder_names() -> list[str]:
    """Registered decoders with a batch path (for error messages and ``cllm-bench list``)."""
    from cllm_bench.registry import DECODERS

    return [name for name in DECODERS.names() if DECODERS.get(name).supports_batch]


def new_outputs(prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]) -> tuple[list[Trace], list[OutputBuffer]]:
    """One empty trace and one output buffer per prompt (the start of every ``generate_batch``)."""
    return [Trace(prompt_len=len(p)) for p in prompts], [OutputBuffer(max_new_tokens, eos_ids) for _ in prompts]


def greedy_chain(engine: SingleEngine, ids: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` greedy forwards chained on the device: the first feeds ``ids`` [1, T], each
    later one the previous forward's argmax, which never leaves the device. Returns the
    ``k`` argmaxes [1, k] (still on the device; read them with one ``tolist``). The cache
    grows by ``T + k - 1``: the last argmax is returned, not fed."""
    import torch

    picks = []
    for _ in range(k):
        ids = engine.forward_greedy(ids)[:, -1:]  # [1, 1]
        picks.append(ids)
    return torch.cat(picks, dim=1)


def greedy_start(
    engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]
) -> tuple[Trace, OutputBuffer, int]:
    """The start every greedy ``generate`` shares: a trace and an output buffer, the prompt
    prefilled, its argmax (the first output token) accepted and recorded as the
    ``prefill`` step. Returns ``(trace, out, first)``; the cache holds the prompt, not
    ``first`` (it is fed by the next forward)."""
    trace = Trace(prompt_len=len(prompt_ids))
    out = OutputBuffer(max_new_tokens, eos_ids)
    first = int(engine.prefill(prompt_ids).argmax())
    trace.record("prefill", fed=len(prompt_ids), accepted=out.accept([first]))
    return trace, out, first


def greedy_start_batch(
    engine: BatchedEngine, prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]
) -> tuple[list[Trace], list[OutputBuffer], list[int]]:
    """:func:`greedy_start` for a batch: one trace and buffer per prompt, all prompts
    prefilled in one batched forward, each row's first token accepted and recorded.
    Returns ``(traces, outs, firsts)``."""
    traces, outs = new_outputs(prompts, max_new_tokens, eos_ids)
    firsts = engine.prefill(prompts).argmax(dim=-1).tolist()
    for b, first in enumerate(firsts):
        traces[b].record("prefill", fed=len(prompts[b]), accepted=outs[b].accept([first]))
    return traces, outs, firsts


def prefill_all_hidden(engine: SingleEngine, prompt_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill the prompt with one full forward into a fresh cache (firing
    ``on_prefill_done`` as a prefill does); return the last position's logits [V] and the
    final hidden states of every prompt position [T, H] (what a feature-level draft head,
    EAGLE's, starts from)."""
    if not prompt_ids:
        raise ValueError("cannot prefill an empty prompt")
    engine.reset()
    logits, hidden = engine.forward(engine.ids_tensor(list(prompt_ids)), output_hidden=True)
    if engine.on_prefill_done is not None:
        engine.on_prefill_done()
    return logits[0, -1], hidden[0]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _type_name(tp: Any) -> str:
    return tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"jacobi:n=16,seed=1"`` -> ``("jacobi", {"n": "16", "seed": "1"})``.

    Values may contain ``:`` and ``=`` (``speculative:draft=self:layers=4``) but not commas.
    """
    spec = spec.strip()
    if not spec:
        raise UserError("empty decoder name; use e.g. `ar` or `jacobi:n=16`")
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise UserError(
                    f"malformed decoder parameter {item!r} in {spec!r}; write parameters as "
                    f"`{name}:key=value,key2=value2`"
                )
            params[key.strip()] = value.strip()
    return name.strip(), params


def coerce(value: str, type_name: str, *, what: str) -> Any:
    """Parse a parameter string into the field's type (int, float, bool, str)."""
    try:
        if type_name in ("int",):
            return int(value)
        if type_name in ("float",):
            return float(value)
        if type_name in ("bool",):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
    except ValueError:
        raise UserError(f"{what} must be of type {type_name}, got {value!r}") from None
    return value


def build_decoder(spec: str, registry: Any | None = None) -> Decoder:
    """Instantiate a decoder from its spec string (``name:key=value,...``)."""
    from cllm_bench.registry import DECODERS

    name, raw = split_spec(spec)
    cls = (registry or DECODERS).get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            valid = ", ".join(fields) or "(none)"
            raise UserError(f"decoder {name!r} has no parameter {key!r}; valid parameters: {valid}")
        kwargs[key] = coerce(value, _type_name(fields[key].type), what=f"{name} parameter {key!r}")
    try:
        decoder = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad parameters for decoder {name!r}: {exc}") from None
    return decoder
