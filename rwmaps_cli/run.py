"""Run cases in worker processes: one case in, one map file (or one error) out.

The worker function :func:`process_case` reads its own input and writes its own output by
path, so only small records travel between processes.  :func:`run_local` spreads cases
over local processes (joblib's loky executor), keeps the machine's cores and memory
within bounds, and survives a worker that dies.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass

import numpy as np

from .dataset import Case
from .errors import InputError
from .io import LabelVolume, read_labels, read_shape, write_map
from .maps import compute_maps, unique_labels


@dataclass(frozen=True)
class Settings:
    """Everything that decides the maps of a case (and how they are stored)."""

    classes: tuple[int, ...]
    kind: str = "rrw"
    spacing: str = "voxel"  # "voxel" or "physical" (voxel sizes from the file header)
    slice_axis: int | None = None
    dtype: str = "float32"
    fmt: str = "nii.gz"
    engine: str = "edt"
    ignore_label: int | None = None

    def manifest_parameters(self) -> dict:
        """The parameters a rerun must share to reuse earlier maps (engine excluded:
        both engines give the same maps)."""
        parameters = asdict(self)
        parameters.pop("engine")
        parameters["classes"] = list(self.classes)
        return parameters


def process_case(case: Case, settings: Settings, threads: int = 1) -> dict:
    """Compute and write the map of one case; never raises for a problem with the case.

    Returns a record with ``name``, ``status`` ("done" or "failed"), ``error`` (one line
    or None), ``shape`` (of the map, channels first), ``seconds`` and, for failures that
    are bugs rather than bad input, ``traceback``.
    """

    def compute() -> dict:
        volume = read_labels(case.input)
        maps = case_maps(volume, settings, threads)
        write_map(case.output, maps, volume, settings.classes, settings.kind)
        return {"status": "done", "shape": list(maps.shape)}

    return _contained(case, compute)


def case_maps(volume: LabelVolume, settings: Settings, threads: int = 1, dtype: str | None = None) -> np.ndarray:
    """The maps of one label volume as ``settings`` ask, (C, *spatial) in ``dtype``
    (default: the settings' dtype)."""
    return compute_maps(
        volume.array,
        settings.classes,
        kind=settings.kind,
        spacing=volume.spacing if settings.spacing == "physical" else None,
        slice_axis=settings.slice_axis,
        engine=settings.engine,
        dtype=np.dtype(dtype or settings.dtype),
        ignore_label=settings.ignore_label,
        threads=threads,
    )


def scan_case(case: Case, max_classes: int) -> dict:
    """Read one case and list its label values (for the automatic class list)."""

    def scan() -> dict:
        values = unique_labels(read_labels(case.input).array)
        if len(values) > max_classes:
            raise InputError(f"{len(values)} distinct values (more than --max-classes {max_classes}); "
                             "is this an image rather than a label map?")
        return {"status": "scanned", "values": [int(v) for v in values]}

    return _contained(case, scan)


def _contained(case: Case, body: Callable[[], dict]) -> dict:
    """Run ``body`` for one case and turn every failure into a failed record."""
    start = time.perf_counter()
    try:
        return _record(case, start, **body())
    except (InputError, ValueError) as error:  # bad input: the message says it all
        return _record(case, start, "failed", error=str(error))
    except MemoryError:
        return _record(case, start, "failed", error="out of memory: this case needs more memory than is available")
    except Exception as error:  # a bug: keep the traceback for --debug
        return _record(case, start, "failed", error=f"internal error: {type(error).__name__}: {error}",
                       traceback=traceback.format_exc())


def _record(case: Case, start: float, status: str, **fields) -> dict:
    record = {"name": case.name, "status": status, "error": None, "seconds": round(time.perf_counter() - start, 3)}
    record.update(fields)
    return record


# -------------------------------------------------------------------------------------
# Local parallel runner


WORKER_DIED = "the worker process died while computing this case (killed, or out of memory)"


def run_local(
    cases: list[Case],
    work: Callable[..., dict],
    jobs: int,
    memory_need: Callable[[Case], int] | None = None,
    **kwargs,
) -> Iterator[dict]:
    """Yield ``work(case, **kwargs)`` for every case, in completion order.

    At most ``jobs`` cases run at once, and fewer when their estimated memory
    (``memory_need(case)`` bytes) would not fit in the memory available now.  When a
    worker process dies, every case that was in flight is retried alone; one that kills
    its worker again gets a failed record saying so (:data:`WORKER_DIED`).
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
                yield {"name": case.name, "status": "failed", "error": WORKER_DIED, "seconds": None}
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


def case_memory_need(case: Case, n_classes: int, out_itemsize: int) -> int:
    """Estimated peak bytes of one case: its map plus input and four float32 volumes."""
    try:
        voxels = int(np.prod(read_shape(case.input)))
    except (InputError, ValueError, OSError):
        return 0  # the worker will report the problem
    return voxels * (n_classes * out_itemsize + 4 * 4 + 8)


def threads_per_case(jobs: int) -> int:
    """Threads left for each case's distance transform when ``jobs`` cases run at once."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))
