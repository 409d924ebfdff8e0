"""``train plan``: size a whole CLLM reproduction (trajectories -> train cllm -> run) to a
wall-clock budget from throughput measured on THIS device with THIS model.

Probe (a few seconds of each stage, on the real model and real task prompts):

* trajectories: the packed collector on ``probe_prompts`` prompts -> seconds per prompt;
* training: ``probe_steps`` packed CLLM updates -> seconds per update (forward, backward,
  optimiser step; one prompt per update);
* evaluation: ``ar`` and ``jacobi`` on ``probe_prompts`` prompts -> seconds per question
  for the run's decoder list (the decoder count scales it);
* fixed costs: model load seconds (paid by every stage's process).

Plan (:func:`plan_sizes`, pure): with ``usable = budget x (1 - safety)`` minus the fixed
costs of the stages, spend ``eval_share`` on evaluation (questions = that / seconds per
question, at least ``min_eval``) and the rest on N training prompts collected once and
trained ``epochs`` times: N = rest / (s_traj + epochs x s_step). The plan JSON states every
measured rate, the sizes and the predicted seconds per stage, so a run can be checked
against its plan.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cllm_bench.errors import UserError


@dataclass(frozen=True)
class Rates:
    """Measured seconds: per collected prompt, per training update, per evaluated question
    (all decoders of the run together), and per model load (one per stage process)."""

    traj_s_per_prompt: float
    train_s_per_update: float
    eval_s_per_question: float
    load_s: float


@dataclass(frozen=True)
class Plan:
    """Sizes of the pipeline and the seconds each stage is predicted to take."""

    n_train: int
    epochs: int
    n_eval: int
    predicted_s: dict[str, float]
    budget_s: float
    rates: Rates


def plan_sizes(rates: Rates, budget_s: float, *, epochs: int = 1, eval_share: float = 0.25, safety: float = 0.15,
               stages: int = 4, min_eval: int = 10, max_train: int | None = None,
               max_eval: int | None = None) -> Plan:  # fmt: skip
    """Sizes that fit ``budget_s`` (see the module docstring). ``stages`` processes each pay
    one model load; ``max_eval`` caps the questions (the evaluation split's size), the
    time left over goes to training. UserError when even the minimum (``min_eval``
    questions, 1 training prompt) does not fit."""
    if budget_s <= 0 or not 0 <= eval_share < 1 or not 0 <= safety < 1 or epochs < 1:
        raise UserError("--budget-s must be > 0, --eval-share and --safety in [0, 1), --epochs >= 1")
    usable = budget_s * (1 - safety) - stages * rates.load_s
    eval_s = max(usable * eval_share, min_eval * rates.eval_s_per_question)
    n_eval = max(min_eval, int(eval_s // rates.eval_s_per_question))
    if max_eval is not None:
        n_eval = min(n_eval, max_eval)
    rest = usable - n_eval * rates.eval_s_per_question
    per_prompt = rates.traj_s_per_prompt + epochs * rates.train_s_per_update
    n_train = int(rest // per_prompt) if rest > 0 else 0
    if max_train is not None:
        n_train = min(n_train, max_train)
    if n_train < 1:
        raise UserError(
            f"a {budget_s:.0f} s budget does not fit: model loads {stages * rates.load_s:.0f} s, {min_eval} questions "
            f"{min_eval * rates.eval_s_per_question:.0f} s, one training prompt {per_prompt:.1f} s; give a larger --budget-s"
        )
    predicted = {
        "model_loads": round(stages * rates.load_s, 2),
        "trajectories": round(n_train * rates.traj_s_per_prompt, 2),
        "train_cllm": round(n_train * epochs * rates.train_s_per_update, 2),
        "run": round(n_eval * rates.eval_s_per_question, 2),
    }
    predicted["total"] = round(sum(predicted.values()), 2)
    return Plan(n_train, epochs, n_eval, predicted, budget_s, rates)


def measure_rates(model_spec: str, prompts: list[list[int]], *, n: int, max_new_tokens: int, decoders: int,
                  probe_steps: int = 3, device: str = "auto", dtype: str = "auto") -> Rates:  # fmt: skip
    """Probe the stages on ``prompts`` (>= 2) with the real model (see the module docstring)."""
    import torch

    from cllm_bench.decoders.ar import ARDecoder
    from cllm_bench.decoders.jacobi import JacobiDecoder
    from cllm_bench.engines import Engine
    from cllm_bench.models import load_model
    from cllm_bench.trainers.cllm_packed import PackedDataset, PromptTrajectories, make_packed_step
    from cllm_bench.trainers.trajectories import collect_packed
    from cllm_bench.trainers.common import Example, pad_token_id

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    start = time.perf_counter()
    loaded = load_model(model_spec, dtype=dtype, device=device)
    sync()
    load_s = time.perf_counter() - start
    model, eos = loaded.model, loaded.eos_ids
    examples = [Example(f"probe_{i}", list(p)) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    collected = collect_packed(model, examples, range(len(examples)), n=n, max_new_tokens=max_new_tokens, eos_ids=eos,
                               seed=0, init="random", batch_size=len(examples), pad_id=pad_token_id(loaded.tokenizer, model))
    sync()
    traj_s = (time.perf_counter() - start) / len(examples)

    engine = Engine(model)
    start = time.perf_counter()
    for p in prompts:
        ARDecoder().generate(engine, list(p), max_new_tokens, eos)
        JacobiDecoder(n=n).generate(engine, list(p), max_new_tokens, eos)
    sync()
    eval_s = (time.perf_counter() - start) / len(prompts) * max(decoders, 2) / 2

    items = []
    for ex, col in zip(examples, collected):
        blocks, pos = [], 0
        for b in col.blocks:
            blocks.append((pos, tuple(tuple(s) for s in b.states)))
            pos += len(b.fixed_point)
        items.append(PromptTrajectories(ex.data_id, tuple(ex.prompt_ids), tuple(col.answer), tuple(blocks)))
    dataset = PackedDataset(items, states_per_block=4)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)

    class _Backward:
        @staticmethod
        def backward(loss: Any) -> None:
            loss.backward()

    step = make_packed_step(_Backward(), model, ar_weight=10.0, label_smoothing=0.0)
    step([dataset[0]])  # warm-up (allocator, kernels)
    optimizer.zero_grad(set_to_none=True)
    sync()
    start = time.perf_counter()
    for i in range(probe_steps):
        step([dataset[i % len(dataset)]])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    train_s = (time.perf_counter() - start) / probe_steps
    return Rates(round(traj_s, 4), round(train_s, 4), round(eval_s, 4), round(load_s, 3))


def run(args: Any, console: Any = None) -> int:
    """``cllm-bench train plan``: probe, plan, write the plan JSON (and print shell variables)."""
    from cllm_bench.models import load_model
    from cllm_bench.trainers import common

    if args.probe_prompts < 2 or args.probe_steps < 1:
        raise UserError("--probe-prompts must be >= 2 and --probe-steps >= 1")
    task, samples = common.task_samples(args.prompts, args.data_dir, "train", args.probe_prompts, args.prompt_style)
    tokenizer = load_model(args.model, dtype=args.dtype, device="cpu").tokenizer
    prompts = [task.prompt_ids(s, tokenizer) for s in samples]
    rates = measure_rates(args.model, prompts, n=args.n, max_new_tokens=args.max_new_tokens, decoders=args.decoders,
                          probe_steps=args.probe_steps, device=args.device, dtype=args.dtype)
    from cllm_bench.registry import TASKS
    from cllm_bench.tasks.base import TaskOptions

    eval_task = TASKS.get(args.prompts)(TaskOptions(data_dir=Path(args.data_dir) if args.data_dir else None))
    available = len(eval_task.samples())  # the task's default (evaluation) split, as `run` reads it
    max_eval = min(available, args.max_eval) if args.max_eval else available
    plan = plan_sizes(rates, args.budget_s, epochs=args.epochs, eval_share=args.eval_share, safety=args.safety,
                      min_eval=min(args.min_eval, max_eval), max_train=args.max_train, max_eval=max_eval)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = asdict(plan) | {"model": args.model, "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
                          "decoders": args.decoders, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"N_TRAIN={plan.n_train} N_EVAL={plan.n_eval} EPOCHS={plan.epochs} PREDICTED_S={math.ceil(plan.predicted_s['total'])}")
    return 0
