"""The ``profile`` and ``predict`` subcommands (argument parsing only; the work is in
:mod:`cllm_bench.cost_profile` and :mod:`cllm_bench.predict`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from cllm_bench.errors import UserError


def int_list(value: str, flag: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``, sorted and deduplicated; :class:`UserError` otherwise."""
    try:
        values = {int(v) for v in value.split(",") if v.strip()}
    except ValueError:
        raise UserError(f"{flag} must be a comma list of integers, got {value!r}") from None
    return tuple(sorted(values))


def add_predict_parsers(sub: Any) -> None:
    p = sub.add_parser("profile", help="measure this device's forward cost table (for `predict`)")
    p.add_argument("--models", required=True, help="the target model spec (one model per cost table)")
    p.add_argument("--draft", action="append", default=[], metavar="SPEC",
                   help="also profile a draft as `speculative:draft=SPEC` takes it, e.g. self:layers=4 (repeatable)")
    p.add_argument("--heads", action="append", default=[], metavar="SPEC",
                   help="also time Medusa heads as `medusa:heads=SPEC` takes them, e.g. random:4 (repeatable)")
    p.add_argument("--batch-sizes", default="1", help="comma list (default 1; batch 1 is always profiled)")
    p.add_argument("--widths", default=None, help="tokens per forward (comma list; default 1,2,4,8,16,32,64,128)")
    p.add_argument("--widths-from", metavar="RUN_DIR",
                   help="measure exactly the widths this run's forwards used (chain, tree and draft grids apart) "
                        "instead of --widths: no interpolation between widths")
    p.add_argument("--contexts", default=None, help="KV-cache lengths (comma list; default 32,128,512)")
    p.add_argument("--contexts-from", metavar="RUN_DIR",
                   help="take three contexts up to the longest forward of this run instead of --contexts")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per point; median and spread kept")
    p.add_argument("--calls", type=int, default=5, help="forwards per repeat (each timed alone)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards before each point")
    p.add_argument("--no-tree", action="store_true", help="skip the tree-masked grid")
    p.add_argument("--overhead-tokens", type=int, default=32, help="ar decode steps timed for the step overhead")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "float64"])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--engine", default="auto", choices=["auto", "dynamic", "static"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--output", help="cost table path (default results/cost_tables/<device>-<model>-<dtype>.json)")
    p.set_defaults(func=cmd_profile)

    q = sub.add_parser("predict", help="predict a run's decode speed on a profiled device (no model loaded)")
    q.add_argument("run_dir", help="a folder written by `cllm-bench run`")
    q.add_argument("--cost-table", required=True, metavar="T.json", help="a cost table from `cllm-bench profile`")
    q.add_argument("--output", help="also write the prediction as JSON here")
    q.set_defaults(func=cmd_predict)


def default_output(table: Any) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{table.device_name}-{Path(table.target.name).name}-{table.dtype}").strip("-")
    return Path("results/cost_tables") / f"{slug.lower()}.json"


def cmd_profile(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cllm_bench.cost_profile import DEFAULT_CONTEXTS, DEFAULT_WIDTHS, ProfileSettings, contexts_for_run, run_profile, widths_for_run

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(models) != 1:
        raise UserError(f"--models takes one model per cost table, got {len(models)}; run `profile` once per model")
    if args.contexts and args.contexts_from:
        raise UserError("pass --contexts or --contexts-from, not both")
    if args.contexts_from:
        contexts = contexts_for_run(Path(args.contexts_from))
    else:
        contexts = int_list(args.contexts, "--contexts") if args.contexts else DEFAULT_CONTEXTS
    if args.widths and args.widths_from:
        raise UserError("pass --widths or --widths-from, not both")
    tree_widths = draft_widths = None
    if args.widths_from:
        used = widths_for_run(Path(args.widths_from))
        widths, tree_widths, draft_widths = used.chain, used.tree, used.draft or None
    else:
        widths = int_list(args.widths, "--widths") if args.widths else DEFAULT_WIDTHS
    settings = ProfileSettings(
        widths=widths, contexts=contexts, tree_widths=tree_widths, draft_widths=draft_widths,
        batch_sizes=int_list(args.batch_sizes, "--batch-sizes"), repeats=args.repeats, calls=args.calls,
        warmup=args.warmup, tree=not args.no_tree, overhead_tokens=args.overhead_tokens, engine=args.engine,
        compile=args.compile,
    )  # fmt: skip
    settings.check()
    console = Console(stderr=True, highlight=False)
    table = run_profile(models[0], args.draft, settings, args.dtype, args.device, lambda m: console.print(m, markup=False),
                        args.heads)  # fmt: skip
    out = Path(args.output) if args.output else default_output(table)
    table.write(out)
    chain = table.target.grids[0]
    console.print(f"1-token forward {chain.ms[0][0]:.3f} ms, {chain.widths[-1]}-token {chain.ms[0][-1]:.3f} ms "
                  f"(context {chain.contexts[0]}); step overhead {table.target.step_overhead_ms:.3f} ms", markup=False)  # fmt: skip
    console.print(f"cost table written to {out}", markup=False)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cllm_bench.predict import run_predict
    from cllm_bench.console import terminal_console

    run_predict(Path(args.run_dir), Path(args.cost_table), Path(args.output) if args.output else None,
                terminal_console())  # fmt: skip
    return 0
