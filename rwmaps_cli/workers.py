"""The local worker processes: how they start, and the one executor that runs them.

Starting a worker the usual way (an interpreter that then imports numpy, nibabel, edt and
isal) costs about 0.3 s of CPU per worker, paid again by every worker, at the start of
every run, on the cores the cases need.  On Linux, the workers are forked from
multiprocessing's *forkserver* instead: one server process imports :data:`WORKER_IMPORTS`
once, and each worker is a fork of it, ready in milliseconds.  The server runs no Python
thread; the threads numpy's OpenBLAS starts are shut down around a fork by OpenBLAS's own
fork handler.  ``rwmaps compute`` starts that server first thing
(:func:`start_worker_server`, from ``__main__``), so that it imports while the command line
imports, finds the cases and reads the manifest.

multiprocessing has one forkserver per process, and it lives as long as the process: in a
notebook or another long-lived process, the workers keep the code and the environment of
the moment the server started (restart the kernel after upgrading rwmaps), and the server
preloads :data:`WORKER_IMPORTS`, not a list the caller set.  Elsewhere (macOS, Windows), and
when the forkserver cannot start, loky's default start is used.

This module imports the standard library only: it is loaded before anything else.
"""

from __future__ import annotations

import ast
import functools
import importlib
import multiprocessing
import signal
import sys
import threading
import warnings

# What a worker needs to compute a case.
WORKER_IMPORTS = ("rwmaps_cli.case", "nibabel", "edt", "isal.igzip")

_executor = None  # the last one made: what shutdown() ends
_server_failed = False  # the forkserver could not start (e.g. a TMPDIR too long for a socket)


def executor(jobs: int):
    """The reusable loky executor with ``jobs`` workers (loky replaces a worker that dies,
    and resizes or restarts the pool instead of making a new one per call)."""
    global _executor
    from joblib.externals.loky import get_reusable_executor

    start_worker_server()
    # loky replaces a worker whose memory grew by 300 MB after its first task (a first PyTorch
    # import, a large case's freed arenas) and says so in a warning; no task is lost, and a
    # library's words are not rwmaps' to print.
    warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor")
    _executor = get_reusable_executor(max_workers=jobs, initializer=_worker_start, context=_context())
    return _executor


def shutdown() -> None:
    """End the workers and wait for them (what loky does at the interpreter's exit)."""
    if _executor is not None:
        _executor.shutdown(wait=True)


def start_worker_server() -> None:
    """Start the process the workers will be forked from, and return at once.  Does
    nothing where the workers are not forked (see :func:`_context`)."""
    global _server_failed
    if _context() is None:
        return
    from multiprocessing import forkserver

    # Started with Ctrl-C ignored (it inherits that): the terminal sends SIGINT to the whole
    # process group, and the main process decides what stops.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        forkserver.ensure_running()
    except OSError:  # e.g. "AF_UNIX path too long": start workers loky's way instead
        _server_failed = True
    finally:
        if main_thread and previous is not None:  # None: a handler not set from Python, left as is
            signal.signal(signal.SIGINT, previous)


def start_quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with its stderr on ``/dev/null``, for the
    command line only.

    The tracker is the helper process that unlinks the semaphores a process leaves behind
    when it ends; it does so whatever its stderr is, and its only output is a warning per
    object it cleans.  After a stop (Ctrl-C, SIGTERM) that kills the workers mid-case, loky
    can leave one of its queue semaphores to it, and the warning came after rwmaps' last
    line ("stopped: ... run the same command again"), from another process, in the words of
    neither.  Started first (the workers' server and loky then use this one), it cleans up
    in silence.  A Python caller's tracker is left as it is.
    """
    import os
    from multiprocessing import resource_tracker

    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)  # the tracker inherits fd 2 when it starts
        resource_tracker.ensure_running()
    except OSError:
        pass  # no tracker now: multiprocessing starts its own when it needs one
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_workers(jobs: int) -> None:
    """Where the workers are not forked, start loky's ``jobs`` workers now, and return at
    once: they start their interpreters and import while the caller prepares, instead of at
    its first case.  (Forked workers start in milliseconds at the first case.)"""
    if _context() is None:
        executor(jobs).submit(int)


def _context():
    """multiprocessing's forkserver, preloading :data:`WORKER_IMPORTS`, when it is safe;
    else None (loky's default: each worker starts an interpreter and imports in
    :func:`_worker_start`)."""
    if _server_failed or not sys.platform.startswith("linux") or not _main_is_safe():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_IMPORTS))
    return context


def _main_is_safe() -> bool:
    """Whether a forked worker may import the caller's ``__main__`` again.

    multiprocessing's spawn rules make every worker it starts re-import the caller's
    ``__main__`` script (loky's default never does).  That is harmless for ``python -m`` of
    a package (never re-imported), ``-c``, a REPL or a notebook (nothing to re-import), and
    a script whose top level only imports and defines, and runs under ``if __name__ ==
    "__main__"``, like the ``rwmaps`` script pip writes; any other script would run again in
    every worker, so it gets loky's start.
    """
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None and spec_name.rpartition(".")[2] == "__main__":
        return True
    path = getattr(main, "__file__", None)
    return path is None or _only_imports_and_defines(path)


@functools.lru_cache(maxsize=8)
def _only_imports_and_defines(path: str) -> bool:
    try:
        with open(path, "rb") as script:
            tree = ast.parse(script.read())
    except (OSError, SyntaxError, ValueError):
        return False
    return all(_inert(statement) for statement in tree.body)


def _inert(statement: ast.stmt) -> bool:
    if isinstance(statement, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True  # a docstring
    if isinstance(statement, ast.If) and not statement.orelse:  # if __name__ == "__main__":
        test = statement.test
        return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
                and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq) and len(test.comparators) == 1
                and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")
    return False


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
