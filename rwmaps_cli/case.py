"""The worker side of one case: read its labels, compute its map, write it; never raise.

Both services use it: ``rwmaps compute`` (:mod:`rwmaps_cli.compute`) sends
:func:`process_case` and :func:`scan_case` to its runners, ``rwmaps verify``
(:mod:`rwmaps_cli.verify`) recomputes with :func:`case_maps`.  Each function reads its own
input and writes its own output by path, so only small records travel between processes.
"""

from __future__ import annotations

import errno
import time
import traceback
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .inputs.dataset import Case
from .contract import resolve_spacing
from .errors import InputError, UnknownLabelsError
from .formats import LabelVolume, capturing_library_output, read_labels, read_shape, write_map
from .manifest import Settings, fingerprint
from .results import DONE, FAILED, SCANNED, CaseResult
from .maps import compute_maps, unique_labels
from .regions import compute_region_maps


def case_voxels(case: Case) -> int:
    """Voxels of a case from its header; 0 when it cannot be read (the worker reports why)."""
    try:
        return int(np.prod(read_shape(case.input, reader=case.reader)))
    except (InputError, ValueError, OSError):
        return 0


class HeaderVoxels(dict):
    """Voxels of each case by name, read from its header the first time they are asked for:
    while the workers compute, so that 100,000 small cases do not wait for 100,000 header
    reads before the first starts."""

    def of(self, case: Case) -> int:
        if case.name not in self:
            self[case.name] = case_voxels(case)
        return self[case.name]


def case_memory_need(voxels: int, settings: Settings) -> int:
    """Estimated peak bytes of a case of ``voxels`` voxels: its map plus input and four float32
    volumes; with the torch engine, its pass's work too (about 128 bytes a voxel, measured)."""
    engine_work = 128 if settings.engine == "torch" else 0
    return voxels * (settings.map_channels * np.dtype(settings.dtype).itemsize + 4 * 4 + 8 + engine_work)


def case_maps(volume: LabelVolume, settings: Settings, threads: int = 1, dtype: str | None = None) -> np.ndarray:
    """The map of one label volume as ``settings`` ask: ``(C, *spatial)``, ``(*spatial)``
    compact, or ``(R, *spatial)`` for regions, in ``dtype`` (default: the settings' dtype)."""
    if settings.regions is not None:
        return compute_region_maps(volume.array, settings.regions, kind=settings.kind,
                                   spacing=resolve_spacing(settings.spacing, volume.spacing),
                                   slice_axis=settings.slice_axis, ignore_label=settings.ignore_label,
                                   engine=settings.engine, dtype=np.dtype(dtype or settings.dtype), threads=threads,
                                   device=settings.device)
    return compute_maps(
        volume.array,
        settings.classes,
        kind=settings.kind,
        spacing=resolve_spacing(settings.spacing, volume.spacing),
        slice_axis=settings.slice_axis,
        engine=settings.engine,
        dtype=np.dtype(dtype or settings.dtype),
        ignore_label=settings.ignore_label,
        threads=threads,
        layout=settings.layout,
        device=settings.device,
    )


def process_case(case: Case, settings: Settings, threads: int = 1, max_classes: int | None = None) -> CaseResult:
    """Read, compute and write the map of one case; never raises for a problem with the case.

    With an empty class list (a compact run that settles it at its end) the case's own
    values are its classes, and ``max_classes`` refuses a file with more (an image).
    """

    def compute() -> dict:
        input_stat = fingerprint(case.input)  # before the read: a file changed since is redone next time
        volume = read_labels(case.input, reader=case.reader)
        # The values present: the deferred class list, and the hint naming classes in no case.
        values = [int(v) for v in unique_labels(volume.array)]
        if max_classes is not None and len(values) > max_classes:
            raise InputError(_too_many_values(len(values), max_classes))
        own = settings if settings.classes else replace(settings, classes=_own_classes(values, settings.ignore_label))
        data = case_maps(volume, own, threads)
        write_map(case.output, data, volume, own.channel_labels, settings.kind, layout=settings.layout,
                  threads=threads)
        return {"status": DONE, "shape": list(data.shape), "values": values, "input_stat": input_stat,
                "map_stat": fingerprint(case.output, inode=True)}

    return contained(case.name, compute)


def _own_classes(values: list[int], ignore_label: int | None) -> tuple[int, ...]:
    """A case's values as its class list (compact maps do not depend on the list).  A case
    of nothing but the ignore label gets one absent class: its map is all 0 either way."""
    own = tuple(v for v in values if v != ignore_label)
    return own or (ignore_label + 1,)


def _too_many_values(found: int, max_classes: int) -> str:
    return (f"{found} distinct values (more than `max_classes={max_classes}`); "
            "is this an image rather than a label map?")


def scan_case(case: Case, max_classes: int) -> CaseResult:
    """Read one case and list its label values (for the automatic class list)."""

    def scan() -> dict:
        values = unique_labels(read_labels(case.input, reader=case.reader).array)
        if len(values) > max_classes:
            raise InputError(_too_many_values(len(values), max_classes))
        return {"status": SCANNED, "values": [int(v) for v in values]}

    return contained(case.name, scan)


def contained(name: str, body: Callable[[], dict]) -> CaseResult:
    """Run ``body`` for one case and turn every failure into a failed result."""
    start = time.perf_counter()

    def result(**fields) -> CaseResult:
        return CaseResult(name, seconds=round(time.perf_counter() - start, 4), **fields)

    try:
        with capturing_library_output():  # a library's own lines go into the case's error, or nowhere
            return result(**body())
    except UnknownLabelsError as error:
        return result(status=FAILED, error=str(error), unknown_labels=True)
    except (InputError, ValueError) as error:  # bad input: the message says it all
        return result(status=FAILED, error=str(error))
    except MemoryError:
        return result(status=FAILED, error="out of memory: this case needs more memory than is available")
    except RuntimeError as error:  # PyTorch's allocators fail with a RuntimeError
        if type(error).__name__ == "OutOfMemoryError":  # CUDA's
            return result(status=FAILED, error="out of memory on the GPU: this case needs more GPU memory than is "
                          "free; use fewer `jobs`, or `device=cpu`")
        if "can't allocate memory" in str(error):  # the CPU's
            return result(status=FAILED, error="out of memory: this case needs more memory than is available")
        return _internal_error(result, error)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):  # the map was not written (its temporary is gone)
            return result(status=FAILED, error="no space left on the output file system (map not written)",
                          disk_full=True)
        return result(status=FAILED, error=f"cannot write the map: {error.strerror or error}")
    except Exception as error:  # a bug: keep the traceback for --debug
        return _internal_error(result, error)


def _internal_error(result: Callable[..., CaseResult], error: Exception) -> CaseResult:
    """A bug: one line, and the traceback for --debug."""
    return result(status=FAILED, error=f"internal error: {type(error).__name__}: {error}",
                  traceback=traceback.format_exc())
