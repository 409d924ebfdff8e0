"""``train cllm``: consistency training of a CLLM on Jacobi trajectories (reference §A.4).

Per record (one Jacobi block) and step, one intermediate state s^i is drawn uniformly from
s^0 .. s^{K-1} (the fixed point y* excluded; a block whose s^0 is already y* gives y*):

* AR loss = ``ar_weight`` x label-smoothed next-token CE on prompt + y* (or, with
  ``--use-gt-labels``, on the original prompt + the gold answer); every position by
  default, as the reference (``--ar-tokens answer`` restricts it to the answer tokens);
* consistency loss = soft cross-entropy sum_v -p_target(v) log p_student(v), averaged over
  the block positions from the first token where s^i differs from y* to the block end:
  student = the model on prompt + s^i, target = the SAME model on prompt + y*, detached
  (global form, the reference) or on prompt + s^{i+1} (``--consistency local``, the
  paper's adjacent-state form). Zero when s^i == y*. ``--consistency-window W`` keeps only
  the first W of those positions, ``--consistency-weight`` scales the term (0: the
  AR-only control); neither is in the reference (see docs/training.md).

Both terms are back-propagated separately (as the reference, to bound activation memory).
With the global form and fixed-point labels, the AR forward IS the target forward (same
input, same weights), so its logits are reused, detached: 2 forwards per step instead of 3.

The result is a plain causal LM saved with ``save_pretrained`` (+ tokenizer): load it
with ``cllm-bench run --models DIR --decoders cllm`` (or ``jacobi``).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cllm_bench.errors import DataError, UserError
from cllm_bench.trainers import common

CONSISTENCY_FORMS = ("global", "local")


# --------------------------------------------------------------------------- losses
def first_wrong_mask(states: torch.Tensor, fixed: torch.Tensor, valid: torch.Tensor, window: int = 0) -> torch.Tensor:
    """[B, n] bool: block positions from the first one where ``states`` != ``fixed`` on
    (only the first ``window`` of them when ``window`` > 0).

    states, fixed: [B, n] long; valid: [B, n] bool (False on padding of short blocks).
    """
    wrong = (states != fixed) & valid
    after = (wrong.long().cumsum(dim=-1) > 0) & valid
    if window > 0:
        after &= after.long().cumsum(dim=-1) <= window
    return after


def soft_cross_entropy(student_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of sum_v -softmax(target)_v * log_softmax(student)_v.

    student_logits, target_logits: [B, n, V]; mask: [B, n] bool. Exactly 0 (with a graph)
    when the mask is empty. Gradient = that of forward KL(p_target || p_student).
    """
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    s = student_logits[mask].float()  # [N, V]
    t = target_logits[mask].detach().float()
    return -(F.softmax(t, dim=-1) * F.log_softmax(s, dim=-1)).sum(dim=-1).mean()


def gather_block_logits(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], positions [B, n] long -> [B, n, V] (the logits at those positions)."""
    rows = torch.arange(logits.shape[0], device=logits.device).unsqueeze(1)
    return logits[rows, positions.to(logits.device)]


# --------------------------------------------------------------------------- data
class TrajectoryDataset:
    """Records of a trajectories folder; ``__getitem__`` draws the state for this epoch.

    The draw is seeded by (seed, epoch, index): reproducible and resumable.
    """

    def __init__(self, records: list[dict[str, Any]], seed: int = 0, use_gt_labels: bool = False) -> None:
        self.records = records
        self.seed = seed
        self.epoch = 0
        self.use_gt_labels = use_gt_labels

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        states = rec["states"]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        i = rng.randrange(len(states) - 1) if len(states) > 1 else 0
        prompt = rec["prompt_ids"]
        if self.use_gt_labels:
            original = prompt[: rec["prompt_len"]]
            ar_ids, ar_start = original + rec["label_ids"], rec["prompt_len"]
        else:
            ar_ids, ar_start = prompt + rec["fixed_point"], rec["prompt_len"]
        return {
            "prompt": prompt,
            "state": states[i],
            "next_state": states[min(i + 1, len(states) - 1)],
            "fixed_point": rec["fixed_point"],
            "ar_ids": ar_ids,
            "ar_start": ar_start,
        }


@dataclass
class CllmCollator:
    """Right-pads a list of items into the tensors one CLLM step needs.

    Output keys: ar_ids/ar_mask [B, Ta], ar_labels_all/ar_labels_answer [B, Ta];
    student_ids/student_mask [B, Ts] (prompt + s^i); target_ids/target_mask (prompt + y*);
    next_ids/next_mask (prompt + s^{i+1}); positions [B, n] (logit index predicting each
    block token); states/fixed/next_states [B, n]; valid [B, n] bool.
    """

    pad_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(it["fixed_point"]) for it in items)
        batch: dict[str, torch.Tensor] = {}
        ar = [it["ar_ids"] for it in items]
        batch["ar_ids"], batch["ar_mask"] = common.pad_batch(ar, self.pad_id)
        batch["ar_labels_all"] = common.answer_labels([0] * len(ar), [len(s) for s in ar], batch["ar_ids"])
        batch["ar_labels_answer"] = common.answer_labels([it["ar_start"] for it in items], [len(s) for s in ar], batch["ar_ids"])
        for key, field in (("student", "state"), ("target", "fixed_point"), ("next", "next_state")):
            batch[f"{key}_ids"], batch[f"{key}_mask"] = common.pad_batch([it["prompt"] + it[field] for it in items], self.pad_id)
        positions = torch.zeros((len(items), width), dtype=torch.long)
        valid = torch.zeros((len(items), width), dtype=torch.bool)
        blocks = {k: torch.full((len(items), width), -1, dtype=torch.long) for k in ("states", "fixed", "next_states")}
        for row, it in enumerate(items):
            size, start = len(it["fixed_point"]), len(it["prompt"]) - 1
            positions[row, :size] = torch.arange(start, start + size)
            valid[row, :size] = True
            for key, field in (("states", "state"), ("fixed", "fixed_point"), ("next_states", "next_state")):
                blocks[key][row, :size] = torch.tensor(it[field], dtype=torch.long)
        batch.update(blocks, positions=positions, valid=valid)
        return batch


def first_prompts(records: list[dict[str, Any]], max_prompts: int) -> list[dict[str, Any]]:
    """The records of the first ``max_prompts`` prompts (by first-seen ``data_id``), in file
    order; all of them when ``max_prompts`` is 0."""
    if max_prompts <= 0:
        return records
    kept = set(list(dict.fromkeys(rec["data_id"] for rec in records))[:max_prompts])
    return [rec for rec in records if rec["data_id"] in kept]


def distinct_prompts(records: list[dict[str, Any]]) -> list[list[int]]:
    """Each record's original prompt once (a prompt has one record per block), in first-seen order."""
    seen: dict[str, list[int]] = {}
    for rec in records:
        seen.setdefault(rec["data_id"], rec["prompt_ids"][: rec["prompt_len"]])
    return list(seen.values())


def load_records(folder: Path, use_gt_labels: bool, max_prompts: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Trajectory records of the first ``max_prompts`` prompts (0: all) + the folder's
    manifest ({} if none), checked for the options."""
    records = first_prompts(common.read_trajectories(folder), max_prompts)
    if use_gt_labels and any(r.get("label_ids") is None for r in records):
        raise DataError(
            f"{folder}: some records have no label_ids; --use-gt-labels needs trajectories built from a "
            f"source with gold answers (gsm8k, spider, a JSONL with answers)"
        )
    manifest_path = Path(folder) / common.MANIFEST_FILE
    manifest = common.read_json(manifest_path) if manifest_path.is_file() else {}
    return records, manifest


# --------------------------------------------------------------------------- step
def model_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def consistency_loss(model: Any, batch: dict[str, torch.Tensor], form: str, target_logits: torch.Tensor | None = None,
                     window: int = 0) -> torch.Tensor:  # fmt: skip
    """The consistency term for one batch (see module docstring). ``target_logits``:
    [B, n, V] block logits of the target input when already computed (global form);
    ``window`` > 0: only the first ``window`` positions from the first wrong token."""
    mask = first_wrong_mask(batch["states"], batch["fixed"], batch["valid"], window)
    if target_logits is None:
        key = "target" if form == "global" else "next"
        with torch.no_grad():
            target_logits = gather_block_logits(model_logits(model, batch[f"{key}_ids"], batch[f"{key}_mask"]), batch["positions"])
    student = gather_block_logits(model_logits(model, batch["student_ids"], batch["student_mask"]), batch["positions"])
    return soft_cross_entropy(student, target_logits, mask.to(student.device))


def make_step(acc: Any, model: Any, *, ar_weight: float, label_smoothing: float, form: str, ar_tokens: str, use_gt_labels: bool,
              window: int = 0, consistency_weight: float = 1.0):  # fmt: skip
    """The per-micro-batch step: AR loss backward, then ``consistency_weight`` x the
    consistency loss backward (the logged consistency term is unweighted)."""
    reuse_target = form == "global" and not use_gt_labels
    label_key = "ar_labels_all" if ar_tokens == "all" else "ar_labels_answer"

    def step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits = model_logits(model, batch["ar_ids"], batch["ar_mask"])
        ar = ar_weight * common.shifted_cross_entropy(logits, batch[label_key], label_smoothing)
        target = gather_block_logits(logits.detach(), batch["positions"]) if reuse_target else None
        acc.backward(ar)
        del logits
        cons = consistency_loss(model, batch, form, target, window)
        acc.backward(consistency_weight * cons)
        return {"loss": float(ar.detach()) + consistency_weight * float(cons.detach()), "ar": float(ar.detach()), "consistency": float(cons.detach())}

    return step


# --------------------------------------------------------------------------- command
def curve_sets(args: argparse.Namespace, loaded: Any, prompts: list[list[int]]) -> tuple[list[Any], Any]:
    """The learning-curve prompt sets (held-out task split + first training prompts) and
    the task object that scores the held-out set (None without ``--eval-prompts``)."""
    from cllm_bench.trainers.curves import CurveSet

    sets = [CurveSet("train", [list(p) for p in prompts[: args.eval_limit]])]
    if not args.eval_prompts:
        return sets, None
    task, samples = common.task_samples(
        args.eval_prompts, args.data_dir, args.eval_split, args.eval_limit, args.prompt_style, args.allow_code_execution
    )
    held = [task.prompt_ids(s, loaded.tokenizer) for s in samples]
    train_set = {tuple(p) for p in prompts}
    if any(tuple(h) in train_set for h in held):
        raise UserError(f"--eval-prompts {args.eval_prompts} split {args.eval_split}: some prompts are training prompts")
    return [CurveSet("heldout", held, samples)] + sets, task


def run(args: argparse.Namespace, console: Any = None) -> int:
    """``cllm-bench train cllm``: train, save the HF checkpoint + manifest in ``--out``."""
    from cllm_bench.trainers.cllm_packed import PackedDataset, collate_items, group_records, make_packed_step
    from cllm_bench.trainers.curves import curve_point

    if args.consistency not in CONSISTENCY_FORMS:
        raise UserError(f"--consistency must be one of {CONSISTENCY_FORMS}")
    if args.ar_tokens not in ("all", "answer"):
        raise UserError("--ar-tokens must be all or answer")
    packed = args.packed if args.packed is not None else (args.consistency == "global" and not args.use_gt_labels)
    if packed and (args.consistency != "global" or args.use_gt_labels):
        raise UserError("--packed trains the global consistency loss with the AR loss on y*; "
                        "use --no-packed for --consistency local or --use-gt-labels")
    if args.eval_every < 0 or args.eval_limit < 1:
        raise UserError("--eval-every must be >= 0 and --eval-limit >= 1")
    if args.consistency_weight < 0:
        raise UserError("--consistency-weight must be >= 0 (0: the AR-only control)")
    if args.consistency_window < 0:
        raise UserError("--consistency-window must be >= 0 (0: every position from the first wrong token, the reference)")
    if args.max_prompts < 0:
        raise UserError("--max-prompts must be >= 0 (0: every prompt of the trajectories)")
    settings = common.settings_from_args(args)
    records, traj_manifest = load_records(Path(args.trajectories), args.use_gt_labels, args.max_prompts)
    grouped = group_records(records) if packed else None
    acc = common.make_accelerator(settings.mixed_precision, settings.grad_accum, settings.cpu, settings.seed)
    loaded = common.load_for_training(args.model, args.dtype, args.gradient_checkpointing)
    common.check_trajectories_match(traj_manifest, loaded, args.model)
    model = loaded.model
    n = int(traj_manifest.get("n") or 16)
    train_prompts = [list(g.prompt) for g in grouped] if grouped else distinct_prompts(records)
    sets, task = curve_sets(args, loaded, train_prompts) if args.eval_every else ([], None)
    optimizer = common.make_optimizer(model.parameters(), settings.lr, settings.weight_decay)
    model, optimizer = acc.prepare(model, optimizer)
    if packed:
        dataset: Any = PackedDataset(grouped, args.states_per_block, settings.seed)
        collate: Any = collate_items
        step = make_packed_step(acc, model, ar_weight=args.ar_weight, label_smoothing=args.label_smoothing,
                                window=args.consistency_window, consistency_weight=args.consistency_weight)
    else:
        dataset = TrajectoryDataset(records, settings.seed, args.use_gt_labels)
        collate = CllmCollator(common.pad_token_id(loaded.tokenizer, loaded.model))
        step = make_step(
            acc, model, ar_weight=args.ar_weight, label_smoothing=args.label_smoothing, form=args.consistency,
            ar_tokens=args.ar_tokens, use_gt_labels=args.use_gt_labels, window=args.consistency_window,
            consistency_weight=args.consistency_weight,
        )
    eval_kwargs = dict(n=args.eval_n or n, max_new_tokens=args.eval_max_new_tokens, eos_ids=loaded.eos_ids,
                       task=task, tokenizer=loaded.tokenizer)

    def after_update(progress: common.TrainProgress) -> None:
        due = args.eval_every and (progress.step % args.eval_every == 0 or progress.step == total_updates(progress))
        if not due or not acc.is_main_process or any(p["update"] == progress.step for p in progress.curve):
            return
        if initial is not None and not progress.curve:
            progress.curve.append(initial)  # saved with the training state from now on
        since = progress.curve[-1]["update"] if progress.curve else 0
        point = curve_point(acc.unwrap_model(model), sets, progress.step, progress.terms, since, **eval_kwargs)
        point["train_seconds"] = round(progress.seconds, 3)
        progress.curve.append(point)
        acc.print(f"curve @ {progress.step}: " + ", ".join(
            f"{s.name} tok/fwd {point[s.name]['tokens_per_forward']:.3f}" for s in sets))

    def total_updates(progress: common.TrainProgress) -> int:
        per_epoch = -(-len(dataset) // (settings.batch_size * settings.grad_accum * acc.num_processes))
        total = per_epoch * settings.epochs
        return min(total, settings.max_steps) if settings.max_steps else total

    initial = None
    if args.eval_every and acc.is_main_process:
        base_file = Path(args.out) / "curve_base.json"
        if base_file.is_file() and (Path(args.out) / common.STATE_DIR).is_dir():  # resumed: same reference outputs
            for cset, base in zip(sets, common.read_json(base_file)):
                cset.base = base
        else:
            initial = curve_point(acc.unwrap_model(model), sets, 0, {}, 0, **eval_kwargs)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            base_file.write_text(json.dumps([cset.base for cset in sets]))
    progress = common.fit(acc, model, optimizer, dataset, collate, step, settings, console, "cllm", after_update)
    if initial is not None and not any(p["update"] == 0 for p in progress.curve):
        progress.curve.insert(0, initial)
    common.save_hf_checkpoint(acc, model, loaded.tokenizer, Path(args.out), args.save_dtype)
    if acc.is_main_process:
        throughput = common.throughput(progress, settings.grad_accum)
        common.write_manifest(
            Path(args.out), "cllm", model=args.model, trajectories=str(args.trajectories),
            n=traj_manifest.get("n"), records=len(records), prompts=len(train_prompts), max_prompts=args.max_prompts,
            consistency=args.consistency, consistency_window=args.consistency_window,
            consistency_weight=args.consistency_weight,
            ar_weight=args.ar_weight, label_smoothing=args.label_smoothing, use_gt_labels=args.use_gt_labels,
            ar_tokens=args.ar_tokens, packed=packed, states_per_block=args.states_per_block if packed else 1,
            throughput=throughput, loss_terms=progress.terms, curve=progress.curve,
            curve_settings={"eval_every": args.eval_every, "eval_prompts": args.eval_prompts, "eval_split": args.eval_split,
                            "eval_limit": args.eval_limit, "eval_n": eval_kwargs["n"],
                            "eval_max_new_tokens": args.eval_max_new_tokens} if args.eval_every else None,
            **common.settings_summary(settings, acc, progress),
        )
        acc.print(f"saved CLLM checkpoint to {args.out} ({progress.step} updates)")
    return 0
