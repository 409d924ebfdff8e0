"""Name -> class registries for decoders and tasks (lm-evaluation-harness style).

Built-in entries are imported lazily: the registry knows the module that defines each
built-in name and imports it on first use, so ``cllm-bench list`` does not import torch
models it does not need. Third-party code registers with the decorators returned by
:meth:`Registry.register`.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from cllm_bench.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to classes of one kind ("decoder", "task").

    Invariants: a name maps to exactly one class; registering a second class under a
    taken name is an error (plugins never silently replace built-ins).
    """

    def __init__(self, kind: str, builtin_modules: dict[str, str]) -> None:
        self.kind = kind
        self._builtin_modules = dict(builtin_modules)  # name -> module that registers it
        self._classes: dict[str, type[T]] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, origin: str | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@DECODERS.register("ar")``."""

        def decorate(cls: type[T]) -> type[T]:
            where = origin or getattr(cls, "__module__", "?")
            taken = self._classes.get(name)
            if taken is not None and taken is not cls:
                raise UserError(
                    f"{self.kind} name {name!r} from {where} is already registered by "
                    f"{self._origins[name]}; rename your {self.kind}"
                )
            if taken is None and name in self._builtin_modules and self._builtin_modules[name] != cls.__module__:
                raise UserError(
                    f"{self.kind} name {name!r} from {where} clashes with the built-in {self.kind} "
                    f"of that name; rename your {self.kind}"
                )
            cls.registered_name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            self._origins[name] = where
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(set(self._builtin_modules) | set(self._classes))

    def get(self, name: str) -> type[T]:
        if name not in self._classes and name in self._builtin_modules:
            importlib.import_module(self._builtin_modules[name])
        if name not in self._classes:
            raise UserError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())} "
                f"(see `cllm-bench list`)"
            )
        return self._classes[name]

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origins[name]


DECODERS: Registry = Registry(
    "decoder",
    {
        "ar": "cllm_bench.decoders.ar",
        "jacobi": "cllm_bench.decoders.jacobi",
        "cllm": "cllm_bench.decoders.cllm",
        "hf": "cllm_bench.baselines.hf_generate",
        "lookahead": "cllm_bench.baselines.lookahead",
        "speculative": "cllm_bench.baselines.speculative",
        "medusa": "cllm_bench.baselines.medusa",
        "prompt_lookup": "cllm_bench.baselines.prompt_lookup",
    },
)

TASKS: Registry = Registry(
    "task",
    {
        "humaneval": "cllm_bench.tasks.humaneval",
        "gsm8k": "cllm_bench.tasks.gsm8k",
        "spider": "cllm_bench.tasks.spider",
        "mt_bench": "cllm_bench.tasks.mt_bench",
    },
)

register_decoder = DECODERS.register
register_task = TASKS.register
