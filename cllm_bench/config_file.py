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
        out[name] = value
    return out


def run_config_fields() -> set[str]:
    from cllm_bench.runner import RunConfig

    return {f.name for f in fields(RunConfig)}
