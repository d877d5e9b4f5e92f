"""The evaluation harness: train a task with several optimizers and seeds, and report final
quality, memory, time and stability (``qshampoo bench``; ``docs/harness.md``).

Public entry points: :func:`compare` (your model and data), :func:`run_suite` with a built-in
task from :func:`get_task`, and :func:`tune_lr`.
"""

from .api import compare, make_task
from .data import DataNotFoundError
from .suite import SuiteConfig, run_suite
from .tasks import TASKS, Task, get_task
from .tuning import tune_lr

__all__ = [
    "TASKS",
    "DataNotFoundError",
    "SuiteConfig",
    "Task",
    "compare",
    "get_task",
    "make_task",
    "run_suite",
    "tune_lr",
]
