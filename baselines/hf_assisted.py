"""HF assisted generation and HF prompt lookup, run with every forward counted.

The ``hf`` decoder's variants ``hf:assistant=SPEC[,k=N]`` and ``hf:prompt_lookup=N``
(:mod:`cllm_bench.baselines.hf_generate`) call transformers' own
``generate(assistant_model=...)`` / ``generate(prompt_lookup_num_tokens=...)``: the external
references for our ``speculative`` and ``prompt_lookup``. transformers' code is not
changed; this module only *observes* it, with public hooks, and turns what it saw into
a :class:`~cllm_bench.trace.Trace` counted the way our decoders count:

* a forward pre-hook on the target module (``register_forward_pre_hook``) logs every
  target forward and its width (``input_ids.shape[1]``);
* a second one on the assistant logs the assistant's forwards apart (``draft`` steps);
* a streamer logs what each target forward made final: transformers' assisted loop puts
  exactly one ``valid_tokens`` tensor per target forward (the accepted candidates + the
  target's own next token, cut at EOS / the length budget), after the prompt's put.

Event order in one ``generate`` call (batch 1): ``put(prompt)``, then per round
``draft* target put``. transformers fuses the prefill with the first verification: the
first target forward carries the prompt *and* the first round's candidates, and the
assistant's first round runs before it. The trace keeps its invariant (the target's
prefill first) by recording that first round's draft forwards right after the prefill
step; every count is unchanged by that order.

Hook identity: a module view (:func:`assistant_view`, and the ``self:layers=K`` view of
:func:`~cllm_bench.baselines.speculative.truncated_model`) is a shallow copy that shares
its hook table with the target, so each hook counts only calls whose ``module`` is the
one it watches (``module is target``), never the other's.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

import torch
from transformers.generation.streamers import BaseStreamer

from cllm_bench.decoders.base import OutputBuffer
from cllm_bench.trace import Trace, TraceError

EventKind = Literal["target", "draft", "put"]


@dataclass
class ForwardLog:
    """What one ``generate`` call did, in order.

    events: ("target", width, []) / ("draft", width, []) for forwards, ("put", n, tokens)
        for each streamer put (the first put is the prompt).
    """

    events: list[tuple[EventKind, int, list[int]]] = field(default_factory=list)

    def add(self, kind: EventKind, width: int, tokens: list[int] | None = None) -> None:
        self.events.append((kind, width, tokens or []))


class PutRecorder(BaseStreamer):
    """Streamer that logs every put into ``log`` and calls ``on_first_token`` once, at the
    first put after the prompt (the runner's TTFT clock)."""

    def __init__(self, log: ForwardLog, on_first_token: Callable[[], None] | None) -> None:
        self.log = log
        self.on_first_token = on_first_token
        self.puts = 0

    def put(self, value: torch.Tensor) -> None:
        tokens = value.reshape(-1).tolist()
        self.log.add("put", len(tokens), tokens)
        self.puts += 1
        if self.puts == 2 and self.on_first_token is not None:
            self.on_first_token()

    def end(self) -> None:
        pass


def _width(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Positions fed by one forward call: ``input_ids`` (or ``inputs_embeds``) [B, T] -> T."""
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return int(value.shape[1])
    if args and isinstance(args[0], torch.Tensor):
        return int(args[0].shape[1])
    raise TraceError("a counted forward had neither input_ids nor inputs_embeds")


@contextmanager
def counted(target: torch.nn.Module, assistant: torch.nn.Module | None, log: ForwardLog) -> Iterator[None]:
    """Log the forwards of ``target`` (and ``assistant``) into ``log`` while the block runs.

    Hooks are removed on exit, also on an exception; see the module docstring for why
    each hook checks the identity of the module it is called for.
    """

    def watch(module: torch.nn.Module, kind: EventKind) -> Any:
        def hook(called: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if called is module:
                log.add(kind, _width(args, kwargs))

        return module.register_forward_pre_hook(hook, with_kwargs=True)

    handles = [watch(target, "target")]
    if assistant is not None:
        handles.append(watch(assistant, "draft"))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def assistant_view(model: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of ``model`` with its own ``generation_config`` (a deep copy).

    Weights, buffers and submodules are shared. transformers reads the assistant's
    schedule from ``assistant.generation_config`` and writes the ``"heuristic"`` schedule's
    state back into it after every call; on a view that write touches neither the target
    (``draft=self`` is the target itself; ``self:layers=K`` shares its config object) nor a
    caller's model.
    """
    view = copy.copy(model)
    view.generation_config = copy.deepcopy(model.generation_config)
    return view


def set_schedule(assistant: torch.nn.Module, base: Any, k: int) -> None:
    """Give ``assistant`` a fresh copy of ``base`` (its generation config as loaded), then,
    when ``k > 0``, a fixed draft length: ``num_assistant_tokens = k``,
    ``num_assistant_tokens_schedule = "constant"`` and ``assistant_confidence_threshold = 0``
    (no early stop on low draft confidence) — k drafts per round, like ``speculative:k``.
    ``k == 0`` keeps transformers' defaults (see docs/decoders.md). Called before every
    ``generate`` so that no sample inherits the schedule state of the one before.
    """
    config = copy.deepcopy(base)
    if k > 0:
        config.num_assistant_tokens = k
        config.num_assistant_tokens_schedule = "constant"
        config.assistant_confidence_threshold = 0.0
    assistant.generation_config = config


def trace_from_log(log: ForwardLog, prompt_len: int, new_tokens: list[int], max_new_tokens: int,
                   eos_ids: frozenset[int]) -> Trace:  # fmt: skip
    """The trace of one assisted ``generate`` call from its :class:`ForwardLog`.

    Steps: the first target forward as ``prefill`` (fed = prompt + first candidates,
    proposed = the candidates), the first round's draft forwards, then per later round its
    draft forwards and one ``target`` step (fed = 1 + candidates, proposed = candidates).
    ``accepted`` is what the round's put offered, as taken by the shared
    :class:`OutputBuffer`. Raises :class:`TraceError` when the log does not have the shape
    of the module docstring or its tokens differ from ``new_tokens`` (what ``generate``
    returned): a transformers whose loop we do not understand, never a user error.
    """
    events = list(log.events)
    if not events or events[0][0] != "put":
        raise TraceError("assisted generate: the streamer never received the prompt")
    rounds: list[tuple[list[int], int, list[int]]] = []  # (draft widths, target width, put tokens)
    drafts: list[int] = []
    target_width: int | None = None
    for kind, width, tokens in events[1:]:
        if kind == "draft":
            if target_width is not None:
                raise TraceError("assisted generate: a draft forward between a target forward and its put")
            drafts.append(width)
        elif kind == "target":
            if target_width is not None:
                raise TraceError("assisted generate: two target forwards without a put between them")
            target_width = width
        else:
            if target_width is None:
                raise TraceError("assisted generate: a put without a target forward")
            rounds.append((drafts, target_width, tokens))
            drafts, target_width = [], None
    if drafts or target_width is not None:
        raise TraceError("assisted generate: forwards after the last put")
    streamed = [t for _, _, tokens in rounds for t in tokens]
    if streamed != list(new_tokens):
        raise TraceError(
            f"assisted generate returned {len(new_tokens)} tokens but its streamer saw {len(streamed)} other ones"
        )
    trace = Trace(prompt_len=prompt_len)
    out = OutputBuffer(max_new_tokens, eos_ids)
    for i, (widths, width, tokens) in enumerate(rounds):
        taken = out.accept(tokens)
        if i == 0:  # the prefill, then the assistant's forwards that ran before it
            trace.record("prefill", fed=width, accepted=taken, proposed=width - prompt_len)
            for j, w in enumerate(widths):
                trace.record("draft", fed=w, accepted=0, **({"prefill": True} if j == 0 else {}))
        else:
            for w in widths:
                trace.record("draft", fed=w, accepted=0)
            trace.record("target", fed=width, accepted=taken, proposed=width - 1)
    return out.finish(trace)
