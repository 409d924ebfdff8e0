"""lm-eval's model type ``cllm-bench``: ``generate_until`` through a cllm-bench decoder
(see the package docstring)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry, register_model

from cllm_bench.lm_eval_bridge.text import cut_at_stops, encode_context, max_gen_tokens, render_chat, stop_sequences

log = logging.getLogger(__name__)

MODEL_NAME = "cllm-bench"
LOGLIKELIHOOD_REFUSED = "cllm-bench measures generation; use --model hf for loglikelihood tasks"


def wants_sampling(gen_kwargs: dict[str, Any]) -> bool:
    temperature = gen_kwargs.get("temperature")
    return bool(gen_kwargs.get("do_sample")) or (temperature is not None and float(temperature) > 0)


def decoder_spec(raw: Any) -> str:
    """A decoder spec from model_args: ``;`` may stand for ``,`` (lm-eval splits model_args
    on commas), e.g. ``decoder=lookahead:w=5;n=7;g=7``."""
    return str(raw).replace(";", ",")



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

