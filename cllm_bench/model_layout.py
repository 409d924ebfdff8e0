"""Where a decoder-only transformers model keeps its blocks and its head, for any architecture.

transformers lays the same thing out differently per family: the decoder blocks sit at
``model.layers`` (Llama, Qwen2, Mistral, ...), ``gpt_neox.layers`` (GPT-NeoX, Pythia),
``transformer.h`` (GPT-2, GPT-J, Falcon), ``model.decoder.layers`` (OPT), ... Code that
needs them (the layer-truncated self-draft of ``speculative``) asks :func:`decoder_blocks`
instead of naming a path; code that reads the final hidden state (Medusa's heads) asks
:func:`head_input_size` for its width instead of trusting ``config.hidden_size`` (OPT
projects the last hidden state to ``word_embed_proj_dim`` before its head).

The search is structural, not a table of names: under the base model
(``model.base_model``, i.e. the submodule named by ``base_model_prefix``), the decoder
blocks are the longest ``nn.ModuleList`` whose entries all have one class; among lists of
equal length, the one whose length equals ``config.num_hidden_layers`` and then the one
found first (shallowest) wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cllm_bench.errors import UserError


@dataclass(frozen=True)
class BlockList:
    """The decoder blocks of a causal LM.

    path: attribute names from the causal LM down to the list, e.g. ``("gpt_neox", "layers")``
        (``getattr`` chain; every name before the last is a submodule).
    blocks: the list itself (``len(blocks)`` = number of decoder layers).
    """

    path: tuple[str, ...]
    blocks: nn.ModuleList

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _candidate_lists(root: nn.Module, prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], nn.ModuleList]]:
    """Every ``nn.ModuleList`` under ``root`` of >= 1 entries that all share one class, with its path
    (breadth-first order, so shallower lists come first)."""
    found: list[tuple[tuple[str, ...], nn.ModuleList]] = []
    queue: list[tuple[tuple[str, ...], nn.Module]] = [(prefix, root)]
    while queue:
        path, module = queue.pop(0)
        for name, child in module.named_children():
            child_path = (*path, name)
            if isinstance(child, nn.ModuleList):
                kinds = {type(m) for m in child}
                if len(child) >= 1 and len(kinds) == 1:
                    found.append((child_path, child))
                continue  # a list's entries are blocks, not containers of the block list
            queue.append((child_path, child))
    return found


def decoder_blocks(model: nn.Module) -> BlockList:
    """The decoder blocks of causal LM ``model`` (see the module docstring for the rule).

    Raises :class:`UserError` when ``model`` holds no list of identical blocks.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    root, root_path = (base, (prefix,)) if isinstance(base, nn.Module) else (model, ())
    candidates = _candidate_lists(root, root_path)
    if not candidates and root is not model:
        candidates = _candidate_lists(model, ())
    if not candidates:
        raise UserError(
            f"{type(model).__name__} holds no list of decoder blocks (an nn.ModuleList of identical layers); "
            f"this is not a decoder-only transformer cllm-bench can truncate or read — use a draft model instead"
        )
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    # longest first; ties: the list matching config.num_hidden_layers, then the shallowest (found first)
    order = sorted(range(len(candidates)), key=lambda i: (-len(candidates[i][1]), len(candidates[i][1]) != n_layers, i))
    path, blocks = candidates[order[0]]
    return BlockList(path=path, blocks=blocks)


def head_input_size(model: nn.Module) -> int:
    """Width of the vector the LM head reads (the final, normed hidden state): the head's input
    features, falling back to ``config.hidden_size`` when the head is not a plain linear map."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.ndim == 2:
        return int(weight.shape[1])
    return int(model.config.hidden_size)
