"""lm-eval generation tasks as cllm-bench tasks (``--tasks lm_eval:<task>``; see the
package docstring): :func:`make_lm_eval_task` and :class:`LMEvalTask`."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

from cllm_bench.errors import UserError
from cllm_bench.lm_eval_bridge.text import cut_at_stops, encode_context, max_gen_tokens, render_chat, stop_sequences
from cllm_bench.tasks.base import Sample, Task, TaskArg, TaskOptions

#: lm-eval's default few-shot seed (``simple_evaluate(fewshot_random_seed=1234)``)
DEFAULT_FEWSHOT_SEED = 1234


@lru_cache(maxsize=4)
def task_manager(include_path: str | None, include_defaults: bool) -> Any:
    """An lm-eval TaskManager (indexing the built-in tasks takes seconds: cached)."""
    from lm_eval.tasks import TaskManager

    paths = [p for p in include_path.split(os.pathsep) if p] if include_path else None
    return TaskManager(include_path=paths, include_defaults=include_defaults)


def load_lm_eval_task(name: str, include_path: str | None = None, include_defaults: bool = True) -> Any:
    """The lm-eval Task object called ``name``; tasks under ``include_path`` are looked up
    there first (fast), then (unless ``include_defaults`` is False) among lm-eval's
    built-in tasks."""
    managers = [task_manager(include_path, False)] if include_path else []
    if include_defaults or not include_path:
        managers.append(task_manager(include_path, True))
    for manager in managers:
        if name in manager.all_tasks:
            return _single_task(name, manager)
    if include_path:
        where = f" under {include_path}" + (" or among lm-eval's own tasks" if include_defaults else "")
        hint = ""
    else:
        where, hint = "", " (custom task YAMLs: --task-args include_path=DIR)"
    raise UserError(f"unknown lm-eval task {name!r}{where}; list them with `lm-eval ls tasks`{hint}")


def _single_task(name: str, manager: Any) -> Any:
    try:
        if hasattr(manager, "load"):
            loaded = manager.load([name])
            tasks, groups = loaded["tasks"], loaded["groups"]
        else:  # lm-eval < 0.4.10
            from lm_eval.tasks import get_task_dict

            tasks, groups = _flatten(get_task_dict([name], manager)), {}
    except UserError:
        raise
    except Exception as err:  # dataset download/offline, bad YAML: one line naming the task
        raise UserError(f"lm-eval task {name!r} could not be loaded: {type(err).__name__}: {err}") from None
    if groups or len(tasks) != 1:
        raise UserError(
            f"lm-eval name {name!r} is a group of {len(tasks)} tasks; run them one by one: "
            + ", ".join(f"lm_eval:{t}" for t in sorted(tasks))
        )
    return next(iter(tasks.values()))


def _flatten(task_dict: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(_flatten(value))
        else:
            out[str(getattr(key, "group_name", key))] = value
    return out


@dataclass(frozen=True)
class _CapturedChat:
    messages: list[dict[str, str]]
    add_generation_prompt: bool


class LMEvalTask(Task):
    """An lm-eval generation task as a cllm-bench task (see the module docstring).

    Task arguments (``--task-args``): ``include_path`` (folders with task YAMLs,
    ``:``-separated), ``include_defaults=false`` (look only there, skipping the seconds
    lm-eval takes to index its own tasks), ``num_fewshot``, ``fewshot_seed`` (default
    1234, lm-eval's), ``fewshot_as_multiturn`` (chat prompts), ``system_instruction``.

    Prompt: lm-eval's context for the doc (few-shot examples by lm-eval's sampler, seeded
    once and drawn in doc order as ``lm_eval`` does); with a chat template (prompt style
    chat/auto) the messages lm-eval would hand to ``apply_chat_template``.
    Score: the completion cut at the task's ``until`` strings, then every filter pipeline
    of the task and its ``process_results``: keys ``<metric>,<filter>`` as in lm-eval's
    results. ``accuracy``: ``exact_match`` (else the first metric) of the first filter.
    """

    requires_execution = False
    default_max_new_tokens = 256
    accepted_args = {
        "include_path": TaskArg("text", "folders of task YAMLs (:-separated)"), "include_defaults": TaskArg("bool"),
        "num_fewshot": TaskArg("integer"), "fewshot_seed": TaskArg("integer"), "fewshot_as_multiturn": TaskArg("bool"),
        "system_instruction": TaskArg("text"),
    }  # fmt: skip

    def __init__(self, name: str, lm_task: Any, options: TaskOptions | None = None) -> None:
        super().__init__(options)
        self.name = name
        self.registered_name = f"lm_eval:{name}"
        self.lm_task = lm_task
        self._check_generation_task()
        self._configure()
        self.gen_kwargs: dict[str, Any] = dict(lm_task.config.generation_kwargs or {})
        self.until = stop_sequences(self.gen_kwargs.get("until"))
        self.default_max_new_tokens = max_gen_tokens(self.gen_kwargs, 256)  # type: ignore[misc]
        self.unsafe_code = bool(getattr(lm_task, "UNSAFE_CODE", False))
        self.requires_execution = self.unsafe_code  # type: ignore[misc]
        metrics = ", ".join(self.metric_names())
        self.description = f"lm-evaluation-harness task {name} (generate_until; metrics: {metrics})"  # type: ignore[misc]
        self.skipped: dict[str, int] = {}

    # -- setup -----------------------------------------------------------------------
    def _check_generation_task(self) -> None:
        kind = getattr(self.lm_task, "OUTPUT_TYPE", None) or self.lm_task.get_config("output_type")
        if kind != "generate_until":
            raise UserError(
                f"lm-eval task {self.name!r} is a {kind} task; cllm-bench runs only generate_until tasks "
                "(use `lm_eval --model hf` for loglikelihood tasks)"
            )

    def _configure(self) -> None:
        extra = self.options.extra
        if "num_fewshot" in extra:
            self.lm_task.set_config(key="num_fewshot", value=_int_arg(extra, "num_fewshot", self.name))
        elif self.lm_task.get_config("num_fewshot") is None:
            self.lm_task.set_config(key="num_fewshot", value=0)
        self.fewshot_seed = _int_arg(extra, "fewshot_seed", self.name, DEFAULT_FEWSHOT_SEED)
        self.fewshot_as_multiturn = extra.get("fewshot_as_multiturn", "false").lower() in ("1", "true", "yes")
        self.system_instruction = extra.get("system_instruction") or None

    def metric_names(self) -> list[str]:
        return list(self.lm_task.aggregation())

    def filter_names(self) -> list[str]:
        return [f.name for f in getattr(self.lm_task, "_filters", [])] or ["none"]

    # -- samples and prompts ---------------------------------------------------------
    def samples(self, limit: int | None = None) -> list[Sample]:
        docs = list(self.lm_task.eval_docs)
        docs = docs if limit is None else docs[:limit]
        raw = self._contexts(docs, chat=False)
        chats = self._contexts(docs, chat=True)
        return [
            Sample(id=f"{self.name}/{i}", data={"doc_id": i, "doc": doc, "context": ctx, "chat": chat})
            for i, (doc, ctx, chat) in enumerate(zip(docs, raw, chats))
        ]

    def _contexts(self, docs: list[dict], chat: bool) -> list[Any]:
        """lm-eval's contexts for ``docs`` in order (few-shot sampler seeded once, as lm-eval
        does); with ``chat`` the messages its chat template callback would receive."""
        task = self.lm_task
        task.set_fewshot_seed(seed=self.fewshot_seed)
        shots = task.get_config("num_fewshot") or 0
        out: list[Any] = []
        for doc in docs:
            captured: list[_CapturedChat] = []
            kwargs: dict[str, Any] = {"system_instruction": self.system_instruction}
            if chat:
                kwargs |= {"apply_chat_template": True, "fewshot_as_multiturn": self.fewshot_as_multiturn,
                           "chat_template": _capture_into(captured)}  # fmt: skip
            if hasattr(task, "doc_to_prefix") and _accepts(task.fewshot_context, "gen_prefix"):
                kwargs["gen_prefix"] = task.doc_to_prefix(doc)  # lm-eval >= 0.4.8
            try:
                ctx = task.fewshot_context(doc, shots, **kwargs)
            except Exception as err:
                problem = f"{type(err).__name__}: {err}"
                raise UserError(f"lm-eval task {self.name!r}: building the prompt failed: {problem}") from None
            if not isinstance(ctx, str):
                raise UserError(f"lm-eval task {self.name!r} builds several contexts per doc; not a generation task")
            if chat and len(captured) != 1:
                raise UserError(f"lm-eval task {self.name!r}: lm-eval built no chat prompt for doc {len(out)}")
            out.append(captured[0] if chat else ctx)
        return out

    def prompt_ids(self, sample: Sample, tokenizer: Any, previous_answers: list[str] | None = None) -> list[int]:
        if self.use_chat(tokenizer):
            chat: _CapturedChat = sample.data["chat"]
            return encode_context(tokenizer, render_chat(tokenizer, chat.messages, chat.add_generation_prompt))
        return encode_context(tokenizer, sample.data["context"])

    def stop_strings(self, sample: Sample) -> list[str]:
        return list(self.until)

    # -- scoring ---------------------------------------------------------------------
    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        """``<metric>,<filter>`` -> value for every filter pipeline of the task."""
        text = cut_at_stops(completions[0] if completions else "", self.until)
        if self.unsafe_code and not self.options.allow_code_execution:
            return {"executed": False, "completion": text}
        doc = sample.data["doc"]
        repeats = int(self.lm_task.get_config("repeats") or 1)
        out: dict[str, Any] = {}
        with _code_eval_allowed(self.unsafe_code):
            for name, make_filters in self._filter_pipelines():
                try:  # a filter or scorer crash on odd output scores as an error, never a crash
                    filtered = _apply_filters(make_filters, doc, [text] * repeats)
                    metrics = self.lm_task.process_results(doc, [filtered])
                except Exception as err:
                    out[f"error,{name}"] = f"{type(err).__name__}: {err}"
                    continue
                out.update({f"{metric},{name}": _plain(value) for metric, value in metrics.items()})
                out[f"filtered,{name}"] = filtered if isinstance(filtered, str) else repr(filtered)
        return out

    def _filter_pipelines(self) -> list[tuple[str, list[Any]]]:
        """(name, filter factories) of every filter pipeline (lm-eval's FilterEnsembles);
        lm-eval's default is one pipeline "none" = take the first response."""
        ensembles = getattr(self.lm_task, "_filters", None)
        if not ensembles:
            return [("none", [])]
        return [(e.name, list(e.filters)) for e in ensembles]

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        if self.unsafe_code and any(s.get("executed") is False for s in scores):
            note = "code execution disabled: pass --allow-code-execution to compute this task's metrics"
            return {"accuracy": None, "n": n, "note": note}
        out: dict[str, Any] = {"accuracy": None, "n": n}
        aggregations = self.lm_task.aggregation()
        for key in _metric_keys(scores):
            metric = key.split(",", 1)[0]
            values = [s[key] for s in scores if key in s]
            out[key] = _plain(aggregations.get(metric, _mean)(values)) if values else None
        primary = self.primary_metric()
        out["primary_metric"] = primary
        value = out.get(primary)
        out["accuracy"] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        errors = sum(any(k.startswith("error,") for k in s) for s in scores)
        if errors:
            out["scoring_errors"] = errors
        return out

    def primary_metric(self) -> str:
        """``exact_match`` (else the first metric) of the first filter pipeline."""
        metrics = self.metric_names()
        metric = "exact_match" if "exact_match" in metrics else (metrics[0] if metrics else "exact_match")
        return f"{metric},{self.filter_names()[0]}"


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (score dicts go to JSON)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else value


def _apply_filters(make_filters: list[Any], doc: dict, responses: list[str]) -> Any:
    """One doc's responses through a filter pipeline, as ``FilterEnsemble.apply`` does for
    all instances at once; no filters = the first response."""
    resps: Any = [list(responses)]
    for make_filter in make_filters:
        resps = make_filter().apply(resps, [doc])
    return list(resps)[0] if make_filters else responses[0]


def _accepts(func: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _capture_into(captured: list[Any]) -> Any:
    def chat_template(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        captured.append(_CapturedChat([dict(m) for m in messages], bool(add_generation_prompt)))
        return ""

    return chat_template


def _metric_keys(scores: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for s in scores:
        for k in s:
            if "," in k and not k.startswith(("filtered,", "error,")):
                keys.setdefault(k)
    return list(keys)


def _mean(values: list[Any]) -> float:
    return sum(values) / len(values)


def _int_arg(extra: dict[str, str], key: str, task: str, default: int | None = None) -> int:
    raw = extra.get(key)
    if raw is None:
        assert default is not None
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"lm_eval:{task}: task argument {key}={raw!r} must be a non-negative integer")
    return value


@contextmanager
def _code_eval_allowed(allowed: bool) -> Iterator[None]:
    """Set ``HF_ALLOW_CODE_EVAL=1`` (HF evaluate's code_eval gate) while scoring an
    unsafe-code task the user opted into."""
    if not allowed:
        yield
        return
    old = os.environ.get("HF_ALLOW_CODE_EVAL")
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_ALLOW_CODE_EVAL", None)
        else:
            os.environ["HF_ALLOW_CODE_EVAL"] = old


def make_lm_eval_task(task_name: str, options: TaskOptions | None = None) -> Task:
    """The cllm-bench task for lm-eval task ``task_name`` (the name after ``lm_eval:``)."""
    options = options or TaskOptions()
    name = task_name.strip()
    if not name:
        raise UserError("empty lm-eval task name; write --tasks lm_eval:<task>, e.g. lm_eval:gsm8k")
    extra = options.extra
    include_defaults = extra.get("include_defaults", "true").lower() not in ("0", "false", "no")
    lm_task = load_lm_eval_task(name, extra.get("include_path"), include_defaults)
    return LMEvalTask(name, lm_task, options)

