"""``rwmaps compute`` as a service: :func:`compute_dataset` runs a dataset, returns an Outcome.

It settles the class list, opens (or resumes) the manifest, skips the cases already
done, runs the rest on a runner (local processes, or a Dask cluster) and records every
result.  The worker functions (:func:`process_case`, :func:`scan_case`) read their own
input and write their own output by path, so only small records travel between
processes.  The command line (``cli.py``) only turns options into arguments and prints.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .case import case_memory_need, case_voxels, map_channels, process_case
from .classlist import listing, refuse_unseen_classes, settle_classes, settle_deferred_classes, \
    unseen_classes
from .inputs.dataset import Case, Dataset, default_output, find_dataset
from .errors import InputError, UsageError
from .formats import DEFAULT_FORMAT, OUTPUT_DTYPES, OUTPUT_STORES_CLASSES, clean_temporaries, output_is_compressed
from .lock import folder_lock
from .manifest import DEFAULT_DTYPE, DEFAULT_SPACING, DONE, FAILED, CaseResult, Manifest, Settings
from .mapfile import map_info
from .contract import DEFAULT_ENGINE, DEFAULT_KIND, DEFAULT_LAYOUT, DEFAULT_MAX_CLASSES, check_layout
from .inputs.nnunet_preprocessed import is_preprocessed_folder
from .resume import is_done, manifest_source, open_manifest
from .run import NoBar, Stop, run_local, threads_per_case, usable_cores
from .workers import start_worker_server, start_workers

# Above this many bytes per full map, the summary suggests --layout compact.
COMPACT_HINT_BYTES = 1_000_000_000


@dataclass
class Outcome:
    """What :func:`compute_dataset` did."""

    classes: tuple[int, ...] = ()
    manifest: Path | None = None
    done: int = 0
    skipped: int = 0  # already done by an earlier run
    failures: list[tuple[Path, CaseResult]] = field(default_factory=list)  # (input, result)
    not_finished: int = 0  # cases a stop left undone (not started, or ended mid-case)
    stopped: str | None = None  # why the run stopped early: "SIGINT", "SIGTERM", "disk full"
    ignored_files: int = 0  # files under --input that are not label files (or not selected)
    removed_temporaries: int = 0
    hints: list[str] = field(default_factory=list)  # one line each, for the user

    @property
    def failed(self) -> int:
        return len(self.failures)


@dataclass(frozen=True)
class Request:
    """What ``rwmaps compute`` is asked to do: its options (``rwmaps compute --help`` says
    what each does; the defaults are the named constants every layer shares).

    ``fmt`` None: ``nii.gz``, or ``npy`` for an nnU-Net preprocessed folder (its loader
    memory-maps them).  ``classes`` None: the ``labels`` of nnU-Net's ``dataset.json``, else
    the union of the values in all inputs (:mod:`rwmaps_cli.classlist`).  ``scheduler``: a Dask
    scheduler address, a scheduler file, or ``"local"``; None runs local processes.
    ``include`` / ``exclude``: glob patterns choosing the label files
    (:func:`~rwmaps_cli.inputs.dataset.find_dataset`).  ``strict``: refuse, before any work, a given
    class list with values in no case (one extra read of every case).  ``space_check``: refuse
    to start when the maps would not fit on the output file system.  ``part``:
    ``(part_id, num_parts)``, only the cases at positions ``part_id``, ``part_id +
    num_parts``, ... of the sorted list; parts may run at once into one folder.
    """

    kind: str = DEFAULT_KIND
    fmt: str | None = None
    layout: str = DEFAULT_LAYOUT
    classes: Sequence[int] | None = None
    spacing: str = DEFAULT_SPACING
    slice_axis: int | None = None
    engine: str = DEFAULT_ENGINE
    dtype: str = DEFAULT_DTYPE
    ignore_label: int | None = None
    max_classes: int = DEFAULT_MAX_CLASSES
    jobs: int | None = None
    scheduler: str | None = None
    overwrite: bool = False
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    strict: bool = False
    space_check: bool = True
    part: tuple[int, int] | None = None


def compute_dataset(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    progress: Callable[[int, str], object] | None = None,
    on_failure: Callable[[Path, CaseResult], None] | None = None,
    **options,
) -> Outcome:
    """Compute the maps of every label file under ``input_dir`` into ``output_dir``.

    Parameters
    ----------
    input_dir : path
        A folder of label files (searched recursively), an nnU-Net raw dataset, one file, or
        an nnU-Net v2 preprocessed configuration folder
        (``nnUNet_preprocessed/DatasetXXX/nnUNetPlans_3d_fullres``): then the maps are
        computed from its segs (-1 as background), as ``.npy`` beside it, per slice for a
        2d configuration, with the classes or regions of its ``dataset.json``.
    output_dir : path, optional
        Required, except for a preprocessed folder: its sibling ``<folder>_rwmaps``.
    progress : callable ``(total, description) -> bar``, optional
        Makes a progress bar with ``update()`` and ``close()``.
    on_failure : callable ``(input path, CaseResult)``, optional
        Called as each case fails (the failures are also in the Outcome).
    **options
        The fields of :class:`Request` (``kind="rrw"``, ``layout="compact"``, ``jobs=4``...).

    Returns
    -------
    Outcome
        ``stopped`` is set when SIGINT or SIGTERM arrived, or a full disk stopped the run:
        every finished case is recorded in the manifest, no temporary is left behind, and
        the same call resumes.

    Raises
    ------
    UsageError
        A mistake found before any work: bad options, an input without label files, an
        output folder holding maps made with other parameters (unless ``overwrite``), too
        little disk space, classes in no case with ``strict``.
    """
    request = Request(**options)
    if request.scheduler is None:
        start_worker_server()
    progress = progress or (lambda total, description: NoBar())
    on_failure = on_failure or (lambda path, result: None)
    dataset, output_dir, request = _open_input(Path(input_dir), output_dir, request)
    mine = _share(dataset.cases, request.part)
    jobs = _jobs(request.jobs, len(mine))
    if request.scheduler is None:
        start_workers(jobs)
    stop = Stop()
    with ExitStack() as stack:
        stack.enter_context(_stop_on_signals(stop))
        _check_writable(output_dir)
        exclusive = stack.enter_context(folder_lock(output_dir, request.part))
        runner = _runner(request.scheduler, jobs, stack)
        settings, defer, failed = _settle(dataset, request, runner, progress, stop)
        if stop:  # stopped while reading the labels: nothing written, not even a manifest
            return Outcome(classes=settings.classes, not_finished=len(mine), stopped=stop.reason)
        if not settings.classes and not defer:  # no label file could be read: each is a failed case
            return _nothing_readable(dataset, mine, failed, on_failure)
        selection = {"include": list(request.include), "exclude": list(request.exclude)}
        manifest = open_manifest(output_dir, settings, request.overwrite, selection, request.part, mine,
                                 manifest_source(dataset), defer)
        outcome = Outcome(classes=settings.classes, manifest=manifest.path, ignored_files=len(dataset.skipped_files),
                          removed_temporaries=clean_temporaries(output_dir, all_writers_gone=exclusive))
        todo = _cases_to_compute(mine, failed, manifest, request.overwrite, outcome, on_failure)
        voxels = _HeaderVoxels()  # read when first needed, once per case, only for cases to compute
        if request.space_check:
            todo = _check_space(output_dir, todo, settings, voxels, manifest, outcome, on_failure)
        reported = _compute_cases(todo, settings, manifest, runner, jobs, progress, on_failure, outcome, stop,
                                  voxels, request.max_classes if defer else None)
        outcome.not_finished = len(todo) - len(reported)
        if defer:
            outcome.classes = settle_deferred_classes(manifest, request.max_classes)
        _fold(manifest, stop)
        clean_temporaries(output_dir, all_writers_gone=exclusive)  # a stop killed workers mid-write
    outcome.stopped = stop.reason
    given = request.classes is not None or dataset.dataset_json is not None
    outcome.hints += _hints(dataset, manifest.settings, manifest, outcome, given and not stop and request.part is None,
                            voxels)
    if defer and len(outcome.classes) > request.max_classes:
        raise UsageError(f"the inputs hold {len(outcome.classes)} distinct label values, more than --max-classes "
                         f"{request.max_classes}: are some of them images? Their maps are written; pass --classes, "
                         "or raise --max-classes")
    return outcome


def _open_input(input_dir: Path, output_dir, request: Request) -> tuple[Dataset, Path, Request]:
    """The dataset, the output folder, and the request with the input's own defaults
    (the format, and a 2d nnU-Net configuration's slice axis); usage errors first."""
    preprocessed = is_preprocessed_folder(input_dir)
    output_dir = Path(output_dir) if output_dir is not None else default_output(input_dir)
    if output_dir is None:
        raise UsageError("--output is required (only an nnU-Net preprocessed folder has a default)")
    fmt = request.fmt or ("npy" if preprocessed else DEFAULT_FORMAT)
    if preprocessed and fmt != "npy":
        raise UsageError(f"--format {fmt}: maps of nnU-Net's preprocessed data are .npy, which its data "
                         "loader memory-maps to crop patches")
    if preprocessed and (request.include or request.exclude):
        raise UsageError("--include/--exclude select label files; a preprocessed folder's cases are nnU-Net's")
    _check_options(request.kind, fmt, request.layout, request.dtype)
    dataset = find_dataset(input_dir, output_dir, fmt, request.include, request.exclude)
    slice_axis = request.slice_axis
    if dataset.preprocessed is not None and dataset.preprocessed.is_2d and slice_axis is None:
        slice_axis = dataset.preprocessed.slice_axis  # the 2D slices nnU-Net's 2d loader takes
    return dataset, output_dir, replace(request, fmt=fmt, slice_axis=slice_axis)


def _settle(dataset: Dataset, request: Request, runner, progress, stop: Stop):
    """(settings, whether the class list waits for the end of the run, {case: failed result})."""
    given = request.classes is not None or dataset.dataset_json is not None
    # A compact channel does not depend on the class list: with none given, each case is
    # read once, and the list is the union of the values the workers report.
    defer = (not given and request.layout == "compact" and request.part is None
             and OUTPUT_STORES_CLASSES.get(request.fmt) is False)
    class_list, ignore_label, failed, regions = settle_classes(dataset, request.classes, request.ignore_label,
                                                               request.max_classes, runner, progress, stop, defer)
    if regions is not None and request.layout == "compact":
        raise UsageError(f"{dataset.dataset_json} is region-based: regions overlap, so their maps cannot share "
                         "one channel; use --layout full")
    settings = Settings(tuple(class_list), request.kind, request.spacing, request.slice_axis, request.dtype,
                        request.fmt, request.engine, ignore_label, request.layout, regions)
    if request.strict and given and not stop:
        refuse_unseen_classes(dataset, settings, request.max_classes, runner, progress, stop)
    return settings, defer, failed


def _nothing_readable(dataset: Dataset, mine: list[Case], failed: dict[str, CaseResult], on_failure) -> Outcome:
    """No label file could be read, so there is no class list and nothing to write: every
    case failed (exit 1, as any bad file), each named with its cause; no manifest."""
    if len(failed) < len(dataset.cases):
        raise UsageError("the label files hold no value but the ignore label, so there is no class list; "
                         "pass --classes")
    outcome = Outcome(ignored_files=len(dataset.skipped_files))
    for case in mine:
        outcome.failures.append((case.input, failed[case.name]))
        on_failure(case.input, failed[case.name])
    outcome.hints.append("no label file could be read, so there is no class list and no map was written")
    return outcome


def _cases_to_compute(mine: list[Case], failed: dict, manifest: Manifest, overwrite: bool, outcome: Outcome,
                      on_failure) -> list[Case]:
    """The cases this run computes; those that failed the class scan are recorded, the done ones counted."""
    todo = []
    for case in mine:
        if case.name in failed:  # unreadable while scanning the class list
            manifest.record(case.input, case.output, failed[case.name], reader=case.reader)
            outcome.failures.append((case.input, failed[case.name]))
            on_failure(case.input, failed[case.name])
        elif not overwrite and is_done(manifest, case):
            outcome.skipped += 1
        else:
            todo.append(case)
    return todo


def _fold(manifest: Manifest, stop: Stop) -> None:
    """Fold the journal into the manifest at the end; on a full disk the journal keeps it all."""
    try:
        manifest.write()
    except OSError as error:
        manifest.close_journal()
        stop.set(f"cannot write {manifest.path.name}: {error.strerror or error}")


class _HeaderVoxels(dict):
    """Voxels of each case by name, read from its header the first time they are asked for:
    while the workers compute, so that 100,000 small cases do not wait for 100,000 header
    reads before the first starts."""

    def of(self, case: Case) -> int:
        if case.name not in self:
            self[case.name] = case_voxels(case)
        return self[case.name]


@contextmanager
def _stop_on_signals(stop: Stop) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (once; a second one acts as usual), in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame) -> None:
        stop.set(signal.Signals(signum).name)
        signal.signal(signum, previous[signum])  # a second Ctrl-C stops at once

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _hints(dataset: Dataset, settings: Settings, manifest: Manifest, outcome: Outcome, check_unseen: bool,
           voxels: dict[str, int]):
    hints = []
    if settings.kind == "rrw" and settings.layout == "full" and settings.regions is None:
        largest = max(voxels.values(), default=0) * len(settings.classes) \
            * np.dtype(settings.dtype).itemsize
        if largest > COMPACT_HINT_BYTES:
            hints.append(f"the largest map is {largest / 1e9:.1f} GB; --layout compact stores one channel "
                         f"instead of {len(settings.classes)}, {len(settings.classes)}x smaller, and "
                         "rwmaps_cli.load_map expands it exactly")
    if check_unseen and not outcome.failures:
        unseen = unseen_classes(settings.classes, [entry.get("values") for entry in manifest.cases.values()
                                                           if entry.get("status") == DONE])
        if unseen:
            hints.append(f"class values {listing(unseen)} occur in no case: their channels are constant "
                         "(a typo in --classes or dataset.json?); --strict refuses this")
    if any(result.unknown_labels for _, result in outcome.failures) and dataset.dataset_json is not None:
        shown = str(list(settings.classes)) if len(settings.classes) <= 8 else f"({listing(settings.classes)})"
        hints.append(f"the class list {shown} comes from {dataset.dataset_json}; "
                     "fix its 'labels' or pass --classes")
    return hints


# Compressed size / raw size of a map, by kind and layout, for the disk check (measured: a
# full rrw map is mostly 1s and gzips about 100x; distances and compact maps about 2x).
_COMPRESSION = {("rrw", "full"): 0.02, ("ac", "full"): 0.02}


def estimated_output_bytes(voxels: int, settings: Settings) -> int:
    """Bytes on disk of maps over ``voxels`` label voxels in all (from the label headers)."""
    raw = voxels * map_channels(settings) * np.dtype(settings.dtype).itemsize
    if output_is_compressed(settings.fmt):
        raw = int(raw * _COMPRESSION.get((settings.kind, settings.layout), 0.5))
    return raw


def _check_space(output_dir: Path, todo: list[Case], settings: Settings, voxels: _HeaderVoxels,
                 manifest: Manifest, outcome: Outcome, on_failure) -> list[Case]:
    """The cases to compute, less those whose map alone would not fit on the output file
    system (each fails alone: one header never stops the others); a UsageError when the
    rest would not fit together.  A header's voxels count only as far as its file can hold
    them (``formats.base.check_claim``): a lying header counts 0 and fails in its worker."""
    free = shutil.disk_usage(output_dir).free
    sampled, step = _header_sample(todo)
    needs = {case.name: estimated_output_bytes(voxels.of(case), settings) for case in sampled}
    too_big = {name: need for name, need in needs.items() if need > free}
    rest = int(sum(need for name, need in needs.items() if name not in too_big) * step)
    if rest > free:  # refused before anything is recorded
        raise UsageError(f"{output_dir}: the maps need about {_size(rest)} and the file system has "
                         f"{_size(free)} free; free some space, choose another --output, or pass --no-space-check")
    for case in (case for case in todo if case.name in too_big):
        result = CaseResult(case.name, FAILED, error=f"its map needs about {_size(too_big[case.name])} and the output "
                                                     f"file system has {_size(free)} free (--no-space-check tries it)")
        manifest.record(case.input, case.output, result, reader=case.reader)
        outcome.failures.append((case.input, result))
        on_failure(case.input, result)
    return [case for case in todo if case.name not in too_big]


def _header_sample(todo: list[Case], sample: int = 1000) -> tuple[list[Case], float]:
    """(the cases whose headers estimate the whole, the factor to scale their sum by): every
    case up to ``sample``, else ``sample`` cases spread over the sorted list (an estimate,
    as the compression is)."""
    if len(todo) <= sample:
        return todo, 1.0
    step = len(todo) / sample
    return [todo[int(i * step)] for i in range(sample)], step


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def _check_options(kind: str, fmt: str, layout: str, dtype: str) -> None:
    if np.dtype(dtype) not in OUTPUT_DTYPES[fmt]:
        raise UsageError(f"--dtype {dtype} cannot be stored as {fmt} (NIfTI has no float16); use --format npz or npy")
    try:
        check_layout(kind, layout)
    except ValueError as error:
        raise UsageError(f"--layout {layout} --kind {kind}: {error}") from None


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".rwmaps-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{output_dir}: output folder cannot be written ({error.strerror or error})") from None


def _jobs(jobs: int | None, n_cases: int) -> int:
    return max(1, min(jobs or usable_cores(), n_cases))


def _runner(scheduler: str | None, jobs: int, stack: ExitStack):
    """A local runner, or with a scheduler a Dask runner; the Dask client (and a ``local``
    cluster of ``jobs`` workers) is set up now, so a missing Dask or an unreachable
    scheduler is a usage error before any work, and stays up until ``stack`` closes."""
    if scheduler is None:
        return partial(run_local, jobs=jobs)
    from .cluster import dask_client, run_dask

    return partial(run_dask, scheduler=stack.enter_context(dask_client(scheduler, jobs)))


def _share(cases: list[Case], part: tuple[int, int] | None) -> list[Case]:
    """This part's cases: every ``num_parts``-th of the sorted list, from ``part_id``."""
    if part is None:
        return cases
    part_id, parts = part
    if not 0 <= part_id < parts:
        raise UsageError(f"--part-id {part_id} must be in 0..{parts - 1} for --num-parts {parts}")
    return [case for i, case in enumerate(sorted(cases, key=lambda c: c.name)) if i % parts == part_id]


# --------------------------------------------------------------------------- running the cases


def _compute_cases(todo: list[Case], settings: Settings, manifest: Manifest, runner, jobs: int, progress,
                   on_failure, outcome: Outcome, stop: Stop, voxels: _HeaderVoxels,
                   max_classes: int | None) -> set[str]:
    """Run the cases, record each as it finishes; the names of the cases that reported."""
    reported: set[str] = set()
    if not todo:
        return reported
    by_name = {case.name: case for case in todo}

    def need(case: Case) -> int:  # the runner asks as it starts cases: headers read while others compute
        return case_memory_need(voxels.of(case), settings)

    bar = progress(len(todo), "computing maps")
    started_ns = time.time_ns()
    results = runner(todo, process_case, memory_need=need, stop=stop,
                     settings=settings, threads=threads_per_case(jobs), max_classes=max_classes)
    # A run that settles its class list at the end needs each case's values, which a rescued
    # map does not report: it is computed again by the next run instead.
    rescued = _written_before_the_stop(todo, reported, started_ns, stop) if max_classes is None else ()
    results = itertools.chain(results, rescued)
    for result in results:  # lazily: recorded, and the bar moves, as cases finish
        reported.add(result.name)
        case = by_name[result.name]
        try:
            manifest.record(case.input, case.output, result, reader=case.reader)
        except OSError as error:  # a full disk, a lost NFS handle: stop, the maps written so far stay
            stop.set(f"cannot write {manifest.path.name}: {error.strerror or error}")
            outcome.failures.append((case.input, CaseResult(case.name, FAILED, error=stop.reason)))
            continue
        bar.update()
        if result.status == DONE:
            outcome.done += 1
        else:
            outcome.failures.append((case.input, result))
            on_failure(case.input, result)
            if result.disk_full:  # every later case would fail the same way
                stop.set("disk full")
    bar.close()
    return reported


def _written_before_the_stop(cases: list[Case], reported: set[str], started_ns: int, stop: Stop):
    """After a stop, the maps that a worker renamed into place but could not report before it
    was killed: a map file is complete once renamed, so it is recorded done, not lost."""
    if not stop:
        return
    for case in cases:
        if case.name in reported:
            continue
        try:
            if case.output.stat().st_mtime_ns >= started_ns:
                yield CaseResult(case.name, DONE, shape=list(map_info(case.output).shape))
        except (OSError, InputError):
            continue  # not written: the case is not finished


