"""The ``lmtailor`` command: run, demo, validate, report, compare, export, serve, models, data inspect. A thin layer over the Python API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.resources import files
from pathlib import Path

from rich.console import Console

from lmtailor.distributed import is_main_process
from lmtailor.errors import TrainingInterrupted, UserError
from lmtailor.exit_codes import HELP as EXIT_CODES, failed_rows_line, run_exit_code
from lmtailor.export.cli import add_export_parser
from lmtailor.io import write_text_atomic
from lmtailor.registry import UnknownNameError
from lmtailor.report.below_majority import below_majority_notes
from lmtailor.rundir import RunDir

console = Console(stderr=False)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("lmtailor").setLevel(logging.DEBUG if verbose else logging.INFO)
    # Transformers prints a warning per generate() call about unset generation flags; keep the console readable.
    logging.getLogger("transformers").setLevel(logging.ERROR)


def packaged_example(name: str) -> Path:
    """Path of an example experiment shipped inside the package."""
    return Path(str(files("lmtailor").joinpath("examples", name)))


def packaged_examples() -> list[str]:
    """Names of the example experiments shipped inside the package."""
    return sorted(p.name.removesuffix(".yaml") for p in files("lmtailor").joinpath("examples").iterdir()
                  if p.name.endswith(".yaml"))


def _load(path: Path, overrides: list[str]):
    from lmtailor.config import load_experiment

    return load_experiment(path, overrides)


def _print_results(run_dir: Path, title: str) -> None:
    from lmtailor.report.findings import architecture_findings
    from lmtailor.report.results_json import load_records
    from lmtailor.report.table import results_markdown, results_rich_table

    records = load_records(run_dir)  # plan order
    if console.is_terminal:
        console.print(results_rich_table(records, title=title))
        console.print("\n".join(architecture_findings(records)), markup=False, highlight=False, soft_wrap=True)
        for note in below_majority_notes(records):
            console.print(f"- {note}", markup=False, highlight=False, soft_wrap=True)
    else:  # piped or captured: Markdown reads well as plain text and does not wrap at an assumed 80 columns
        console.print(results_markdown(records, title=title), markup=False, highlight=False, soft_wrap=True)
    run = RunDir(run_dir)
    console.print(f"run directory: {run_dir}")
    console.print(f"table: {run.results_md}")
    if run.report_html.is_file():
        console.print(f"report: {run.report_html}")


def cmd_run(args: argparse.Namespace) -> int:
    from lmtailor.runner import load_resumable, run_experiment

    resume = getattr(args, "resume", None)
    if resume is not None:
        if args.experiment is not None or args.set or args.out is not None:
            raise UserError("--resume RUN_DIR continues a run with the experiment it started with (RUN_DIR/"
                            "experiment.yaml); do not pass an experiment file, --set or --out with it")
        exp, base_dir = load_resumable(resume)
    elif args.experiment is None:
        raise UserError("lmtailor run needs an experiment file (or --resume RUN_DIR to continue an earlier run)")
    else:
        exp, base_dir = _load(args.experiment, args.set), args.experiment.resolve().parent
    try:
        run_dir = run_experiment(exp, base_dir=base_dir, out_dir=args.out, resume_dir=resume)
    except TrainingInterrupted as e:  # a checkpoint is saved: not an error, but the run did not finish
        console.print(str(e), style="yellow", markup=False, highlight=False)
        return 130
    from lmtailor.report.results_json import load_records

    if not is_main_process():  # under accelerate launch / torchrun, one process prints the table and decides
        return 0
    _print_results(run_dir, exp.name)
    records = load_records(run_dir)
    line = failed_rows_line(records)
    if line is not None:
        console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)
    return run_exit_code(records)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.example not in packaged_examples():
        raise UserError(f"no packaged example {args.example!r}; choose one of {', '.join(packaged_examples())}")
    path = packaged_example(f"{args.example}.yaml")
    exp = _load(path, args.set)
    d, b = exp.data, exp.budget
    console.print(f"demo experiment: {path}", markup=False, highlight=False)
    console.print(f"{exp.description.strip()}\nSized for this run: at most {d.max_train} training, "
                  f"{d.max_validation} validation and {d.max_test} test rows; inputs cut to {b.max_input_tokens} "
                  f"tokens, training sequences to {b.max_seq_len}. Change any of it with --set, e.g. "
                  "--set data.max_train=400.", markup=False, highlight=False)
    args.experiment = path
    return cmd_run(args)


def cmd_validate(args: argparse.Namespace) -> int:
    from lmtailor.config import read_yaml
    from lmtailor.data.prepare import prepare_data
    from lmtailor.runner import plan_rows, resolve_task
    from lmtailor.training.method_settings import flat_spelling_notes

    exp = _load(args.experiment, args.set)
    prepared = prepare_data(exp.data, exp.task.type or "", args.experiment.resolve().parent)
    task = resolve_task(exp, prepared.task_defaults, prepared.splits)
    rows = plan_rows(exp)
    from lmtailor.models.remote_code import check_remote_code

    check_remote_code([r.model_ref for r in rows], exp.runtime.trust_remote_code)
    for w in prepared.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    for note in flat_spelling_notes(read_yaml(args.experiment), str(args.experiment)):
        console.print(f"note: {note}", markup=False, highlight=False)
    s = prepared.splits
    console.print(f"{args.experiment}: valid. Task {task.name} ({task.type}); "
                  f"{len(s.train)} train / {len(s.validation)} validation / {len(s.test)} test rows.")
    for row in rows:
        console.print(f"  row {row.row_id}: {row.label} on {row.model_ref}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lmtailor.report.build import run_target, write_run_reports
    from lmtailor.report.results_json import load_records
    from lmtailor.report.table import write_results_markdown

    run_dir: Path = args.run_dir
    if not RunDir(run_dir).record_files():
        console.print(f"[red]{run_dir}: no results/*.json: is this a run directory made by `lmtailor run`?[/]")
        return 2
    records = load_records(run_dir)  # plan order, as the run wrote results.md; a broken file is named
    write_results_markdown(run_dir, records, run_dir.name)
    target = run_target(run_dir)
    overrides = {k: getattr(args, k) for k in ("quality_floor", "monthly_budget_usd", "requests_per_month", "baseline")
                 if getattr(args, k, None) is not None}
    deployment = {k: getattr(args, k) for k in ("mode", "usd_per_hour", "peak_to_average")
                  if getattr(args, k, None) is not None}
    if deployment:
        overrides["deployment"] = _deployment(target.deployment, deployment)
    # results.json: the same bytes the run wrote, from the same records; the report with the target as given now
    write_run_reports(run_dir, run_dir.name, target.model_copy(update=overrides))
    _print_results(run_dir, run_dir.name)
    console.print(f"summary: {RunDir(run_dir).results_json}")
    return 0


def _deployment(current, changes: dict):
    """``current`` (a ``DeploymentConfig``) with the command line's changes, validated like the experiment file."""
    from pydantic import ValidationError

    from lmtailor.report.deployment import DeploymentConfig

    merged = {**current.model_dump(), **changes}
    if changes.get("mode") == "scale_to_zero":
        merged["min_instances"] = 0
    try:
        return DeploymentConfig.model_validate(merged)
    except ValidationError as e:
        raise UserError(f"--deployment / --instance-usd-per-hour / --peak-to-average: {e.errors()[0]['msg']}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from lmtailor.report.compare import compare_markdown

    for run_dir in args.run_dirs:
        if not RunDir(run_dir).has_results():
            raise UserError(f"{run_dir}: no results/ folder: is this a run directory made by `lmtailor run`?")
    text = compare_markdown(args.run_dirs)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    if args.out is not None:
        write_text_atomic(args.out, text)
        console.print(f"written: {args.out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from lmtailor.models import list_models

    table = Table(title="models available locally")
    entries = list_models()
    keys = list(dict.fromkeys(k for e in entries for k in e))
    for k in keys:
        table.add_column(k, overflow="fold")
    for e in entries:
        table.add_row(*(str(e.get(k, "")) for k in keys))
    console.print(table)
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from lmtailor.data.inspect import inspect_data
    from lmtailor.data.prepare import prepare_data

    exp = _load(args.experiment, args.set)
    prepared = prepare_data(exp.data, exp.task.type or "", args.experiment.resolve().parent)
    task_type = exp.task.type or prepared.task_defaults.get("type", "")
    console.print(inspect_data(prepared, task_type))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed so tests can check every command's --help)."""
    parser = argparse.ArgumentParser(prog="lmtailor", description="Run the model customization spectrum on your task "
                                     "and measure which rung pays.")
    parser.add_argument("-v", "--verbose", "--debug", dest="verbose", action="store_true",
                        help="debug logging, and a traceback with every error")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_experiment(p: argparse.ArgumentParser, positional: bool = True) -> None:
        if positional:
            p.add_argument("experiment", type=Path, help="experiment YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a key of the experiment file, e.g. strategies.0.shots=8 (repeatable)")

    p = sub.add_parser("run", help="run an experiment file and print the cost-benefit table", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", type=Path, nargs="?", default=None, help="experiment YAML file")
    with_experiment(p, positional=False)
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue an interrupted run in RUN_DIR: finished rows are kept, the others rerun, and "
                        "training resumes from its last complete checkpoint")
    p.add_argument("--out", type=Path, default=None, help="parent directory of the run directory (default: output_dir)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run a packaged example experiment on the embedded models (default: demo)",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("example", nargs="?", default="demo",
                   help=f"which packaged example: {', '.join(packaged_examples())}")
    with_experiment(p, positional=False)
    p.add_argument("--out", type=Path, default=None, help="parent directory of the run directory (default: runs)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("validate", help="check an experiment file and its data without loading any model")
    with_experiment(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("report", help="rebuild results.md and results.json from a run directory's saved results")
    p.add_argument("run_dir", type=Path, help="a run directory written by `lmtailor run`")
    p.add_argument("--quality-floor", dest="quality_floor", type=float, default=None,
                   help="smallest acceptable primary metric for the recommendation (default: the experiment's)")
    p.add_argument("--monthly-budget", dest="monthly_budget_usd", type=float, default=None,
                   help="most to spend per month on inference, in $ (default: the experiment's)")
    p.add_argument("--requests-per-month", dest="requests_per_month", type=int, default=None,
                   help="expected requests per month, for monthly cost and break-even (default: the experiment's)")
    p.add_argument("--baseline", default=None,
                   help="row label of the large general model to compare with (default: the best prompted row)")
    p.add_argument("--deployment", dest="mode", choices=["always_on", "scale_to_zero"], default=None,
                   help="how self-hosted rows are served, for $/month (default: the experiment's report.deployment)")
    p.add_argument("--instance-usd-per-hour", dest="usd_per_hour", type=float, default=None,
                   help="$/hour of one serving instance (default: the run's pricing for the row's hardware)")
    p.add_argument("--peak-to-average", dest="peak_to_average", type=float, default=None,
                   help="busiest-hour load over the average, for sizing instances (default: 3)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="put several runs' configurations side by side (scores with intervals, costs)")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories written by `lmtailor run`")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    p.set_defaults(func=cmd_compare)

    from lmtailor.serve.cli import add_serve_parser

    add_export_parser(sub)
    add_serve_parser(sub)

    p = sub.add_parser("models", help="list the models available locally (embedded and converted)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("inspect", help="print a dataset's size, label balance and length statistics")
    with_experiment(q)
    q.set_defaults(func=cmd_data_inspect)
    return parser


def os_error_message(e: OSError) -> str:
    """One line for a file-system error: the path, what the system said, and what to check (-v shows a traceback)."""
    where = f"{e.filename}: " if e.filename else ""
    return (f"{where}{e.strerror or e} (check that the path exists, is writable and that its disk has room; choose "
            "another place with --out where the command has one; -v shows the traceback)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmtailor`` console command."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)

    try:
        return args.func(args)
    except (UserError, UnknownNameError) as e:  # messages written for people: no traceback
        console.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)  # one line: greppable
        return 2
    except OSError as e:  # a file or folder the user named cannot be read or written (read-only, full, missing)
        if args.verbose:
            raise
        console.print(f"error: {os_error_message(e)}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it: stop at once, quietly
        console.print("interrupted; an interrupted run continues with `lmtailor run --resume RUN_DIR`",
                      style="yellow", markup=False, highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
