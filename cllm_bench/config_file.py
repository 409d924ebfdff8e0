"""``--config matrix.toml``: the same keys as the ``run`` flags (dashes or underscores).

Example::

    models = ["smollm2-135m"]
    decoders = ["ar", "jacobi:n=16", "lookahead"]
    tasks = ["gsm8k", "humaneval"]
    limit = 20
    max_new_tokens = 256
    data_dir = "../shared/data"
    allow_code_execution = true
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from cllm_bench.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LIST_KEYS = {"models", "decoders", "tasks"}


def read_config(path: str | Path, allowed: set[str]) -> dict[str, Any]:
    """Parse a TOML matrix file into RunConfig keyword arguments (validated names)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {p} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {p} is not valid TOML: {exc}") from None
    if isinstance(data.get("run"), dict):  # allow a [run] table
        data = data["run"]
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in allowed:
            raise UserError(f"config file {p}: unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}")
        if name in LIST_KEYS and isinstance(value, str):
            value = [v.strip() for v in value.split(";" if name == "decoders" else ",") if v.strip()]
        out[name] = typed_value(name, value, f"config file {p}: {key}")
    return out


def typed_value(name: str, value: Any, where: str) -> Any:
    """``value`` checked against the type of RunConfig field ``name`` (TOML gives any type);
    a ``task_args`` table's scalars become strings, as ``--task-args`` gives them."""
    from cllm_bench.run_checks import BOOL_FIELDS, INT_BOUNDS, LIST_FIELDS

    if name in INT_BOUNDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer, e.g. 20"
    elif name in LIST_FIELDS:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        expected = 'a list of strings, e.g. ["ar", "jacobi:n=16"]'
    elif name in BOOL_FIELDS:
        ok, expected = isinstance(value, bool), "true or false"
    elif name == "task_args":
        ok = isinstance(value, dict) and all(isinstance(v, (str, int, float, bool)) for v in value.values())
        expected = 'a table of values, e.g. { split = "dev" }'
        if ok:
            value = {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
    else:
        ok, expected = isinstance(value, str), 'a string, e.g. "auto"'
    if not ok:
        raise UserError(f"{where} must be {expected}, got {value!r}")
    return value


def run_config_fields() -> set[str]:
    from cllm_bench.runner import RunConfig

    return {f.name for f in fields(RunConfig)}
