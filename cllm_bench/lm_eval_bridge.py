"""lm-evaluation-harness <-> cllm-bench, both ways.

1. **lm-eval drives, our decoders generate**: the model type ``cllm-bench`` (class
   :class:`CLLMBenchLM`) implements ``generate_until`` with any cllm-bench decoder::

       python -m cllm_bench.lm_eval_bridge --model cllm-bench \\
           --model_args pretrained=smollm2-135m,decoder=jacobi:n=16,max_gen_toks=256 --tasks gsm8k

   lm-eval (0.4.x) has no plugin discovery for model types: it only knows the models
   registered in its own process. Importing this module registers ``cllm-bench``;
   ``python -m cllm_bench.lm_eval_bridge ARGS`` does that and then runs lm-eval's own
   command line (``lm_eval ARGS``) unchanged. From Python, ``import
   cllm_bench.lm_eval_bridge`` before ``lm_eval.simple_evaluate(model="cllm-bench", ...)``.
   ``loglikelihood`` requests are refused: cllm-bench measures generation.

2. **cllm-bench drives, an lm-eval task supplies data, prompts and metrics**:
   :func:`make_lm_eval_task` wraps any lm-eval *generation* task (``output_type:
   generate_until``) as a cllm-bench :class:`~cllm_bench.tasks.base.Task`, so
   ``cllm-bench run --tasks lm_eval:<task>`` measures our speed metrics on it. Prompts are
   the contexts lm-eval builds (few-shot examples included); scores are the task's own
   filters + ``process_results``; aggregates its aggregation functions.

Importing this module without lm-eval installed raises :class:`~cllm_bench.errors.UserError`
(import it lazily, when an ``lm_eval:`` task or the model type is asked for).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

from cllm_bench.errors import UserError

MISSING_LM_EVAL = "lm_eval:<task> needs lm-eval: pip install 'cllm-bench[lm-eval]'"

try:
    import lm_eval  # noqa: F401
    import lm_eval.models  # noqa: F401  (registers lm-eval's own models before ours: see get_model)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry, register_model
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    raise UserError(f"{MISSING_LM_EVAL} ({_err})") from None

from cllm_bench.tasks.base import Sample, Task, TaskArg, TaskOptions

log = logging.getLogger(__name__)

MODEL_NAME = "cllm-bench"
LOGLIKELIHOOD_REFUSED = "cllm-bench measures generation; use --model hf for loglikelihood tasks"
#: lm-eval's default few-shot seed (``simple_evaluate(fewshot_random_seed=1234)``)
DEFAULT_FEWSHOT_SEED = 1234
MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


# ----------------------------------------------------------------------- shared helpers
def encode_context(tokenizer: Any, text: str, add_bos_token: bool | None = None) -> list[int]:
    """Token ids of an lm-eval context, tokenized as lm-eval's ``hf`` model does: the
    tokenizer's default special tokens, none when the text already starts with BOS (a
    rendered chat template), or exactly ``add_bos_token`` when given."""
    kwargs: dict[str, Any] = {}
    bos = getattr(tokenizer, "bos_token", None)
    if add_bos_token is not None:
        kwargs["add_special_tokens"] = add_bos_token
    elif bos and text.startswith(bos):
        kwargs["add_special_tokens"] = False
    return list(tokenizer(text, **kwargs)["input_ids"])


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """A chat rendered with the tokenizer's template, as lm-eval's ``hf`` model renders it
    (``add_generation_prompt=False`` continues the final assistant message instead)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError("the model's tokenizer has no chat template; use a raw prompt (--prompt-style raw)")
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt,
        continue_final_message=not add_generation_prompt,
    )  # fmt: skip


def stop_sequences(until: str | list[str] | None) -> list[str]:
    """lm-eval's ``until`` as a list of non-empty strings."""
    if until is None:
        return []
    items = [until] if isinstance(until, str) else list(until)
    return [s for s in items if isinstance(s, str) and s]


def cut_at_stops(text: str, until: list[str]) -> str:
    """``text`` up to the earliest stop string (what lm-eval's ``hf`` model returns)."""
    cut = min((i for i in (text.find(s) for s in until) if i >= 0), default=len(text))
    return text[:cut]


def max_gen_tokens(gen_kwargs: dict[str, Any], default: int) -> int:
    """The request's token budget (lm-eval's aliases, in its priority order)."""
    for key in MAX_TOKEN_KEYS:
        if gen_kwargs.get(key) is not None:
            return int(gen_kwargs[key])
    return default


def wants_sampling(gen_kwargs: dict[str, Any]) -> bool:
    temperature = gen_kwargs.get("temperature")
    return bool(gen_kwargs.get("do_sample")) or (temperature is not None and float(temperature) > 0)


def decoder_spec(raw: Any) -> str:
    """A decoder spec from model_args: ``;`` may stand for ``,`` (lm-eval splits model_args
    on commas), e.g. ``decoder=lookahead:w=5;n=7;g=7``."""
    return str(raw).replace(";", ",")


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (score dicts go to JSON)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else value


# ----------------------------------------------------------------------- the lm-eval model
@dataclass
class GenerationStats:
    """Totals over the requests one :class:`CLLMBenchLM` served (greedy, batch size 1)."""

    requests: int = 0
    generated_tokens: int = 0
    target_forwards: int = 0
    decode_s: float = 0.0
    ttft_s: float = 0.0
    by_stop: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        tps = self.generated_tokens / self.decode_s if self.decode_s > 0 else None
        tpf = self.generated_tokens / self.target_forwards if self.target_forwards else None
        return {
            "requests": self.requests, "generated_tokens": self.generated_tokens,
            "target_forwards": self.target_forwards, "tokens_per_forward": tpf, "tokens_per_s": tps,
            "decode_s": self.decode_s, "ttft_s": self.ttft_s, "stop_reasons": dict(self.by_stop),
        }  # fmt: skip


class CLLMBenchLM(LM):
    """lm-eval model type ``cllm-bench``: greedy generation through a cllm-bench decoder.

    model_args: ``pretrained`` (model spec: alias, .gguf, folder, hub id; default
    smollm2-135m), ``decoder`` (``ar``, ``jacobi:n=16``, ...; ``;`` for ``,``), ``dtype``,
    ``device``, ``max_gen_toks`` (default budget, 256), ``engine``/``compile`` (as
    ``cllm-bench run``), ``add_bos_token`` (default: the tokenizer's choice).
    ``batch_size`` is accepted and ignored (one request at a time).

    Each request's ``until`` strings cut the decoded text afterwards; decoding itself
    stops at EOS or the budget, exactly as in ``cllm-bench run``. Sampling settings
    (``do_sample``, ``temperature``) are ignored with a warning: decoders are greedy.
    """

    def __init__(
        self, pretrained: str | None = None, decoder: str = "ar", dtype: str = "auto", device: str | None = None,
        max_gen_toks: int = 256, engine: str = "auto", compile: str = "auto", add_bos_token: bool | None = None,
        batch_size: Any = None, max_batch_size: Any = None, **unknown: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        if unknown:
            raise ValueError(
                f"{MODEL_NAME}: unknown model_args {', '.join(sorted(unknown))}; valid: pretrained, decoder, "
                "dtype, device, max_gen_toks, engine, compile, add_bos_token"
            )
        from cllm_bench.decoders.base import build_decoder
        from cllm_bench.models import DEFAULT_MODEL, load_model
        from cllm_bench.engines.factory import EngineFor, resolve_options

        self.loaded = load_model(str(pretrained or DEFAULT_MODEL), dtype=str(dtype), device=str(device or "auto"))
        self.decoder = build_decoder(decoder_spec(decoder))
        self.decoder.prepare(self.loaded)
        self.engines = EngineFor(self.loaded.model, resolve_options(str(engine), str(compile), self.loaded.device))
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self.stats = GenerationStats()
        self._device = self.loaded.device
        self._warned_sampling = False

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "CLLMBenchLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> "CLLMBenchLM":
        """model_args win over lm-eval's own settings (``--device``, ``--batch_size``); lm-eval's
        ``--device`` (default ``cuda:0``) falls back to ``auto`` when CUDA is unavailable."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not _cuda_available():
            log.warning("%s: --device %s is not available; using auto (cpu)", MODEL_NAME, extra["device"])
            extra["device"] = "auto"
        return cls(**arg_dict, **extra)

    # -- tokenizer-facing API lm-eval uses -------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.loaded.spec)).replace("/", "__")

    @property
    def max_length(self) -> int:
        """Positions the model supports (prompt + generation)."""
        return int(getattr(self.loaded.model.config, "max_position_embeddings", None) or 2048)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, chat_history, add_generation_prompt)

    # -- requests --------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError(LOGLIKELIHOOD_REFUSED)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(LOGLIKELIHOOD_REFUSED)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """One greedy generation per request, in request order."""
        from tqdm import tqdm

        outputs = []
        progress = tqdm(requests, disable=disable_tqdm or self.rank != 0, desc=f"{MODEL_NAME} {self.decoder.label}")
        for request in progress:
            context, gen_kwargs = request.args[0], dict(request.args[1] or {})
            text = self.generate_one(context, gen_kwargs)
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        log.info("%s %s: %s", MODEL_NAME, self.decoder.label, self.stats.as_dict())
        return outputs

    def generate_one(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """Decode after ``context`` and cut the text at the request's ``until`` strings."""
        if wants_sampling(gen_kwargs) and not self._warned_sampling:
            log.warning("%s decodes greedily; do_sample/temperature in gen_kwargs are ignored", MODEL_NAME)
            self._warned_sampling = True
        budget = max(1, max_gen_tokens(gen_kwargs, self.max_gen_toks))
        ids = encode_context(self.tokenizer, context, self.add_bos_token) or self._empty_context()
        room = max(1, self.max_length - budget)
        if len(ids) > room:  # as lm-eval's hf model: keep the end of the context
            log.warning("%s: context of %d tokens cut to its last %d (max length %d)", MODEL_NAME, len(ids), room,
                        self.max_length)  # fmt: skip
            ids = ids[-room:]
        trace = self._timed_generate(ids, budget)
        text = self.tokenizer.decode(trace.tokens, skip_special_tokens=True)
        return cut_at_stops(text, stop_sequences(gen_kwargs.get("until")))

    def _empty_context(self) -> list[int]:
        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return [int(start)]

    def _timed_generate(self, ids: list[int], budget: int) -> Any:
        import torch

        from cllm_bench import metrics
        from cllm_bench.timing import Stopwatch

        engine = self.engines.fit(len(ids) + budget)
        watch = Stopwatch(self.loaded.device)
        engine.on_prefill_done = watch.mark_prefill
        watch.start()
        with torch.inference_mode():
            trace = self.decoder.generate(engine, ids, budget, self.loaded.eos_ids)
        watch.stop()
        engine.on_prefill_done = None
        s = self.stats
        s.requests += 1
        s.generated_tokens += len(trace.tokens)
        s.target_forwards += metrics.target_forwards(trace)
        s.decode_s += watch.decode_s
        s.ttft_s += watch.ttft_s
        s.by_stop[trace.stop_reason] = s.by_stop.get(trace.stop_reason, 0) + 1
        return trace


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def register() -> None:
    """Register :class:`CLLMBenchLM` as lm-eval model type ``cllm-bench`` (idempotent)."""
    if model_registry.get(MODEL_NAME, None) is not CLLMBenchLM:
        register_model(MODEL_NAME)(CLLMBenchLM)


if __name__ != "__main__":  # under `python -m`, the main block imports the module under its real name
    register()


# ----------------------------------------------------------------------- lm-eval tasks in cllm-bench
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


# ----------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    """``python -m cllm_bench.lm_eval_bridge ARGS`` = ``lm_eval ARGS`` with ``cllm-bench`` registered."""
    from lm_eval.__main__ import cli_evaluate

    register()
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["lm-eval", *args]  # lm-eval's parser reads sys.argv itself
    cli_evaluate()


if __name__ == "__main__":
    from cllm_bench.lm_eval_bridge import main as _main  # registers the class of the importable module

    _main()
