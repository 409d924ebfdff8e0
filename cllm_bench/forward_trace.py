"""The per-forward trace of one sample: what ``cllm-bench predict`` costs on another device.

A :class:`~cllm_bench.trace.Trace` records every forward's kind and width (``fed``) but not
the KV-cache length it ran against. :func:`forward_trace` derives it from the trace alone,
using the engine invariant (:mod:`cllm_bench.engines`): after a decoder's step the target
cache holds the prompt and the accepted tokens, possibly minus the newest one, which is fed
at the next step. So, with ``P`` the prompt length and ``A`` the output tokens accepted
before a step:

* prefill (``kind == "prefill"``): context 0, width ``P``;
* target decode forward: context ``P + A - 1`` (exact for ``ar``, Jacobi, speculative and
  prompt lookup; tree decoders keep the same invariant after :meth:`Engine.keep`);
* draft forward: a draft model keeps its own cache of the accepted text. A *round* is a run
  of consecutive draft steps; its first forward feeds the ``f0`` accepted tokens the draft
  has not seen yet, so runs at context ``max(0, P + A - f0)``, and every later forward of
  the round at that plus the tokens fed earlier in the round. A draft step whose
  ``info["prefill"]`` is true (the draft's own prompt pass) has context 0.

The context of a draft forward is exact for ``speculative`` and within one position for
EAGLE's catch-up pass; tree drafting (EAGLE's levels) is costed as chain positions.

The record written into ``samples.jsonl`` (key ``forward_trace``) is columnar, one entry
per forward over all turns of the sample, in order::

    {"kinds": "ptttdddt...",      # p = prefill, t = target decode, d = draft
     "fed": [P, 1, 1, ...],       # tokens fed (width) per forward
     "context": [0, P, P+1, ...], # KV positions before the forward (derived as above)
     "tree": false,               # target decode forwards carry a tree attention mask
     "model": {...}}              # identity of the target (see :func:`model_identity`)

Invariant: ``len(kinds) == len(fed) == len(context)`` and every turn starts with ``p``.
"""

from __future__ import annotations

from typing import Any, Iterable

from cllm_bench.trace import Trace

#: one letter per step kind in ``kinds``
KIND_LETTER = {"prefill": "p", "target": "t", "draft": "d"}
LETTER_KIND = {v: k for k, v in KIND_LETTER.items()}

#: decoders (registered names) whose target decode forwards carry a tree attention mask; a
#: decoder class may say so itself with a ``tree_verify`` class attribute
TREE_DECODERS = frozenset({"lookahead", "medusa", "eagle"})

#: config fields that identify a model's shape (what a cost table is valid for)
IDENTITY_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
                   "num_key_value_heads", "intermediate_size")  # fmt: skip


def model_identity(model: Any) -> dict[str, Any]:
    """Shape fields of a transformers model's (text) config; absent fields are left out."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {key: getattr(text, key) for key in IDENTITY_FIELDS if getattr(text, key, None) is not None}


def uses_tree(decoder: Any) -> bool:
    """Whether ``decoder``'s target decode forwards carry a tree attention mask."""
    return bool(getattr(decoder, "tree_verify", getattr(decoder, "registered_name", "") in TREE_DECODERS))


def steps_with_context(trace: Trace) -> list[tuple[str, int, int]]:
    """(kind letter, fed, context) of every step of ``trace`` (module docstring rules)."""
    out: list[tuple[str, int, int]] = []
    accepted = 0
    round_start: int | None = None  # context of the current draft round's first forward
    round_fed = 0
    for step in trace.steps:
        if step.kind == "prefill":
            context = 0
            round_start = None
        elif step.kind == "target":
            context = max(0, trace.prompt_len + accepted - 1)
            round_start = None
        elif step.info.get("prefill"):
            context = 0
            round_start, round_fed = 0, step.fed
        else:
            if round_start is None:
                round_start, round_fed = max(0, trace.prompt_len + accepted - step.fed), 0
            context = round_start + round_fed
            round_fed += step.fed
        out.append((KIND_LETTER[step.kind], step.fed, context))
        accepted += step.accepted
    return out


def forward_trace(traces: Iterable[Trace], decoder: Any, model: Any) -> dict[str, Any]:
    """The ``forward_trace`` record of one sample (all turns' traces, in order)."""
    rows = [row for trace in traces for row in steps_with_context(trace)]
    return {
        "kinds": "".join(r[0] for r in rows),
        "fed": [r[1] for r in rows],
        "context": [r[2] for r in rows],
        "tree": uses_tree(decoder),
        "model": model_identity(model),
    }
