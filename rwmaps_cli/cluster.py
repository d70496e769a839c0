"""Run cases on a Dask cluster: ``rwmaps compute --scheduler tcp://HOST:PORT`` (or ``local``).

:func:`run_dask` has the contract of :func:`rwmaps_cli.run.run_local`: one record per case,
in completion order, and a failed record (never an exception) for a case that fails.  Only
the small :class:`~rwmaps_cli.inputs.dataset.Case` (two paths and a name) and the record travel
through the scheduler: each worker reads its own labels and writes its own map by path, so
the workers must see the same filesystem as this machine (paths are made absolute).

Cases travel in batches (:class:`~rwmaps_cli.run.BatchSizer`): a Dask task costs a few
milliseconds of scheduling, more than a small 2D case, so small cases go many to a task and
large ones one by one.  Each Dask worker computes one case at a time and gives the case's distance transform all of
its threads (``threads=`` the worker's ``nthreads``), as ``run_local`` gives each case
``cores // jobs`` threads: the cores are not oversubscribed, and a worker's memory limit only
has to hold one case.  To run more cases at once on a node, start more worker processes.

A worker process that dies mid-case (killed, out of memory) is Dask's business: the
scheduler retries the case on another worker, up to its ``allowed-failures`` setting (Dask's
default is 3 retries; the ``local`` cluster started here allows 1, as ``run_local`` does),
and then the case gets a failed record saying so.  When a batch of several cases kills its
workers, each of its cases is sent again on its own, so only the culprit fails.  Memory-based throttling
(``memory_need``) is local-only: Dask workers have their own memory limits.

Dask is an optional dependency (``pip install -e '.[dask]' in the rwmaps clone``), imported lazily here.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from .inputs.dataset import Case
from .errors import UsageError
from .results import FAILED, CaseResult
from .run import WORKER_DIED, BatchSizer, Stop, run_batch, runnable, unreported, usable_cores

CONNECT_TIMEOUT = 10  # seconds to reach a scheduler before giving up with a usage error
POLL_SECONDS = 0.25  # how often to look for new workers (adaptive clusters) and for a stop while cases wait
MISSING_DASK = "`scheduler` needs Dask: pip install -e '.[dask]' in the rwmaps clone"


def run_dask(cases: list[Case], work: Callable[..., CaseResult], scheduler, jobs: int | None = None,
             memory_need: Callable[[Case], int] | None = None, stop: Stop | None = None,
             **kwargs) -> Iterator[CaseResult]:
    """Yield ``work(case, **kwargs)`` for every case, computed on a Dask cluster, in completion order.

    ``scheduler`` is a scheduler address (``tcp://HOST:PORT``), a scheduler file (JSON, as
    ``dask scheduler --scheduler-file`` writes), ``"local"`` for a ``LocalCluster`` of ``jobs``
    worker processes started here and torn down at the end, or a connected
    ``distributed.Client``.  A ``threads`` keyword, when given, is replaced on each worker by
    that worker's number of threads.  ``memory_need`` is ignored: memory is the Dask workers'
    business (their own limits).  ``stop`` as for :func:`~rwmaps_cli.run.run_local`.

    Raises
    ------
    UsageError
        When Dask is not installed, or no scheduler answers at the address within
        :data:`CONNECT_TIMEOUT` seconds (raised on the first ``next()``).
    """
    if isinstance(scheduler, str):
        with dask_client(scheduler, jobs) as client:
            yield from _run(client, cases, work, kwargs, stop)
    else:
        yield from _run(scheduler, cases, work, kwargs, stop)


@contextmanager
def dask_client(scheduler: str, jobs: int | None = None):
    """A ``distributed.Client`` connected to ``scheduler`` (see :func:`run_dask`), closed at exit."""
    distributed = import_distributed()
    if scheduler == "local":
        n_workers = max(1, jobs or usable_cores())
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=max(1, usable_cores() // n_workers),  # the cores, not more
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
            scheduler_kwargs={"allowed_failures": 1},  # a case that kills its worker is tried twice
        )
        try:
            with distributed.Client(cluster, set_as_default=False, timeout=CONNECT_TIMEOUT) as client:
                yield client
        finally:
            cluster.close()
        return
    client = _connect(distributed, scheduler)
    try:
        yield client
    finally:
        client.close()


def import_distributed():
    """The ``distributed`` module, or a one-line :class:`UsageError` saying how to install it."""
    try:
        import distributed
    except ImportError:
        distributed = None
    if distributed is None:  # raised outside the except block: no chained traceback
        raise UsageError(MISSING_DASK)
    return distributed


def _connect(distributed, scheduler: str):
    address = _scheduler_address(distributed, scheduler)  # checked first: a Client made from a bad
    try:  # address lingers, and its cleanup at exit waits and prints a traceback
        return distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except OSError as error:  # nobody answered, or the handshake timed out
        reason = f"no Dask scheduler answered within {CONNECT_TIMEOUT} s ({_one_line(error)})"
    except Exception as error:
        reason = f"cannot connect ({type(error).__name__}: {_one_line(error)})"
    # Raised outside the except blocks, so the half-made Client is released now and no
    # traceback is chained to the one-line error.
    raise UsageError(f"`scheduler={scheduler}`: {reason}")


def _scheduler_address(distributed, scheduler: str) -> str:
    """The address in ``scheduler``: itself, or the ``address`` of a scheduler file."""
    problem = None
    address = scheduler
    if os.path.isfile(scheduler):
        try:
            with open(scheduler) as file:
                address = json.load(file)["address"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            problem = f"not a Dask scheduler file ({type(error).__name__}: {_one_line(error)})"
    if problem is None:
        try:
            distributed.comm.get_address_host_port(address)
        except (ValueError, TypeError) as error:
            problem = f"{_one_line(error)}; expected tcp://HOST:PORT, a scheduler file, or 'local'"
    if problem is not None:
        raise UsageError(f"`scheduler={scheduler}`: {problem}")
    return address


# -------------------------------------------------------------------------------------
# The run


def _run(client, cases: list[Case], work: Callable[..., CaseResult], kwargs: dict,
         stop: Stop | None = None) -> Iterator[CaseResult]:
    """At most one batch of cases per worker thread in flight (:class:`~rwmaps_cli.run.BatchSizer`);
    top up as batches finish or workers join.  When ``stop`` is set: no new batch, the
    finished ones reported, the running ones cancelled."""
    stop = stop if stop is not None else Stop()
    todo = runnable(cases)
    finished: queue.SimpleQueue = queue.SimpleQueue()
    in_flight: dict = {}  # future -> its batch of cases
    sizer = BatchSizer(max(1, len(client.nthreads())))
    alone: set[str] = set()  # cases of a batch that killed its workers: each is retried on its own (run.runnable)
    try:
        while todo or in_flight:
            if stop:
                yield from _finished_now(finished, in_flight)
                return
            if todo:
                try:
                    workers = max(1, len(client.nthreads()))
                    sizer.workers = workers
                    for _ in range(min(workers - len(in_flight), len(todo))):
                        size = 1 if todo[0].name in alone else min(sizer.size(len(todo)), len(todo))
                        batch = [todo.popleft() for _ in range(size)]
                        future = client.submit(_on_worker, work, batch, kwargs,
                                               key=f"{getattr(work, '__name__', 'work')}-{uuid.uuid4().hex}")
                        in_flight[future] = batch
                        future.add_done_callback(finished.put)
                except Exception as error:  # the scheduler is gone: every case not reported yet fails
                    lost = f"lost the Dask scheduler before this case finished ({type(error).__name__}); rerun to retry"
                    for case in [*(c for batch in in_flight.values() for c in batch), *todo]:
                        yield _failed(case, lost)
                    in_flight.clear()
                    return
            try:  # a timeout while cases wait, to notice workers that join (adaptive clusters) and a stop
                future = finished.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            batch = in_flight.pop(future, None)
            if batch is not None and len(batch) > 1 and _killed_its_workers(future):
                alone.update(case.name for case in batch)  # which one did it? Each runs alone now
                todo.extendleft(reversed(batch))
            elif batch is not None:
                results = _outcome(future, batch)
                sizer.observe(results)
                todo.extendleft(reversed(unreported(batch, results)))
                yield from results
    finally:  # the caller stopped early (Ctrl-C): do not leave the cluster computing
        if in_flight:
            with suppress(Exception):  # a lost scheduler cancelled them already
                client.cancel(list(in_flight))


def _finished_now(finished: queue.SimpleQueue, in_flight: dict) -> Iterator[CaseResult]:
    """The results of the cases that finished successfully before a stop."""
    while True:
        try:
            future = finished.get_nowait()
        except queue.Empty:
            return
        batch = in_flight.pop(future, None)
        if batch is not None and future.status == "finished":
            yield from _outcome(future, batch)


def _killed_its_workers(future) -> bool:
    from distributed import KilledWorker

    return future.status == "error" and isinstance(future.exception(), KilledWorker)


def _on_worker(work: Callable[..., CaseResult], cases: list[Case], kwargs: dict) -> list[CaseResult]:
    """Runs on the worker: ``work(case, **kwargs)`` for each case of a batch, with this
    worker's threads."""
    if "threads" in kwargs:
        from distributed import get_worker

        worker = get_worker()
        kwargs = {**kwargs, "threads": max(1, int(getattr(getattr(worker, "state", worker), "nthreads", 1)))}
    return run_batch(work, cases, kwargs)


def _outcome(future, batch: list[Case]) -> list[CaseResult]:
    """The records of a batch's cases, or failed records for what Dask did to it."""
    from distributed import KilledWorker
    from distributed.utils import CancelledError

    try:
        return future.result()
    except KilledWorker as error:
        tries = getattr(error, "allowed_failures", None)
        on = f", on {tries + 1} Dask workers in turn" if isinstance(tries, int) else " on every Dask worker it tried"
        return [_failed(case, f"{WORKER_DIED}{on}; see the worker logs") for case in batch]
    except CancelledError:
        return [_failed(case, "the Dask scheduler dropped this case (lost connection, or the cluster restarted)")
                for case in batch]
    except Exception as error:  # e.g. rwmaps is not installed where the workers run
        detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return [_failed(case, f"could not run on the Dask worker: {type(error).__name__}: {_one_line(error)}",
                        traceback=detail) for case in batch]


def _failed(case: Case, error: str, **fields) -> CaseResult:
    return CaseResult(case.name, FAILED, error=error, **fields)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
