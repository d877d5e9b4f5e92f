"""Optional dependencies: which extra of ``pip install 'qshampoo[...]'`` brings which module.

The optimizer needs torch and numpy only. The harness (``qshampoo bench``, ``sweep``,
``report``) needs the ``bench`` extra; without it, a run would fail deep inside a child process
with two tracebacks. The command line checks first (:func:`check_command`) and says in one line
what to install.
"""

from __future__ import annotations

import importlib.util

# extra -> {module imported: the distribution that provides it}
EXTRAS: dict[str, dict[str, str]] = {
    "bench": {
        "matplotlib": "matplotlib",
        "tqdm": "tqdm",
        "sklearn": "scikit-learn",
        "scipy": "scipy",
    },
    "integrations": {
        "transformers": "transformers",
        "accelerate": "accelerate",
        "lightning": "lightning",
    },
}

# Commands that run on the core alone; every other command is the harness and needs `bench`.
# (`spectral` imports scikit-learn only for its captured matrix; without it the error names
# the extra through :func:`message_for`.)
CORE_COMMANDS = frozenset({"memory", "spectral"})


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message is one line naming the extra."""


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` whose module cannot be imported here."""
    return [dist for mod, dist in EXTRAS[extra].items() if importlib.util.find_spec(mod) is None]


def install_hint(extra: str, dists: list[str]) -> str:
    """The one line: which extra is missing, which of its packages, and what installs it."""
    return (
        f"this needs the optional dependencies of qshampoo[{extra}] "
        f"(not installed: {', '.join(dists)}): pip install 'qshampoo[{extra}]'"
    )


def require(extra: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``extra`` can be imported."""
    dists = missing(extra)
    if dists:
        raise MissingExtraError(install_hint(extra, dists))


def check_command(command: str) -> None:
    """Before ``qshampoo <command>`` runs: raise :class:`MissingExtraError` if it needs an extra
    that is not (completely) installed."""
    if command not in CORE_COMMANDS:
        require("bench")


def message_for(error: ModuleNotFoundError) -> str | None:
    """The one-line hint for an import that failed on a module of an extra, else ``None``."""
    top = (error.name or "").partition(".")[0]
    for extra, modules in EXTRAS.items():
        if top in modules:
            return install_hint(extra, [modules[top]])
    return None
