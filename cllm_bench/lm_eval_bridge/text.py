"""Requests and text as lm-eval's ``hf`` model handles them, shared by both directions of
the bridge: context tokenization, chat rendering, stop strings, the token budget."""

from __future__ import annotations

from typing import Any

from cllm_bench.errors import UserError

MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


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

