"""What every trainer shares: data sources, the Accelerator, the optimiser and schedule,
the training loop with checkpoint/resume, HF checkpoint saving and the run manifest.

Data sources (``--prompts`` / ``--data``) resolve to a list of :class:`Example`:

* ``gsm8k`` and ``spider``: the ``train`` split of the task itself (``tasks/gsm8k.py``,
  ``tasks/spider.py``): the prompts are built by the same code as the evaluation prompts,
  the gold answers are ``Task.reference_answer`` (in the form the prompt asks for); Spider
  takes the schemas from ``spider/tables.json`` (the train databases are not needed);
* ``humaneval-style``: :data:`CODE_PROMPTS`, a small set of code-completion prompts
  written for cllm-bench (not HumanEval, which is the test set); no gold answers;
* ``mt-bench-style``: first turns of ``<data-dir>/mt_bench/question.jsonl`` (note: these
  are the MT-bench evaluation questions; pass your own chat JSONL for a clean split);
* a JSON-lines file with, per line, one of
  ``{"prompt_ids": [...], "answer_ids": [...]}`` (already tokenised; no tokenizer needed),
  ``{"prompt": "...", "answer": "..."}`` (``completion``/``response``/``output`` also
  accepted as the answer) or ``{"messages": [...]}`` (a final assistant message is the
  answer); the answer is optional;
* a trajectories folder written by ``train trajectories`` (``trajectories.jsonl``): the
  prompts, the target model's greedy answers and the gold labels when present.

Text prompts are rendered with the tokenizer's chat template when it has one (or with
``--prompt-style chat``), else as the plain prompt of the CLLM reference.
"""

from __future__ import annotations

import json
import math
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from cllm_bench.engines.batch import pad_batch
from cllm_bench.errors import DataError, UserError

SOURCE_NAMES = ("gsm8k", "spider", "humaneval-style", "mt-bench-style")
#: sources read through the task objects (their ``train`` split): the same prompts as evaluation
TASK_SOURCES = ("gsm8k", "spider")

TRAJECTORY_FILE = "trajectories.jsonl"
MANIFEST_FILE = "manifest.json"
STATE_DIR = "training_state"

CODE_CHAT = "Complete the following Python function. Reply with the code only.\n\n```python\n{prompt}```"
CHAT_RAW = "USER: {prompt}\nASSISTANT: "

#: Code-completion prompts written for cllm-bench (HumanEval style, NOT HumanEval items).
CODE_PROMPTS: tuple[str, ...] = (
    'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n',
    'def is_even(n: int) -> bool:\n    """Return True when n is even."""\n',
    'def reverse_words(text: str) -> str:\n    """Return the words of text in reverse order, joined by single spaces."""\n',
    'def count_vowels(s: str) -> int:\n    """Count the vowels (a, e, i, o, u, either case) in s."""\n',
    'def factorial(n: int) -> int:\n    """Return n! for n >= 0."""\n',
    'def fibonacci(n: int) -> list[int]:\n    """Return the first n Fibonacci numbers, starting 0, 1."""\n',
    'def is_palindrome(s: str) -> bool:\n    """True when s reads the same forwards and backwards, ignoring case and spaces."""\n',
    'def flatten(nested: list[list[int]]) -> list[int]:\n    """Concatenate the inner lists of nested, in order."""\n',
    'def unique_sorted(xs: list[int]) -> list[int]:\n    """Return the distinct elements of xs in increasing order."""\n',
    'def max_gap(xs: list[int]) -> int:\n    """Largest difference between two consecutive elements of sorted(xs); 0 if len(xs) < 2."""\n',
    'def word_lengths(text: str) -> dict[str, int]:\n    """Map every word of text to its length."""\n',
    'def gcd(a: int, b: int) -> int:\n    """Greatest common divisor of two non-negative integers."""\n',
    'def primes_below(n: int) -> list[int]:\n    """All prime numbers smaller than n, in increasing order."""\n',
    'def running_sum(xs: list[float]) -> list[float]:\n    """Prefix sums: out[i] = xs[0] + ... + xs[i]."""\n',
    'def chunk(xs: list[int], size: int) -> list[list[int]]:\n    """Split xs into consecutive chunks of length size (the last may be shorter)."""\n',
    'def capitalize_words(text: str) -> str:\n    """Upper-case the first letter of every word of text."""\n',
    'def digits_sum(n: int) -> int:\n    """Sum of the decimal digits of abs(n)."""\n',
    'def transpose(m: list[list[int]]) -> list[list[int]]:\n    """Transpose a rectangular matrix given as a list of rows."""\n',
    'def most_common(xs: list[str]) -> str:\n    """The most frequent element of xs; ties go to the one seen first."""\n',
    'def binary_search(xs: list[int], target: int) -> int:\n    """Index of target in the sorted list xs, or -1 when absent."""\n',
    'def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    """Merge two sorted lists into one sorted list."""\n',
    'def rotate(xs: list[int], k: int) -> list[int]:\n    """Rotate xs to the right by k positions."""\n',
    'def to_binary(n: int) -> str:\n    """Binary representation of a non-negative integer without the 0b prefix."""\n',
    'def anagrams(a: str, b: str) -> bool:\n    """True when a and b contain the same letters with the same counts."""\n',
)


# --------------------------------------------------------------------------- examples
@dataclass
class Example:
    """One training prompt.

    prompt_ids: the rendered, tokenised prompt.
    answer_ids: the gold answer (ends with EOS) or None when the source has none.
    greedy_ids: the target model's own greedy answer (from a trajectories folder) or None.
    """

    data_id: str
    prompt_ids: list[int]
    answer_ids: list[int] | None = None
    greedy_ids: list[int] | None = None


def use_chat_template(tokenizer: Any, prompt_style: str) -> bool:
    """True when prompts are rendered with the chat template ("auto": when it has one)."""
    if prompt_style not in ("auto", "chat", "raw"):
        raise UserError(f"--prompt-style must be auto, chat or raw, got {prompt_style!r}")
    if prompt_style == "auto":
        return getattr(tokenizer, "chat_template", None) is not None
    if prompt_style == "chat" and getattr(tokenizer, "chat_template", None) is None:
        raise UserError("--prompt-style chat: this tokenizer has no chat template; use --prompt-style raw")
    return prompt_style == "chat"


def encode_prompt(tokenizer: Any, chat_text: str, raw_text: str, prompt_style: str) -> list[int]:
    """Token ids of a prompt: ``chat_text`` as a user turn (chat template, generation prompt
    appended) or ``raw_text`` with the tokenizer's usual special tokens."""
    if use_chat_template(tokenizer, prompt_style):
        messages = [{"role": "user", "content": chat_text}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(raw_text)["input_ids"])


def encode_answer(tokenizer: Any, text: str, eos_id: int) -> list[int]:
    """Token ids of an answer text followed by ``eos_id`` (no BOS)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos_id]


def answer_eos_id(tokenizer: Any, eos_ids: Iterable[int]) -> int:
    """The token that ends a gold answer: the tokenizer's EOS, else the smallest model EOS id."""
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if tok_eos is not None:
        return int(tok_eos)
    ids = sorted(int(e) for e in eos_ids)
    if not ids:
        raise UserError("the model defines no EOS token; set generation_config.eos_token_id")
    return ids[0]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects of a JSON-lines file; DataError naming the line when one is corrupt."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: corrupt JSON line ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        records.append(record)
    return records


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: corrupt JSON ({exc.msg})") from None


def data_path(data_dir: Path | str | None, relpath: str, source: str) -> Path:
    """``data_dir / relpath``, checked to exist (DataError naming the fix otherwise)."""
    fix = f"pass --data-dir pointing to a folder with {relpath} (the layout of shared/data)"
    if data_dir is None:
        raise DataError(f"{source}: no --data-dir given; {fix}")
    path = Path(data_dir).expanduser() / relpath
    if not path.is_file():
        raise DataError(f"{source}: {path} is missing; {fix}")
    return path


def require_tokenizer(tokenizer: Any, source: str) -> None:
    if tokenizer is None:
        raise UserError(f"{source}: text prompts need a tokenizer; the model folder has none")


def code_examples(tokenizer: Any, prompt_style: str) -> list[Example]:
    require_tokenizer(tokenizer, "humaneval-style")
    return [
        Example(f"code_{i}", encode_prompt(tokenizer, CODE_CHAT.format(prompt=p), p, prompt_style))
        for i, p in enumerate(CODE_PROMPTS)
    ]


def mt_bench_examples(tokenizer: Any, data_dir: Path | None, prompt_style: str) -> list[Example]:
    require_tokenizer(tokenizer, "mt-bench-style")
    rows = read_jsonl(data_path(data_dir, "mt_bench/question.jsonl", "mt-bench-style"))
    out = []
    for row in rows:
        q = row["turns"][0]
        out.append(Example(f"mt_{row.get('question_id', len(out))}", encode_prompt(tokenizer, q, CHAT_RAW.format(prompt=q), prompt_style)))
    return out


def jsonl_example(row: dict[str, Any], index: int, tokenizer: Any, prompt_style: str, eos_id: int, where: str) -> Example:
    """One line of a user JSONL file (see the module docstring for the accepted shapes)."""
    data_id = str(row.get("id", row.get("data_id", f"row_{index}")))
    if "prompt_ids" in row:
        answer = row.get("answer_ids")
        return Example(data_id, [int(t) for t in row["prompt_ids"]], None if answer is None else [int(t) for t in answer])
    require_tokenizer(tokenizer, where)
    if "messages" in row:
        messages = list(row["messages"])
        answer_text = None
        if messages and messages[-1].get("role") == "assistant":
            answer_text = messages.pop()["content"]
        if not use_chat_template(tokenizer, prompt_style):
            raise UserError(f"{where}: messages need a tokenizer with a chat template")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    elif "prompt" in row:
        answer_text = next((row[k] for k in ("answer", "completion", "response", "output") if k in row), None)
        prompt = encode_prompt(tokenizer, row["prompt"], row["prompt"], prompt_style)
    else:
        raise DataError(f"{where} line {index + 1}: needs prompt_ids, prompt or messages")
    answer = None if answer_text is None else encode_answer(tokenizer, answer_text, eos_id)
    return Example(data_id, prompt, answer)


def file_examples(path: Path, tokenizer: Any, prompt_style: str, eos_id: int) -> list[Example]:
    rows = read_json(path) if path.suffix == ".json" else read_jsonl(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list or JSON lines")
    return [jsonl_example(r, i, tokenizer, prompt_style, eos_id, str(path)) for i, r in enumerate(rows)]


def read_trajectories(folder: Path) -> list[dict[str, Any]]:
    """The records of ``folder/trajectories.jsonl`` (see :mod:`trainers.trajectories`)."""
    path = Path(folder) / TRAJECTORY_FILE
    if not path.is_file():
        raise DataError(f"{folder} has no {TRAJECTORY_FILE}; create it with `cllm-bench train trajectories`")
    records = read_jsonl(path)
    if not records:
        raise DataError(f"{path} holds no records (all filtered out?)")
    return records


def trajectory_examples(folder: Path) -> list[Example]:
    """One Example per data_id of a trajectories folder: the original prompt, the target's
    greedy answer (``greedy_ids``) and the gold answer when recorded (``answer_ids``)."""
    by_id: dict[str, dict[str, Any]] = {}
    for rec in read_trajectories(folder):
        first = by_id.get(rec["data_id"])
        if first is None or rec["block_index"] < first["block_index"]:
            by_id[rec["data_id"]] = rec
    out = []
    for data_id, rec in by_id.items():
        prompt = rec["prompt_ids"][: rec["prompt_len"]]
        out.append(Example(data_id, prompt, rec.get("label_ids"), rec["answer_ids"]))
    return out


def load_examples(
    source: str,
    tokenizer: Any,
    *,
    eos_id: int,
    data_dir: Path | str | None = None,
    limit: int | None = None,
    prompt_style: str = "auto",
) -> list[Example]:
    """Resolve a source name / file / trajectories folder to its first ``limit`` examples."""
    data_dir = None if data_dir is None else Path(data_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        examples = trajectory_examples(path)
    elif source in TASK_SOURCES:
        examples = task_examples(source, tokenizer, data_dir, prompt_style, eos_id, None)
    elif source == "humaneval-style":
        examples = code_examples(tokenizer, prompt_style)
    elif source == "mt-bench-style":
        examples = mt_bench_examples(tokenizer, data_dir, prompt_style)
    elif path.is_file():
        examples = file_examples(path, tokenizer, prompt_style, eos_id)
    else:
        raise UserError(
            f"unknown data source {source!r}; use one of {', '.join(SOURCE_NAMES)}, a JSONL file, "
            f"or a folder written by `cllm-bench train trajectories`"
        )
    if limit is not None:
        examples = examples[: max(limit, 0)]
    if not examples:
        raise DataError(f"data source {source!r} gave no examples")
    return examples


def task_samples(name: str, data_dir: Path | str | None, split: str, limit: int | None, prompt_style: str = "auto",
                 allow_code_execution: bool = False) -> tuple[Any, list[Any]]:  # fmt: skip
    """A registered task (``split`` as its task argument) and its first ``limit`` samples:
    training and held-out prompts come from the same code as the evaluation prompts."""
    from cllm_bench.registry import TASKS
    from cllm_bench.tasks.base import TaskOptions

    if name not in TASKS.names():
        raise UserError(f"unknown task {name!r} for prompts; use one of {', '.join(sorted(TASKS.names()))}")
    options = TaskOptions(
        data_dir=None if data_dir is None else Path(data_dir), prompt_style=prompt_style,  # type: ignore[arg-type]
        allow_code_execution=allow_code_execution, extra={"split": split},
    )
    task = TASKS.get(name)(options)
    return task, task.samples(limit)


def task_examples(name: str, tokenizer: Any, data_dir: Path | None, prompt_style: str, eos_id: int, limit: int | None) -> list[Example]:
    """Training examples of a task's ``train`` split: the task's own prompts and its
    reference answers (``Task.reference_answer``, in the form its prompt asks for)."""
    require_tokenizer(tokenizer, name)
    task, samples = task_samples(name, data_dir, "train", limit, prompt_style)
    out = []
    for sample in samples:
        answer = task.reference_answer(sample, tokenizer)
        out.append(Example(
            sample.id, task.prompt_ids(sample, tokenizer),
            None if answer is None else encode_answer(tokenizer, answer, eos_id),
        ))
    return out


def check_trajectories_match(manifest: dict[str, Any], loaded: Any, model_spec: str) -> None:
    """UserError when a trajectories folder was collected with another model / vocabulary
    than the one about to be trained (its manifest records both)."""
    if not manifest:
        return
    vocab = manifest.get("vocab_size")
    if vocab is not None and int(vocab) != int(loaded.model.config.vocab_size):
        raise UserError(
            f"the trajectories were collected with a model of vocabulary {vocab}, but {model_spec} has "
            f"{loaded.model.config.vocab_size}; collect them again with `cllm-bench train trajectories --model {model_spec}`"
        )
    recorded = manifest.get("model_fingerprint")
    if recorded is not None and recorded != model_fingerprint(loaded):
        raise UserError(
            f"the trajectories were collected with model {manifest.get('model')!r} (another model or tokenizer than "
            f"{model_spec}); train the model they were collected with, or collect them again with --model {model_spec}"
        )


def model_fingerprint(loaded: Any) -> str:
    """Architecture + vocabulary + tokenizer identity of a loaded model (not its weights:
    a CLLM resumed from a checkpoint of the same base still matches)."""
    import hashlib

    cfg = loaded.model.config
    tok = loaded.tokenizer
    parts = [cfg.model_type, cfg.vocab_size, getattr(cfg, "hidden_size", None), getattr(cfg, "num_hidden_layers", None),
             None if tok is None else len(tok), None if tok is None else tok.convert_ids_to_tokens(list(range(min(64, len(tok)))))]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def throughput(progress: "TrainProgress", grad_accum: int) -> dict[str, Any]:
    """Records (prompts) and consistency-loss block positions per second of training."""
    seconds = progress.seconds or None
    records = sum(progress.terms.get("records", [])) * grad_accum
    positions = sum(progress.terms.get("positions", [])) * grad_accum
    return {
        "train_seconds": round(progress.seconds, 3),
        "records": records or None,
        "records_per_s": round(records / seconds, 4) if seconds and records else None,
        "consistency_positions": positions or None,
        "consistency_positions_per_s": round(positions / seconds, 3) if seconds and positions else None,
    }


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


# --------------------------------------------------------------------------- accelerate
def resolve_mixed_precision(choice: str, cpu: bool) -> str:
    """"auto": bf16 on a CUDA device that supports it, "no" otherwise."""
    if choice not in ("auto", "no", "bf16", "fp16"):
        raise UserError(f"--mixed-precision must be auto, no, bf16 or fp16, got {choice!r}")
    if choice != "auto":
        return choice
    if not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(mixed_precision: str = "auto", grad_accum: int = 1, cpu: bool = False, seed: int = 0):
    """An Accelerator (CPU, one GPU or several under ``accelerate launch``), seeded."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if grad_accum < 1:
        raise UserError(f"--grad-accum must be >= 1, got {grad_accum}")
    acc = Accelerator(
        mixed_precision=resolve_mixed_precision(mixed_precision, cpu),
        gradient_accumulation_steps=grad_accum,
        cpu=cpu,
    )
    set_seed(seed)
    return acc


def load_for_training(spec: str, dtype: str = "float32", gradient_checkpointing: bool = False):
    """Load a model spec on CPU for training (the Accelerator moves it). Returns LoadedModel."""
    from cllm_bench.models import load_model

    loaded = load_model(spec, dtype=dtype, device="cpu")
    if gradient_checkpointing:
        loaded.model.gradient_checkpointing_enable()
        loaded.model.config.use_cache = False
    return loaded


# --------------------------------------------------------------------------- training loop
@dataclass
class TrainSettings:
    """Hyper-parameters and bookkeeping of one training run (the shared CLI flags)."""

    out_dir: Path
    lr: float
    epochs: int = 1
    batch_size: int = 1
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    save_every: int = 200
    keep_state: bool = False
    resume: bool = True
    seed: int = 0
    mixed_precision: str = "auto"
    cpu: bool = False

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be >= 1, got {self.max_steps}")


def settings_from_args(args: Any) -> TrainSettings:
    """TrainSettings from the shared CLI flags (see :mod:`cllm_bench.trainers.cli`)."""
    settings = TrainSettings(
        out_dir=Path(args.out),
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        max_steps=args.max_steps,
        save_every=args.save_every,
        keep_state=args.keep_state,
        resume=not args.no_resume,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        cpu=args.cpu,
    )
    settings.validate()
    return settings


@dataclass
class TrainProgress:
    """Where a run stands; saved with the accelerate state so that a run resumes exactly.

    step: optimiser updates done. epoch: current epoch. batches_done: batches of the
    current epoch this process has consumed. losses: mean loss of every update so far.
    """

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall time spent in the training loop, summed over resumes
    #: per update, the mean of every other scalar a step function logs ("ar", "consistency", ...)
    terms: dict[str, list[float]] = field(default_factory=dict)
    #: learning-curve points appended by an ``after_update`` callback (kept across resumes)
    curve: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch, self.batches_done = int(state["step"]), int(state["epoch"]), int(state["batches_done"])
        self.losses = [float(x) for x in state.get("losses", [])]
        self.seconds = float(state.get("seconds", 0.0))
        self.terms = {k: [float(x) for x in v] for k, v in state.get("terms", {}).items()}
        self.curve = list(state.get("curve", []))


#: A step function: computes the losses of one micro-batch, calls ``accelerator.backward``
#: itself (possibly several times) and returns the scalars to log, with a "loss" key.
StepFn = Callable[[Any], dict[str, float]]


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise UserError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over ceil(warmup_ratio * total) updates, then cosine decay to 0."""
    from transformers import get_cosine_schedule_with_warmup

    warmup = math.ceil(warmup_ratio * total_steps)
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))


def epoch_loader(acc: Any, dataset: Sequence[Any], batch_size: int, collate: Callable, seed: int, epoch: int):
    """A prepared DataLoader over ``dataset`` in a seeded per-epoch order (resumable)."""
    from torch.utils.data import DataLoader, Subset

    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # datasets that draw per epoch (the CLLM state draw)
    order = list(range(len(dataset)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    loader = DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, collate_fn=collate)  # type: ignore[arg-type]
    return acc.prepare_data_loader(loader)


def progress_bar(console: Any, enabled: bool):
    """A rich progress bar with a loss column."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def fit(
    acc: Any,
    model: torch.nn.Module,
    optimizer: Any,
    dataset: Sequence[Any],
    collate: Callable,
    step_fn: StepFn,
    settings: TrainSettings,
    console: Any = None,
    description: str = "training",
    after_update: Callable[[TrainProgress], None] | None = None,
) -> TrainProgress:
    """Run the training loop: gradient accumulation, clipping, cosine schedule, progress,
    periodic ``accelerator.save_state`` into ``out_dir/training_state`` and resume from it.

    ``model`` and ``optimizer`` must be prepared; ``model`` is the module whose gradients are
    accumulated and clipped. Returns the progress record (losses per update).
    """
    settings.validate()
    if len(dataset) == 0:
        raise DataError("no training examples")
    state_dir = Path(settings.out_dir) / STATE_DIR
    probe = epoch_loader(acc, dataset, settings.batch_size, collate, settings.seed, 0)
    updates_per_epoch = math.ceil(len(probe) / settings.grad_accum)
    total = updates_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    scheduler = cosine_schedule(optimizer, total, settings.warmup_ratio)
    progress = TrainProgress()
    acc.register_for_checkpointing(scheduler, progress)
    if settings.resume and state_dir.is_dir():
        acc.load_state(str(state_dir))
        acc.print(f"resumed from {state_dir} at update {progress.step}")
    elif state_dir.is_dir() and acc.is_main_process:
        shutil.rmtree(state_dir)  # --no-resume: start over
    acc.wait_for_everyone()
    model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with progress_bar(console, acc.is_main_process) as bar:
        task = bar.add_task(description, total=total, completed=progress.step, loss="-")
        while progress.step < total and progress.epoch < settings.epochs:
            loader = probe if progress.epoch == 0 else epoch_loader(
                acc, dataset, settings.batch_size, collate, settings.seed, progress.epoch
            )
            run_epoch(acc, model, optimizer, scheduler, loader, step_fn, settings, progress, total, state_dir, bar, task,
                      after_update)
    acc.wait_for_everyone()
    if state_dir.is_dir() and acc.is_main_process and not settings.keep_state:
        shutil.rmtree(state_dir)
    elif settings.keep_state:
        save_training_state(acc, state_dir)
    return progress


def run_epoch(acc, model, optimizer, scheduler, loader, step_fn, settings, progress, total, state_dir, bar, task,
              after_update=None) -> None:
    """One (possibly resumed) pass over ``loader``; updates ``progress`` in place."""
    skipped = acc.skip_first_batches(loader, progress.batches_done) if progress.batches_done else loader
    window: list[float] = []
    term_window: dict[str, list[float]] = {}
    started = time.perf_counter()
    for batch in skipped:
        with acc.accumulate(model):
            logged = step_fn(batch)
            window.append(float(logged["loss"]))
            for key, value in logged.items():
                if key != "loss":
                    term_window.setdefault(key, []).append(float(value))
            if acc.sync_gradients and settings.max_grad_norm > 0:
                acc.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        progress.batches_done += 1
        if not acc.sync_gradients:
            continue
        if not getattr(optimizer, "step_was_skipped", False):
            scheduler.step()
        loss = float(acc.reduce(torch.tensor(sum(window) / len(window), device=acc.device), "mean"))
        window.clear()
        for key, values in term_window.items():
            progress.terms.setdefault(key, []).append(sum(values) / len(values))
        term_window.clear()
        progress.step += 1
        progress.losses.append(loss)
        progress.seconds += time.perf_counter() - started
        bar.update(task, completed=progress.step, loss=f"{loss:.4f}")
        if after_update is not None:
            after_update(progress)
        started = time.perf_counter()
        if settings.save_every and progress.step % settings.save_every == 0 and progress.step < total:
            save_training_state(acc, state_dir)
        if progress.step >= total:
            return
    progress.epoch += 1
    progress.batches_done = 0


def save_training_state(acc: Any, state_dir: Path) -> None:
    """Model, optimiser, schedule, RNG and progress via ``accelerator.save_state``."""
    acc.wait_for_everyone()
    acc.save_state(str(state_dir))


# --------------------------------------------------------------------------- saving
def save_hf_checkpoint(acc: Any, model: torch.nn.Module, tokenizer: Any, out_dir: Path, dtype: str | None = None) -> None:
    """``save_pretrained`` of the (unwrapped) model and the tokenizer into ``out_dir``.

    dtype: "float32" / "bfloat16" / "float16" to cast the saved weights (None: as trained).
    """
    from cllm_bench.models import DTYPES

    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(model)
    state = acc.get_state_dict(model)
    if acc.is_main_process:
        if dtype is not None:
            if dtype not in DTYPES:
                raise UserError(f"--save-dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            state = cast_state_dict(state, DTYPES[dtype])
            unwrapped.config.dtype = dtype
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        unwrapped.config.use_cache = True
        unwrapped.save_pretrained(str(out_dir), state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))
    acc.wait_for_everyone()


def peak_gpu_memory_gib(acc: Any) -> float | None:
    """Peak memory allocated by torch on this process's GPU since the loop started (None on CPU)."""
    device = getattr(acc, "device", None)
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def cast_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors cast to ``dtype``; tensors that shared storage (tied embeddings)
    still share it afterwards, so ``save_pretrained`` keeps writing them once."""
    done: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
            continue
        ident = (value.data_ptr(), tuple(value.shape))
        if ident not in done:
            done[ident] = value.to(dtype)
        out[key] = done[ident]
    return out


def package_versions() -> dict[str, str]:
    import accelerate
    import transformers

    import cllm_bench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "cllm_bench": getattr(cllm_bench, "__version__", "?"),
    }


def write_manifest(out_dir: Path, kind: str, **fields: Any) -> Path:
    """Write ``out_dir/manifest.json``: what was trained/collected, how, when, with what."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "kind": kind,
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
        **fields,
    }
    path = out_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def settings_summary(settings: TrainSettings, acc: Any, progress: TrainProgress) -> dict[str, Any]:
    """The manifest fields every trainer writes."""
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "num_processes": acc.num_processes,
        "mixed_precision": str(acc.mixed_precision),
        "device": str(acc.device),
        "updates": progress.step,
        "train_seconds": round(progress.seconds, 3),
        "peak_gpu_memory_gib": peak_gpu_memory_gib(acc),
        "final_loss": progress.losses[-1] if progress.losses else None,
        "first_loss": progress.losses[0] if progress.losses else None,
        "losses": progress.losses,
    }


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


# --------------------------------------------------------------------------- supervised sequences
def sequence_items(examples: Sequence[Example], answers: Sequence[list[int]], max_length: int) -> list[dict[str, Any]]:
    """Items {"ids": prompt + answer (cut to max_length), "start": len(prompt)} for
    answer-only losses; examples whose prompt alone fills max_length are skipped."""
    items = []
    for ex, answer in zip(examples, answers):
        ids = (list(ex.prompt_ids) + list(answer))[:max_length]
        if len(ex.prompt_ids) < len(ids):
            items.append({"ids": ids, "start": len(ex.prompt_ids)})
    if not items:
        raise DataError(f"no example has answer tokens within --max-length {max_length}")
    return items


@dataclass
class SequenceCollator:
    """Right-pads sequence items: ids/mask [B, T] and labels [B, T] (answer tokens only)."""

    pad_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [it["ids"] for it in items]
        ids, mask = pad_batch(seqs, self.pad_id)
        labels = answer_labels([it["start"] for it in items], [len(s) for s in seqs], ids)
        return {"ids": ids, "mask": mask, "labels": labels}


def gold_answers(examples: Sequence[Example], source: str) -> list[list[int]]:
    """The gold answers of ``examples``; UserError when the source has none."""
    missing = [ex.data_id for ex in examples if ex.answer_ids is None]
    if missing:
        raise UserError(
            f"{source}: {len(missing)} example(s) have no gold answer (e.g. {missing[0]}); use a source with "
            f"answers (gsm8k, spider, JSONL with answer/answer_ids, trajectories built from those)"
        )
    return [list(ex.answer_ids or []) for ex in examples]


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
