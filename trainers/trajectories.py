"""``train trajectories``: Jacobi trajectories of the target model, the CLLM training data.

For every prompt the target model is Jacobi-decoded greedily with n-token blocks; every
block becomes one record holding all its intermediate states s^0 .. s^K = y* (the fixed
point), as in the CLLM reference (``data/generate_trajectory.py``, one record per block).

Two collectors, same states in exact arithmetic (tested in float64):

* ``--batch-size 1``: cllm-bench's own :class:`~cllm_bench.decoders.jacobi.JacobiDecoder`
  over the KV-cache :class:`~cllm_bench.engine.Engine` (prefix commit, the fastest on CPU);
* ``--batch-size B > 1``: :func:`collect_batched`, B prompts at once, no KV cache (prompt and
  block are re-fed every iteration, the reference's variant (c)), left padding with explicit
  position ids. Higher throughput on a GPU. Each prompt keeps its own seeded RNG, so the
  initial guesses do not depend on the batch.

Both keep the decoder's rules: block ``[t0] + guess`` (t0 the known next token), the prefix
that matches the previous iterate is final, stop at the first EOS / ``max_new_tokens``.

Record (one JSON line per block) of ``DIR/trajectories.jsonl``::

    data_id, block_index, prompt_len (original prompt length),
    prompt_ids (prompt + earlier blocks), states (s^0 .. y*, each len(fixed_point) tokens),
    fixed_point (y*; shorter than n for the block that holds EOS / hits max_new_tokens;
    the blocks of a prompt tile its answer exactly: a final EOS that came as a fixed
    point's bonus token forms a one-token block with the single state [EOS]),
    answer_ids (the full greedy answer), label_ids (gold answer + EOS, or null)

Post-processing (reference §A.3): ``--augment`` corrects, in every state but the last two,
``#wrong // 2`` positions drawn with replacement among the wrong ones except the first;
``--filter-repetitive`` (default on) drops the records whose answer so far (earlier blocks
+ this fixed point, before EOS) holds a run of >= 10 identical consecutive tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from cllm_bench.decoders.base import OutputBuffer
from cllm_bench.decoders.jacobi import INIT_CHOICES, JacobiDecoder, first_mismatch, initial_guess
from cllm_bench.engines.batch import BatchEngine
from cllm_bench.engines import Engine
from cllm_bench.errors import UserError
from cllm_bench.trainers import common

REPEAT_RUN = 10


@dataclass
class BlockTrajectory:
    """One Jacobi block: states s^0 .. y* (each as long as the fixed point) and y*."""

    states: list[list[int]]
    fixed_point: list[int]


@dataclass
class Collected:
    """The greedy answer of one prompt and its Jacobi blocks (they tile the answer)."""

    answer: list[int]
    blocks: list[BlockTrajectory]


def normalise_block(states: Sequence[Sequence[int]], final: Sequence[int]) -> BlockTrajectory:
    """Cut every state to the block's final length and end the list with the fixed point."""
    size = len(final)
    cut = [list(s[:size]) for s in states]
    if not cut or cut[-1] != list(final):
        cut.append(list(final))
    return BlockTrajectory(states=cut, fixed_point=list(final))


def tiled(answer: list[int], blocks: list[BlockTrajectory]) -> Collected:
    """``Collected`` whose blocks cover the whole answer: the token that ends a generation
    as a fixed point's bonus (EOS, or the last token at ``max_new_tokens``) belongs to no
    block, so it gets a one-state block of its own (AR loss only, no consistency term)."""
    covered = sum(len(b.fixed_point) for b in blocks)
    tail = list(answer[covered:])
    return Collected(answer=list(answer), blocks=blocks + ([BlockTrajectory([tail], tail)] if tail else []))


# --------------------------------------------------------------------------- collectors
def collect_one(
    engine: Engine, prompt: list[int], n: int, max_new_tokens: int, eos_ids: frozenset[int], seed: int, init: str
) -> Collected:
    """Jacobi-decode one prompt with cllm-bench's decoder (KV cache) and keep its blocks."""
    trace = JacobiDecoder(n=n, init=init, seed=seed).generate(engine, list(prompt), max_new_tokens, eos_ids)
    return tiled(trace.tokens, [normalise_block(b.states, b.final) for b in trace.blocks])


@dataclass
class _Row:
    """Jacobi state of one prompt inside :func:`collect_batched`."""

    prompt: list[int]
    out: OutputBuffer
    rng: random.Random
    blocks: list[BlockTrajectory] = field(default_factory=list)
    first: int = -1
    block: list[int] | None = None
    states: list[list[int]] = field(default_factory=list)
    known: int = 1  # block[:known] are final output tokens
    start: int = 0  # index of block[0] in the output

    def context(self) -> list[int]:
        """Prompt + output before the block + the block: what one iteration feeds."""
        assert self.block is not None
        return self.prompt + self.out.tokens[: self.start] + self.block


def _start_block(row: _Row, n: int, init: str) -> None:
    size = min(n, row.out.remaining + 1)
    row.start = len(row.out.tokens) - 1
    row.block = initial_guess(row.first, size, row.prompt + row.out.tokens, init, row.rng)
    row.states, row.known = [list(row.block)], 1


def _finish_block(row: _Row) -> None:
    assert row.block is not None
    final = row.out.tokens[row.start : row.start + len(row.block)]
    row.blocks.append(normalise_block(row.states, final))
    row.block = None


def _advance(row: _Row, predicted: list[int]) -> None:
    """One Jacobi iteration of ``row``; ``predicted[j]`` is the argmax after block[j]."""
    block, known = row.block, row.known
    assert block is not None
    proposal = block[:known] + predicted[known - 1 : -1]
    mismatch = first_mismatch(block, proposal, known)
    if mismatch is None:  # fixed point: whole block final, predicted[-1] seeds the next block
        row.out.accept(block[known:] + predicted[-1:])
        row.first = predicted[-1]
        _finish_block(row)
        return
    row.block = proposal
    row.states.append(list(proposal))
    row.out.accept(proposal[known : mismatch + 1])
    row.known = mismatch + 1
    if row.out.done:
        _finish_block(row)


def _batched_argmax(model: Any, seqs: list[list[int]], keep: int, pad_id: int) -> torch.Tensor:
    """Argmax of the last ``keep`` positions of each sequence: [B, keep] long (left padded)."""
    ids, mask = common.pad_batch(seqs, pad_id, left=True)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False).logits
    return logits.argmax(dim=-1).cpu()


@torch.inference_mode()
def collect_batched(
    model: Any,
    prompts: Sequence[list[int]],
    n: int,
    max_new_tokens: int,
    eos_ids: frozenset[int],
    seeds: Sequence[int],
    init: str = "random",
    pad_id: int = 0,
) -> list[Collected]:
    """Jacobi-decode all ``prompts`` together without a KV cache (one batch per iteration)."""
    rows = [_Row(list(p), OutputBuffer(max_new_tokens, eos_ids), random.Random(s)) for p, s in zip(prompts, seeds)]
    firsts = _batched_argmax(model, [r.prompt for r in rows], 1, pad_id)[:, -1].tolist()
    for row, first in zip(rows, firsts):
        row.first = int(first)
        row.out.accept([row.first])
    while True:
        active = [r for r in rows if not r.out.done]
        if not active:
            break
        for row in active:
            if row.block is None:
                _start_block(row, n, init)
        keep = max(len(r.block or []) for r in active)
        predicted = _batched_argmax(model, [r.context() for r in active], keep, pad_id)
        for row, pred in zip(active, predicted):
            _advance(row, pred[keep - len(row.block or []) :].tolist())
    return [tiled(r.out.tokens, r.blocks) for r in rows]


# --------------------------------------------------------------------------- post-processing
def augment_states(states: list[list[int]], fixed_point: list[int], rng: random.Random) -> list[list[int]]:
    """Reference augmentation (§A.3, current code) on copies of ``states``.

    For every state but the last two: I = wrong positions; ``len(I) // 2`` positions drawn
    WITH replacement from I[1:] (never the first wrong one) take their fixed-point value.
    """
    out = [list(s) for s in states]
    for j in range(len(out) - 3, -1, -1):
        wrong = [i for i, (a, b) in enumerate(zip(out[j], fixed_point)) if a != b]
        if len(wrong) < 2:
            continue
        for pos in (rng.choice(wrong[1:]) for _ in range(len(wrong) // 2)):
            out[j][pos] = fixed_point[pos]
    return out


def longest_run(tokens: Sequence[int]) -> int:
    """Length of the longest run of identical consecutive tokens."""
    best = run = 0
    prev = None
    for tok in tokens:
        run = run + 1 if tok == prev else 1
        best, prev = max(best, run), tok
    return best


def block_records(
    data_id: str,
    prompt: list[int],
    collected: Collected,
    label_ids: list[int] | None,
    *,
    augment: bool,
    filter_repetitive: bool,
    seed: int,
) -> tuple[list[dict[str, Any]], int]:
    """The records of one prompt and how many were dropped by the repetition filter."""
    records, dropped, pos = [], 0, 0
    for index, block in enumerate(collected.blocks):
        so_far = collected.answer[: pos + len(block.fixed_point)]
        states = block.states
        if augment:
            states = augment_states(states, block.fixed_point, random.Random(f"{seed}:{data_id}:{index}"))
        if filter_repetitive and longest_run(so_far) >= REPEAT_RUN:
            dropped += 1
        else:
            records.append(
                {
                    "data_id": data_id,
                    "block_index": index,
                    "prompt_len": len(prompt),
                    "prompt_ids": prompt + collected.answer[:pos],
                    "states": states,
                    "fixed_point": block.fixed_point,
                    "answer_ids": collected.answer,
                    "label_ids": label_ids,
                }
            )
        pos += len(block.fixed_point)
    return records, dropped


def collect_packed(
    model: Any,
    examples: Sequence[common.Example],
    offsets: Sequence[int],
    *,
    n: int,
    max_new_tokens: int,
    eos_ids: frozenset[int],
    seed: int,
    init: str,
    batch_size: int,
    pad_id: int,
    states: str = "jacobi",
    noised_per_block: int = 8,
    on_done: Any = None,
) -> list[Collected]:
    """The packed collector: greedy answers y* with the batched ``ar`` decoder
    (``batch_size`` prompts per batch, KV cache), then per prompt the states of every block
    at once (:func:`~cllm_bench.trainers.packing.jacobi_trajectories`: one forward per
    Jacobi iteration for all blocks; or :func:`~cllm_bench.trainers.packing.noised_states`,
    no forward). The per-prompt RNG seed is ``seed + offset`` as in :func:`collect`."""
    from cllm_bench.decoders.ar import ARDecoder
    from cllm_bench.trainers.packing import jacobi_trajectories, noised_states

    engine = BatchEngine(model, pad_id=pad_id)
    out: list[Collected] = []
    for lo in range(0, len(examples), batch_size):
        chunk = list(examples[lo : lo + batch_size])
        traces = ARDecoder().generate_batch(engine, [list(e.prompt_ids) for e in chunk], max_new_tokens, eos_ids)
        for ex, off, trace in zip(chunk, offsets[lo : lo + batch_size], traces):
            answer = list(trace.tokens)
            if states == "jacobi":
                per_block = jacobi_trajectories(model, ex.prompt_ids, answer, n, seed=seed + off, init=init,
                                                max_new_tokens=max_new_tokens)
            else:
                per_block = noised_states(answer, n, noised_per_block, list(ex.prompt_ids) + answer, random.Random(seed + off))
            out.append(Collected(answer=answer, blocks=[BlockTrajectory(st, st[-1]) for st in per_block]))
        if on_done:
            on_done(len(chunk))
    return out


def collect(
    model: Any,
    examples: Sequence[common.Example],
    offsets: Sequence[int],
    *,
    n: int,
    max_new_tokens: int,
    eos_ids: frozenset[int],
    seed: int,
    init: str,
    batch_size: int,
    pad_id: int,
    on_done: Any = None,
) -> list[Collected]:
    """Collect trajectories of ``examples``; ``offsets[i]`` is the global index of example i
    (the per-prompt RNG seed is ``seed + offset``, independent of sharding and batching)."""
    out: list[Collected] = []
    if batch_size <= 1:
        engine = Engine(model)
        for ex, off in zip(examples, offsets):
            out.append(collect_one(engine, ex.prompt_ids, n, max_new_tokens, eos_ids, seed + off, init))
            if on_done:
                on_done(1)
        return out
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo : lo + batch_size]
        seeds = [seed + off for off in offsets[lo : lo + batch_size]]
        out.extend(collect_batched(model, [e.prompt_ids for e in chunk], n, max_new_tokens, eos_ids, seeds, init, pad_id))
        if on_done:
            on_done(len(chunk))
    return out


# --------------------------------------------------------------------------- command
def run(args: argparse.Namespace, console: Any = None) -> int:
    """``cllm-bench train trajectories``: collect, post-process, write records + manifest."""
    from cllm_bench.models import load_model

    if args.n < 1 or args.max_new_tokens < 1:
        raise UserError("--n and --max-new-tokens must be >= 1")
    if args.init not in INIT_CHOICES:
        raise UserError(f"--init must be one of {INIT_CHOICES}")
    from accelerate import PartialState

    acc = PartialState(cpu=args.cpu)  # process layout only: nothing is trained here
    out_dir = Path(args.out)
    device = "cpu" if args.cpu else str(acc.device)
    loaded = load_model(args.model, dtype=args.dtype, device=device)
    eos_id = common.answer_eos_id(loaded.tokenizer, loaded.eos_ids)
    examples = common.load_examples(
        args.prompts, loaded.tokenizer, eos_id=eos_id, data_dir=args.data_dir, limit=args.limit, prompt_style=args.prompt_style
    )
    per = -(-len(examples) // acc.num_processes)
    start = acc.process_index * per
    mine = examples[start : start + per]
    started = time.perf_counter()
    with common.progress_bar(console, acc.is_main_process) as bar:
        task = bar.add_task("trajectories", total=len(mine), loss="-")
        common_args = dict(
            n=args.n, max_new_tokens=args.max_new_tokens, eos_ids=loaded.eos_ids, seed=args.seed, init=args.init,
            batch_size=args.batch_size, pad_id=common.pad_token_id(loaded.tokenizer, loaded.model),
            on_done=lambda k: bar.advance(task, k),
        )
        if args.collector == "packed":
            collected = collect_packed(loaded.model, mine, range(start, start + len(mine)), states=args.states,
                                       noised_per_block=args.noised_per_block, **common_args)
        else:
            collected = collect(loaded.model, mine, range(start, start + len(mine)), **common_args)
    records, dropped = [], 0
    for ex, col in zip(mine, collected):
        recs, drop = block_records(
            ex.data_id, ex.prompt_ids, col, ex.answer_ids,
            augment=args.augment, filter_repetitive=args.filter_repetitive, seed=args.seed,
        )
        records.extend(recs)
        dropped += drop
    write_part(out_dir, acc.process_index, records, dropped, sum(len(c.blocks) for c in collected),
               sum(len(s.states) - 1 for c in collected for s in c.blocks), sum(len(c.answer) for c in collected))
    acc.wait_for_everyone()
    if acc.is_main_process:
        counts = merge_parts(out_dir, acc.num_processes)
        common.write_manifest(
            out_dir, "trajectories", model=args.model, n=args.n, max_new_tokens=args.max_new_tokens,
            prompts_source=args.prompts, data_dir=str(args.data_dir) if args.data_dir else None,
            prompt_style=args.prompt_style, prompts=len(examples), augment=args.augment,
            filter_repetitive=args.filter_repetitive, repeat_run=REPEAT_RUN, init=args.init, seed=args.seed,
            collector=collector_name(args), states=args.states if args.collector == "packed" else "jacobi",
            vocab_size=int(loaded.model.config.vocab_size), model_fingerprint=common.model_fingerprint(loaded),
            records_per_s=round(counts["records"] / max(time.perf_counter() - started, 1e-9), 4),
            batch_size=args.batch_size, dtype=str(loaded.dtype), device=str(loaded.device),
            num_processes=acc.num_processes, seconds=round(time.perf_counter() - started, 3), counts=counts,
        )
        acc.print(f"wrote {counts['records']} records ({counts['dropped_repetitive']} dropped) to {out_dir / common.TRAJECTORY_FILE}")
    acc.wait_for_everyone()
    return 0


def collector_name(args: argparse.Namespace) -> str:
    """How the states were collected (the manifest's ``collector``)."""
    if args.collector == "packed":
        return f"packed-{args.states}-ar-batch{args.batch_size}"
    return "jacobi-decoder-kv" if args.batch_size <= 1 else "batched-no-cache"


def write_part(out_dir: Path, rank: int, records: list[dict[str, Any]], dropped: int, blocks: int, iterations: int, tokens: int) -> None:
    """This process's records and counts, merged by the main process."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f".part{rank}.jsonl", "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    counts = {"records": len(records), "dropped_repetitive": dropped, "blocks": blocks, "iterations": iterations, "answer_tokens": tokens}
    (out_dir / f".part{rank}.counts.json").write_text(json.dumps(counts))


def merge_parts(out_dir: Path, parts: int) -> dict[str, Any]:
    """Concatenate the per-process parts (rank order) into trajectories.jsonl; summed counts."""
    totals: dict[str, Any] = {"records": 0, "dropped_repetitive": 0, "blocks": 0, "iterations": 0, "answer_tokens": 0}
    with open(out_dir / common.TRAJECTORY_FILE, "w", encoding="utf-8") as dst:
        for rank in range(parts):
            part = out_dir / f".part{rank}.jsonl"
            dst.write(part.read_text(encoding="utf-8"))
            part.unlink()
            counts_file = out_dir / f".part{rank}.counts.json"
            for key, value in json.loads(counts_file.read_text()).items():
                totals[key] += value
            counts_file.unlink()
    totals["mean_iterations_per_block"] = round(totals["iterations"] / totals["blocks"], 4) if totals["blocks"] else None
    return totals
