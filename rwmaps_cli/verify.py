"""``rwmaps verify``: prove that a maps folder is complete and right before training.

:func:`verify` checks, for every label file under the input folder, that its map exists,
is complete and agrees with the manifest (``rwmaps.json``); that the manifest lists no
case that is not there; and recomputes the maps of a sample of cases (all by default)
with the manifest's parameters and compares them within float tolerance.  Every problem
is one line, ``PATH: what is wrong``.

A case outside the sample whose map and input are the files the manifest fingerprinted
(size, mtime and the map's inode: what a rerun trusts) costs two ``stat`` calls; any other
case (a truncated, rewritten or replaced map, a changed input, an entry without a
fingerprint) has its map's header, shape, channels and labels' shape checked, and a
sampled case its values too.  So verify costs a rerun plus its sample, at any size.

Without a manifest (or with one whose parameters cannot be read) the maps cannot be
recomputed: the parameters that made them (kind, classes, spacing, slice axis...) are
unknown, and defaults would call right maps wrong.  Then the missing manifest is a
problem, and verify still checks that every label file has a readable map, in any output
format, whose spatial shape matches the labels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .contract import DEFAULT_DEVICE, DEFAULT_ENGINE
from .case import case_maps, case_memory_need, case_voxels
from .inputs.dataset import Case, Dataset, find_dataset
from .errors import InputError, UsageError
from .formats import (
    DEFAULT_FORMAT,
    OUTPUT_FORMATS,
    TMP_MARKER,
    capturing_library_output,
    is_output_file,
    output_path,
    read_labels,
    read_shape,
)
from .manifest import (
    MANIFEST_NAME,
    ManifestFile,
    Settings,
    entry_is_current,
    fingerprint,
    read_folder_manifest,
)
from .manifest_lookup import MapRecord
from .results import CHECKED, DONE, CaseResult
from .mapfile import map_info, read_map
from .maps import expanded_channels
from .run import NoBar, run_local, threads_per_case, usable_cores

# (rtol, atol) by the dtype the map is stored in: float32 recomputations agree to a few
# ulps; a float16 map is a float32 one rounded to 11 significant bits (half an ulp is
# 4.9e-4 relative).  atol is in map units (1 for rrw and ac, voxels or mm for distances).
TOLERANCES = {"float32": (1e-5, 1e-5), "float16": (1e-3, 1e-3)}
# Below this many label voxels in all, the recomputation runs in this process (the
# distance transform multi-threaded): starting worker processes would take longer.
PARALLEL_MIN_VOXELS = 20_000_000


@dataclass
class Report:
    """What :func:`verify` found.

    Attributes
    ----------
    problems : list of str
        One line each, ``PATH: what is wrong``; empty when the maps are complete and right.
    cases : int
        Label files under the input folder (after the manifest's selection).
    maps : int
        Of those, the cases whose map file could be checked.
    recomputed : int
        Maps recomputed and compared value by value.
    manifest : Path or None
        The manifest's path (``output_dir / "rwmaps.json"``), whether or not it exists.
    """

    problems: list[str] = field(default_factory=list)  # one line each: "PATH: what is wrong"
    cases: int = 0  # label files under the input folder
    maps: int = 0  # of those, with a map file that could be checked
    recomputed: int = 0  # maps recomputed and compared
    manifest: Path | None = None


def sample_indices(n_cases: int, sample: int | None) -> list[int]:
    """Indices of the cases to recompute.

    Parameters
    ----------
    n_cases : int
        How many cases there are.
    sample : int, optional
        How many to recompute.  None: all.

    Returns
    -------
    indices : list of int, ascending
        All of ``0 … n_cases - 1`` when ``sample`` is None or >= ``n_cases``; none when
        ``sample`` <= 0; ``[0]`` when it is 1; else ``sample`` indices evenly spaced over
        ``0 … n_cases - 1``, first and last included.  Deterministic: the same cases every
        run.
    """
    if sample is None or sample >= n_cases:
        return list(range(n_cases))
    if sample <= 0:
        return []
    if sample == 1:
        return [0]
    return sorted({int(round(i * (n_cases - 1) / (sample - 1))) for i in range(sample)})


def verify(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    sample: int | None = None,
    jobs: int | None = None,
    progress: Callable[[int, str], object] | None = None,
) -> Report:
    """Check the maps in ``output_dir`` of the label files in ``input_dir``.

    Parameters
    ----------
    input_dir : str or path-like
        The folder of label files (or the one label file) given to ``rwmaps compute
        --input``.  The manifest's ``--include`` / ``--exclude`` selection applies to it.
    output_dir : str or path-like
        The maps folder (``rwmaps compute --output``), holding the maps and ``rwmaps.json``.
    sample : int, optional
        How many cases to recompute and compare value by value (:func:`sample_indices`);
        None: all.  0 recomputes none (the cheap checks still run on every case).
    jobs : int, optional
        Cases recomputed in parallel: worker processes when > 1 and the sample holds at
        least :data:`PARALLEL_MIN_VOXELS` label voxels, else in this process.  None: as
        many as the usable cores (as ``compute_dataset``).
    progress : callable ``(total: int, description: str) -> bar``, optional
        Makes the progress bar of the recomputation (an object with ``update()`` and
        ``close()``), called once its total is known.  None: no bar.

    Returns
    -------
    report : Report
        The problems found (one line each, ``PATH: what is wrong``; none when the maps are
        complete and right) and the counts of cases, checked maps and recomputed maps.
        Problems in the data are never raised.

    Raises
    ------
    UsageError
        The output folder does not exist; or the input does not exist, holds no label
        file, or is otherwise unusable (:func:`~rwmaps_cli.inputs.dataset.find_dataset`).
        Raised before any map is checked.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not output_dir.is_dir():
        raise UsageError(f"{output_dir}: output folder does not exist or is not a folder")
    report = Report(manifest=output_dir / MANIFEST_NAME)
    parsed = _read_manifest(report.manifest, report.problems)
    settings, records = (parsed.settings, parsed.cases) if parsed else (None, {})
    selection = _selection(parsed)  # the --include / --exclude compute was given
    dataset = find_dataset(input_dir, output_dir, settings.fmt if settings else DEFAULT_FORMAT, **selection)
    report.cases = len(dataset.cases)
    if settings is None:
        _check_without_manifest(dataset, output_dir, report)
        return report
    _check_manifest_entries(dataset, records, report)
    chosen = {dataset.cases[i].name for i in sample_indices(len(dataset.cases), sample)}
    recompute, touched = _check_maps(dataset, parsed, chosen, report)
    report.problems += _stray_files(dataset, output_dir, settings.fmt)
    # Recomputed by the default engine, whichever wrote the maps: every engine gives the same
    # maps, so this checks one engine against another, and needs no GPU or PyTorch here.
    _compare_recomputed(recompute, replace(settings, engine=DEFAULT_ENGINE, device=DEFAULT_DEVICE),
                        jobs or usable_cores(), progress, touched, report)
    for case in touched.values():
        report.problems.append(f"{case.input}: modified after its map was computed (same size, other mtime) "
                               "and not recomputed here; check it with a `sample` covering it, or rerun compute")
    return report


def _check_maps(dataset: Dataset, parsed: ManifestFile, chosen: set[str],
                report: Report) -> tuple[list[Case], dict[str, Case]]:
    """Check every case's map against the manifest, adding to ``report``.

    A case outside the sample whose map and input match their recorded fingerprints costs
    two ``stat`` calls (what a rerun trusts); every other case gets its header, shape,
    channel and label checks.

    Returns
    -------
    recompute : list of Case
        The sampled cases whose map could be read, in case order.
    touched : dict of name to Case
        Cases whose input has a new mtime but its size (a warning unless recomputed).
    """
    recompute, touched = [], {}
    for case in dataset.cases:
        entry = parsed.cases.get(case.name)
        if case.name not in chosen and entry_is_current(entry, case.input, case.output):
            report.maps += 1
            continue
        record = MapRecord(report.manifest, parsed.header, parsed.settings, entry if isinstance(entry, dict) else None)
        problems, readable, mtime_only = _check_case(case, record, parsed.settings)
        report.problems += problems
        report.maps += readable
        if readable and case.name in chosen:
            recompute.append(case)
        if mtime_only:
            touched[case.name] = case
    return recompute, touched


def _compare_recomputed(recompute: list[Case], settings: Settings, jobs: int, progress,
                        touched: dict[str, Case], report: Report) -> None:
    """Recompute the sampled maps and compare them value by value, adding to ``report``;
    a recomputed case leaves ``touched`` (its values speak for it)."""
    outputs = {case.name: case.output for case in recompute}
    found: dict[str, list[str]] = {}
    bar = progress(len(recompute), "recomputing maps") if progress is not None else NoBar()
    for record in _recompute(recompute, settings, jobs):  # in completion order
        report.recomputed += 1
        if record.status == CHECKED:
            found[record.name] = record.problems
        else:  # the worker process died (run_local's result)
            found[record.name] = [f"{outputs[record.name]}: cannot recompute: {record.error}"]
        touched.pop(record.name, None)
        bar.update()
    bar.close()
    for case in recompute:  # in case order, whatever the order they finished in
        report.problems += found.get(case.name, [])


# --------------------------------------------------------------------------- manifest


def _read_manifest(path: Path, problems: list[str]) -> ManifestFile | None:
    """Read the manifest of the maps folder, appending a line to ``problems`` for each fault.

    Parameters
    ----------
    path : Path
        The manifest (``output_dir / "rwmaps.json"``); its folder is read.
    problems : list of str
        Appended to, one line per problem: no manifest, an unreadable one, unusable
        parameters, or a ``classes`` that disagrees with ``parameters.classes``.

    Returns
    -------
    manifest : ManifestFile or None
        None when there is no manifest or it cannot be read; a manifest whose
        ``settings`` is None when its parameters are unusable.
    """
    try:
        parsed = read_folder_manifest(path.parent)
    except FileNotFoundError:
        problems.append(f"{path}: no manifest; without its parameters the maps cannot be recomputed "
                        "(only their presence and shapes are checked)")
        return None
    except ValueError as error:
        problems.append(f"{path}: unreadable manifest ({error}); the maps cannot be recomputed")
        return None
    if parsed.settings is None:
        problems.append(f"{path}: {parsed.settings_error}; the maps cannot be recomputed")
        return parsed
    classes = parsed.header.get("classes")
    if not isinstance(classes, list) or [c for c in classes if not isinstance(c, int)] \
            or classes != list(parsed.settings.classes):
        problems.append(f"{path}: 'classes' {classes} disagrees with parameters.classes "
                        f"{list(parsed.settings.classes)}")
    return parsed


def _selection(parsed: ManifestFile | None) -> dict:
    """The ``--include`` / ``--exclude`` patterns compute was given.

    Returns
    -------
    selection : dict
        ``{"include": [str, ...], "exclude": [str, ...]}``, each list empty when the
        manifest (or its ``selection``) does not give it.
    """
    selection = (parsed.header.get("selection") if parsed else None) or {}
    return {key: [str(p) for p in selection.get(key) or []] for key in ("include", "exclude")}


def _check_manifest_entries(dataset: Dataset, records: dict, report: Report) -> None:
    """Append to ``report.problems`` the manifest entries that match no label file under
    the input folder (one line when none of the entries does: the wrong ``--input``)."""
    names = {case.name for case in dataset.cases}
    extra = [name for name in records if name not in names]
    if records and len(extra) == len(records):
        report.problems.append(f"{report.manifest}: none of the {len(dataset.cases)} label files under "
                               f"{dataset.labels_dir} is in the manifest: was `input_dir` the folder given to "
                               "rwmaps compute?")
    for name in extra:
        report.problems.append(f"{report.manifest}: lists {name!r}, which is not a label file under "
                               f"{dataset.labels_dir}")


# --------------------------------------------------------------------------- one case, cheaply


def _check_case(case: Case, listed: MapRecord, settings: Settings) -> tuple[list[str], bool, bool]:
    """Problems of one case found from file sizes and headers, without reading values.

    Parameters
    ----------
    case : Case
        The label file and its map's path.
    listed : MapRecord
        What the manifest says of its map (``listed.entry`` None when it has no entry).
    settings : Settings
        The manifest's parameters.

    Returns
    -------
    problems : list of str
        One line each, ``PATH: what is wrong``.
    readable : bool
        Whether the map can be read and recomputed (its header, size and shape agree).
    mtime_only : bool
        Whether the input's mtime alone differs from the manifest's fingerprint (same size).
    """
    out, record = case.output, listed.entry
    problems, usable = _entry_problems(case, record)
    if not usable:
        return problems, False, False
    try:
        info = map_info(out, listed)
    except Exception as error:  # noqa: BLE001 - any reader failure means an unreadable map
        return problems + [f"{out}: cannot read the map header ({type(error).__name__}: {error})"], False, False
    recorded_shape = tuple(record["shape"]) if record and isinstance(record.get("shape"), list) else None
    if recorded_shape is not None and info.shape != recorded_shape:
        problems.append(f"{out}: shape {_shape(info.shape)}, the manifest recorded {_shape(recorded_shape)}")
        return problems, False, False
    if info.layout == "full" and info.shape[0] != settings.map_channels:
        problems.append(f"{out}: {info.shape[0]} channels, the manifest's parameters make {settings.map_channels}")
    try:
        labels_shape = read_shape(case.input, reader=case.reader)
    except InputError as error:
        return problems + [f"{case.input}: cannot read the label file: {error}"], False, False
    if info.spatial_shape != labels_shape:
        problems.append(f"{out}: spatial shape {_shape(info.spatial_shape)} does not match the labels' "
                        f"{_shape(labels_shape)} ({case.input})")
    problems += _stored_meta_problems(out, info, settings)
    changed, mtime_only = _input_change(case, record)
    return problems + changed, True, mtime_only


def _entry_problems(case: Case, record: dict | None) -> tuple[list[str], bool]:
    """What the manifest entry of ``case`` says against its map file: the problems, and
    whether the map is worth reading on (a missing, failed or truncated map is not)."""
    out = case.output
    if record is None:
        if not out.exists():
            return [f"{out}: map missing, and the manifest has no entry for {case.name}"], False
        return [f"{out}: map not in the manifest (made by another run?)"], True
    if record.get("status") != DONE:
        return [f"{case.input}: rwmaps compute failed on this case: {record.get('error')}"], False
    if not out.exists():
        return [f"{out}: map missing (the manifest says done)"], False
    problems = []
    recorded = Path(str(record.get("output", "")))
    expected_tail = Path(case.name).with_name(out.name).parts
    if recorded.parts[-len(expected_tail):] != expected_tail:
        problems.append(f"{out}: the manifest records the map of {case.name} as {record.get('output')}")
    size, recorded_bytes = out.stat().st_size, record.get("bytes")
    if size != recorded_bytes:
        return problems + [f"{out}: {size:,} bytes, the manifest recorded {_count(recorded_bytes)} "
                           "(truncated or rewritten)"], False
    return problems, True


def _input_change(case: Case, record: dict | None) -> tuple[list[str], bool]:
    """Whether the label file changed since its map was computed: a problem when its size
    did, ``mtime_only`` (True) when only its mtime did (a warning unless recomputed)."""
    before, now = (record or {}).get("fingerprint"), fingerprint(case.input) if record is not None else None
    if not isinstance(before, dict) or now is None or before == now:
        return [], False
    if before.get("size") != now["size"]:
        return [f"{case.input}: changed since its map was computed ({now['size']:,} bytes, "
                f"the manifest recorded {_count(before.get('size'))})"], False
    return [], True


def _stored_meta_problems(path: Path, info, settings: Settings) -> list[str]:
    """What the map file says about itself (layout, kind, classes, dtype) against the manifest.

    Returns
    -------
    problems : list of str
        One line per stored value that differs from what ``settings`` expect; a value the
        file does not store (None in ``info``) is not compared.
    """
    problems = []
    said = {"layout": (info.layout, settings.layout), "kind": (info.kind, settings.kind),
            "dtype": (info.dtype, settings.dtype),
            "classes": (info.classes, settings.channel_labels if info.classes is not None else None)}
    for what, (stored, expected) in said.items():
        if stored is not None and stored != expected:
            problems.append(f"{path}: {what} {stored!r}, the manifest says {expected!r}")
    return problems


def _stray_files(dataset: Dataset, output_dir: Path, fmt: str) -> list[str]:
    """Map files no label file produces, and temporaries left by a killed run.

    Returns
    -------
    problems : list of str
        One line per such file under ``output_dir`` (all its subfolders), in sorted order.
    """
    expected = {os.path.abspath(case.output) for case in dataset.cases}
    problems = []
    for folder, _, files in sorted(os.walk(output_dir)):
        for name in sorted(files):
            path = Path(folder) / name
            if TMP_MARKER in name:
                problems.append(f"{path}: temporary file left by an interrupted run (rwmaps compute removes it)")
            elif is_output_file(path, fmt) and os.path.abspath(path) not in expected:
                problems.append(f"{path}: map file that no label file under `input_dir` produces")
    return problems


def _check_without_manifest(dataset: Dataset, output_dir: Path, report: Report) -> None:
    """Check, without a manifest, that every label file has a readable map, in any output
    format, of the labels' spatial shape; append problems to ``report.problems`` and count
    each map of the right shape in ``report.maps``."""
    for case in dataset.cases:
        candidates = [output_path(case.input, dataset.labels_dir, output_dir, fmt) for fmt in OUTPUT_FORMATS]
        present = [path for path in candidates if path.is_file()]
        if not present:
            report.problems.append(f"{case.input}: no map in {output_dir} "
                                   f"(looked for {', '.join(p.name for p in candidates)})")
            continue
        try:
            labels_shape = read_shape(case.input, reader=case.reader)
        except InputError as error:
            report.problems.append(f"{case.input}: cannot read the label file: {error}")
            continue
        for path in present:
            try:
                spatial = map_info(path).spatial_shape
            except InputError as error:
                report.problems.append(f"{path}: cannot read the map header ({error})")
                continue
            if spatial != labels_shape:
                report.problems.append(f"{path}: spatial shape {_shape(spatial)} does not match the labels' "
                                       f"{_shape(labels_shape)}")
            else:
                report.maps += 1


# --------------------------------------------------------------------------- recomputation


def _recompute(cases: list[Case], settings: Settings, jobs: int):
    """Recompute and compare the maps of ``cases``.

    In this process (with all usable cores for the distance transform) for one job or
    fewer than :data:`PARALLEL_MIN_VOXELS` label voxels in all, else in ``jobs`` worker
    processes (:func:`~rwmaps_cli.run.run_local`).

    Yields
    ------
    result : CaseResult
        :func:`recompute_case`'s, one per case in completion order; from a worker that
        died, a result with its ``error`` instead.
    """
    if not cases:
        return
    jobs = max(1, min(jobs, len(cases)))
    voxels = {case.name: case_voxels(case) for case in cases}  # 0 when unreadable: recompute_case reports it
    if jobs == 1 or sum(voxels.values()) < PARALLEL_MIN_VOXELS:
        for case in cases:
            yield recompute_case(case, settings, threads=usable_cores())
        return
    need = {case.name: 2 * case_memory_need(voxels[case.name], settings) for case in cases}
    yield from run_local(cases, recompute_case, jobs, memory_need=lambda case: need[case.name],
                         settings=settings, threads=threads_per_case(jobs))


def recompute_case(case: Case, settings: Settings, threads: int = 1) -> CaseResult:
    """Recompute the map of one case and compare it with the file; never raises.

    A compact map is compared as stored (one channel), without expanding it; a ``.npy`` map
    is read memory-mapped.

    Parameters
    ----------
    case : Case
        The label file and its map.
    settings : Settings
        The manifest's parameters: what made the map.
    threads : int
        Threads for the distance transform.

    Returns
    -------
    result : CaseResult
        Status ``CHECKED``; ``problems`` holds one line when the values differ beyond the
        dtype's tolerance (:data:`TOLERANCES`) or the map cannot be recomputed (unreadable
        labels or map, out of memory).
    """
    start = time.perf_counter()
    problems = []
    try:
        with capturing_library_output():  # in a worker: a library's own lines go into the problem, or nowhere
            expected = _expected(read_labels(case.input, reader=case.reader), settings, threads)
            stored, meta = read_map(case.output, expand=False, mmap=None)  # a .npy map stays on disk
    except (InputError, ValueError) as error:
        problems.append(f"{case.output}: cannot recompute: {error}")
    except MemoryError:
        problems.append(f"{case.output}: cannot recompute: out of memory (use fewer `jobs`)")
    else:
        problems += _compare(case.output, stored, expected, meta["dtype"], settings)
    return CaseResult(case.name, CHECKED, problems=problems, seconds=round(time.perf_counter() - start, 3))


def _expected(volume, settings: Settings, threads: int) -> tuple[tuple[int, ...], Iterable[np.ndarray]]:
    """The recomputed map of ``volume``, computed in float32.

    A full ``rrw`` map is recomputed compact and expanded one channel at a time: its C
    channels are never in memory at once.

    Returns
    -------
    shape : tuple of int
        The map's shape: ``(C, *spatial)``, ``(R, *spatial)`` for regions, or ``(*spatial)``
        compact.
    channels : iterable of (*spatial) float32 arrays
        The channels in order (one for a compact map).
    """
    if settings.kind == "rrw" and settings.layout == "full" and settings.regions is None:
        compact = case_maps(volume, replace(settings, layout="compact"), threads, dtype="float32")
        channels = expanded_channels(compact, volume.array, settings.classes, ignore_label=settings.ignore_label)
        return (len(settings.classes), *compact.shape), channels
    expected = case_maps(volume, settings, threads, dtype="float32")
    return expected.shape, expected[np.newaxis] if settings.layout == "compact" else expected


def _compare(path: Path, stored: np.ndarray, expected: tuple, dtype: str, settings: Settings) -> list[str]:
    """Compare a stored map with its recomputation.

    Channel by channel, so the temporaries never exceed one channel (a map of 83 classes
    compared at once needed several maps' worth of memory).

    Parameters
    ----------
    path : Path
        The map file (for the problem line).
    stored : array, ``shape`` of ``expected``
        The map as stored, any float dtype (a memory map is read one channel at a time).
    expected : (shape, channels)
        :func:`_expected`'s.
    dtype : str
        The dtype the map is stored in, which sets the tolerance (:data:`TOLERANCES`;
        float16's for an unknown one).
    settings : Settings
        Its layout, classes and regions name the channel in the problem line.

    Returns
    -------
    problems : list of str
        Empty when every value is within ``np.isclose(rtol, atol)`` (NaN never is); else
        one line: the shapes differ, or how many values differ and the largest difference.
    """
    shape, channels = expected
    if stored.shape != shape:
        return [f"{path}: shape {_shape(stored.shape)}, a recomputation gives {_shape(shape)}"]
    compact = settings.layout == "compact"
    if compact:
        stored = stored[np.newaxis]
    rtol, atol = TOLERANCES.get(dtype, TOLERANCES["float16"])
    wrong, worst = 0, None  # worst: (difference, channel, index, stored, recomputed)
    for c, want in enumerate(channels):
        have = np.asarray(stored[c], dtype=np.float32)
        close = np.isclose(have, want, rtol=rtol, atol=atol)
        if close.all():
            continue
        wrong += int(np.count_nonzero(~close))
        difference = np.where(close, 0, np.abs(have - want))
        difference[np.isnan(difference)] = np.inf
        at = np.unravel_index(int(np.argmax(difference)), difference.shape)
        if worst is None or difference[at] > worst[0]:
            worst = (float(difference[at]), c, at, float(have[at]), float(want[at]))
    if worst is None:
        return []
    difference, channel, at, have, want = worst
    where = ("the compact channel" if compact else f"channel {channel} = region {settings.regions[channel]}"
             if settings.regions is not None else f"channel {channel} = class {settings.classes[channel]}")
    return [f"{path}: values differ from a recomputation in {wrong:,} of {stored.size:,} values "
            f"(largest difference {difference:.4g}, {where}, "
            f"at {tuple(int(i) for i in at)}; stored {have:.6g}, "
            f"recomputed {want:.6g}; tolerance rtol {rtol:g}, atol {atol:g})"]


def _shape(shape) -> str:
    """``shape`` as ``"X × Y × Z"``."""
    return " × ".join(str(int(n)) for n in shape)


def _count(value) -> str:
    """An int with thousands separators; anything else (a missing count) as ``str``."""
    return f"{value:,}" if isinstance(value, int) else str(value)
