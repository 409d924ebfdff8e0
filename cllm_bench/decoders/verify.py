"""Verification primitives shared by every draft-and-verify decoder (the verify half of
propose -> verify): whatever proposes candidates — a draft model, prompt lookup, the
n-gram pool, Medusa or EAGLE heads — the target checks them with these.

* :func:`chain_accept` — greedy verification of one speculated chain (speculative
  decoding, prompt lookup): longest agreeing prefix plus the target's next token;
* :func:`ancestor_mask` / :func:`tree_accept` — greedy verification of a token tree fed in
  one forward with a tree attention mask (Medusa and EAGLE trees, lookahead's
  verification branch, CLLM + lookahead): the longest root-to-node path whose every token
  is the target's argmax after its parent, plus the argmax after the path's last node
  (the bonus token);
* :func:`verify_tree` — one target forward over a tree, acceptance and the cache kept to
  the accepted path (:meth:`~cllm_bench.engines.protocols.SingleEngine.keep`);
* :func:`sample_accept` — speculative sampling (Leviathan et al. 2023): lossless in
  distribution at temperature > 0.

All but :func:`verify_tree` are pure (Python lists / tensors in, Python lists out). The
propose -> verify loop around :func:`chain_accept` / :func:`sample_accept` is
:func:`cllm_bench.decoders.draft_verify.run_chain`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from cllm_bench.engines.protocols import SingleEngine


def chain_accept(draft: Sequence[int], predicted: Sequence[int]) -> list[int]:
    """Greedy verification of one speculated chain.

    draft: the k speculated tokens d_1..d_k, fed after the last accepted token x.
    predicted: k+1 target argmaxes; ``predicted[i]`` follows (x, d_1..d_i).
    Returns the accepted tokens ``d_1..d_m + [predicted[m]]`` (m = longest agreeing prefix),
    1 <= len <= k+1. Each returned token equals the greedy token of the target.
    """
    m = 0
    while m < len(draft) and int(draft[m]) == int(predicted[m]):
        m += 1
    return [int(t) for t in draft[:m]] + [int(predicted[m])]


def ancestor_mask(parents: Sequence[int]) -> torch.Tensor:
    """[k, k] bool tree attention mask: ``mask[i, j]`` iff node j is node i or an ancestor.

    parents: ``parents[i]`` is the index of node i's parent (``-1`` for a root); parents
    must come before children (``parents[i] < i``).
    """
    k = len(parents)
    mask = torch.zeros(k, k, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            if p >= i:
                raise ValueError(f"node {i} has parent {p}: parents must precede children")
            mask[i] = mask[p]
        mask[i, i] = True
    return mask


def tree_accept(tokens: Sequence[int], parents: Sequence[int], predicted: Sequence[int]) -> tuple[list[int], list[int]]:
    """Greedy verification of a token tree rooted at node 0.

    tokens: node tokens; node 0 is the root, the last accepted token (already output).
    parents: parent index per node (``parents[0] = -1``, ``parents[i] < i``).
    predicted: target argmax at every node (the token that follows the node's path).
    Returns ``(path, accepted)``: ``path`` = node indices (root excluded) of the longest
    verified root-to-node path, ties broken by the smallest node index; ``accepted`` =
    the path's tokens followed by the argmax at its last node (1 <= len = len(path)+1).
    A node is verified iff its parent is verified and ``tokens[node] == predicted[parent]``.
    """
    k = len(tokens)
    depth = [-1] * k  # -1: not verified
    depth[0] = 0
    best = 0
    for i in range(1, k):
        p = parents[i]
        if depth[p] >= 0 and int(tokens[i]) == int(predicted[p]):
            depth[i] = depth[p] + 1
            if depth[i] > depth[best]:
                best = i
    path: list[int] = []
    node = best
    while node != 0:
        path.append(node)
        node = parents[node]
    path.reverse()
    return path, [int(tokens[i]) for i in path] + [int(predicted[best])]


def verify_tree(
    engine: SingleEngine, ids: list[int], parents: Sequence[int], depth: Sequence[int] | torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[list[int], list[int], torch.Tensor]:  # fmt: skip
    """Verify a token tree in ONE target forward and keep the accepted path's KV (greedy).

    ids: fed tokens, ``ids[0]`` = x (the last accepted token, not yet cached), then the
    nodes; parents: parent index per fed token (``parents[0] = -1``, parents first);
    depth: position offset per fed token (root 0); mask: the [k, k] ancestor mask (built
    from ``parents`` when None). Feeds at ``engine.length + depth``, accepts with
    :func:`tree_accept` and leaves the cache holding x and the accepted path.
    Returns ``(path, accepted, hidden)``: path node indices (root excluded), the accepted
    tokens (path + bonus) and the final hidden states [k, H] of every fed token.
    """
    start = engine.length
    offsets = depth if isinstance(depth, torch.Tensor) else torch.tensor(list(depth), dtype=torch.long)
    positions = (offsets + start).unsqueeze(0).to(engine.device)
    tree_mask = ancestor_mask(parents) if mask is None else mask
    logits, hidden = engine.forward(engine.ids_tensor(list(ids)), positions=positions, tree_mask=tree_mask, output_hidden=True)
    path, accepted = tree_accept(ids, parents, logits[0].argmax(dim=-1).tolist())
    engine.keep(start, [0] + path)
    return path, accepted, hidden[0]


def sample_accept(
    draft_tokens: list[int],
    q: list[torch.Tensor],
    target_logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Speculative sampling verification (Leviathan et al. 2023, Algorithm 1).

    draft_tokens: d_1..d_k sampled from q (k distributions [V]). target_logits: [k+1, V].
    Accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection sample
    from norm(max(0, p_i - q_i)) and stop; if all k are accepted sample a bonus from p_k.
    Returns 1..k+1 tokens, distributed as k+1 (or fewer) samples from the target.
    """
    p = torch.softmax(target_logits.double() / temperature, dim=-1)
    dev = p.device
    accepted: list[int] = []
    for i, tok in enumerate(draft_tokens):
        qi = q[i].to(dev)
        ratio = (p[i, tok] / qi[tok]).clamp(max=1.0)
        u = torch.rand((), generator=generator, device=dev, dtype=torch.float64)
        if bool(u < ratio):
            accepted.append(tok)
            continue
        residual = (p[i] - qi).clamp(min=0.0)
        total = residual.sum()
        dist = residual / total if float(total) > 0 else p[i]
        accepted.append(int(torch.multinomial(dist, 1, generator=generator)))
        return accepted
    accepted.append(int(torch.multinomial(p[len(draft_tokens)], 1, generator=generator)))
    return accepted
