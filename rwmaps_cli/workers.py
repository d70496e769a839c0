"""The local worker processes: how they start, and the one executor that runs them.

Starting a worker the usual way (an interpreter that then imports numpy, nibabel, edt and
isal) costs about 0.3 s of CPU per worker, paid again by every worker, at the start of
every run, on the cores the cases need.  Where the platform has it (Linux, macOS), the
workers are forked from multiprocessing's *forkserver*: one single-threaded server process
imports :data:`WORKER_IMPORTS` once, and each worker is a fork of it, ready in
milliseconds.  ``rwmaps compute`` starts that server first thing
(:func:`start_worker_server`, from ``__main__``), so that it imports while the command line
imports, finds the cases and reads the manifest.

This module imports the standard library only: it is loaded before anything else.
"""

from __future__ import annotations

import importlib
import multiprocessing
import signal
import sys

# What a worker needs to compute a case.
WORKER_IMPORTS = ("rwmaps_cli.case", "nibabel", "edt", "isal.igzip")


_executor = None  # the last one made: what shutdown() ends


def executor(jobs: int):
    """The reusable loky executor with ``jobs`` workers (loky replaces a worker that dies,
    and resizes or restarts the pool instead of making a new one per call)."""
    global _executor
    from joblib.externals.loky import get_reusable_executor

    _executor = get_reusable_executor(max_workers=jobs, initializer=_worker_start, context=_context())
    return _executor


def shutdown() -> None:
    """End the workers and wait for them (what loky does at the interpreter's exit)."""
    if _executor is not None:
        _executor.shutdown(wait=True)


def start_worker_server() -> None:
    """Start the process the workers will be forked from, and return at once.  Does
    nothing where the workers are not forked (see :func:`_context`)."""
    if _context() is not None:
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _context():
    """multiprocessing's forkserver, preloading :data:`WORKER_IMPORTS`, when it is safe;
    else None (loky's default: each worker starts an interpreter and imports in
    :func:`_worker_start`).

    Safe means: a worker that multiprocessing starts re-imports the caller's ``__main__``
    script (the spawn rules), which is harmless for the ``rwmaps`` command (its script
    is guarded by ``if __name__ == "__main__"``), ``python -m``, ``-c``, a REPL or a
    notebook, but would run an unguarded user script again.  loky's default never
    re-imports it, so a script that calls :func:`~rwmaps_cli.compute.compute_dataset`
    keeps working, guarded or not.

    multiprocessing has one forkserver per process: if the caller started it already (for
    its own pool), the workers are forked from that one and import in :func:`_worker_start`.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods() or not _main_is_safe():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_IMPORTS))
    return context


def _main_is_safe() -> bool:
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None:
        # `python -m package`: multiprocessing never re-imports a package's __main__;
        # another `-m module` is re-imported by name, as a script would be.
        return spec_name.rpartition(".")[2] == "__main__"
    if getattr(main, "__file__", None) is None:
        return True  # REPL, notebook, `python -c`: nothing to re-import
    # The `rwmaps` script pip wrote: it imports rwmaps_cli.__main__.main, guarded.
    return getattr(getattr(main, "main", None), "__module__", None) == "rwmaps_cli.__main__"


def _worker_start() -> None:
    """How each worker process starts: it ignores Ctrl-C (the terminal sends it to the whole
    process group, and the main process decides what stops: it kills the workers itself),
    and imports what computing a case needs now, not in its first case (a no-op when it was
    forked from the server that imported them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in WORKER_IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError:  # reported by the case that needs it, in one line
            pass
