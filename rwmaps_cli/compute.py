"""``rwmaps compute`` as a service: :func:`compute_dataset` runs a dataset, returns an Outcome.

It settles the class list, opens (or resumes) the manifest, skips the cases already
done, runs the rest on a runner (local processes, or a Dask cluster) and records every
result.  The worker functions (:func:`process_case`, :func:`scan_case`) read their own
input and write their own output by path, so only small records travel between
processes.  The command line (``cli.py``) only turns options into arguments and prints.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .dataset import Case, Dataset, find_dataset, read_dataset_json, union_of_values
from .errors import InputError, UnknownLabelsError, UsageError
from .formats import OUTPUT_DTYPES, LabelVolume, clean_temporaries, read_labels, read_shape, write_map
from .manifest import CaseResult, Manifest, Settings, changed_parameters
from .mapfile import map_is_complete
from .maps import compute_maps, unique_labels
from .run import LocalRunner, available_memory, threads_per_case

# Above this many bytes per full map, the summary suggests --layout compact.
COMPACT_HINT_BYTES = 1_000_000_000
# The option a user typed for each manifest parameter, to name it when a rerun differs.
OPTION_OF_PARAMETER = {"classes": "--classes", "kind": "--kind", "spacing": "--spacing",
                       "slice_axis": "--slice-axis", "dtype": "--dtype", "fmt": "--format",
                       "ignore_label": "--ignore-label", "layout": "--layout"}


@dataclass
class Outcome:
    """What :func:`compute_dataset` did."""

    classes: tuple[int, ...] = ()
    manifest: Path | None = None
    done: int = 0
    skipped: int = 0  # already done by an earlier run
    failures: list[tuple[Path, CaseResult]] = field(default_factory=list)  # (input, result)
    ignored_files: int = 0  # files under --input that are not label files
    removed_temporaries: int = 0
    hints: list[str] = field(default_factory=list)  # one line each, for the user

    @property
    def failed(self) -> int:
        return len(self.failures)


class _Quiet:
    """A progress bar that shows nothing."""

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def compute_dataset(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    kind: str = "rrw",
    fmt: str = "nii.gz",
    layout: str = "full",
    classes: Sequence[int] | None = None,
    spacing: str = "voxel",
    slice_axis: int | None = None,
    engine: str = "edt",
    dtype: str = "float32",
    ignore_label: int | None = None,
    max_classes: int = 256,
    jobs: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, str], object] | None = None,
    on_failure: Callable[[Path, CaseResult], None] | None = None,
) -> Outcome:
    """Compute the maps of every label file under ``input_dir`` into ``output_dir``.

    Parameters
    ----------
    classes : sequence of int, optional
        The channels, in order.  Default: the ``labels`` of nnU-Net's ``dataset.json``
        when the input is an nnU-Net dataset, else the union of the values in all inputs.
    scheduler : str, optional
        A Dask scheduler address, a scheduler file, or ``"local"``; default: local processes.
    progress : callable ``(total, description) -> bar``, optional
        Makes a progress bar with ``update()`` and ``close()``.
    on_failure : callable ``(input path, CaseResult)``, optional
        Called as each case fails (the failures are also in the Outcome).
    Other parameters are those of ``rwmaps compute`` (see its ``--help``).

    Raises
    ------
    UsageError
        A mistake found before any work: bad options, an input without label files, an
        output folder holding maps made with other parameters (unless ``overwrite``).
    """
    progress = progress or (lambda total, description: _Quiet())
    on_failure = on_failure or (lambda path, result: None)
    _check_options(kind, fmt, layout, dtype)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    dataset = find_dataset(input_dir, output_dir, fmt)
    jobs = _jobs(jobs, len(dataset.cases))
    with ExitStack() as stack:
        runner = _runner(scheduler, jobs, stack)
        _check_writable(output_dir)
        class_list, ignore_label, failed = _settle_classes(dataset, classes, ignore_label, max_classes, runner,
                                                           progress)
        settings = Settings(tuple(class_list), kind, spacing, slice_axis, dtype, fmt, engine, ignore_label, layout)
        manifest = _open_manifest(output_dir, settings, overwrite)
        outcome = Outcome(classes=settings.classes, manifest=manifest.path, ignored_files=len(dataset.skipped_files),
                          removed_temporaries=clean_temporaries(output_dir))
        todo = []
        for case in dataset.cases:
            if case.name in failed:
                manifest.record(case.input, case.output, failed[case.name])
                outcome.failures.append((case.input, failed[case.name]))
                on_failure(case.input, failed[case.name])
            elif not overwrite and _is_done(manifest, case):
                outcome.skipped += 1
            else:
                todo.append(case)
        manifest.write()
        _compute_cases(todo, settings, manifest, runner, jobs, progress, on_failure, outcome)
    if settings.kind == "rrw" and settings.layout == "full":
        largest = max((_voxels(case) for case in dataset.cases), default=0) * len(settings.classes) \
            * np.dtype(settings.dtype).itemsize
        if largest > COMPACT_HINT_BYTES:
            outcome.hints.append(f"the largest map is {largest / 1e9:.1f} GB; --layout compact stores one channel "
                                 f"instead of {len(settings.classes)}, {len(settings.classes)}x smaller, and "
                                 "rwmaps_cli.load_map expands it exactly")
    if any(result.unknown_labels for _, result in outcome.failures) and dataset.dataset_json is not None \
            and classes is None:
        outcome.hints.append(f"the class list {list(settings.classes)} comes from {dataset.dataset_json}; "
                             "fix its 'labels' or pass --classes")
    return outcome


def _check_options(kind: str, fmt: str, layout: str, dtype: str) -> None:
    if np.dtype(dtype) not in OUTPUT_DTYPES[fmt]:
        raise UsageError(f"--dtype {dtype} cannot be stored as {fmt} (NIfTI has no float16); use --format npz or npy")
    if layout == "compact" and kind == "ac":
        raise UsageError("--layout compact: an ac map is 1 - one-hot and needs no file; a loader computes it "
                         "with rwmaps_cli.expand_map(None, labels, classes, kind='ac')")
    if layout == "compact" and kind != "rrw":
        raise UsageError(f"--layout compact is for --kind rrw only: a {kind} map needs every class's outside "
                         "distance, which one channel cannot hold")


def _is_done(manifest: Manifest, case: Case) -> bool:
    entry = manifest.done_entry(case.name, case.input)
    return entry is not None and map_is_complete(case.output, entry.get("shape"), entry.get("bytes"))


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".rwmaps-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{output_dir}: output folder cannot be written ({error.strerror or error})") from None


def _jobs(jobs: int | None, n_cases: int) -> int:
    return max(1, min(jobs or os.cpu_count() or 1, n_cases))


def _runner(scheduler: str | None, jobs: int, stack: ExitStack):
    """A local runner, or with a scheduler a Dask runner; the Dask client (and a ``local``
    cluster of ``jobs`` workers) is set up now, so a missing Dask or an unreachable
    scheduler is a usage error before any work, and stays up until ``stack`` closes."""
    if scheduler is None:
        return LocalRunner(jobs)
    from .cluster import DaskRunner, dask_client

    return DaskRunner(stack.enter_context(dask_client(scheduler, jobs)))


# --------------------------------------------------------------------------- the class list


def _settle_classes(dataset: Dataset, classes, ignore_label, max_classes, runner, progress):
    """(class list, ignore label, {case name: failed result}) from the arguments or the data."""
    json_classes, json_ignore = (read_dataset_json(dataset.dataset_json) if dataset.dataset_json is not None
                                 else (None, None))
    ignore_label = json_ignore if ignore_label is None else ignore_label
    if classes is None and json_classes is not None:
        classes = json_classes
    if classes is None:
        return _scan_classes(dataset, ignore_label, max_classes, runner, progress)
    classes = [int(v) for v in classes]
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
        raise UsageError(f"the class list {classes} must hold distinct non-negative integers")
    if ignore_label is not None and ignore_label in classes:
        raise UsageError(f"the ignore label {ignore_label} is also in the class list {classes}")
    return classes, ignore_label, {}


def _scan_classes(dataset: Dataset, ignore_label, max_classes, runner, progress):
    """The union of the label values of every case (the cases that cannot be read fail)."""
    values, failed = [], {}
    bar = progress(len(dataset.cases), "scanning labels")
    for result in runner(dataset.cases, scan_case, max_classes=max_classes):
        bar.update()
        if result.status == "failed":
            failed[result.name] = result
        else:
            values.append(result.values)
    bar.close()
    classes = [v for v in union_of_values(values) if v != ignore_label]
    if len(classes) > max_classes:
        raise UsageError(f"the inputs hold {len(classes)} distinct label values, more than --max-classes "
                         f"{max_classes}: are some of them images? Pass --classes, or raise --max-classes")
    if not classes:
        raise UsageError("no label file could be read, so there is no class list: "
                         + "; ".join(f"{name}: {r.error}" for name, r in list(failed.items())[:3]))
    return classes, ignore_label, failed


def _open_manifest(output_dir: Path, settings: Settings, overwrite: bool) -> Manifest:
    previous = Manifest.load(output_dir)
    if previous is None or overwrite:
        return Manifest(output_dir, settings, __version__)
    if previous.settings is None:
        raise UsageError(f"{output_dir} holds maps whose parameters cannot be read ({previous.settings_error}); "
                         "use another --output, or --overwrite to recompute them all")
    changed = changed_parameters(previous.settings, settings)
    if changed:
        before, now = previous.settings.to_parameters(), settings.to_parameters()
        named = ", ".join(f"{OPTION_OF_PARAMETER.get(key, key)} {before[key]!r} -> {now[key]!r}" for key in changed)
        raise UsageError(f"{output_dir} holds maps made with other parameters ({named}); "
                         "use another --output, or --overwrite to recompute them all")
    return Manifest(output_dir, settings, __version__, previous.cases)


# --------------------------------------------------------------------------- running the cases


def _compute_cases(todo: list[Case], settings: Settings, manifest: Manifest, runner, jobs: int, progress,
                   on_failure, outcome: Outcome) -> None:
    if not todo:
        return
    by_name = {case.name: case for case in todo}
    need = {case.name: case_memory_need(case, settings) for case in todo}
    runnable, too_big = todo, []
    if runner.limits_memory:  # a Dask worker has its own memory limit
        budget = available_memory()
        too_big = [CaseResult(case.name, "failed",
                              error=f"needs about {need[case.name] / 2**30:.1f} GiB of memory, more than the "
                                    f"{budget / 2**30:.1f} GiB available") for case in todo if need[case.name] > budget]
        runnable = [case for case in todo if need[case.name] <= budget]
    bar = progress(len(todo), "computing maps")
    results = runner(runnable, process_case, memory_need=lambda case: need[case.name], settings=settings,
                     threads=threads_per_case(jobs))
    for result in [*too_big, *results]:  # results lazily: the bar moves as cases finish
        case = by_name[result.name]
        manifest.record(case.input, case.output, result)
        bar.update()
        if result.status == "done":
            outcome.done += 1
        else:
            outcome.failures.append((case.input, result))
            on_failure(case.input, result)
    bar.close()


def _voxels(case: Case) -> int:
    """Voxels of a case from its header; 0 when it cannot be read (the worker reports why)."""
    try:
        return int(np.prod(read_shape(case.input)))
    except (InputError, ValueError, OSError):
        return 0


def case_memory_need(case: Case, settings: Settings) -> int:
    """Estimated peak bytes of one case: its map plus input and four float32 volumes."""
    voxels = _voxels(case)
    channels = 1 if settings.layout == "compact" else len(settings.classes)
    return voxels * (channels * np.dtype(settings.dtype).itemsize + 4 * 4 + 8)


def case_maps(volume: LabelVolume, settings: Settings, threads: int = 1, dtype: str | None = None) -> np.ndarray:
    """The map of one label volume as ``settings`` ask: ``(C, *spatial)``, or ``(*spatial)``
    compact, in ``dtype`` (default: the settings' dtype)."""
    layout = {} if settings.layout == "full" else {"layout": settings.layout}  # TODO(merge kernel): always pass
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
        **layout,
    )


def process_case(case: Case, settings: Settings, threads: int = 1) -> CaseResult:
    """Compute and write the map of one case; never raises for a problem with the case."""

    def compute() -> dict:
        volume = read_labels(case.input)
        data = case_maps(volume, settings, threads)
        write_map(case.output, data, volume, settings.classes, settings.kind, layout=settings.layout)
        return {"status": "done", "shape": list(data.shape)}

    return contained(case.name, compute)


def scan_case(case: Case, max_classes: int) -> CaseResult:
    """Read one case and list its label values (for the automatic class list)."""

    def scan() -> dict:
        values = unique_labels(read_labels(case.input).array)
        if len(values) > max_classes:
            raise InputError(f"{len(values)} distinct values (more than --max-classes {max_classes}); "
                             "is this an image rather than a label map?")
        return {"status": "scanned", "values": [int(v) for v in values]}

    return contained(case.name, scan)


def contained(name: str, body: Callable[[], dict]) -> CaseResult:
    """Run ``body`` for one case and turn every failure into a failed result."""
    start = time.perf_counter()

    def result(**fields) -> CaseResult:
        return CaseResult(name, seconds=round(time.perf_counter() - start, 3), **fields)

    try:
        return result(**body())
    except UnknownLabelsError as error:
        return result(status="failed", error=str(error), unknown_labels=True)
    except (InputError, ValueError) as error:  # bad input: the message says it all
        return result(status="failed", error=str(error))
    except MemoryError:
        return result(status="failed", error="out of memory: this case needs more memory than is available")
    except Exception as error:  # a bug: keep the traceback for --debug
        return result(status="failed", error=f"internal error: {type(error).__name__}: {error}",
                      traceback=traceback.format_exc())
