"""Plugin discovery: decoders and tasks from outside the package, without a fork.

Two ways in, both ending in the same registries as the built-ins
(:data:`cllm_bench.registry.DECODERS` / :data:`~cllm_bench.registry.TASKS`):

* ``--include PATH`` (any number): a ``.py`` file, a folder (every ``*.py`` in it whose
  name does not start with ``_`` or ``.``, in name order, not recursive) or a task
  template (``.toml``, or ``.yaml``/``.yml`` when PyYAML is installed; see
  :mod:`cllm_bench.tasks.template`). A ``.py`` file is imported as a module of its own
  (named after its resolved path) and registers classes with ``@register_decoder`` /
  ``@register_task``;
* installed entry points of the groups ``cllm_bench.decoders`` and ``cllm_bench.tasks``:
  ``name = "package.module:Class"`` registers ``Class`` under ``name`` (unless its own
  decorator already did), ``name = "package.module"`` imports a module that registers
  with decorators.

Guarantees: loading is idempotent (a file or entry point loaded twice registers once);
a plugin that fails half-way leaves no registration behind; every failure is one
:class:`~cllm_bench.errors.UserError` naming the file (and line) and the fix. Classes are
validated when they register (:func:`validate_decoder_class`,
:func:`validate_task_class`, called by the registry), built-ins included.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from cllm_bench.errors import UserError
from cllm_bench.registry import DECODERS, TASKS, Registry, describe_class

ENTRY_POINT_GROUPS: tuple[tuple[str, Registry], ...] = (("cllm_bench.decoders", DECODERS), ("cllm_bench.tasks", TASKS))
TEMPLATE_SUFFIXES = (".toml", ".yaml", ".yml")
TASK_METHODS = ("samples", "prompt_ids", "score", "aggregate")
DOCS = "see docs/extending.md"


# ------------------------------------------------------------------ class validation
def validate_decoder_class(cls: Any, name: str) -> None:
    """Raise UserError unless ``cls`` is a usable decoder: a class, a subclass of
    :class:`~cllm_bench.decoders.base.Decoder`, decorated with ``@dataclass`` itself (its
    fields are its parameters) and implementing ``generate(engine, prompt_ids,
    max_new_tokens, eos_ids)``."""
    from cllm_bench.decoders.base import Decoder

    what = f"decoder {name!r}"
    if not inspect.isclass(cls):
        raise UserError(f"{what}: @register_decoder must decorate a class, got {type(cls).__name__} {cls!r}")
    where = describe_class(cls)
    has_generate = callable(getattr(cls, "generate", None)) and "generate" not in getattr(cls, "__abstractmethods__", ())
    if not issubclass(cls, Decoder):
        extra = "" if has_generate else " and define generate(self, engine, prompt_ids, max_new_tokens, eos_ids)"
        raise UserError(f"{what}: {where} is not a Decoder subclass; derive it from cllm_bench.Decoder{extra} ({DOCS})")
    if not has_generate:
        raise UserError(
            f"{what}: {where} has no generate method; define "
            f"generate(self, engine, prompt_ids, max_new_tokens, eos_ids) -> Trace ({DOCS})"
        )
    if "__dataclass_fields__" not in vars(cls):
        raise UserError(
            f"{what}: {where} is not a dataclass; put @dataclass directly above the class, below "
            f"@register_decoder (decorators apply bottom-up) — its fields are the decoder's parameters"
        )
    _check_generate_signature(cls, what, where)


def _check_generate_signature(cls: type, what: str, where: str) -> None:
    try:
        inspect.signature(cls.generate).bind(None, None, None, None, None)
    except TypeError:
        raise UserError(
            f"{what}: {where}: generate must take (self, engine, prompt_ids, max_new_tokens, eos_ids)"
        ) from None
    except ValueError:  # no signature available (a builtin): nothing to check
        pass


def validate_task_class(cls: Any, name: str) -> None:
    """Raise UserError unless ``cls`` is a :class:`~cllm_bench.tasks.base.Task` subclass
    implementing ``samples``, ``prompt_ids``, ``score`` and ``aggregate``."""
    from cllm_bench.tasks.base import Task

    what = f"task {name!r}"
    if not inspect.isclass(cls):
        raise UserError(f"{what}: @register_task must decorate a class, got {type(cls).__name__} {cls!r}")
    where = describe_class(cls)
    missing = [m for m in TASK_METHODS if not callable(getattr(cls, m, None)) or m in getattr(cls, "__abstractmethods__", ())]
    if not issubclass(cls, Task):
        raise UserError(f"{what}: {where} is not a Task subclass; derive it from cllm_bench.Task ({DOCS})")
    if missing:
        raise UserError(
            f"{what}: {where} does not define {', '.join(missing)}; a task implements "
            f"{', '.join(TASK_METHODS)} ({DOCS})"
        )
    others = sorted(getattr(cls, "__abstractmethods__", ()))
    if others:
        raise UserError(f"{what}: {where} leaves abstract method(s) {', '.join(others)} undefined")


# ------------------------------------------------------------------ loading
def load_plugins(include: list[str] | None = None) -> list[str]:
    """Load every plugin given in ``include`` (files, folders, task templates), then
    every installed entry point of the groups ``cllm_bench.decoders`` and
    ``cllm_bench.tasks``.

    Returns one line per plugin source, in load order: ``"<source>: decoder a, task b"``
    (source = the resolved file path, or ``entry point GROUP:NAME (DIST)``). Idempotent.
    Raises UserError for a missing path, a plugin that fails to import, a name clash, or
    an invalid class — the message names the file and the fix.
    """
    loaded: list[str] = []
    for path in expand_include(include or []):
        loaded.append(load_path(path))
    loaded.extend(load_entry_points())
    return loaded


def expand_include(include: list[str]) -> list[Path]:
    """The plugin files named by ``include``: files as given, folders expanded to their
    ``*.py`` files. A piece that is not an existing path but holds commas is split."""
    paths: list[Path] = []
    for item in include:
        pieces = [item] if Path(item).expanduser().exists() or "," not in item else [p for p in item.split(",") if p.strip()]
        for piece in pieces:
            paths.extend(_expand_one(piece.strip()))
    return paths


def _expand_one(item: str) -> list[Path]:
    path = Path(item).expanduser()
    if not path.exists():
        raise UserError(
            f"--include {item}: no such file or folder ({path.resolve()}); give a plugin .py file, "
            f"a folder of .py files or a task template .toml"
        )
    if path.is_dir():
        files = sorted(p for p in path.glob("*.py") if not p.name.startswith(("_", ".")))
        if not files:
            raise UserError(f"--include {item}: the folder {path.resolve()} holds no plugin .py files")
        return files
    if path.suffix not in (".py", *TEMPLATE_SUFFIXES):
        raise UserError(
            f"--include {item}: {path.resolve()} is neither a Python plugin (.py) nor a task template "
            f"(.toml, .yaml, .yml)"
        )
    return [path]


def load_path(path: Path) -> str:
    """Load one plugin file (``.py``) or task template; returns ``"<file>: <what it registered>"``."""
    resolved = path.expanduser().resolve()
    if resolved.suffix in TEMPLATE_SUFFIXES:
        from cllm_bench.tasks.template import load_task_template

        cls = load_task_template(resolved)
        return f"{resolved}: task {cls.registered_name}"
    load_module_file(resolved)
    return _summary(str(resolved), DECODERS.names_from(str(resolved)), TASKS.names_from(str(resolved)))


def module_name_for(path: Path) -> str:
    """The module name a plugin file is imported under: stable for one resolved path."""
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    return f"cllm_bench_plugin_{stem}_{digest}"


def load_module_file(path: Path) -> ModuleType:
    """Import the plugin file ``path`` (resolved) once; on failure nothing stays registered."""
    name = module_name_for(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"plugin {path}: cannot be imported as a Python module; is it a .py file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    with _rolled_back_on_error(lambda: sys.modules.pop(name, None)):
        try:
            spec.loader.exec_module(module)
        except UserError as exc:
            raise UserError(_mention(str(exc), str(path), f"plugin {path}")) from None
        except (Exception, SystemExit) as exc:
            raise UserError(
                f"plugin {path} failed to import: {_exception_line(exc, path)}; fix the file "
                f"(or install what it imports)"
            ) from None
    return module


class _rolled_back_on_error:
    """Context manager: restore both registries (and run ``cleanup``) when the body raises."""

    def __init__(self, cleanup: Any = None) -> None:
        self.cleanup = cleanup

    def __enter__(self) -> None:
        self.state = (DECODERS.snapshot(), TASKS.snapshot())

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            DECODERS.restore(self.state[0])
            TASKS.restore(self.state[1])
            if self.cleanup is not None:
                self.cleanup()


def load_entry_points() -> list[str]:
    """Load every entry point of the ``cllm_bench.decoders`` and ``cllm_bench.tasks`` groups."""
    loaded = []
    for group, registry in ENTRY_POINT_GROUPS:
        for ep in importlib.metadata.entry_points(group=group):
            loaded.append(load_entry_point(ep, group, registry))
    return loaded


def load_entry_point(ep: Any, group: str, registry: Registry) -> str:
    """Load one entry point; a class it names is registered under the entry point's name."""
    dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
    source = f"entry point {group}:{ep.name} ({dist})"
    fix = f"fix or uninstall the package {dist}"
    with _rolled_back_on_error():
        try:
            obj = ep.load()
        except UserError as exc:
            raise UserError(f"{source} = {ep.value}: {exc}") from None
        except (Exception, SystemExit) as exc:
            raise UserError(f"{source} = {ep.value} failed to load: {_exception_line(exc, None)}; {fix}") from None
        if inspect.isclass(obj):
            _register_entry_point_class(obj, ep.name, registry, f"{source} = {ep.value}")
        elif not inspect.ismodule(obj):
            raise UserError(f"{source} = {ep.value} names a {type(obj).__name__}; point it at a class or a module")
    if inspect.ismodule(obj):
        file = str(Path(obj.__file__).resolve()) if getattr(obj, "__file__", None) else ""
        return _summary(source, DECODERS.names_from(file), TASKS.names_from(file))
    return _summary(source, [ep.name] if registry is DECODERS else [], [ep.name] if registry is TASKS else [])


def _register_entry_point_class(cls: type, name: str, registry: Registry, source: str) -> None:
    current = registry.name_of(cls)
    if current == name:
        return
    if current is not None:
        raise UserError(
            f"{source}: the class registers itself as {registry.kind} {current!r} but the entry point calls it "
            f"{name!r}; make the two names agree"
        )
    registry.register(name)(cls)


# ------------------------------------------------------------------ messages
def _summary(source: str, decoders: list[str], tasks: list[str]) -> str:
    parts = [f"decoder {n}" for n in decoders] + [f"task {n}" for n in tasks]
    return f"{source}: {', '.join(parts) if parts else 'nothing registered'}"


def _mention(message: str, needle: str, prefix: str) -> str:
    """``message``, prefixed with ``prefix`` unless it already contains ``needle``."""
    return message if needle in message else f"{prefix}: {message}"


def _exception_line(exc: BaseException, path: Path | None) -> str:
    """``Type: message (at file:line)`` — the line in ``path`` that raised (or the deepest
    frame), plus where it was finally raised when that is elsewhere."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} (at {exc.filename}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return text
    deepest = frames[-1]
    own = [f for f in frames if path is not None and Path(f.filename) == path]
    at = own[-1] if own else deepest
    where = f" (at {at.filename}:{at.lineno})"
    if at is not deepest:
        where = f" (at {at.filename}:{at.lineno}, raised in {deepest.filename}:{deepest.lineno})"
    return text + where
