"""``rwmaps compute`` as a service: :func:`compute_dataset` runs a dataset, returns an Outcome.

It settles the class list (``classlist.py``), opens (or resumes) the manifest
(``resume.py``), skips the cases already done, refuses a run that would not fit on the disk
(``disk_space.py``), runs the rest on a runner (``run.py``: local processes, and their stop
on SIGINT/SIGTERM; ``cluster.py``: a Dask cluster) and records every result.  The worker
functions (``case.py``: ``process_case``, ``scan_case``) read their own input and write
their own output by path, so only small records travel between processes.

Options in messages are named as this API spells them, in backquotes (``space_check=False``);
the command line (``cli.py``), which only turns options into arguments and prints, shows its
flags instead.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from .case import HeaderVoxels, case_memory_need, process_case
from .classlist import refuse_unseen_classes, settle_classes, settle_deferred_classes
from .contract import (DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_ENGINE, DEFAULT_KIND, DEFAULT_LAYOUT,
                       DEFAULT_MAX_CLASSES, DEFAULT_SPACING, check_layout)
from .disk_space import maps_too_big
from .errors import UsageError
from .formats import DEFAULT_FORMAT, OUTPUT_DTYPES, OUTPUT_STORES_CLASSES, clean_temporaries
from .hints import TORCH_ON_CPU_HINT, run_hints
from .inputs.dataset import Case, Dataset, default_output, find_dataset
from .inputs.nnunet_preprocessed import is_preprocessed_folder
from .lock import folder_lock
from .manifest import Manifest, Settings
from .results import DONE, FAILED, CaseResult
from .resume import is_done, manifest_source, open_manifest, written_before_the_stop
from .run import NoBar, Stop, run_local, stop_on_signals, threads_per_case, usable_cores
from .workers import start_workers


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
    ignored_files: int = 0  # files under input_dir that are not label files (or not selected)
    removed_temporaries: int = 0
    hints: list[str] = field(default_factory=list)  # one line each, for the user

    @property
    def failed(self) -> int:
        return len(self.failures)


#: Cases at once with ``engine=torch`` on a GPU when ``jobs`` is not given: each worker process
#: holds its own CUDA context (about 0.5 GB of the GPU, and PyTorch's few GB of host memory), and a
#: few keep the GPU busy while the others read and write.
GPU_JOBS = 4


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
    device: str = DEFAULT_DEVICE
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
    run = _open_run(Path(input_dir), output_dir, Request(**options), progress, on_failure)
    if run.request.scheduler is None:
        start_workers(run.jobs)
    with ExitStack() as stack:
        stack.enter_context(stop_on_signals(run.stop))
        _check_writable(run.output_dir)
        exclusive = stack.enter_context(folder_lock(run.output_dir, run.request.part))
        runner = _runner(run.request.scheduler, run.jobs, stack)
        settings, defer, failed = _settle(run.dataset, run.request, runner, run.progress, run.stop)
        if run.stop:  # stopped while reading the labels: nothing written, not even a manifest
            return Outcome(classes=settings.classes, not_finished=len(run.cases), stopped=run.stop.reason)
        if not settings.classes and not defer:  # no label file could be read: each is a failed case
            return _nothing_readable(run, failed)
        outcome, manifest, voxels = _compute_all(run, settings, defer, failed, runner, exclusive)
    return _concluded(run, outcome, manifest, voxels, defer)


@dataclass
class _Run:
    """One call of :func:`compute_dataset`, as its steps share it."""

    request: Request
    dataset: Dataset
    cases: list[Case]  # this part's cases
    output_dir: Path
    jobs: int
    progress: Callable[[int, str], object]
    on_failure: Callable[[Path, CaseResult], None]
    stop: Stop = field(default_factory=Stop)


def _open_run(input_dir: Path, output_dir, request: Request, progress, on_failure) -> _Run:
    """The run's dataset, cases and output folder; usage errors first."""
    dataset, output_dir, request = _open_input(input_dir, output_dir, request)
    cases = _share(dataset.cases, request.part)
    jobs = request.jobs or (GPU_JOBS if _on_a_gpu(request) else None)
    return _Run(request, dataset, cases, output_dir, _jobs(jobs, len(cases)),
                progress or (lambda total, description: NoBar()), on_failure or (lambda path, result: None))


def _compute_all(run: _Run, settings: Settings, defer: bool, failed: dict[str, CaseResult], runner,
                 exclusive: bool) -> tuple[Outcome, Manifest, HeaderVoxels]:
    """Open the manifest, compute the cases not done yet, record them, fold the journal."""
    request = run.request
    selection = {"include": list(request.include), "exclude": list(request.exclude)}
    manifest = open_manifest(run.output_dir, settings, request.overwrite, selection, request.part, run.cases,
                             manifest_source(run.dataset), defer)
    outcome = Outcome(classes=settings.classes, manifest=manifest.path, ignored_files=len(run.dataset.skipped_files),
                      removed_temporaries=clean_temporaries(run.output_dir, all_writers_gone=exclusive))
    todo = _cases_to_compute(run, failed, manifest, outcome)
    voxels = HeaderVoxels()  # read when first needed, once per case, only for cases to compute
    if request.space_check:
        todo = _fail_too_big(run, maps_too_big(run.output_dir, todo, settings, voxels), todo, manifest, outcome)
    reported = _compute_cases(run, todo, settings, manifest, runner, outcome, voxels,
                              request.max_classes if defer else None)
    outcome.not_finished = len(todo) - len(reported)
    if defer:
        outcome.classes = settle_deferred_classes(manifest, request.max_classes)
    _fold(manifest, run.stop)
    clean_temporaries(run.output_dir, all_writers_gone=exclusive)  # a stop killed workers mid-write
    return outcome, manifest, voxels


def _concluded(run: _Run, outcome: Outcome, manifest: Manifest, voxels: HeaderVoxels, defer: bool) -> Outcome:
    """The outcome with why the run stopped and its hints; a class list settled at the end
    that is too long to be labels is a usage error (the maps are written)."""
    request, stop = run.request, run.stop
    outcome.stopped = stop.reason
    given = request.classes is not None or run.dataset.dataset_json is not None
    outcome.hints += run_hints(run.dataset, manifest.settings, manifest, [result for _, result in outcome.failures],
                               given and not stop and request.part is None, voxels)
    if request.engine == "torch" and request.scheduler is None and not _on_a_gpu(request):
        outcome.hints.append(TORCH_ON_CPU_HINT)
    if defer and len(outcome.classes) > request.max_classes:
        raise UsageError(f"the inputs hold {len(outcome.classes)} distinct label values, more than "
                         f"`max_classes={request.max_classes}`: are some of them images? Their maps are written; "
                         "pass `classes`, or raise `max_classes`")
    return outcome


def _open_input(input_dir: Path, output_dir, request: Request) -> tuple[Dataset, Path, Request]:
    """The dataset, the output folder, and the request with the input's own defaults
    (the format, and a 2d nnU-Net configuration's slice axis); usage errors first."""
    preprocessed = is_preprocessed_folder(input_dir)
    output_dir = Path(output_dir) if output_dir is not None else default_output(input_dir)
    if output_dir is None:
        raise UsageError("`output_dir` is required (only an nnU-Net preprocessed folder has a default)")
    fmt = request.fmt or ("npy" if preprocessed else DEFAULT_FORMAT)
    if preprocessed and fmt != "npy":
        raise UsageError(f"`fmt={fmt}`: maps of nnU-Net's preprocessed data are npy, which its data "
                         "loader memory-maps to crop patches")
    if preprocessed and (request.include or request.exclude):
        raise UsageError("`include` and `exclude` select label files; a preprocessed folder's cases are nnU-Net's")
    _check_options(request.kind, fmt, request.layout, request.dtype)
    _check_device(request.engine, request.device, request.scheduler)
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
                         "one channel; use `layout=full`")
    settings = Settings(tuple(class_list), request.kind, request.spacing, request.slice_axis, request.dtype,
                        request.fmt, request.engine, ignore_label, request.layout, regions, request.device)
    if request.strict and given and not stop:
        refuse_unseen_classes(dataset, settings, request.max_classes, runner, progress, stop)
    return settings, defer, failed


def _nothing_readable(run: _Run, failed: dict[str, CaseResult]) -> Outcome:
    """No label file could be read, so there is no class list and nothing to write: every
    case failed (exit 1, as any bad file), each named with its cause; no manifest."""
    dataset = run.dataset
    if len(failed) < len(dataset.cases):
        raise UsageError("the label files hold no value but the ignore label, so there is no class list; "
                         "pass `classes`")
    outcome = Outcome(ignored_files=len(dataset.skipped_files))
    for case in run.cases:
        outcome.failures.append((case.input, failed[case.name]))
        run.on_failure(case.input, failed[case.name])
    outcome.hints.append("no label file could be read, so there is no class list and no map was written")
    return outcome


def _cases_to_compute(run: _Run, failed: dict, manifest: Manifest, outcome: Outcome) -> list[Case]:
    """The cases this run computes; those that failed the class scan are recorded, the done ones counted."""
    todo = []
    for case in run.cases:
        if case.name in failed:  # unreadable while scanning the class list
            manifest.record(case.input, case.output, failed[case.name], reader=case.reader)
            outcome.failures.append((case.input, failed[case.name]))
            run.on_failure(case.input, failed[case.name])
        elif not run.request.overwrite and is_done(manifest, case):
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


def _fail_too_big(run: _Run, too_big: dict[str, str], todo: list[Case], manifest: Manifest,
                  outcome: Outcome) -> list[Case]:
    """Record the cases whose map alone would not fit as failed; the others to compute."""
    for case in (case for case in todo if case.name in too_big):
        result = CaseResult(case.name, FAILED, error=too_big[case.name])
        manifest.record(case.input, case.output, result, reader=case.reader)
        outcome.failures.append((case.input, result))
        run.on_failure(case.input, result)
    return [case for case in todo if case.name not in too_big]


def _check_options(kind: str, fmt: str, layout: str, dtype: str) -> None:
    if np.dtype(dtype) not in OUTPUT_DTYPES[fmt]:
        raise UsageError(f"`dtype={dtype}` cannot be stored as {fmt} (NIfTI has no float16); use `fmt=npz` or `fmt=npy`")
    try:
        check_layout(kind, layout)
    except ValueError as error:
        raise UsageError(f"`layout={layout}` `kind={kind}`: {error}") from None


def _check_device(engine: str, device: str, scheduler: str | None) -> None:
    """The torch engine's device, checked before any work (PyTorch is imported only for it).
    With a Dask scheduler the workers, not this machine, have the device: each case that
    cannot use it fails with the reason."""
    if engine != "torch":
        if device != DEFAULT_DEVICE:
            raise UsageError(f"`device={device}` chooses where `engine=torch` computes; "
                             f"this run uses `engine={engine}`")
        return
    if scheduler is not None:
        return
    try:
        from .torch_engine import device_problem
    except ImportError:
        raise UsageError("`engine=torch` needs PyTorch: pip install -e '.[torch]' in the rwmaps clone") from None
    problem = device_problem(device)
    if problem is not None:
        raise UsageError(f"`device={device}`: {problem}; use `device=cpu` or `device=auto`")


def _on_a_gpu(request: Request) -> bool:
    """Local workers will compute on a GPU."""
    if request.engine != "torch" or request.scheduler is not None:
        return False
    from .torch_engine import resolve_device

    return resolve_device(request.device).type == "cuda"


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
        raise UsageError(f"`part_id={part_id}` must be in 0..{parts - 1} for `num_parts={parts}`")
    return [case for i, case in enumerate(sorted(cases, key=lambda c: c.name)) if i % parts == part_id]


# --------------------------------------------------------------------------- running the cases


def _compute_cases(run: _Run, todo: list[Case], settings: Settings, manifest: Manifest, runner, outcome: Outcome,
                   voxels: HeaderVoxels, max_classes: int | None) -> set[str]:
    """Run the cases, record each as it finishes; the names of the cases that reported."""
    reported: set[str] = set()
    if not todo:
        return reported
    by_name = {case.name: case for case in todo}

    def need(case: Case) -> int:  # the runner asks as it starts cases: headers read while others compute
        return case_memory_need(voxels.of(case), settings)

    stop = run.stop
    bar = run.progress(len(todo), "computing maps")
    started_ns = time.time_ns()
    results = runner(todo, process_case, memory_need=need, stop=stop,
                     settings=settings, threads=threads_per_case(run.jobs), max_classes=max_classes)
    # A run that settles its class list at the end needs each case's values, which a rescued
    # map does not report: it is computed again by the next run instead.
    rescued = written_before_the_stop(todo, reported, started_ns, stop) if max_classes is None else ()
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
            run.on_failure(case.input, result)
            if result.disk_full:  # every later case would fail the same way
                stop.set("disk full")
    bar.close()
    return reported
