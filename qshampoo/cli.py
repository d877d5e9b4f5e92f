"""The ``qshampoo`` command line.

One function per subcommand, all registered in :data:`COMMANDS`; ``main`` builds the parser
from that table. A subcommand is a :class:`Command`: a name, a one-line help, a function that
adds its arguments to its sub-parser, and a function that runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, _extras


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A user error that is reported as one line, without a traceback (exit status 2)."""


# --------------------------------------------------------------------------------------------
# What `bench` and `sweep` share
# --------------------------------------------------------------------------------------------


def _task_argument(p: argparse.ArgumentParser) -> None:
    from .bench.tasks import TASKS

    p.add_argument(
        "--task",
        default="fashion-mnist",
        choices=list(TASKS),
        help="what to train (default: %(default)s)",
    )


def _budget_arguments(p: argparse.ArgumentParser) -> None:
    """The seeds and the length of every run."""
    p.add_argument(
        "--seeds",
        default="2",
        help="a count N (seeds 0..N-1) or a comma-separated list of seeds (default: %(default)s)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="training steps per run")
    budget.add_argument(
        "--epochs", type=float, default=None, help="passes over the training data per run"
    )


def _training_arguments(p: argparse.ArgumentParser, *, hp_help: str) -> None:
    """The flags ``bench`` and ``sweep`` share for data, evaluation, overrides and processes
    (read back by :func:`_run_options`); ``hp_help`` says what ``--hp`` does in that command."""
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the task's data (Fashion-MNIST IDX files, or .md/.txt plays) "
        "instead of the installed packages'",
    )
    p.add_argument(
        "--eval-every", type=int, default=None, help="steps between periodic evaluations"
    )
    p.add_argument("--hp", action="append", metavar="OPT.KEY=VALUE", help=hp_help)
    p.add_argument(
        "--validation",
        action="store_true",
        help="evaluate on a split held out of the training data instead of the test set "
        "(for tuning)",
    )
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="run everything in this process (faster start; peak RSS less precise)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads per run (default: torch's, usually one per core)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _lang_argument(p)


def _lang_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lang", default="en", choices=["en", "ja"], help="the report's language (default: en)"
    )


def _budgets(text: str) -> tuple[float, ...]:
    """``"0.5,0.7"`` -> ``(0.5, 0.7)``; ``"none"`` -> ``()``."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--budgets takes fractions like 0.5,0.7 or none, got {text!r}") from None
    if not all(0 < v < 1 for v in values):
        raise UsageError(f"--budgets: every fraction must be in (0, 1), got {text!r}")
    return values


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The fields of :class:`~qshampoo.bench.suite.SuiteConfig` and
    :class:`~qshampoo.bench.sweep.SweepConfig` that say how the runs go, from the flags that
    ``bench`` and ``sweep`` share."""
    from .bench.suite import parse_overrides, parse_seeds

    return {
        "seeds": parse_seeds(args.seeds),
        "steps": args.steps,
        "epochs": args.epochs,
        "device": args.device,
        "resume": args.resume,
        "isolate": False if args.no_isolate else "auto",
        "progress": not args.no_progress,
        "eval_every": args.eval_every,
        "overrides": parse_overrides(args.hp),
        "validation": args.validation,
        "threads": args.threads,
        "command": "qshampoo " + " ".join(shlex.quote(a) for a in args.argv),
        "lang": args.lang,
    }


def _names(text: str) -> list[str]:
    """``"adamw, shampoo"`` -> ``["adamw", "shampoo"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def _train_and_report(train: Callable[[], Path]) -> int:
    """Call ``train``, which trains and writes a report folder and returns it; a user's error
    (missing data, a bad value) becomes a one-line :class:`UsageError`, and an interrupt keeps
    what finished (exit status 130)."""
    from .bench.data import DataNotFoundError

    try:
        out = train()
    except (DataNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        print(
            "\ninterrupted. Finished runs and checkpoints are kept; run the same command with "
            "--resume to continue.",
            file=sys.stderr,
        )
        return 130
    print(f"report: {out / 'report.md'}")
    return 0


# --------------------------------------------------------------------------------------------
# qshampoo bench
# --------------------------------------------------------------------------------------------


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    from .bench.suite import DEFAULT_BUDGETS

    _task_argument(p)
    p.add_argument(
        "--optimizers",
        default=None,
        help="comma-separated optimizer names (default: the task's comparison, "
        "adamw,shampoo,shampoo4bit,shampoo4bit-naive); see --list",
    )
    _budget_arguments(p)
    p.add_argument("--out", default=None, help="report folder (default: report/<task>)")
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse finished runs in --out and continue unfinished ones from their checkpoints",
    )
    _training_arguments(
        p,
        hp_help="override a hyperparameter, e.g. shampoo4bit.ef_decay=0 or '*.stat_interval=5' "
        "(repeatable)",
    )
    p.add_argument(
        "--budgets",
        default=",".join(f"{f:g}" for f in DEFAULT_BUDGETS),
        help="time to quality: shorter full schedules, as fractions of the steps, that every "
        "optimizer but the baseline also trains, shortest first, until one reaches the "
        "baseline's final metric ('none': skip; default: %(default)s)",
    )
    p.add_argument(
        "--list", action="store_true", help="list tasks and optimizers (with availability) and exit"
    )


def _list_bench() -> int:
    from .bench import optimizers as optim_mod
    from .bench.tasks import TASKS

    print("tasks:")
    for name, factory in TASKS.items():
        t = factory(None)
        print(f"  {name:<22} {t.description}; default {t.steps} steps")
    print("optimizers:")
    for name, s in optim_mod.REGISTRY.items():
        reason = optim_mod.availability(name, probe=False)
        status = "available" if reason is None else f"unavailable: {reason}"
        print(f"  {name:<22} {s.description} [{status}]")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Train one task with several optimizers and seeds; write the report."""
    from .bench.suite import SuiteConfig, run_suite
    from .bench.tasks import get_task

    if args.list:
        return _list_bench()

    def train() -> Path:
        task = get_task(args.task, args.data_dir)
        optimizers = _names(args.optimizers) if args.optimizers else list(task.optimizers)
        config = SuiteConfig(
            optimizers=optimizers,
            out=args.out or f"report/{task.name}",
            budgets=_budgets(args.budgets),
            **_run_options(args),
        )
        return run_suite(task, config)

    return _train_and_report(train)


# --------------------------------------------------------------------------------------------
# The table of subcommands. `spectral`, `memory` and `sweep` register here the same way.
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# qshampoo spectral
# --------------------------------------------------------------------------------------------


def _spectral_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes",
        default="64,256,1024",
        help="matrix orders, comma-separated (default: %(default)s)",
    )
    p.add_argument("--bits", type=int, default=4, help="bits per code (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=64, help="chunk length (default: %(default)s)")
    p.add_argument("--codebook", default="linear2", help="linear2 or dynamic_tree")
    p.add_argument(
        "--no-real", action="store_true", help="skip the preconditioner captured from training"
    )
    p.add_argument(
        "--updates",
        type=int,
        default=20,
        help="statistics updates with each matrix before its root is taken (default: %(default)s)",
    )
    p.add_argument(
        "--stat-decay",
        type=float,
        default=0.0,
        help="EMA decay of those updates; 0: the statistics are the matrix (default: %(default)s)",
    )
    p.add_argument(
        "--ef-decay", type=float, default=0.9, help="CQ+EF's ef_decay (default: %(default)s)"
    )


def cmd_spectral(args: argparse.Namespace) -> int:
    from .bench.spectral import run

    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        raise UsageError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if args.updates < 1 or not 0.0 <= args.stat_decay < 1.0:
        raise UsageError("--updates must be >= 1 and --stat-decay in [0, 1)")
    print(
        run(
            sizes=sizes,
            real=not args.no_real,
            bits=args.bits,
            block_size=args.block_size,
            codebook=args.codebook,
            updates=args.updates,
            stat_decay=args.stat_decay,
            ef_decay=args.ef_decay,
        )
    )
    return 0


# --------------------------------------------------------------------------------------------
# qshampoo memory
# --------------------------------------------------------------------------------------------


def _memory_arguments(p: argparse.ArgumentParser) -> None:
    from .bench.paper_models import PAPER_MODELS

    p.add_argument(
        "--models", default=",".join(PAPER_MODELS), help="comma-separated (default: all)"
    )
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--max-preconditioner-dim", type=int, default=1200)


def cmd_memory(args: argparse.Namespace) -> int:
    from .bench.memory_table import markdown, memory_rows
    from .bench.paper_models import PAPER_MODELS

    models = args.models.split(",")
    unknown = [m for m in models if m not in PAPER_MODELS]
    if unknown:
        raise UsageError(f"unknown model(s) {unknown}; choose from {list(PAPER_MODELS)}")
    rows = memory_rows(
        models,
        bits=args.bits,
        block_size=args.block_size,
        max_preconditioner_dim=args.max_preconditioner_dim,
    )
    print(markdown(rows))
    return 0


# --------------------------------------------------------------------------------------------
# qshampoo sweep
# --------------------------------------------------------------------------------------------


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    from .bench.suite import GRID_HELP

    _task_argument(p)
    p.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2,...",
        help=GRID_HELP + "; two --grid make the product",
    )
    p.add_argument(
        "--optimizer",
        default="shampoo4bit",
        help="the optimizer whose settings are swept (default: %(default)s)",
    )
    p.add_argument(
        "--references",
        default=None,
        help="comma-separated optimizers run at their usual settings as reference lines "
        "(default: adamw,shampoo; 'none' for none)",
    )
    _budget_arguments(p)
    p.add_argument(
        "--out", default=None, help="report folder (default: report/sweep-<task>-<keys>)"
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse finished runs in --out (also after adding grid values) and continue "
        "unfinished ones from their checkpoints",
    )
    p.add_argument(
        "--reuse",
        action="append",
        metavar="DIR",
        default=[],
        help="take finished runs with exactly the same settings (fingerprint) from an earlier "
        "sweep or bench folder instead of training them again (repeatable)",
    )
    _training_arguments(
        p, hp_help="fix a hyperparameter for all points, e.g. shampoo4bit.bits=8 (repeatable)"
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train one optimizer over a grid of one or two settings; write the sweep report."""
    from .bench.suite import SweepConfig, parse_grid, run_sweep
    from .bench.tasks import get_task

    def train() -> Path:
        grid = parse_grid(args.grid)
        task = get_task(args.task, args.data_dir)
        if args.references is None:
            references = None
        elif args.references.strip().lower() in ("", "none"):
            references = []
        else:
            references = _names(args.references)
        keys = "-".join(a.key for a in grid)
        config = SweepConfig(
            optimizers=[],
            grid=grid,
            out=args.out or f"report/sweep-{task.name}-{keys}",
            optimizer=args.optimizer,
            references=references,
            reuse=list(args.reuse),
            **_run_options(args),
        )
        return run_sweep(task, config)

    return _train_and_report(train)


# --------------------------------------------------------------------------------------------
# qshampoo report
# --------------------------------------------------------------------------------------------


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a report folder (qshampoo bench / sweep, or Recorder runs)")
    _lang_argument(p)


def cmd_report(args: argparse.Namespace) -> int:
    """Write a folder's report again: from its results.json, or from the runs a Recorder left."""
    from .bench.report import report_folder, rerender

    out = Path(args.folder)
    try:
        if (out / "results.json").exists():
            rerender(out, args.lang)
        else:
            report_folder(out, args.lang)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    print(f"report: {out / 'report.md'}")
    return 0


COMMANDS: list[Command] = [
    Command(
        "bench",
        "compare optimizers on a task: accuracy, memory, time, stability -> report folder",
        _bench_arguments,
        cmd_bench,
    ),
    Command(
        "spectral",
        "inverse-root error (NRE, AE) of every variant on synthetic and captured matrices",
        _spectral_arguments,
        cmd_spectral,
    ),
    Command(
        "memory",
        "optimizer-state memory per variant for the papers' model sizes (meta device)",
        _memory_arguments,
        cmd_memory,
    ),
    Command(
        "sweep",
        "sweep one or two optimizer settings over a grid on a task -> report folder",
        _sweep_arguments,
        cmd_sweep,
    ),
    Command(
        "report",
        "write a report folder's report.md / report.html again (e.g. in --lang ja)",
        _report_arguments,
        cmd_report,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    import torch

    parser = argparse.ArgumentParser(
        prog="qshampoo", description="Shampoo with 4-bit preconditioners: tools."
    )
    version = f"%(prog)s {__version__} (torch {torch.__version__})"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        c.add_arguments(p)
        p.set_defaults(_run=c.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        _extras.check_command(args.command)
        return int(args._run(args) or 0)
    except (UsageError, _extras.MissingExtraError) as e:
        print(f"qshampoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional dependency the check above did not foresee
        hint = _extras.message_for(e)
        if hint is None:
            raise
        print(f"qshampoo {args.command}: error: {hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
