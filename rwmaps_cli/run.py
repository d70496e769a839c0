"""Runners: spread cases over worker processes and yield one :class:`CaseResult` each.

A runner is called as ``runner(cases, work, memory_need=None, **kwargs)`` and yields
``work(case, **kwargs)`` for every case, in completion order, never raising for one case.
:class:`LocalRunner` uses local processes (joblib's loky executor), keeps the machine's
cores and memory within bounds, and survives a worker that dies;
:class:`rwmaps_cli.cluster.DaskRunner` does the same on a Dask cluster.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait

from .dataset import Case
from .manifest import CaseResult

WORKER_DIED = "the worker process died while computing this case (killed, or out of memory)"


class LocalRunner:
    """Run cases in ``jobs`` local worker processes.

    ``limits_memory``: cases start only when their estimated memory fits beside the
    running ones, and a case that cannot fit at all is not started (the caller checks
    :func:`available_memory`).
    """

    limits_memory = True

    def __init__(self, jobs: int):
        self.jobs = max(1, jobs)

    def __call__(self, cases: list[Case], work: Callable[..., CaseResult],
                 memory_need: Callable[[Case], int] | None = None, **kwargs) -> Iterator[CaseResult]:
        return run_local(cases, work, self.jobs, memory_need=memory_need, **kwargs)


def run_local(
    cases: list[Case],
    work: Callable[..., CaseResult],
    jobs: int,
    memory_need: Callable[[Case], int] | None = None,
    **kwargs,
) -> Iterator[CaseResult]:
    """Yield ``work(case, **kwargs)`` for every case, in completion order.

    At most ``jobs`` cases run at once, and fewer when their estimated memory
    (``memory_need(case)`` bytes) would not fit in the memory available now.  When a
    worker process dies, every case that was in flight is retried alone; one that kills
    its worker again gets a failed result saying so (:data:`WORKER_DIED`).
    """
    from joblib.externals.loky import get_reusable_executor
    from joblib.externals.loky.process_executor import BrokenProcessPool

    budget = available_memory()
    queue, suspects = deque(cases), deque()
    while queue or suspects:
        if suspects:
            case = suspects.popleft()
            future = get_reusable_executor(max_workers=1).submit(work, case, **kwargs)
            try:
                yield future.result()
            except BrokenProcessPool:
                yield CaseResult(case.name, "failed", error=WORKER_DIED)
            continue
        executor = get_reusable_executor(max_workers=jobs)
        in_flight: dict[Future, Case] = {}
        while (queue or in_flight) and not suspects:
            while queue and len(in_flight) < jobs and _fits(queue[0], in_flight, budget, memory_need):
                case = queue.popleft()
                in_flight[executor.submit(work, case, **kwargs)] = case
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                case = in_flight.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    suspects.append(case)
        suspects.extend(in_flight.values())  # the pool broke: these never reported back


def _fits(case: Case, in_flight: dict, budget: int, memory_need) -> bool:
    """Whether ``case`` may start now: always alone, else if memory allows."""
    if memory_need is None or not in_flight:
        return True
    return sum(map(memory_need, in_flight.values())) + memory_need(case) <= budget


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


def threads_per_case(jobs: int) -> int:
    """Threads left for each case's distance transform when ``jobs`` cases run at once."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))
