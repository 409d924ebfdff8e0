"""Name -> class registries for decoders and tasks (lm-evaluation-harness style).

Built-in entries are imported lazily: the registry knows the module that defines each
built-in name and imports it on first use, so ``cllm-bench list`` does not import torch
models it does not need. Third-party code registers with the decorators returned by
:meth:`Registry.register` (``cllm_bench.register_decoder`` / ``register_task``), from a
file given to ``--include`` or a package's entry point (:mod:`cllm_bench.plugins`).

Every class is validated when it is registered (a decoder must be a dataclass subclass of
``Decoder`` with ``generate``; a task a ``Task`` subclass with ``samples``,
``prompt_ids``, ``score`` and ``aggregate``); every error names the file and line of the
offending class and the fix.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from cllm_bench.errors import UserError

T = TypeVar("T")


def class_file(cls: type) -> str:
    """The file that defines ``cls`` (a task template's TOML file for template tasks);
    the module name when the file is unknown."""
    source = getattr(cls, "plugin_source", None)
    if source:
        return str(source)
    module = sys.modules.get(getattr(cls, "__module__", ""), None)
    path = getattr(module, "__file__", None)
    return str(Path(path).resolve()) if path else str(getattr(cls, "__module__", "?"))


def describe_class(cls: type) -> str:
    """``ClassName (path/to/file.py:LINE)`` for error messages."""
    where = class_file(cls)
    if not getattr(cls, "plugin_source", None):
        try:
            where = f"{where}:{inspect.getsourcelines(cls)[1]}"
        except (OSError, TypeError):
            pass
    return f"{getattr(cls, '__qualname__', cls)} ({where})"


def same_definition(a: type, b: type) -> bool:
    """True when ``a`` and ``b`` are one class definition loaded twice (same file, same name)."""
    return a is b or (a.__qualname__ == b.__qualname__ and class_file(a) == class_file(b))


class Registry(Generic[T]):
    """A mapping from names to classes of one kind ("decoder", "task").

    Invariants: a name maps to exactly one class; registering a second class under a
    taken name is an error (plugins never silently replace built-ins). Registering the
    same definition again (a plugin file loaded twice) is a no-op that keeps the newest
    class object. ``validator`` ("module:function") checks a class before it is added.
    """

    def __init__(self, kind: str, builtin_modules: dict[str, str], validator: str | None = None) -> None:
        self.kind = kind
        self._builtin_modules = dict(builtin_modules)  # name -> module that registers it
        self._classes: dict[str, type[T]] = {}
        self._origins: dict[str, str] = {}
        self._validator = validator

    def register(self, name: str, origin: str | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@DECODERS.register("ar")``. ``origin`` says where the class
        comes from (default: its file) in listings and error messages."""

        def decorate(cls: type[T]) -> type[T]:
            self._check_name(name, cls)
            self._validate(cls, name)
            taken = self._classes.get(name)
            builtin = self._builtin_modules.get(name)
            if builtin is not None and builtin != getattr(cls, "__module__", None):
                raise UserError(
                    f"{self.kind} name {name!r} of {describe_class(cls)} clashes with the built-in {self.kind} "
                    f"of that name; rename your {self.kind} (e.g. @register_{self.kind}({name + '_2'!r}))"
                )
            if taken is not None and not same_definition(taken, cls):
                raise UserError(
                    f"{self.kind} name {name!r} of {describe_class(cls)} is already registered by "
                    f"{describe_class(taken)}; rename one of the two {self.kind}s"
                )
            cls.registered_name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            self._origins[name] = origin or (builtin if builtin else class_file(cls))
            return cls

        return decorate

    def _check_name(self, name: Any, cls: type) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in ":,;= \t"):
            raise UserError(
                f"{self.kind} name {name!r} of {describe_class(cls)} is not valid; use a plain name "
                f"without ':', ',', ';', '=' or spaces (e.g. 'my_{self.kind}')"
            )

    def _validate(self, cls: type, name: str) -> None:
        if self._validator is None:
            return
        module, _, func = self._validator.partition(":")
        getattr(importlib.import_module(module), func)(cls, name)

    def names(self) -> list[str]:
        return sorted(set(self._builtin_modules) | set(self._classes))

    def get(self, name: str) -> type[T]:
        if name not in self._classes and name in self._builtin_modules:
            importlib.import_module(self._builtin_modules[name])
        if name not in self._classes:
            raise UserError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())} "
                f"(see `cllm-bench list`; a plugin's {self.kind}s need `--include FILE` or an installed entry point)"
            )
        return self._classes[name]

    def origin(self, name: str) -> str:
        """Where ``name`` comes from: the built-in module, or a plugin's file / entry point."""
        self.get(name)
        return self._origins[name]

    def is_builtin(self, name: str) -> bool:
        return name in self._builtin_modules

    def name_of(self, cls: type) -> str | None:
        """The name ``cls`` is registered under (None when it is not registered)."""
        return next((n for n, c in self._classes.items() if c is cls), None)

    def names_from(self, origin: str) -> list[str]:
        """Names registered with this exact origin (a plugin file's resolved path)."""
        return sorted(n for n, o in self._origins.items() if o == origin)

    def snapshot(self) -> tuple[dict[str, type[T]], dict[str, str]]:
        """The current registrations, for :meth:`restore` (plugin loading rolls back a
        file that fails half-way; tests isolate themselves)."""
        return dict(self._classes), dict(self._origins)

    def restore(self, state: tuple[dict[str, type[T]], dict[str, str]]) -> None:
        """Go back to a :meth:`snapshot`, keeping built-ins registered since (their modules
        stay imported, so they could not register again)."""
        classes, origins = dict(state[0]), dict(state[1])
        for name, module in self._builtin_modules.items():
            cls = self._classes.get(name)
            if name not in classes and cls is not None and cls.__module__ == module:
                classes[name], origins[name] = cls, self._origins[name]
        self._classes, self._origins = classes, origins


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
        "eagle": "cllm_bench.baselines.eagle",
        "prompt_lookup": "cllm_bench.baselines.prompt_lookup",
    },
    validator="cllm_bench.plugins:validate_decoder_class",
)

TASKS: Registry = Registry(
    "task",
    {
        "humaneval": "cllm_bench.tasks.humaneval",
        "gsm8k": "cllm_bench.tasks.gsm8k",
        "spider": "cllm_bench.tasks.spider",
        "mt_bench": "cllm_bench.tasks.mt_bench",
        "spec_bench": "cllm_bench.tasks.spec_bench",
    },
    validator="cllm_bench.plugins:validate_task_class",
)

register_decoder = DECODERS.register
register_task = TASKS.register
