"""``medusa``: Medusa-1 decoding (Cai et al. 2024) with a candidate tree, greedy and lossless.

State between steps: x, the last accepted token (not cached yet), and the heads' logits
[H, V] computed from the base model's last hidden state at the position that predicted x
(head h guesses the token h+1 positions after x).

One step = one target forward:

1. **propose** (:func:`tree_tokens`): every tree node is a path ``(i_1, .., i_d)`` of ranks;
   its token is the ``i_d``-th most likely token of head d-1. The fed block is
   ``[x] + nodes`` (node depth d at position P+d), attending through
   :func:`~cllm_bench.decoders.verify.ancestor_mask` (a node sees x and its ancestors).
2. **verify** (:func:`~cllm_bench.decoders.verify.verify_tree`, :func:`~cllm_bench.decoders.verify.tree_accept`): the longest
   root-to-node path whose tokens are the base model's own argmaxes, plus the bonus argmax
   after it — exactly the greedy tokens, so the output equals ``ar``.
3. keep the KV of x and the accepted path (:meth:`SingleEngine.keep`); the heads read the
   hidden state of the path's last node for the next step.

Trees (``tree=``): ``default`` is the Medusa repo's default sparse tree for 4 heads
(``mc_sim_7b_63`` in ``medusa/model/medusa_choices.py``: 63 nodes, ranks < 10, depth <= 4),
cut to the available heads and to ranks < ``topk``; ``chain`` takes the top-1 token of
every head (depth H); ``full`` is the cartesian top-``topk`` tree, breadth first, capped at
63 nodes. Heads (``heads=``): a folder written by :meth:`MedusaHeads.save`, or
``random:H`` for H randomly initialised heads (seeded by ``seed``; a smoke test, no speed-up).
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cllm_bench.decoders.base import Decoder, OutputBuffer
from cllm_bench.decoders.companion import CompanionSlot
from cllm_bench.decoders.verify import ancestor_mask, verify_tree
from cllm_bench.engines.protocols import SingleEngine
from cllm_bench.errors import UserError
from cllm_bench.medusa_heads import CONFIG_FILE, WEIGHTS_FILE, MedusaHeads
from cllm_bench.model_layout import head_input_size
from cllm_bench.registry import register_decoder
from cllm_bench.trace import Trace

#: The Medusa repository's default tree for 4 heads (``mc_sim_7b_63``): rank paths, one
#: per node, ordered as published. Data, not code: the topology of the sparse tree.
MEDUSA_DEFAULT_TREE: tuple[tuple[int, ...], ...] = (
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4), (2, 0),
    (0, 5), (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0),
    (0, 9), (8,), (9,), (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5),
    (0, 0, 0, 0), (0, 1, 1), (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9),
    (6, 0), (0, 4, 0), (1, 4), (7, 0), (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0),
    (1, 5), (1, 0, 1), (0, 2, 1), (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
)  # fmt: skip

TREES = ("default", "chain", "full")
MAX_FULL_NODES = 63


@dataclass(frozen=True)
class CandidateTree:
    """A static tree of rank paths, parents before children.

    paths: node -> rank path (length = depth >= 1). parents: parent node index of every fed
    token, the root x being index 0 (so ``parents[0] = -1`` and node i is fed at i + 1).
    depth: [k] long, position offset of every fed token (root 0). mask: [k, k] ancestor mask.
    """

    paths: tuple[tuple[int, ...], ...]
    parents: tuple[int, ...]
    depth: torch.Tensor
    mask: torch.Tensor

    @property
    def max_depth(self) -> int:
        return max((len(p) for p in self.paths), default=0)

    @property
    def max_rank(self) -> int:
        return max((max(p) for p in self.paths), default=-1) + 1


def build_tree(paths: list[tuple[int, ...]]) -> CandidateTree:
    """Sort rank paths (depth, then ranks) and link each to its parent. Paths must be prefix-closed."""
    ordered = sorted(set(tuple(p) for p in paths), key=lambda p: (len(p), p))
    index = {p: i + 1 for i, p in enumerate(ordered)}  # fed position of each node
    parents = [-1]
    for p in ordered:
        if not p or min(p) < 0:
            raise ValueError(f"bad tree path {p}")
        parent = p[:-1]
        if parent and parent not in index:
            raise ValueError(f"tree path {p} has no parent {parent} in the tree")
        parents.append(index[parent] if parent else 0)
    depth = torch.tensor([0] + [len(p) for p in ordered], dtype=torch.long)
    return CandidateTree(paths=tuple(ordered), parents=tuple(parents), depth=depth, mask=ancestor_mask(parents))


def tree_paths(kind: str, num_heads: int, topk: int) -> list[tuple[int, ...]]:
    """Rank paths of tree ``kind`` for ``num_heads`` heads and ranks < ``topk``."""
    if kind == "chain":
        return [(0,) * d for d in range(1, num_heads + 1)]
    if kind == "default":
        return [p for p in MEDUSA_DEFAULT_TREE if len(p) <= num_heads and max(p) < topk]
    if kind == "full":
        paths: list[tuple[int, ...]] = []
        for d in range(1, num_heads + 1):
            for p in itertools.product(range(topk), repeat=d):
                if len(paths) >= MAX_FULL_NODES:
                    return paths
                paths.append(p)
        return paths
    raise UserError(f"unknown Medusa tree {kind!r}; choose one of: {', '.join(TREES)}")


def tree_tokens(tree: CandidateTree, head_logits: torch.Tensor) -> list[int]:
    """Node tokens (root excluded) for heads' logits [H, V]: node (i_1..i_d) -> top-i_d of head d-1."""
    if not tree.paths:
        return []
    top = torch.topk(head_logits, tree.max_rank, dim=-1).indices  # [H, K]
    heads = torch.tensor([len(p) - 1 for p in tree.paths], device=top.device)
    ranks = torch.tensor([p[-1] for p in tree.paths], device=top.device)
    return top[heads, ranks].tolist()


def prefill_with_hidden(engine: SingleEngine, prompt_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill the prompt; return the last position's logits [V] and final hidden state [H].

    Uses ``engine.prefill(..., output_hidden=True)`` when the engine offers it; otherwise an
    equivalent full-prompt :meth:`SingleEngine.forward` into a fresh cache (which also computes
    logits for every prompt position), firing ``on_prefill_done`` like a prefill does.
    """
    if "output_hidden" in inspect.signature(engine.prefill).parameters:
        return engine.prefill(prompt_ids, output_hidden=True)  # type: ignore[call-arg]
    if not prompt_ids:
        raise ValueError("cannot prefill an empty prompt")
    engine.reset()
    logits, hidden = engine.forward(engine.ids_tensor(list(prompt_ids)), output_hidden=True)
    if engine.on_prefill_done is not None:
        engine.on_prefill_done()
    return logits[0, -1], hidden[0, -1]


def check_heads_spec(spec: str) -> None:
    """Refuse a ``heads=`` value that cannot work, without loading anything: ``random`` /
    ``random:H`` (H >= 1), or a folder (or one of its two files) holding both
    ``medusa_config.json`` and ``medusa_heads.safetensors``."""
    if spec == "random" or spec.startswith("random:"):
        count = spec.partition(":")[2]
        if count and not (count.isdigit() and int(count) >= 1):
            raise UserError(f"heads={spec!r}: write heads=random:H with H an integer >= 1")
        return
    folder = Path(spec).expanduser()
    if folder.is_file() and folder.name in (WEIGHTS_FILE, CONFIG_FILE):
        folder = folder.parent
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"heads={spec!r}: no Medusa heads there ({', '.join(missing)} missing); give a folder written by "
            f"`cllm-bench train medusa`, or heads=random:H"
        )


def build_heads(spec: str, model: Any, seed: int = 0) -> MedusaHeads:
    """Heads for ``model`` from ``random:H`` or a saved folder, on the model's device and dtype."""
    param = next(model.parameters())
    hidden = head_input_size(model)  # the head's input width (OPT: word_embed_proj_dim, not hidden_size)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    if spec.startswith("random"):
        _, _, count = spec.partition(":")
        try:
            num = int(count) if count else 4
        except ValueError:
            raise UserError(f"heads={spec!r}: write heads=random:H with H an integer") from None
        if num < 1:
            raise UserError(f"heads={spec!r}: need at least one head")
        heads = MedusaHeads.random(hidden, vocab, num, seed=seed)
    else:
        heads = MedusaHeads.load(spec, device=param.device, dtype=param.dtype)
        if heads.hidden_size != hidden or heads.vocab_size != vocab:
            raise UserError(
                f"Medusa heads at {spec} were trained for hidden size {heads.hidden_size} / vocabulary "
                f"{heads.vocab_size}, but the model has {hidden} / {vocab}; train heads for this model"
            )
    return heads.to(device=param.device, dtype=param.dtype).eval()


@register_decoder("medusa")
@dataclass
class MedusaDecoder(Decoder):
    """Medusa-1: H heads propose a token tree, one target forward verifies it (lossless).

    heads: folder of saved heads, or ``random:H``. tree: default | chain | full.
    topk: largest rank used per head (default tree: 10 = the whole published tree).
    seed: initialisation seed of random heads.
    """

    heads: str = "random:4"
    tree: str = "default"
    topk: int = 10
    seed: int = 0

    description = "Medusa-1 heads + tree attention, greedy acceptance (lossless)"

    def __post_init__(self) -> None:
        if self.tree not in TREES:
            raise ValueError(f"tree must be one of {TREES}, got {self.tree!r}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        check_heads_spec(self.heads)  # a missing folder fails before a run writes anything
        self._heads: CompanionSlot[MedusaHeads] = CompanionSlot()

    def prepare(self, target: Any) -> None:
        self._heads.put(target.model, self._build_heads(target.model))

    def attach_heads(self, heads: MedusaHeads, model: Any) -> None:
        """Use already built ``heads`` for ``model`` (tests, trainers)."""
        self._heads.put(model, heads)

    def medusa_heads(self, model: Any) -> MedusaHeads:
        """The heads for ``model``, built on first use when :meth:`prepare` was not called."""
        return self._heads.get(model, self._build_heads)

    def _build_heads(self, model: Any) -> MedusaHeads:
        return build_heads(self.heads, model, self.seed)

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        heads = self.medusa_heads(engine.model)
        tree = build_tree(tree_paths(self.tree, heads.num_heads, self.topk))
        trace = Trace(prompt_len=len(prompt_ids))
        out = OutputBuffer(max_new_tokens, eos_ids)
        logits, hidden = prefill_with_hidden(engine, prompt_ids)
        x = int(logits.argmax())
        trace.record("prefill", fed=len(prompt_ids), accepted=out.accept([x]))
        with torch.inference_mode():
            head_logits = heads(hidden)
        while not out.done:
            x, head_logits = self.step(engine, heads, tree, trace, out, x, head_logits)
        return out.finish(trace)

    def step(
        self,
        engine: SingleEngine,
        heads: MedusaHeads,
        tree: CandidateTree,
        trace: Trace,
        out: OutputBuffer,
        x: int,
        head_logits: torch.Tensor,
    ) -> tuple[int, torch.Tensor]:
        """Feed ``[x] + tree``, accept the longest verified path. Returns the new (x, head logits [H, V])."""
        nodes = tree_tokens(tree, head_logits)
        ids = [x] + nodes
        path, accepted, hidden = verify_tree(engine, ids, tree.parents, tree.depth, tree.mask)
        taken = out.accept(accepted)
        trace.record("target", fed=len(ids), accepted=taken, proposed=len(nodes), accepted_len=len(accepted),
                     proposal_depth=tree.max_depth)  # fmt: skip
        last = path[-1] if path else 0
        with torch.inference_mode():
            next_logits = heads(hidden[last])
        return accepted[-1], next_logits
