"""The evaluation harness: train a task with several optimizers and seeds, and report final
quality, memory, time and stability (``qshampoo bench``; ``docs/harness.md``).

Public entry points: :func:`compare` (your model and data), :func:`run_suite` with a built-in
task from :func:`get_task`, :func:`tune_lr`, and :class:`Recorder` (with :func:`HFCallback` and
:func:`LightningCallback`) for your own training loop, whose runs :func:`report_folder` reports.
"""

from .api import compare, make_task
from .data import DataNotFoundError
from .recorder import HFCallback, LightningCallback, Recorder
from .report import report_folder, rerender
from .suite import SuiteConfig, SweepConfig, run_suite, run_sweep
from .tasks import TASKS, Task, get_task
from .tuning import tune_lr

__all__ = [
    "TASKS",
    "DataNotFoundError",
    "HFCallback",
    "LightningCallback",
    "Recorder",
    "SuiteConfig",
    "SweepConfig",
    "Task",
    "compare",
    "get_task",
    "make_task",
    "report_folder",
    "rerender",
    "run_suite",
    "run_sweep",
    "tune_lr",
]
