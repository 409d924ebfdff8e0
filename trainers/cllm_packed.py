"""The packed CLLM training step: every block and several Jacobi states of one prompt in
one forward over the prompt's cached KV (see :mod:`cllm_bench.trainers.packing`).

Per prompt and update:

1. the KV of ``prompt[:-1]`` is computed once without gradients (the prompt is not
   trained: no gradient reaches it, unlike the reference, which back-propagates through
   the whole prompt + block sequence);
2. one forward with gradients carries the AR segment (teacher-forced ``y*``) and, for every
   block, up to ``states_per_block`` intermediate states ``s^i != y*`` drawn uniformly
   without replacement from ``s^0 .. s^{K-1}`` (seeded by seed, epoch, prompt);
3. AR loss = ``ar_weight`` x label-smoothed CE of the AR segment on ``y*`` (answer tokens;
   the prompt positions are frozen); global consistency loss = soft cross-entropy from the
   detached AR-segment distribution at the block's positions (the model on prompt + y*)
   to the state segment's distribution, over positions from the first wrong token on,
   averaged over all such positions of the prompt; one backward of their sum.

Same loss as the per-record path (:mod:`cllm_bench.trainers.cllm`, the reference's one
state per step) up to the frozen prompt; K states and all blocks of a prompt share one
prompt encoding, which is where the speed comes from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cllm_bench.errors import DataError
from cllm_bench.trainers.packing import StateSegment, pack, packed_logits, prefill_cache


@dataclass(frozen=True)
class PromptTrajectories:
    """Every kept block of one prompt: prompt ids, the greedy answer y*, and per block its
    start (answer index) and states s^0 .. s^K = y* (each as long as the block)."""

    data_id: str
    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    blocks: tuple[tuple[int, tuple[tuple[int, ...], ...]], ...]


def group_records(records: list[dict[str, Any]]) -> list[PromptTrajectories]:
    """Trajectory records (one per block) grouped by prompt, in first-seen order.

    The AR answer is cut after the last kept block (blocks dropped by the repetition
    filter at the end of an answer are not trained on at all).
    """
    order: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        order.setdefault(rec["data_id"], []).append(rec)
    out = []
    for data_id, recs in order.items():
        first = recs[0]
        prompt = tuple(first["prompt_ids"][: first["prompt_len"]])
        answer = tuple(first["answer_ids"])
        blocks = []
        for rec in sorted(recs, key=lambda r: r["block_index"]):
            start = len(rec["prompt_ids"]) - rec["prompt_len"]
            fixed = tuple(rec["fixed_point"])
            if tuple(answer[start : start + len(fixed)]) != fixed:
                raise DataError(f"trajectories: record {data_id} block {rec['block_index']} does not match its answer_ids")
            blocks.append((start, tuple(tuple(s) for s in rec["states"])))
        end = max(start + len(states[-1]) for start, states in blocks)
        if not prompt or end == 0:
            continue
        out.append(PromptTrajectories(data_id, prompt, answer[:end], tuple(blocks)))
    if not out:
        raise DataError("trajectories: no prompt has a block with answer tokens")
    return out


class PackedDataset:
    """One item per prompt; ``__getitem__`` draws this epoch's states (seeded)."""

    def __init__(self, prompts: list[PromptTrajectories], states_per_block: int, seed: int = 0) -> None:
        self.prompts = prompts
        self.states_per_block = states_per_block
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.prompts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.prompts[index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        segments = []
        for start, states in item.blocks:
            fixed = states[-1]
            candidates = [s for s in states[:-1] if s != fixed]
            k = len(candidates) if self.states_per_block <= 0 else min(self.states_per_block, len(candidates))
            segments.extend(StateSegment(start, s) for s in rng.sample(candidates, k))
        return {"prompt": list(item.prompt), "answer": list(item.answer), "segments": segments}


def collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Packed items stay a list: each is its own forward."""
    return items


def first_wrong(state: tuple[int, ...], fixed: list[int]) -> int:
    """Index of the first position where ``state`` differs from ``fixed`` (len when equal)."""
    return next((i for i, (a, b) in enumerate(zip(state, fixed)) if a != b), len(state))


def packed_losses(model: Any, item: dict[str, Any], *, ar_weight: float, label_smoothing: float,
                  window: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:  # fmt: skip
    """(AR loss, consistency loss, consistency positions) of one prompt (graphs attached).
    ``window`` > 0: the consistency loss covers only the first ``window`` positions of each
    state from its first wrong token (0: to the block's end, the reference)."""
    prompt, answer, segments = item["prompt"], item["answer"], item["segments"]
    packed = pack(prompt, answer, segments, cache_len=len(prompt) - 1, with_ar=True)
    inner = getattr(model, "module", model)  # the prefix needs no DDP hooks
    cache = prefill_cache(inner, prompt[:-1])
    logits = packed_logits(model, packed, cache)
    ar_logits = logits[packed.ar_index.to(logits.device)].float()  # [A, V]
    labels = torch.tensor(answer, device=logits.device)
    ar = ar_weight * F.cross_entropy(ar_logits, labels, label_smoothing=label_smoothing)
    student_rows, teacher_rows = [], []
    for seg, index in zip(segments, packed.seg_index):
        m = len(seg.state)
        wrong = first_wrong(seg.state, answer[seg.start : seg.start + m])
        if wrong == m:
            continue
        end = m if window <= 0 else min(m, wrong + window)
        student_rows.append(index[wrong:end])
        teacher_rows.append(torch.arange(seg.start + wrong, seg.start + end))
    if not student_rows:
        return ar, logits.sum() * 0.0, 0
    student = logits[torch.cat(student_rows).to(logits.device)].float()
    teacher = ar_logits[torch.cat(teacher_rows).to(logits.device)].detach()
    cons = -(F.softmax(teacher, dim=-1) * F.log_softmax(student, dim=-1)).sum(dim=-1).mean()
    return ar, cons, int(student.shape[0])


def make_packed_step(acc: Any, model: Any, *, ar_weight: float, label_smoothing: float, window: int = 0,
                     consistency_weight: float = 1.0):  # fmt: skip
    """The per-micro-batch step over a list of packed items: one backward per item of
    ``ar + consistency_weight * consistency`` (the logged consistency term is unweighted)."""

    def step(items: list[dict[str, Any]]) -> dict[str, float]:
        logged = {"loss": 0.0, "ar": 0.0, "consistency": 0.0, "positions": 0.0, "records": float(len(items))}
        for item in items:
            ar, cons, positions = packed_losses(model, item, ar_weight=ar_weight, label_smoothing=label_smoothing,
                                                window=window)
            acc.backward((ar + consistency_weight * cons) / len(items))
            logged["ar"] += float(ar.detach()) / len(items)
            logged["consistency"] += float(cons.detach()) / len(items)
            logged["positions"] += positions
        logged["loss"] = logged["ar"] + consistency_weight * logged["consistency"]
        return logged

    return step
