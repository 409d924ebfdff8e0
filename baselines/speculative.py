"""``speculative``: draft-model speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

Split as in vLLM's speculative decoding:

* **proposer** (:class:`DraftModelProposer`, :func:`propose`): the draft model, with its own
  :class:`SingleEngine` and KV cache, proposes k tokens one forward at a time (greedy, or
  sampled when temperature > 0);
* **scorer** (:func:`~cllm_bench.decoders.draft_verify.score_chain`): the target scores
  ``[x, d_1..d_k]`` in ONE forward (x = the last accepted token), giving its prediction
  after every prefix;
* **verifier** (:func:`~cllm_bench.decoders.verify.chain_accept` for greedy,
  :func:`~cllm_bench.decoders.verify.sample_accept` for sampling): greedy keeps the longest
  prefix of the draft that agrees with the target's argmaxes plus the target's next token,
  so 1..k+1 tokens per target forward and the output equals ``ar``. Both caches are then
  rolled back to the accepted text.

The single-sequence path is the loop every chain proposer shares
(:func:`~cllm_bench.decoders.draft_verify.run_chain`); this file holds the draft side.
The batched path (:meth:`SpeculativeDecoder.generate_batch`) runs the same steps for every
row at once.

Draft sources (``draft=...``, loaded in :meth:`SpeculativeDecoder.prepare`, never timed):

* ``self`` — the target itself (own cache): every proposal is accepted, k+1 tokens per
  target forward; a sanity check of the machinery, not a speed-up;
* ``self:layers=K`` — the target's first K decoder layers + its final norm and head,
  sharing the target's weights (a shallow module view, no copy; K >= the layer count
  means the whole model); any decoder-only architecture (blocks found by
  :func:`cllm_bench.model_layout.decoder_blocks`);
* any model spec :func:`cllm_bench.models.load_model` accepts, loaded in the target's
  dtype on its device. A draft whose vocabulary differs from the target's is refused.

``temperature > 0`` switches to standard speculative *sampling*: drafts are sampled from
the draft distribution q, each is accepted with probability ``min(1, p/q)``, the first
rejection resamples from ``norm(max(0, p - q))``, and a full acceptance samples the bonus
from p — the output is distributed exactly as sampling from the target at that
temperature. Such a decoder is not lossless w.r.t. ``ar`` (``lossless`` is False on the
instance) and is never compared with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cllm_bench.decoders.base import Decoder, OutputBuffer, greedy_chain, greedy_start_batch
from cllm_bench.decoders.companion import CompanionSlot
from cllm_bench.decoders.draft_verify import Proposal, pick_token, proposal_budget, run_chain
from cllm_bench.decoders.verify import chain_accept
from cllm_bench.engines.batch import pad_batch
from cllm_bench.engines.factory import build_companion_engine
from cllm_bench.engines.protocols import BatchedEngine, SingleEngine, is_batched
from cllm_bench.errors import UserError
from cllm_bench.model_layout import decoder_blocks
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace


# ----------------------------------------------------------------------- draft models
def _module_view(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose child table can be changed without touching the original.

    Parameters, buffers and children are shared (same tensors, same submodules).
    """
    view = copy.copy(module)
    view._modules = dict(module._modules)  # type: ignore[assignment]
    return view


def truncated_model(model: nn.Module, layers: int) -> nn.Module:
    """The first ``layers`` decoder layers of a causal LM + its final norm and head, weights shared.

    Works for any decoder-only transformers model: the block list is found by
    :func:`cllm_bench.model_layout.decoder_blocks` (``model.layers`` for Llama/Qwen2,
    ``gpt_neox.layers``, ``transformer.h``, ``model.decoder.layers``, ...). Every module on
    the path to the list is replaced in the view by a shallow copy (:func:`_module_view`)
    so the original is untouched. The view has its own config (``num_hidden_layers =
    layers``, and ``layer_types`` cut to match), set on every module of the path that holds
    one, so an engine over it builds a cache of ``layers`` layers, separate from the
    target's. ``layers >= `` the layer count returns ``model`` itself.
    """
    if layers < 1:
        raise UserError(f"draft=self:layers=K needs K >= 1, got {layers}")
    found = decoder_blocks(model)
    if layers >= len(found.blocks):
        return model
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    view = _module_view(model)
    parent_view, parent = view, model
    for name in found.path[:-1]:
        child = getattr(parent, name)
        child_view = _module_view(child)
        parent_view._modules[name] = child_view
        parent_view, parent = child_view, child
    parent_view._modules[found.path[-1]] = nn.ModuleList(list(found.blocks[:layers]))
    for module in (view, *_path_modules(view, found.path[:-1])):
        if getattr(module, "config", None) is model.config:
            module.config = config
    return view


def _path_modules(root: nn.Module, path: tuple[str, ...]) -> list[nn.Module]:
    """The modules met going down ``path`` from ``root`` (``root`` excluded)."""
    out, module = [], root
    for name in path:
        module = getattr(module, name)
        out.append(module)
    return out


def parse_draft(spec: str) -> tuple[str, int | None]:
    """``"self"`` -> ("self", None); ``"self:layers=4"`` -> ("self", 4); other -> (spec, None)."""
    if spec == "self":
        return "self", None
    if spec.startswith("self:"):
        key, eq, value = spec[len("self:") :].partition("=")
        if key.strip() != "layers" or not eq:
            raise UserError(f"draft {spec!r}: write draft=self or draft=self:layers=K")
        try:
            return "self", int(value)
        except ValueError:
            raise UserError(f"draft {spec!r}: K in self:layers=K must be an integer") from None
    if not spec:
        raise UserError("speculative needs a draft model: draft=self, draft=self:layers=K or draft=MODEL")
    return spec, None


def vocab_size(model: Any) -> int:
    """Rows of the output embedding (the logits' width)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def check_same_vocabulary(target: Any, draft: Any, target_tok: Any = None, draft_tok: Any = None, name: str = "") -> None:
    """Raise :class:`UserError` unless draft and target share logits width (and tokenizer)."""
    tv, dv = vocab_size(target), vocab_size(draft)
    if tv != dv:
        raise UserError(
            f"draft model {name!r} has a vocabulary of {dv} tokens but the target has {tv}; speculative decoding "
            f"needs a draft with the target's tokenizer (e.g. a smaller model of the same family)"
        )
    if target_tok is not None and draft_tok is not None and target_tok is not draft_tok:
        if len(target_tok) != len(draft_tok) or target_tok.get_vocab() != draft_tok.get_vocab():
            raise UserError(
                f"draft model {name!r} uses a different tokenizer than the target; speculative decoding needs a "
                f"draft with the same tokenizer"
            )


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float64: "float64"}


def load_draft(spec: str, target_model: Any, target_tokenizer: Any = None) -> Any:
    """Build or load the draft model named by ``spec`` for ``target_model``."""
    source, layers = parse_draft(spec)
    if source == "self":
        return target_model if layers is None else truncated_model(target_model, layers)
    from cllm_bench.models import load_model

    device = next(target_model.parameters()).device
    dtype = next(target_model.parameters()).dtype
    loaded = load_model(source, dtype=_DTYPE_NAMES.get(dtype, "auto"), device=str(device))
    check_same_vocabulary(target_model, loaded.model, target_tokenizer, loaded.tokenizer, name=source)
    return loaded.model


# ------------------------------------------------------------------------- proposer
def propose(
    draft: SingleEngine,
    pending: list[int],
    k: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[torch.Tensor]]:
    """k draft tokens after the accepted text, k draft forwards.

    pending: accepted tokens not yet in the draft cache (>= 1; the last is x). The draft
    cache grows by ``len(pending) + k - 1`` (d_k is proposed, never fed).
    Returns ``(d_1..d_k, q)`` where q is the list of k draft distributions [V] when
    sampling (empty when greedy). Greedy drafting keeps each argmax on the device and feeds
    it to the next draft forward: one device -> host read per proposal, not one per token.
    """
    if k <= 0:
        return [], []
    if temperature <= 0:
        return greedy_chain(draft, draft.ids_tensor(pending), k)[0].tolist(), []
    tokens: list[int] = []
    dists: list[torch.Tensor] = []
    feed = pending
    for _ in range(k):
        logits = draft.forward(draft.ids_tensor(feed))[0, -1]
        tok, probs = pick_token(logits, temperature, generator)
        tokens.append(tok)
        if probs is not None:
            dists.append(probs)
        feed = [tok]
    return tokens, dists


def propose_batch(draft: BatchedEngine, pending: list[list[int]], ks: list[int]) -> list[list[int]]:
    """Greedy :func:`propose` for a batch: row b gets ``ks[b]`` draft tokens (0 = the row
    sits out), in ``max(ks)`` batched draft forwards; row b takes part in the first ``ks[b]``.

    The first forward carries each row's ``pending`` (right-padded), later ones one token.
    Row b's draft cache grows by ``len(pending[b]) + ks[b] - 1``, as with :func:`propose`.
    """
    tokens: list[list[int]] = [[] for _ in pending]
    feeds = [list(p) if k > 0 else [] for p, k in zip(pending, ks)]
    rows = torch.arange(len(pending), device=draft.device)
    for i in range(max(ks, default=0)):
        counts = [len(f) for f in feeds]
        ids, _ = pad_batch(feeds, draft.pad_id)
        logits = draft.forward(ids, counts)
        last = (torch.tensor(counts, device=draft.device) - 1).clamp(min=0)
        picks = logits[rows, last].argmax(dim=-1).tolist()  # [B]: token after each row's last real column
        for b, count in enumerate(counts):
            if count:
                tokens[b].append(picks[b])
        feeds = [[tokens[b][-1]] if i + 1 < ks[b] else [] for b in range(len(pending))]
    return tokens


class DraftModelProposer:
    """The draft model as a :class:`~cllm_bench.decoders.draft_verify.ChainProposer`.

    ``pending``: accepted tokens not yet in the draft cache (>= 1 after :meth:`start`; the
    last is x). Invariant between steps: the draft cache holds the accepted text minus
    ``pending``. Every draft forward is a ``draft`` step (the prefill with ``prefill=True``);
    every target step records ``draft_accepted`` (draft tokens the target accepted).
    """

    def __init__(self, draft: SingleEngine, temperature: float = 0.0, generator: torch.Generator | None = None) -> None:
        self.draft = draft
        self.temperature = temperature
        self.generator = generator
        self.pending: list[int] = []
        self.base = 0  # the draft cache length before the current proposal

    def start(self, prompt_ids: list[int], first: int, trace: Trace, hidden: torch.Tensor | None) -> None:
        self.pending = [first]
        self.draft.prefill(prompt_ids)
        trace.record("draft", fed=len(prompt_ids), accepted=0, prefill=True)

    def propose(self, budget: int, trace: Trace) -> Proposal:
        """``budget`` draft tokens, ``budget`` draft forwards (none for a budget of 0)."""
        self.base = self.draft.length
        if budget == 0:
            return Proposal([])
        tokens, dists = propose(self.draft, self.pending, budget, self.temperature, self.generator)
        for i in range(budget):
            trace.record("draft", fed=len(self.pending) if i == 0 else 1, accepted=0)
        return Proposal(tokens, dists)

    def step_info(self, proposal: Proposal, accepted: list[int]) -> dict[str, Any]:
        return {"draft_accepted": len(accepted) - 1}

    def commit(self, proposal: Proposal, accepted: list[int], hidden: torch.Tensor | None) -> None:
        """Roll the draft cache back to the accepted text; the rest becomes ``pending``."""
        k, m = len(proposal.tokens), len(accepted) - 1  # proposed, accepted draft tokens
        if k == 0:
            self.pending = self.pending + accepted
            return
        # the draft fed pending + d_1..d_{k-1}: keep pending + d_1..d_min(m, k-1)
        self.draft.rollback(self.base + len(self.pending) + min(m, k - 1))
        self.pending = proposal.tokens[k - 1 : k] + accepted[-1:] if m == k else accepted[-1:]


# --------------------------------------------------------------------------- decoder
@register_decoder("speculative")
@dataclass
class SpeculativeDecoder(Decoder):
    """Draft-model speculative decoding: k proposals per step, one target forward to verify.

    draft: ``self``, ``self:layers=K`` (the target's first K layers, shared weights) or a
    model spec (alias, folder, .gguf, hub id) with the target's tokenizer.
    k: tokens proposed per step (capped by the tokens still needed).
    temperature: 0 = greedy (lossless); > 0 = speculative sampling (not compared with ar).
    seed: RNG seed for sampling.
    """

    draft: str = "self:layers=4"
    k: int = 5
    temperature: float = 0.0
    seed: int = 0

    description = "speculative decoding with a draft model (proposer/scorer/verifier; lossless when greedy)"
    supports_batch = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        source, layers = parse_draft(self.draft)  # fail fast on a malformed draft spec
        if layers is not None and layers < 1:
            raise ValueError(f"draft=self:layers=K needs K >= 1, got {layers}")
        if source != "self":
            from cllm_bench.models import check_model_spec

            check_model_spec(source)  # a missing folder/file or unknown model_type fails before any write
        self.lossless = self.temperature == 0  # type: ignore[misc]  # instance value shadows the ClassVar
        self.supports_batch = self.temperature == 0  # type: ignore[misc]  # the batched path is greedy only
        self._draft: CompanionSlot[Any] = CompanionSlot()  # the draft model, for one target model
        self._draft_engine: SingleEngine | BatchedEngine | None = None
        self._draft_engine_for: tuple[Any, Any] = (None, None)  # (target engine, draft model)

    def prepare(self, target: Any) -> None:
        """Build/load the draft for ``target`` (a LoadedModel); checked against its vocabulary."""
        self._draft.put(target.model, load_draft(self.draft, target.model, getattr(target, "tokenizer", None)))

    def attach_draft(self, draft_model: Any, target_model: Any) -> None:
        """Use an already built ``draft_model`` for ``target_model`` (tests, trainers); vocabulary checked."""
        check_same_vocabulary(target_model, draft_model, name=type(draft_model).__name__)
        self._draft.put(target_model, draft_model)

    def draft_model(self, target_model: Any) -> Any:
        """The draft for ``target_model``, built on first use when :meth:`prepare` was not called."""
        return self._draft.get(target_model, lambda model: load_draft(self.draft, model))

    def draft_engine(self, engine: SingleEngine) -> SingleEngine:
        """The draft's engine for target ``engine``: same kind, own cache, reused across calls
        (so a compiled draft forward is compiled once)."""
        model = self.draft_model(engine.model)
        target, built_for = self._draft_engine_for
        if self._draft_engine is None or target is not engine or built_for is not model:
            self._draft_engine = build_companion_engine(engine, model)
            self._draft_engine_for = (engine, model)
        return self._draft_engine

    def batch_draft_engine(self, engine: BatchedEngine) -> BatchedEngine:
        """The draft's batched engine for the target's (own cache, same kind and padding token)."""
        model = self.draft_model(engine.model)
        target, built_for = self._draft_engine_for
        if not is_batched(self._draft_engine) or target is not engine or built_for is not model:
            self._draft_engine = build_companion_engine(engine, model)
            self._draft_engine_for = (engine, model)
        return self._draft_engine

    def generate_batch(
        self, engine: BatchedEngine, prompts: list[list[int]], max_new_tokens: int, eos_ids: frozenset[int]
    ) -> list[Trace]:
        """Greedy speculative decoding of a batch: every round, each unfinished row proposes
        its own k draft tokens (batched draft forwards), one batched target forward scores
        all rows, and each row keeps its own accepted prefix (per-row acceptance lengths,
        per-row rollback of both caches). Each row's trace equals :meth:`generate`'s."""
        if self.temperature > 0:
            raise UserError(f"{self.label}: the batched path is greedy only; use temperature=0 at batch size > 1")
        draft = self.batch_draft_engine(engine)
        traces, outs, firsts = greedy_start_batch(engine, prompts, max_new_tokens, eos_ids)
        draft.prefill(prompts)
        for b in range(len(prompts)):
            if not outs[b].done:
                traces[b].record("draft", fed=len(prompts[b]), accepted=0, prefill=True)
        pending = [[x] for x in firsts]  # per row: accepted tokens not in the draft cache (the last is x)
        while not all(o.done for o in outs):
            pending = self.step_batch(engine, draft, traces, outs, pending)
        return [o.finish(t) for o, t in zip(outs, traces)]

    def step_batch(
        self, target: BatchedEngine, draft: BatchedEngine, traces: list[Trace], outs: list[OutputBuffer],
        pending: list[list[int]],
    ) -> list[list[int]]:  # fmt: skip
        """One propose -> score -> verify step (as :func:`~cllm_bench.decoders.draft_verify.verify_step`
        with a :class:`DraftModelProposer`) for every unfinished row at once; finished rows
        sit out (count 0). Returns each row's new ``pending``."""
        active = [not o.done for o in outs]
        ks = [proposal_budget(self.k, o.remaining) if a else 0 for o, a in zip(outs, active)]
        target_keep, draft_keep = target.lengths.tolist(), draft.lengths.tolist()  # before this step
        proposals = propose_batch(draft, pending, ks)
        feeds = [[p[-1]] + d if a else [] for p, d, a in zip(pending, proposals, active)]
        ids, _ = pad_batch(feeds, target.pad_id)
        predicted = target.forward(ids, [len(f) for f in feeds]).argmax(dim=-1).tolist()
        new_pending = list(pending)
        for b, k in enumerate(ks):
            if not active[b]:
                continue
            for i in range(k):
                traces[b].record("draft", fed=len(pending[b]) if i == 0 else 1, accepted=0)
            accepted = chain_accept(proposals[b], predicted[b][: k + 1])
            m = len(accepted) - 1
            target_keep[b] += 1 + m  # the row fed x, d_1..d_k: keep x, d_1..d_m
            taken = outs[b].accept(accepted)
            traces[b].record("target", fed=k + 1, accepted=taken, proposed=k, draft_accepted=m)
            if k == 0:
                new_pending[b] = pending[b] + accepted
                continue
            draft_keep[b] += len(pending[b]) + min(m, k - 1)  # it fed pending + d_1..d_k-1: keep pending + d_1..d_min(m, k-1)
            new_pending[b] = proposals[b][k - 1 : k] + accepted[-1:] if m == k else accepted[-1:]
        target.truncate(target_keep)
        draft.truncate(draft_keep)
        return new_pending

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        draft = self.draft_engine(engine)
        generator = None
        if self.temperature > 0:
            generator = torch.Generator(device=engine.device).manual_seed(self.seed)
        proposer = DraftModelProposer(draft, self.temperature, generator)
        return run_chain(engine, proposer, prompt_ids, max_new_tokens, eos_ids, self.k, self.temperature, generator)
