"""The ``qshampoo`` command line.

One function per subcommand, all registered in :data:`COMMANDS`; ``main`` builds the parser
from that table. A subcommand is a :class:`Command`: a name, a one-line help, a function that
adds its arguments to its sub-parser, and a function that runs it and returns the exit status.

Every refusal is one line on stderr and exit status 2 (``docs/robustness.md``): argparse's
errors, and every :class:`UsageError` a subcommand raises — the harness's checks raise
``ValueError`` before anything is created or trained, and the commands turn it into one.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__, _extras


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A user error that is reported as one line, without a traceback (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (the usage is what ``--help`` is for)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]}\n")


def _names(text: str) -> list[str]:
    """``"adamw, shampoo"`` -> ``["adamw", "shampoo"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def _check_shampoo(**settings) -> None:
    """Refuse the settings ``qshampoo.Shampoo4bit`` refuses (bits, block size, codebook ...)."""
    from .bench.optimizers import check

    try:
        check("shampoo4bit", settings)
    except ValueError as e:
        raise UsageError(str(e)) from None


# --------------------------------------------------------------------------------------------
# What `bench` and `sweep` share
# --------------------------------------------------------------------------------------------


def _run_arguments(p: argparse.ArgumentParser, *, out: str, resume: str, hp: str) -> None:
    """The flags ``bench`` and ``sweep`` share: task, seeds, length, folder, device, data,
    evaluation, overrides, processes, language (read back by :func:`_run_options`)."""
    from .bench.tasks import TASKS

    p.add_argument("--task", default="fashion-mnist", choices=list(TASKS), help="what to train")
    p.add_argument("--seeds", default="2", help="a count N (seeds 0..N-1) or a list 0,4,7")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps per run")
    budget.add_argument("--epochs", type=float, help="passes over the training data per run")
    p.add_argument("--out", help=f"report folder (default: {out})")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:1 ...")
    p.add_argument("--resume", action="store_true", help=resume)
    p.add_argument("--overwrite", action="store_true", help="train again the runs --out holds")
    p.add_argument("--data-dir", help="folder with the task's data instead of the packages'")
    p.add_argument("--eval-every", type=int, help="steps between periodic evaluations")
    p.add_argument("--hp", action="append", metavar="OPT.KEY=VALUE", help=hp)
    p.add_argument("--validation", action="store_true", help="evaluate on a held-out train split")
    p.add_argument("--no-isolate", action="store_true", help="all runs in this process")
    p.add_argument("--threads", type=int, help="torch intra-op threads per run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _lang_argument(p)


def _lang_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lang", default="en", choices=["en", "ja"], help="the report's language")


def _run_options(args: argparse.Namespace) -> dict:
    """The fields of :class:`~qshampoo.bench.suite.SuiteConfig` the shared flags set."""
    from .bench.suite import parse_overrides

    try:
        overrides = parse_overrides(args.hp)
    except ValueError as e:
        raise UsageError(str(e)) from None
    same = ("seeds", "steps", "epochs", "device", "resume", "overwrite", "eval_every")
    options = {k: getattr(args, k) for k in (*same, "validation", "threads", "lang")}
    options.update(overrides=overrides, isolate=False if args.no_isolate else "auto")
    options["progress"] = not args.no_progress
    options["command"] = "qshampoo " + " ".join(shlex.quote(a) for a in args.argv)
    return options


def _train_and_report(train: Callable[[], Path]) -> int:
    """Call ``train``, which checks, trains and writes a report folder and returns it. A refused
    setting or missing data becomes a one-line :class:`UsageError`; an interrupt (Ctrl-C, or
    SIGTERM) keeps what finished and says how to continue (exit status 130, 143)."""
    from .bench.data import DataNotFoundError
    from .bench.runner import Terminated

    try:
        out = train()
    except (ValueError, DataNotFoundError) as e:  # the harness's checks, missing data
        raise UsageError(str(e).splitlines()[0]) from None
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        keep = "Finished runs and checkpoints are kept; the same command with --resume continues"
        print(f"\n{what}. {keep}.", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    print(f"report: {out / 'report.md'}")
    return 0


# --------------------------------------------------------------------------------------------
# qshampoo bench
# --------------------------------------------------------------------------------------------


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    from .bench.suite import DEFAULT_BUDGETS

    p.add_argument(
        "--optimizers",
        help="comma-separated optimizer names (default: the task's comparison); see --list",
    )
    _run_arguments(
        p,
        out="report/<task>",
        resume="reuse finished runs in --out with the same settings and continue unfinished "
        "ones from their checkpoints; runs with other settings are refused",
        hp="override a hyperparameter, e.g. shampoo4bit.ef_decay=0 or '*.stat_interval=5' "
        "(repeatable; values parsed as JSON)",
    )
    budgets = ",".join(f"{f:g}" for f in DEFAULT_BUDGETS)
    text = "time to quality: shorter schedules as fractions of the steps, or none (%(default)s)"
    p.add_argument("--budgets", default=budgets, help=text)
    p.add_argument("--list", action="store_true", help="list tasks and optimizers, and exit")


def _budgets(text: str) -> tuple[float, ...]:
    """``"0.5,0.7"`` -> ``(0.5, 0.7)``; ``"none"`` -> ``()``."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(v) for v in text.split(","))  # their range: the plan's to check
    except ValueError:
        raise UsageError(f"--budgets takes fractions like 0.5,0.7 or none, got {text!r}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    """Train one task with several optimizers and seeds; write the report."""
    from .bench import optimizers as optim_mod
    from .bench.suite import SuiteConfig, run_suite
    from .bench.tasks import TASKS, get_task

    if args.list:
        print("tasks:")
        for name, factory in TASKS.items():
            t = factory(None)
            print(f"  {name:<22} {t.description}; default {t.steps} steps")
        print("optimizers:")
        for name, s in optim_mod.REGISTRY.items():
            reason = optim_mod.availability(name, probe=False)
            print(f"  {name:<22} {s.description} [{reason or 'available'}]")
        return 0
    budgets, options = _budgets(args.budgets), _run_options(args)

    def train() -> Path:
        task = get_task(args.task, args.data_dir)
        names = _names(args.optimizers) if args.optimizers is not None else list(task.optimizers)
        out = args.out or f"report/{task.name}"
        config = SuiteConfig(optimizers=names, out=out, budgets=budgets, **options)
        return run_suite(task, config)

    return _train_and_report(train)


# --------------------------------------------------------------------------------------------
# qshampoo sweep
# --------------------------------------------------------------------------------------------


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    from .bench.grid import GRID_HELP

    p.add_argument("--grid", action="append", metavar="KEY=V1,V2,...", help=GRID_HELP)
    p.add_argument("--optimizer", default="shampoo4bit", help="the optimizer swept")
    p.add_argument("--references", help="optimizers at their usual settings (adamw,shampoo)")
    text = "take finished runs with the same settings from this folder (repeatable)"
    p.add_argument("--reuse", action="append", metavar="DIR", default=[], help=text)
    _run_arguments(
        p,
        out="report/sweep-<task>-<keys>",
        resume="reuse finished runs in --out (also after adding grid values) and continue "
        "unfinished ones from their checkpoints; runs with other settings are refused",
        hp="fix a hyperparameter for all points, e.g. shampoo4bit.bits=8 (repeatable)",
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train one optimizer over a grid of one or two settings; write the sweep report."""
    from .bench.grid import parse_grid
    from .bench.suite import SweepConfig, run_sweep
    from .bench.tasks import get_task

    options = _run_options(args)
    refs = args.references
    refs = None if refs is None else [] if refs.strip().lower() in ("", "none") else _names(refs)

    def train() -> Path:
        grid = parse_grid(args.grid)
        task = get_task(args.task, args.data_dir)
        out = args.out or f"report/sweep-{task.name}-{'-'.join(a.key for a in grid)}"
        config = SweepConfig(grid=grid, out=out, optimizer=args.optimizer, **options)
        config.references, config.reuse = refs, list(args.reuse)
        return run_sweep(task, config)

    return _train_and_report(train)


# --------------------------------------------------------------------------------------------
# qshampoo spectral, qshampoo memory
# --------------------------------------------------------------------------------------------


def _spectral_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="64,256,1024", help="matrix orders (default: %(default)s)")
    p.add_argument("--bits", type=int, default=4, help="bits per code (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=64, help="chunk length (default: %(default)s)")
    p.add_argument("--codebook", default="linear2", help="linear2 or dynamic_tree")
    p.add_argument(
        "--no-real", action="store_true", help="skip the preconditioner captured from training"
    )
    text = "statistics updates with each matrix before its root is taken (default: %(default)s)"
    p.add_argument("--updates", type=int, default=20, help=text)
    text = "EMA decay of those updates; 0: the statistics are the matrix (default: %(default)s)"
    p.add_argument("--stat-decay", type=float, default=0.0, help=text)
    p.add_argument("--ef-decay", type=float, default=0.9, help="CQ+EF's (default: %(default)s)")


def cmd_spectral(args: argparse.Namespace) -> int:
    from .bench.spectral import run

    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--sizes takes matrix orders >= 1, comma-separated, got {args.sizes!r}")
    if args.updates < 1:
        raise UsageError(f"--updates must be >= 1, got {args.updates}")
    if not 0.0 <= args.stat_decay < 1.0:
        raise UsageError(f"--stat-decay must be in [0, 1), got {args.stat_decay}")
    kw = {"bits": args.bits, "block_size": args.block_size, "codebook": args.codebook}
    _check_shampoo(**kw, ef_decay=args.ef_decay)
    kw.update(updates=args.updates, stat_decay=args.stat_decay, ef_decay=args.ef_decay)
    print(run(sizes=sizes, real=not args.no_real, **kw))
    return 0


def _memory_arguments(p: argparse.ArgumentParser) -> None:
    from .bench.paper_models import PAPER_MODELS

    p.add_argument("--models", default=",".join(PAPER_MODELS), help="comma-separated (all)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--max-preconditioner-dim", type=int, default=1200)


def cmd_memory(args: argparse.Namespace) -> int:
    from .bench.memory_table import markdown, memory_rows
    from .bench.paper_models import PAPER_MODELS

    models = _names(args.models)
    if not models or set(models) - set(PAPER_MODELS):
        raise UsageError(f"--models: choose from {', '.join(PAPER_MODELS)}, got {args.models!r}")
    kw = {"bits": args.bits, "block_size": args.block_size}
    kw["max_preconditioner_dim"] = args.max_preconditioner_dim
    _check_shampoo(**kw)
    print(markdown(memory_rows(models, **kw)))
    return 0


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
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{out} is not a readable report folder ({e})") from None
    print(f"report: {out / 'report.md'}")
    return 0


COMMANDS: list[Command] = [
    Command("bench", "compare optimizers on a task -> report folder", _bench_arguments, cmd_bench),
    Command("sweep", "sweep one or two optimizer settings -> report", _sweep_arguments, cmd_sweep),
    Command("report", "write a report folder's pages again", _report_arguments, cmd_report),
    Command("spectral", "inverse-root error of every variant", _spectral_arguments, cmd_spectral),
    Command("memory", "state memory of the papers' models", _memory_arguments, cmd_memory),
]


def build_parser() -> argparse.ArgumentParser:
    import torch

    parser = Parser(prog="qshampoo", description="Shampoo with 4-bit preconditioners: tools.")
    version = f"%(prog)s {__version__} (torch {torch.__version__})"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        c.add_arguments(p)
        p.set_defaults(_run=c.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2)
        return int(e.code or 0)
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
