"""Tensors of a training batch, and the target's own greedy answers (sharded over processes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from cllm_bench.engines.batch import pad_batch

from cllm_bench.trainers.data import Example


# --------------------------------------------------------------------------- tensors
def answer_labels(prompt_lens: Sequence[int], seq_lens: Sequence[int], ids: torch.Tensor) -> torch.Tensor:
    """[B, T] labels: the token ids on answer positions, -100 on prompt and padding."""
    labels = torch.full_like(ids, -100)
    for row, (p, n) in enumerate(zip(prompt_lens, seq_lens)):
        labels[row, p:n] = ids[row, p:n]
    return labels


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token CE. logits [B, T, V] predict labels [B, T] shifted by one; -100 ignored."""
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = labels[:, 1:].reshape(-1)
    if not bool((target != -100).any()):
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(flat, target, ignore_index=-100, label_smoothing=label_smoothing)


def pad_token_id(tokenizer: Any, model: Any) -> int:
    """A token id safe to use as padding (masked out anyway)."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(model.config, "pad_token_id", None)):
        if isinstance(value, int):
            return value
    eos = getattr(model.config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return int(eos) if isinstance(eos, int) else 0


# --------------------------------------------------------------------------- greedy answers
def greedy_answers(model: Any, prompts: Sequence[list[int]], max_new_tokens: int, eos_ids: frozenset[int]) -> list[list[int]]:
    """The model's greedy continuation of each prompt (cllm-bench's ``ar`` decoder)."""
    from cllm_bench.decoders.ar import ARDecoder
    from cllm_bench.engines import Engine

    engine = Engine(model)
    decoder = ARDecoder()
    return [decoder.generate(engine, list(p), max_new_tokens, eos_ids).tokens for p in prompts]


def shard(acc: Any, items: Sequence[Any]) -> list[Any]:
    """This process's contiguous share of ``items`` (all of them on one process)."""
    per = math.ceil(len(items) / acc.num_processes)
    return list(items[acc.process_index * per : (acc.process_index + 1) * per])


def gather_lists(acc: Any, local: list[Any]) -> list[Any]:
    """Concatenate every process's list in process order (objects must be picklable)."""
    if acc.num_processes == 1:
        return list(local)
    from accelerate.utils import gather_object

    return list(gather_object(list(local)))  # concatenated in rank order


def model_answers(acc: Any, model: Any, examples: Sequence[Example], max_new_tokens: int, eos_ids: frozenset[int]) -> list[list[int]]:
    """The model's greedy answers: ``greedy_ids`` where recorded (trajectories folder),
    otherwise decoded now with the ``ar`` decoder, sharded over the processes."""
    todo = [i for i, ex in enumerate(examples) if ex.greedy_ids is None]
    answers = {i: list(ex.greedy_ids) for i, ex in enumerate(examples) if ex.greedy_ids is not None}
    if todo:
        mine = shard(acc, todo)
        acc.print(f"decoding greedy answers of {len(todo)} prompts (max {max_new_tokens} new tokens)")
        local = greedy_answers(model, [examples[i].prompt_ids for i in mine], max_new_tokens, eos_ids)
        for i, ans in zip(todo, gather_lists(acc, local)):
            answers[i] = ans
    return [answers[i] for i in range(len(examples))]


def final_hidden(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H] last hidden state of a causal LM after its final norm (the lm_head input)."""
    inner = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(inner, torch.nn.Module) and inner is not model:
        return inner(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True).hidden_states[-1]


def place_frozen(model: Any, device: Any) -> Any:
    """Move a model that is not trained onto ``device``: eval mode, no gradients."""
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass
class SequenceCollator:
    """Right-pads sequence items: ids/mask [B, T] and labels [B, T] (answer tokens only)."""

    pad_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [it["ids"] for it in items]
        ids, mask = pad_batch(seqs, self.pad_id)
        labels = answer_labels([it["start"] for it in items], [len(s) for s in seqs], ids)
        return {"ids": ids, "mask": mask, "labels": labels}
