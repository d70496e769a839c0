"""Runners: spread cases over worker processes and yield one :class:`CaseResult` each.

A runner is called as ``runner(cases, work, memory_need=None, stop=None, **kwargs)`` and
yields ``work(case, **kwargs)`` for every case, in completion order, never raising for one
case.  :func:`run_local` uses local processes (:mod:`rwmaps_cli.workers`), keeps the machine's
cores and memory within bounds, and survives a worker that dies;
:func:`rwmaps_cli.cluster.run_dask` does the same on a Dask cluster.

Both send cases in batches (:class:`BatchSizer`): a task costs about a millisecond to
submit, pickle and collect, as much as a whole 128x128 case, so small cases travel many to
a task, and large ones one by one.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import replace
from statistics import median

from .inputs.dataset import Case
from .results import FAILED, LOST, CaseResult
from .workers import executor as _executor

WORKER_DIED = "the worker process died while computing this case (killed, or out of memory)"
POLL_SECONDS = 0.2  # how often a runner looks at its Stop while cases run
# A batch of cases should take about this long on a worker: long enough that the cost of a
# task (about 1 ms locally, several on Dask) is under 1 %, short enough that the progress
# bar moves, a stop loses little, and the last batches end together.
BATCH_SECONDS = 0.2
MAX_BATCH = 512


class BatchSizer:
    """How many cases the next task carries, from the seconds the cases so far took.

    The first tasks carry one case each (a large case is never batched); then as many as
    fill :data:`BATCH_SECONDS`, but never more than a quarter of the remaining cases per
    worker, so that no worker is left with a long tail.
    """

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self.seconds: deque[float] = deque(maxlen=64)  # the most recent cases'

    def observe(self, results: list[CaseResult]) -> None:
        self.seconds.extend(s for s in (getattr(r, "seconds", None) for r in results) if s is not None)

    def size(self, remaining: int) -> int:
        if len(self.seconds) < self.workers:
            return 1
        per_case = max(median(self.seconds), 1e-5)
        fill = int(BATCH_SECONDS / per_case)
        return max(1, min(fill, MAX_BATCH, remaining // (4 * self.workers)))


def run_batch(work: Callable[..., CaseResult], cases: list[Case], kwargs: dict) -> list[CaseResult]:
    """Runs in the worker: ``work`` on each case of a batch, one after the other.

    Stops after a case that found the disk full (every later one would fail the same
    way): the cases after it get no result, and go back to the runner's queue.
    """
    results = []
    for case in cases:
        results.append(work(case, **kwargs))
        if getattr(results[-1], "disk_full", False):
            break
    return results


def unreported(batch: list[Case], results: list) -> list[Case]:
    """The cases of a batch that :func:`run_batch` left without a result."""
    names = {getattr(r, "name", None) for r in results}
    return [case for case in batch if case.name not in names] if len(names) < len(batch) else []


class NoBar:
    """A progress bar that shows nothing (the services' default)."""

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class Stop:
    """Asks a runner to stop: start no more cases, end the running ones, report what finished.

    Set from a signal handler (``reason`` "SIGINT" / "SIGTERM") or by the caller when a
    case says every later case would fail too (a full disk).
    """

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason

    def __bool__(self) -> bool:
        return self.reason is not None


@contextmanager
def stop_on_signals(stop: Stop) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (once; a second one acts as usual), in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame) -> None:
        stop.set(signal.Signals(signum).name)
        if previous[signum] is not None:
            signal.signal(signum, previous[signum])  # a second Ctrl-C stops at once

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            if old is not None:  # None: a handler not set from Python, which cannot be restored
                signal.signal(signum, old)


def runnable(cases: list[Case]) -> deque[Case]:
    """The cases as both runners take them: a queue, with absolute paths (a reused worker
    process, or a Dask worker, keeps the working directory it started in).

    Both runners then follow one rule for a batch whose worker died: each of its cases runs
    again alone, and a case that kills its worker alone fails with :data:`WORKER_DIED`.
    The mechanics differ because the pools do: a dead loky worker breaks every batch in
    flight (:func:`run_local` retries them all, one at a time), a Dask ``KilledWorker``
    names one task (:func:`~rwmaps_cli.cluster.run_dask` retries its cases).
    """
    return deque(replace(case, input=case.input.absolute(), output=case.output.absolute()) for case in cases)


def run_local(
    cases: list[Case],
    work: Callable[..., CaseResult],
    jobs: int,
    memory_need: Callable[[Case], int] | None = None,
    stop: Stop | None = None,
    **kwargs,
) -> Iterator[CaseResult]:
    """Yield ``work(case, **kwargs)`` for every case, in completion order.

    At most ``jobs`` cases run at once, and fewer when their estimated memory
    (``memory_need(case)`` bytes) would not fit in the memory available now.  When a
    worker process dies, every case that was in flight is retried alone; one that kills
    its worker again gets a failed result saying so (:data:`WORKER_DIED`).  When ``stop``
    is set, no case starts, the results already finished are yielded, and the workers
    are killed (within about :data:`POLL_SECONDS`); the cases not yielded never finished.
    """
    stop = stop if stop is not None else Stop()
    budget = available_memory()
    sizer = BatchSizer(jobs)
    queue, suspects = runnable(cases), deque()
    executor = None
    try:
        while (queue or suspects) and not stop:
            if suspects:
                executor = _executor(1)
                yield from _alone(executor, suspects.popleft(), work, kwargs, stop)
                continue
            executor = _executor(jobs)
            in_flight: dict[Future, list[Case]] = {}
            needs: dict[Future, int] = {}  # bytes each running batch needs: what its largest case needs
            while (queue or in_flight) and not suspects and not stop:
                while queue and len(in_flight) < jobs:
                    batch, refused = _next_batch(queue, sizer.size(len(queue)), memory_need, budget,
                                                 budget - sum(needs.values()))
                    yield from refused
                    if not batch and not refused:
                        break  # the next case waits until memory allows
                    if batch:
                        future = executor.submit(run_batch, work, batch, kwargs)
                        in_flight[future] = batch
                        needs[future] = max(map(memory_need, batch)) if memory_need is not None else 0
                done, _ = wait(in_flight, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    batch = in_flight.pop(future)
                    needs.pop(future)
                    results = _result(future, stop)
                    if results is None:
                        suspects.extend(batch)  # its worker died: each of its cases is retried alone
                    elif results is not _LOST:
                        sizer.observe(results)
                        queue.extendleft(reversed(unreported(batch, results)))
                        yield from results
            for batch in in_flight.values():  # the pool broke: these never reported back
                suspects.extend(batch)
    finally:
        if stop and executor is not None:  # end the running cases now, not when they finish
            executor.shutdown(wait=True, kill_workers=True)


_LOST = CaseResult("", LOST)  # a case whose worker was stopped: it never finished


def _result(future: Future, stop: Stop):
    """The task's result; None when its worker died (retry it alone); _LOST when stopping."""
    from joblib.externals.loky.process_executor import BrokenProcessPool

    try:
        return future.result()
    except BrokenProcessPool:
        return _LOST if stop else None
    except BaseException:  # noqa: BLE001 - a worker ended by the signal that stops the run
        if stop:
            return _LOST
        raise


def _alone(executor, case: Case, work, kwargs: dict, stop: Stop) -> Iterator[CaseResult]:
    """Run a case whose worker died once, alone; it fails if it kills its worker again."""
    future = executor.submit(run_batch, work, [case], kwargs)
    while not future.done() and not stop:
        wait([future], timeout=POLL_SECONDS)
    if not future.done():
        return
    results = _result(future, stop)
    if results is None:
        yield CaseResult(case.name, FAILED, error=WORKER_DIED)
    elif results is not _LOST:
        yield from results


def _next_batch(queue: deque, size: int, memory_need, budget: int, free: int) -> tuple[list[Case], list[CaseResult]]:
    """Up to ``size`` cases from the queue that fit in ``free`` bytes beside the running
    batches, and failed records for those that could never fit in the run's ``budget``,
    even alone (they are not started).  A case that fits only later stays first in the
    queue; with nothing running (``free == budget``) the first case that fits always starts."""
    batch, refused = [], []
    while queue and len(batch) < size:
        need = memory_need(queue[0]) if memory_need is not None else 0
        if need > budget:
            case = queue.popleft()
            refused.append(CaseResult(case.name, FAILED, error=f"needs about {need / 2**30:.1f} GiB of memory, "
                                                                 f"more than the {budget / 2**30:.1f} GiB available"))
        elif need > free and (batch or free < budget):
            break  # it waits until memory allows (alone, at the latest)
        else:
            batch.append(queue.popleft())
    return batch, refused


def available_memory() -> int:
    """Bytes of memory available to new processes now (Linux: MemAvailable)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def usable_cores() -> int:
    """The cores this process may run on: its CPU set (SLURM, cgroups, ``taskset``), not
    the whole machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_case(jobs: int) -> int:
    """Threads left for each case when ``jobs`` cases run at once."""
    return max(1, usable_cores() // max(1, jobs))
