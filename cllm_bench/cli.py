"""The ``cllm-bench`` command line: run, report, list, train, score, bench, models.

Every user mistake surfaces as one line ``error: ... `` naming the fix, exit code 2,
no traceback (:class:`~cllm_bench.errors.UserError`).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from cllm_bench.compile_cache import persistent_compile_cache
from cllm_bench.console import terminal_console
from cllm_bench.errors import UserError


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def split_decoder_list(value: str) -> list[str]:
    """``"ar,jacobi:n=16,seed=1,lookahead:w=5,n=7"`` -> ``["ar", "jacobi:n=16,seed=1", "lookahead:w=5,n=7"]``.

    A comma piece ``key=value`` (no ``:`` before its first ``=``) continues the previous
    decoder's parameters; anything else starts a new decoder. ``;`` always separates.
    """
    out: list[str] = []
    for group in value.split(";"):
        for piece in (p.strip() for p in group.split(",")):
            if not piece:
                continue
            key = piece.split("=", 1)[0]
            if "=" in piece and ":" not in key and out:
                out[-1] += "," + piece
            else:
                out.append(piece)
    return out


# ------------------------------------------------------------------------- run
def add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="evaluate models x decoders x tasks (resumable)")
    p.add_argument("--config", help="TOML file with the same keys as these flags (flags override it)")
    p.add_argument("--models", action="append", help="model specs: alias, .gguf, HF folder or hub id (comma list)")
    p.add_argument("--decoders", action="append", help="decoder specs, e.g. ar,jacobi:n=16 (see `cllm-bench list`)")
    p.add_argument("--tasks", action="append", help="task names, e.g. humaneval,gsm8k")
    p.add_argument("--limit", type=int, help="samples per task (default 5; 0 = all)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget per turn (default 128)")
    p.add_argument("--repeats", type=int, help="timed repeats per sample; median reported (default 1)")
    p.add_argument("--warmup", type=int, help="untimed warm-up generations per decoder (default 1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16", "float64"])
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-dir", help="folder holding gsm8k/, spider/, mt_bench/ (or $CLLM_BENCH_DATA_DIR)")
    p.add_argument("--prompt-style", choices=["auto", "chat", "raw"])
    p.add_argument("--engine", choices=["auto", "dynamic", "static"],
                   help="KV cache: auto = static (+compile) on CUDA, dynamic eager on CPU")
    p.add_argument("--compile", choices=["auto", "on", "off"], help="torch.compile the decode forward (auto: CUDA)")
    p.add_argument("--task-args", action="append", help="task options key=value (comma list)")
    p.add_argument("--output-path", help="run folder (default results/<timestamp>-<name>/)")
    p.add_argument("--allow-code-execution", action="store_true", default=None,
                   help="run model-written code/SQL (sandboxed) to score HumanEval/Spider")  # fmt: skip
    p.add_argument("--require-isolation", action="store_true", default=None,
                   help="refuse to run model-written code without the bubblewrap sandbox "
                        "(also CLLM_BENCH_REQUIRE_SANDBOX=1)")  # fmt: skip
    p.add_argument("--log-samples", action="store_true", default=None, help="also store prompt texts")
    p.add_argument("--judge", help="MT-bench: judge model spec for single-answer grading (1-10)")
    p.add_argument("--exclude-degenerate", action="store_true", default=None,
                   help="also report Jacobi stats without outputs holding >=10 identical tokens in a row")  # fmt: skip
    p.set_defaults(func=cmd_run)


def config_from_args(args: argparse.Namespace) -> Any:
    from cllm_bench.config_file import read_config, run_config_fields
    from cllm_bench.runner import RunConfig

    allowed = run_config_fields()
    values: dict[str, Any] = read_config(args.config, allowed) if args.config else {}
    flag_lists = {"models": split_list, "decoders": split_decoder_list, "tasks": split_list}
    for name, splitter in flag_lists.items():
        given = getattr(args, name)
        if given:
            values[name] = [item for chunk in given for item in splitter(chunk)]
    for f in fields(RunConfig):
        if f.name in flag_lists or f.name == "task_args":
            continue
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if args.task_args:
        pairs = [kv for chunk in args.task_args for kv in split_list(chunk)]
        bad = [kv for kv in pairs if "=" not in kv]
        if bad:
            raise UserError(f"--task-args expects key=value pairs, got {bad[0]!r}")
        values["task_args"] = dict(kv.split("=", 1) for kv in pairs)
    if values.get("limit") == 0:
        values["limit"] = None
    if values.get("data_dir") is None and os.environ.get("CLLM_BENCH_DATA_DIR"):
        values["data_dir"] = os.environ["CLLM_BENCH_DATA_DIR"]
    try:
        return RunConfig(**values)
    except TypeError as exc:
        raise UserError(f"bad run configuration: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from cllm_bench.runner import run_matrix
    from cllm_bench.summary_table import print_summary

    console = terminal_console()
    config = config_from_args(args)
    out = run_matrix(config, console)
    print_summary(out, console)
    console.print(f"results: [bold]{out}[/] (summary.json, samples.jsonl)")
    return 0


# ------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from cllm_bench.models import ALIASES
    from cllm_bench.registry import DECODERS, TASKS

    console = terminal_console()
    models = Table(title="models (aliases)")
    models.add_column("alias")
    models.add_column("what")
    models.add_column("install")
    for name, alias in ALIASES.items():
        models.add_row(name, alias.description, alias.install)
    for name, desc, how in _installable_rows():
        models.add_row(name, desc, how)
    console.print(models)
    decs = Table(title="decoders")
    for col in ("name", "parameters (default)", "lossless", "batch > 1", "what"):
        decs.add_column(col)
    for name in DECODERS.names():
        try:
            cls = DECODERS.get(name)
        except (UserError, ImportError) as exc:
            decs.add_row(name, "", "", "", f"[red]unavailable: {exc}[/]")
            continue
        params = ", ".join(f"{n}: {t} = {d}" for n, t, d in cls.parameters()) or "-"
        decs.add_row(name, params, "yes" if cls.lossless else "no", "yes" if cls.supports_batch else "no", cls.description)
    console.print(decs)
    tasks = Table(title="tasks")
    for col in ("name", "needs --allow-code-execution", "--task-args", "what"):
        tasks.add_column(col)
    for name in TASKS.names():
        try:
            cls = TASKS.get(name)
        except (UserError, ImportError) as exc:
            tasks.add_row(name, "", "", f"[red]unavailable: {exc}[/]")
            continue
        args = ", ".join(f"{k} ({a.describe()})" for k, a in (getattr(cls, "accepted_args", {}) or {}).items())
        tasks.add_row(name, "yes" if cls.requires_execution else "no", args or "-", cls.description)
    console.print(tasks)
    return 0


def _installable_rows() -> list[tuple[str, str, str]]:
    try:
        from cllm_bench.model_install import INSTALLABLE
    except ImportError:
        return []
    return [(n, m.description, f"cllm-bench models install {n}") for n, m in INSTALLABLE.items()]


# ------------------------------------------------------------------------- report
def add_report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="tables and plots from one or more run folders")
    p.add_argument("run_dirs", nargs="+", help="run folders (holding summary.json)")
    p.add_argument("--output", help="output folder (default RUN_DIR/report)")
    p.add_argument("--format", default="md,html,csv", help="comma list of md, html, csv")
    p.add_argument("--curves", action="append", default=[], metavar="MANIFEST",
                   help="a `train cllm --eval-every` manifest.json: add its learning curves (repeatable)")
    p.add_argument("--cost-table", action="append", default=[], metavar="T.json",
                   help="add predicted speed on the cost table's device next to the measured one (repeatable)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from cllm_bench.report import run_report

    console = terminal_console()
    run_report([Path(d) for d in args.run_dirs], Path(args.output) if args.output else None,
               split_list(args.format), console, [Path(c) for c in args.curves],
               [Path(t) for t in args.cost_table])  # fmt: skip  (prints where it wrote)
    return 0


# ------------------------------------------------------------------------- export
def add_export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write a run's samples in another tool's format (Spec-Bench answer files)")
    p.add_argument("run_dir", help="a run folder written by `cllm-bench run`")
    p.add_argument("--format", choices=["spec-bench"], default="spec-bench", help="output format")
    p.add_argument("--output", help="folder for one <model_id>.jsonl per model x decoder x task (default "
                                    "RUN_DIR/spec-bench/); with --decoder, may name the .jsonl file")  # fmt: skip
    p.add_argument("--decoder", help="export only this decoder label (e.g. ar, jacobi:n=16)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from cllm_bench.export_spec_bench import export_run

    written = export_run(Path(args.run_dir), Path(args.output) if args.output else None, args.decoder)
    console = terminal_console()
    for path in written:
        console.print(f"wrote {path}", markup=False, highlight=False)
    return 0


# ------------------------------------------------------------------------- train / models
def add_train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="produce the compared models: trajectories, cllm, medusa, eagle, draft, sft")
    try:
        from cllm_bench.trainers.cli import add_train_subcommands
    except ImportError as exc:
        p.set_defaults(func=lambda a, exc=exc: _unavailable("train", exc))
        return
    add_train_subcommands(p.add_subparsers(dest="what", required=True, metavar="WHAT"))
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from cllm_bench.trainers.cli import run_train

    return run_train(args, terminal_console())


def add_models_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="install opt-in model aliases (large downloads)")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    inst = msub.add_parser("install", help="download and assemble an opt-in model")
    inst.add_argument("name")
    inst.set_defaults(func=cmd_models_install)


def cmd_models_install(args: argparse.Namespace) -> int:
    from cllm_bench.model_install import install_model

    path = install_model(args.name, terminal_console())
    terminal_console().print(f"installed: {path}")
    return 0


def _unavailable(what: str, exc: Exception) -> int:
    raise UserError(f"`cllm-bench {what}` is unavailable in this installation: {exc}")


# ------------------------------------------------------------------------- bench
def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="time our engine/decoders against HF generate (eager and compiled)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--decoders", default="", help="decoders besides ar, e.g. jacobi:n=16,lookahead")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-prompts", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", choices=["auto", "dynamic", "static"], default="auto")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--hf-compiled", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--stop-at-eos", action="store_true")
    p.add_argument("--output-path", default="results")
    p.add_argument("--batch-size", default="1",
                   help="decode this many prompts together (left padding; eager batched engine): ar, jacobi, cllm, "
                        "speculative and hf have a batched path; a comma list (1,2,4,8) sweeps the batch sizes in "
                        "one process and reports each decoder against batched ar at the same size")  # fmt: skip
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from cllm_bench.bench import BenchConfig, run_bench
    from cllm_bench.bench_sweep import parse_batch_sizes, run_sweep

    console = terminal_console()
    sizes = parse_batch_sizes(args.batch_size)
    cfg = BenchConfig(
        model=args.model, decoders=split_decoder_list(args.decoders), max_new_tokens=args.max_new_tokens,
        repeats=args.repeats, warmup=args.warmup, num_prompts=args.num_prompts, dtype=args.dtype,
        device=args.device, engine=args.engine, compile=args.compile, hf_compiled=args.hf_compiled,
        stop_at_eos=args.stop_at_eos, output_path=args.output_path, batch_size=sizes[0],
    )  # fmt: skip
    if len(sizes) > 1 or "," in str(args.batch_size):
        path = run_sweep(cfg, sizes, console)
        console.print(f"bench sweep results: [bold]{path}[/] (+ {path.with_suffix('.png').name})")
        return 0
    path = run_bench(cfg, console)
    console.print(f"bench results: [bold]{path}[/]")
    return 0


# ------------------------------------------------------------------------- score / check-decoder
def add_score_parser(sub: Any) -> None:
    p = sub.add_parser("score", help="score predictions or rescore a finished run, without loading a model")
    p.add_argument("run_dir", nargs="?", help="a finished run folder to rescore into a new summary file")
    p.add_argument("--task", help="task name, with --predictions")
    p.add_argument("--predictions", help='JSONL of {"id": ..., "completion": ...}')
    p.add_argument("--data-dir", help="folder with gsm8k/, spider/, mt_bench/ (or $CLLM_BENCH_DATA_DIR)")
    p.add_argument("--allow-code-execution", action="store_true", help="run model-written code/SQL, sandboxed")
    p.add_argument("--require-isolation", action="store_true",
                   help="refuse to run model-written code without the bubblewrap sandbox (also CLLM_BENCH_REQUIRE_SANDBOX=1)")  # fmt: skip
    p.add_argument("--prompt-style", choices=["auto", "chat", "raw"], default="auto")
    p.add_argument("--output", help="where to write the scores JSON (default next to the predictions)")
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from cllm_bench.scoring import rescore_run, score_predictions
    from cllm_bench.tasks.base import TaskOptions

    console = terminal_console()
    data_dir = args.data_dir or os.environ.get("CLLM_BENCH_DATA_DIR")
    options = TaskOptions(data_dir=Path(data_dir) if data_dir else None, prompt_style=args.prompt_style,
                          allow_code_execution=args.allow_code_execution)  # fmt: skip
    if args.run_dir and (args.task or args.predictions):
        raise UserError("give either RUN_DIR or --task with --predictions, not both")
    if args.run_dir:
        out = rescore_run(Path(args.run_dir), options, console, require_isolation=args.require_isolation)
        console.print(f"rescored summary: [bold]{out}[/]")
        return 0
    if not (args.task and args.predictions):
        raise UserError("`cllm-bench score` needs RUN_DIR, or --task NAME --predictions FILE.jsonl")
    score_predictions(args.task, Path(args.predictions), options, Path(args.output) if args.output else None, console,
                      require_isolation=args.require_isolation)  # fmt: skip
    return 0


def add_check_decoder_parser(sub: Any) -> None:
    p = sub.add_parser("check-decoder", help="run the losslessness + trace battery the built-in decoders pass")
    p.add_argument("decoder", help="decoder spec, e.g. jacobi:n=4 or a plugin's name")
    p.set_defaults(func=cmd_check_decoder)


def cmd_check_decoder(args: argparse.Namespace) -> int:
    from cllm_bench.conformance import check_decoder

    return 0 if check_decoder(args.decoder, terminal_console()) else 1


def add_include(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", action="append",
                        help="a .py/.toml file or a folder of them registering decoders and tasks (repeatable)")  # fmt: skip


# ------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cllm-bench",
        description="How much faster is decoding method X than autoregressive decoding on task Y, "
        "and what does it cost in accuracy?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    lst = sub.add_parser("list", help="registered models, decoders and tasks")
    lst.set_defaults(func=cmd_list)
    add_report_parser(sub)
    add_export_parser(sub)
    add_bench_parser(sub)
    add_score_parser(sub)
    add_check_decoder_parser(sub)
    add_train_parser(sub)
    add_models_parser(sub)
    from cllm_bench.predict_cli import add_predict_parsers

    add_predict_parsers(sub)
    for name in ("run", "list", "report", "bench", "score", "check-decoder"):
        add_include(sub.choices[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if getattr(args, "include", None) or args.command in ("run", "list", "bench", "check-decoder"):
            from cllm_bench.plugins import load_plugins

            load_plugins(getattr(args, "include", None))  # --include files + installed entry points
        with persistent_compile_cache():  # a compiled engine's warm-up is paid once per machine
            return func(args)
    except UserError as exc:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
