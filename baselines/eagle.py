"""``eagle``: EAGLE-2 (Li et al. 2024) — a feature-level draft head and a dynamic draft tree.

Greedy and lossless. The head (:class:`~cllm_bench.eagle_head.EagleHead`) drafts at the
feature level with its own KV cache: pair ``(h_t, token_{t+1})`` at position t gives the
feature f_{t+1}, and ``lm_head(f_{t+1})`` the draft distribution of token t + 2.

State between rounds: x, the last accepted token (not in the target cache), and the
*pending* pairs — target hidden states of accepted positions with the token that follows
each — not yet in the head's cache. Target cache length == head cache length + pending.

One round (:meth:`EagleDecoder.step`):

1. **catch up** (one draft forward): feed the pending pairs; the last output is the
   feature ``f_L`` at x's position L;
2. **draft a tree** (:func:`dynamic_tree`, EAGLE-2): the top-``top_k`` tokens of
   ``lm_head(f_L)`` are the depth-1 nodes, scored by their log-probability; then
   ``depth`` times: feed the current top-``top_k`` frontier (one draft forward, a tree
   mask over the head's cache), give every frontier node its top-``top_k`` children
   scored by cumulative log-probability, and keep the ``top_k`` best children as the
   next frontier. Finally rerank every node drafted and keep the ``total_tokens - 1``
   best (by cumulative log-probability — a prefix-closed set, ties to the earlier
   node). ``tree=static`` instead fills EAGLE-1's fixed tree (:data:`EAGLE1_TREE`,
   node ``(r_1..r_d)`` = the r_d-th most likely token after its parent), one draft
   forward per level. The head's cache is then cut back to the accepted text;
3. **verify** (one target forward, :func:`~cllm_bench.decoders.verify.verify_tree`):
   ``[x] + nodes`` with the tree's ancestor mask;
   :func:`~cllm_bench.decoders.verify.tree_accept` keeps the longest path of the
   target's own argmaxes plus the bonus token (so the output equals ``ar``);
   :meth:`SingleEngine.keep` keeps x and the path; the target hidden states of x and the
   path, paired with the accepted tokens, become the next pending pairs.

Every draft forward is a ``draft`` trace step (``fed`` = tokens fed), every target
forward a ``target`` step. As in the reference the tree is not cut to the budget: EOS
inside a tree and a budget ending inside it are handled by :class:`OutputBuffer` (only
when a single token is still wanted — x's bonus — nothing is drafted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from cllm_bench.baselines.medusa import build_tree
from cllm_bench.decoders.base import Decoder, OutputBuffer, prefill_all_hidden
from cllm_bench.decoders.companion import CompanionSlot
from cllm_bench.decoders.verify import verify_tree
from cllm_bench.eagle_head import EagleHead, check_head_fits, head_config, load_eagle_head, read_head_config
from cllm_bench.engines.protocols import SingleEngine
from cllm_bench.errors import UserError
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace

#: EAGLE-1's static tree (``mc_sim_7b_63`` in the EAGLE repo's ``eagle/model/choices.py``):
#: 25 rank paths, depth <= 5, ranks < 4. Data: the topology of the tree.
EAGLE1_TREE: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,), (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 0, 0), (0, 0, 0, 0, 1),
)  # fmt: skip

TREES = ("dynamic", "static")


# ------------------------------------------------------------------ the head's side
class FeatureDrafter:
    """The head, its KV cache and the pairs waiting to enter it, for one generation.

    Invariant: the cache holds pairs for positions ``[0, length)``; pending pairs take
    positions ``length, length + 1, ...``; tree nodes fed by :meth:`expand` sit after
    ``length`` until :meth:`drop_tree` removes them.
    """

    def __init__(self, head: EagleHead, embedding: nn.Module, lm_head: nn.Module) -> None:
        self.head = head
        self.embedding = embedding
        self.lm_head = lm_head
        self.cache = head.new_cache()
        self.length = 0
        self.tree_fed = 0
        self._pending_h: list[torch.Tensor] = []
        self._pending_ids: list[int] = []

    @property
    def pending(self) -> int:
        return len(self._pending_ids)

    def add(self, hidden: torch.Tensor, next_ids: Sequence[int]) -> None:
        """Queue pairs: ``hidden`` [m, H] target features, ``next_ids`` the m following tokens."""
        if hidden.shape[0] != len(next_ids):
            raise ValueError(f"{hidden.shape[0]} features but {len(next_ids)} tokens")
        self._pending_h.append(hidden)
        self._pending_ids += [int(t) for t in next_ids]

    def _run(self, feats: torch.Tensor, ids: list[int], positions: list[int], visible: torch.Tensor) -> torch.Tensor:
        """Feed k pairs after the whole cache; ``visible`` [k, tree_fed + k] bool over the
        tree nodes fed this round and the new block (the accepted text is always visible)."""
        device = feats.device
        dtype = feats.dtype
        k = len(ids)
        past = self.length + self.tree_fed
        allowed = torch.ones(k, past + k, dtype=torch.bool, device=device)
        allowed[:, self.length :] = visible.to(device)
        mask = torch.zeros(k, past + k, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        ids_t = torch.tensor([ids], dtype=torch.long, device=device)
        pos_t = torch.tensor([positions], dtype=torch.long, device=device)
        embeds = self.head.embed(self.embedding, ids_t)
        return self.head(feats.unsqueeze(0), embeds, pos_t, mask[None, None], self.cache)[0]

    @torch.inference_mode()
    def catch_up(self) -> torch.Tensor:
        """Feed the pending pairs (causally); returns the last predicted feature [H]."""
        if self.tree_fed:
            raise RuntimeError("drop the draft tree before feeding accepted pairs")
        feats = torch.cat(self._pending_h, dim=0)
        ids = self._pending_ids
        m = len(ids)
        positions = list(range(self.length, self.length + m))
        out = self._run(feats, ids, positions, torch.ones(m, m, dtype=torch.bool).tril_())
        self.length += m
        self._pending_h, self._pending_ids = [], []
        return out[-1]

    @torch.inference_mode()
    def expand(self, feats: torch.Tensor, ids: list[int], positions: list[int], visible: torch.Tensor) -> torch.Tensor:
        """Feed k tree nodes (features [k, H] of their parents, their tokens, positions);
        ``visible`` [k, tree_fed] says which earlier tree nodes each may see. Returns [k, H]."""
        k = len(ids)
        block = torch.cat([visible.to(torch.bool), torch.eye(k, dtype=torch.bool)], dim=1)
        out = self._run(feats, ids, positions, block)
        self.tree_fed += k
        return out

    @torch.inference_mode()
    def log_probs(self, feats: torch.Tensor) -> torch.Tensor:
        """Draft log-probabilities [..., V] of features [..., H] through the target's lm_head."""
        return torch.log_softmax(self.lm_head(feats).float(), dim=-1)

    def drop_tree(self) -> None:
        """Remove this round's tree nodes from the cache (keep the accepted text)."""
        from cllm_bench.engines import kv_cache

        kv_cache.truncate(self.cache, self.length)
        self.tree_fed = 0


@dataclass
class Candidates:
    """Drafted nodes, in drafting order (a parent always before its children).

    tokens / parents (candidate index, -1 = child of the root x) / scores (cumulative draft
    log-probability) / depths (1 = child of x). ``fed``: candidates fed to the head, in its
    cache order; ``widths``: nodes fed by each draft forward; ``features``: candidate -> the
    head's output [H] at that node.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    fed: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    features: dict[int, torch.Tensor] = field(default_factory=dict)

    def add(self, token: int, parent: int, score: float) -> int:
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.scores.append(float(score))
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        return len(self.tokens) - 1

    def lineage(self, c: int) -> set[int]:
        """``c`` and its ancestors (candidate indices)."""
        out = set()
        while c >= 0:
            out.add(c)
            c = self.parents[c]
        return out

    def feed(self, drafter: FeatureDrafter, nodes: list[int], root_feature: torch.Tensor, base: int) -> torch.Tensor:
        """One draft forward over ``nodes``: input feature = the parent's output (``root_feature``
        for depth 1), position ``base + depth - 1``; each sees its fed ancestors. Returns
        their draft log-probabilities [k, V]."""
        feats = torch.stack([root_feature if self.parents[c] < 0 else self.features[self.parents[c]] for c in nodes])
        lineages = [self.lineage(c) for c in nodes]
        visible = torch.tensor([[f in line for f in self.fed] for line in lineages], dtype=torch.bool)
        visible = visible.reshape(len(nodes), len(self.fed))
        positions = [base + self.depths[c] - 1 for c in nodes]
        out = drafter.expand(feats, [self.tokens[c] for c in nodes], positions, visible)
        for c, f in zip(nodes, out):
            self.features[c] = f
        self.fed += nodes
        self.widths.append(len(nodes))
        return drafter.log_probs(out)

    def as_block(self, chosen: list[int]) -> tuple[list[int], list[int], list[int]]:
        """Verification block of a prefix-closed set ``chosen`` (ascending indices):
        node tokens (root excluded), parents (fed index; root 0 -> -1) and depth offsets."""
        at = {c: i + 1 for i, c in enumerate(chosen)}
        parents = [-1] + [0 if self.parents[c] < 0 else at[self.parents[c]] for c in chosen]
        return [self.tokens[c] for c in chosen], parents, [0] + [self.depths[c] for c in chosen]


def dynamic_tree(drafter: FeatureDrafter, root_feature: torch.Tensor, base: int, top_k: int, expansions: int,
                 nodes: int) -> tuple[Candidates, list[int], int]:  # fmt: skip
    """EAGLE-2's draft tree (see the module docstring); ``expansions`` draft forwards.

    Returns the candidates, the ``nodes`` best of them (ascending index, prefix-closed) and
    the number of draft forwards made (= ``expansions``).
    """
    cands = Candidates()
    logp = drafter.log_probs(root_feature)
    k = min(top_k, logp.shape[-1])
    top = torch.topk(logp, k)
    frontier = [cands.add(t, -1, s) for t, s in zip(top.indices.tolist(), top.values.tolist())]
    for _ in range(expansions):
        logp = cands.feed(drafter, frontier, root_feature, base)
        top = torch.topk(logp, k, dim=-1)  # [k_f, k]
        cum = torch.tensor([cands.scores[c] for c in frontier], dtype=top.values.dtype)[:, None] + top.values.cpu()
        children = [[cands.add(t, c, s) for t, s in zip(toks, scs)]
                    for c, toks, scs in zip(frontier, top.indices.tolist(), cum.tolist())]  # fmt: skip
        best = torch.topk(cum.flatten(), min(k, cum.numel())).indices.tolist()
        frontier = [children[i // k][i % k] for i in best]
    order = sorted(range(len(cands.tokens)), key=lambda c: -cands.scores[c])  # stable: ties keep the parent first
    return cands, sorted(order[:nodes]), expansions


def static_tree(drafter: FeatureDrafter, root_feature: torch.Tensor, base: int,
                paths: list[tuple[int, ...]]) -> tuple[Candidates, list[int], int]:  # fmt: skip
    """EAGLE-1's fixed tree of rank ``paths`` (prefix-closed), filled level by level.

    Returns the candidates (every node, in :func:`build_tree` order), all their indices,
    and the number of draft forwards made (one per level that has children).
    """
    ordered = build_tree(paths).paths if paths else ()
    cands = Candidates()
    index: dict[tuple[int, ...], int] = {}
    logp_of: dict[tuple[int, ...], torch.Tensor] = {(): drafter.log_probs(root_feature)}
    forwards = 0
    max_depth = max((len(p) for p in ordered), default=0)
    for d in range(1, max_depth + 1):
        for p in (q for q in ordered if len(q) == d):
            ranks = torch.topk(logp_of[p[:-1]], p[-1] + 1).indices
            index[p] = cands.add(int(ranks[p[-1]]), index.get(p[:-1], -1), 0.0)
        parents = [p for p in ordered if len(p) == d and any(len(q) == d + 1 and q[:-1] == p for q in ordered)]
        if parents:
            logp = cands.feed(drafter, [index[p] for p in parents], root_feature, base)
            logp_of.update(zip(parents, logp))
            forwards += 1
    return cands, sorted(index.values()), forwards


# ------------------------------------------------------------------ the target's side
def build_head(spec: str, model: Any, seed: int = 0) -> EagleHead:
    """The head for ``model``: ``random`` (seeded, for smoke tests) or a head folder."""
    if spec == "random":
        param = next(model.parameters())
        return EagleHead.random(head_config(model.config), seed=seed).to(device=param.device, dtype=param.dtype).eval()
    return load_eagle_head(spec, model)


@register_decoder("eagle")
@dataclass
class EagleDecoder(Decoder):
    """EAGLE-2: a feature-level draft head drafts a dynamic tree, one target forward verifies it.

    head: folder of a head (EAGLE release layout, or ``cllm-bench train eagle``), or
    ``random`` (seeded by ``seed``; no speed-up). tree: dynamic (EAGLE-2) | static (EAGLE-1).
    depth: draft expansions per round (the deepest node is depth + 1). top_k: children per
    expanded node and frontier width. total_tokens: tokens verified per round, x included.
    Greedy only.
    """

    head: str = ""
    tree: str = "dynamic"
    depth: int = 5
    top_k: int = 10
    total_tokens: int = 60
    seed: int = 0

    description = "EAGLE-2 feature-level draft head + dynamic draft tree (tree=static: EAGLE-1); greedy only, lossless"

    def __post_init__(self) -> None:
        if self.tree not in TREES:
            raise ValueError(f"tree must be one of {TREES}, got {self.tree!r}")
        if self.depth < 0 or self.top_k < 1 or self.total_tokens < 2:
            raise ValueError(
                f"need depth >= 0, top_k >= 1, total_tokens >= 2; got {self.depth}, {self.top_k}, {self.total_tokens}"
            )
        if not self.head:
            raise UserError(
                "eagle needs a draft head: eagle:head=DIR (a folder written by `cllm-bench train eagle` or an EAGLE "
                "release with config.json + weights) or eagle:head=random for a smoke test"
            )
        if self.head != "random":
            read_head_config(self.head)  # a missing or broken folder fails before any cell runs
        self._head: CompanionSlot[EagleHead] = CompanionSlot()

    def validate_target(self, target: Any) -> None:
        """Refuse a head whose hidden size or vocabulary does not fit ``target`` (no loading)."""
        if self.head != "random":
            _, cfg = read_head_config(self.head)
            check_head_fits(cfg, target.model, self.head)

    def prepare(self, target: Any) -> None:
        self._head.put(target.model, self._build_head(target.model))

    def attach_head(self, head: EagleHead, model: Any) -> None:
        """Use an already built ``head`` for ``model`` (tests, trainers)."""
        self._head.put(model, head)

    def eagle_head(self, model: Any) -> EagleHead:
        """The head for ``model``, built on first use when :meth:`prepare` was not called."""
        return self._head.get(model, self._build_head)

    def _build_head(self, model: Any) -> EagleHead:
        return build_head(self.head, model, self.seed)

    def static_paths(self, levels: int) -> list[tuple[int, ...]]:
        """EAGLE-1's tree cut to ranks < top_k and at most ``levels`` deep."""
        return [p for p in EAGLE1_TREE if len(p) <= levels and max(p) < self.top_k]

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        head = self.eagle_head(engine.model)
        drafter = FeatureDrafter(head, engine.model.get_input_embeddings(), engine.model.get_output_embeddings())
        trace = Trace(prompt_len=len(prompt_ids))
        out = OutputBuffer(max_new_tokens, eos_ids)
        logits, hidden = prefill_all_hidden(engine, prompt_ids)
        x = int(logits.argmax())
        trace.record("prefill", fed=len(prompt_ids), accepted=out.accept([x]))
        drafter.add(hidden, list(prompt_ids[1:]) + [x])
        while not out.done:
            x = self.step(engine, drafter, trace, out, x)
        return out.finish(trace)

    def draft(self, drafter: FeatureDrafter, trace: Trace, base: int) -> tuple[Candidates, list[int]]:
        """Catch the head up and draft this round's tree (x at position ``base``); records the
        draft steps; leaves the head's cache holding the accepted text only."""
        fed = drafter.pending
        root = drafter.catch_up()
        trace.record("draft", fed=fed, accepted=0)
        if self.tree == "dynamic":
            cands, chosen, _ = dynamic_tree(drafter, root, base, self.top_k, self.depth, self.total_tokens - 1)
        else:
            cands, chosen, _ = static_tree(drafter, root, base, self.static_paths(self.depth + 1))
        for width in cands.widths:
            trace.record("draft", fed=width, accepted=0)
        drafter.drop_tree()
        return cands, chosen

    def step(self, engine: SingleEngine, drafter: FeatureDrafter, trace: Trace, out: OutputBuffer, x: int) -> int:
        """Draft, verify ``[x] + tree`` in one target forward, keep the accepted path. Returns the new x."""
        tokens, parents, depths = [], [-1], [0]
        if out.remaining > 1:  # the last token wanted is x's bonus: nothing to draft
            cands, chosen = self.draft(drafter, trace, engine.length)
            tokens, parents, depths = cands.as_block(chosen)
        ids = [x] + tokens
        path, accepted, hidden = verify_tree(engine, ids, parents, depths)
        taken = out.accept(accepted)
        trace.record("target", fed=len(ids), accepted=taken, proposed=len(tokens), accepted_len=len(accepted),
                     proposal_depth=max(depths))  # the tree's depth: the longest draft path offered
        drafter.add(hidden[[0] + path], accepted)  # x and the path: features for the next pairs
        return accepted[-1]

