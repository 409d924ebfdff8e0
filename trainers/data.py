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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence


from cllm_bench.errors import DataError, UserError

SOURCE_NAMES = ("gsm8k", "spider", "humaneval-style", "mt-bench-style")
#: sources read through the task objects (their ``train`` split): the same prompts as evaluation
TASK_SOURCES = ("gsm8k", "spider")

TRAJECTORY_FILE = "trajectories.jsonl"

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


def gold_answers(examples: Sequence[Example], source: str) -> list[list[int]]:
    """The gold answers of ``examples``; UserError when the source has none."""
    missing = [ex.data_id for ex in examples if ex.answer_ids is None]
    if missing:
        raise UserError(
            f"{source}: {len(missing)} example(s) have no gold answer (e.g. {missing[0]}); use a source with "
            f"answers (gsm8k, spider, JSONL with answer/answer_ids, trajectories built from those)"
        )
    return [list(ex.answer_ids or []) for ex in examples]


