"""The ``rwmaps`` command: a thin shell around the kernels, the readers and the runner."""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from . import __version__
from .dataset import Case, find_dataset, read_dataset_json, union_of_values
from .errors import UsageError
from .io import OUTPUT_DTYPES, OUTPUT_FORMATS, clean_temporaries
from .manifest import MANIFEST_NAME, Manifest
from .maps import ENGINES, KINDS
from .run import (
    Settings,
    available_memory,
    case_memory_need,
    process_case,
    run_local,
    scan_case,
    threads_per_case,
)


class _Usage(click.ClickException):
    """A usage error found before any work: one line, exit code 2."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rwmaps")
def cli() -> None:
    """Precompute Region-wise loss maps for a dataset of segmentation label volumes."""


@cli.command()
@click.option("--input", "input_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of label files, searched recursively; or an nnU-Net dataset / labelsTr folder.")
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for the maps; mirrors the input tree.")
@click.option("--kind", type=click.Choice(KINDS), default="rrw", show_default=True,
              help="rrw: rectified RW map; boundary: signed distance; kervadec: LIVIAETS Boundary-loss map; "
                   "ac: Active-Contour RW map.")
@click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default="nii.gz", show_default=True,
              help="Output format. nii.gz/nii: X*Y*Z*C NIfTI with the input affine; npz/npy: (C, *spatial). "
                   "npy and nii are the fastest (no compression).")
@click.option("--classes", "classes_text", metavar="V,V,...",
              help="Label values, one channel each, in this order (e.g. 0,1,2,4).  "
                   "[default: dataset.json's labels, else every value found in the inputs]")
@click.option("--num-classes", type=click.IntRange(min=1), help="Shorthand for --classes 0,1,...,N-1.")
@click.option("--spacing", type=click.Choice(["voxel", "physical"]), default="voxel", show_default=True,
              help="Distances in voxels (as the paper), or in mm from the voxel sizes in each file header.")
@click.option("--slice-axis", type=int, default=None,
              help="Compute 2D maps on each slice along this array axis (what a 2D network sees).  "
                   "[default: 3D maps]")
@click.option("--engine", type=click.Choice(ENGINES), default="edt", show_default=True,
              help="edt: one multi-label distance transform for all classes; scipy: one per class (reference).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Data type of the maps; float16 only with --format npz or npy (NIfTI has no float16).")
@click.option("--ignore-label", type=int, default=None,
              help="Label value that gets 0 in every channel and no channel of its own.  "
                   "[default: dataset.json's 'ignore' entry, if any]")
@click.option("--max-classes", type=click.IntRange(min=1), default=256, show_default=True,
              help="Refuse an automatic class list longer than this (an image mistaken for labels).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Cases computed in parallel.  [default: all cores]")
@click.option("--scheduler", metavar="ADDRESS",
              help="Compute on a Dask cluster: its scheduler (tcp://HOST:PORT, or a scheduler file), or 'local' "
                   "for a LocalCluster of --jobs worker processes here. The workers must see the same files; "
                   "needs pip install 'rwmaps_cli[dask]'.  [default: local processes (joblib)]")
@click.option("--overwrite", is_flag=True,
              help="Recompute every case, even those already done, and allow other parameters than the "
                   "output folder's maps were made with.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary; errors are still printed.")
@click.option("--debug", is_flag=True, help="Print a traceback for internal errors.")
def compute(input_dir, output_dir, kind, fmt, classes_text, num_classes, spacing, slice_axis, engine, dtype,
            ignore_label, max_classes, jobs, overwrite, quiet, debug, scheduler) -> None:
    """Compute the maps of every label file under --input into --output.

    \b
    Example:
        rwmaps compute --input labels/ --output maps/
        rwmaps compute --input Dataset001_Liver/ --output maps/ --kind boundary --format npy

    A rerun skips the cases already done (see rwmaps.json in the output folder).
    Exit code: 0 when every case succeeded, 1 when any failed, 2 for a usage error.
    """
    start = time.perf_counter()
    if np.dtype(dtype) not in OUTPUT_DTYPES[fmt]:
        raise _Usage(f"--dtype {dtype} cannot be stored as {fmt} (NIfTI has no float16); use --format npz or npy")
    try:
        dataset = find_dataset(input_dir, output_dir, fmt)
        runner = _runner(scheduler, _jobs(jobs, len(dataset.cases)))
        _check_writable(output_dir)
        classes, ignore_label, failed = _settle_classes(dataset, classes_text, num_classes, ignore_label,
                                                        max_classes, jobs, quiet, runner)
    except UsageError as error:
        raise _Usage(str(error)) from None
    settings = Settings(tuple(classes), kind, spacing, slice_axis, dtype, fmt, engine, ignore_label)
    manifest = _open_manifest(output_dir, settings, overwrite)
    removed = clean_temporaries(output_dir)
    todo, skipped = [], []
    for case in dataset.cases:
        if case.name in failed:
            manifest.record(case, failed[case.name])
        elif not overwrite and manifest.is_done(case):
            skipped.append(case)
        else:
            todo.append(case)
    manifest.write()
    outcome = _compute_cases(todo, settings, manifest, jobs, quiet, debug, runner)
    outcome["failed"] += len(failed)
    for name, record in failed.items():
        _report_failure(dataset.labels_dir / name, record, debug)
    if outcome["outside_classes"] and dataset.dataset_json is not None and not (classes_text or num_classes):
        click.echo(f"rwmaps: hint: the class list {list(classes)} comes from {dataset.dataset_json}; "
                   "fix its 'labels' or pass --classes", err=True)
    if not quiet:
        seconds = time.perf_counter() - start
        click.echo(
            f"rwmaps: {outcome['done']} done, {len(skipped)} skipped (already done), {outcome['failed']} failed, "
            f"{len(dataset.skipped_files)} non-label files ignored"
            + (f", {removed} stale temporary file{'s' if removed > 1 else ''} removed" if removed else "")
            + f"; {len(classes)} channels {list(classes)}; {seconds:.1f} s; manifest {manifest.path}",
            err=True,
        )
    sys.exit(1 if outcome["failed"] else 0)


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".rwmaps-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{output_dir}: output folder cannot be written ({error.strerror or error})") from None


def _settle_classes(dataset, classes_text, num_classes, ignore_label, max_classes, jobs, quiet, runner=run_local):
    """(class list, ignore label, {case name: failed record}) from the options or the data."""
    if classes_text and num_classes:
        raise UsageError("give --classes or --num-classes, not both")
    json_ignore = None
    if dataset.dataset_json is not None:
        json_classes, json_ignore = read_dataset_json(dataset.dataset_json)
    ignore_label = json_ignore if ignore_label is None else ignore_label
    if classes_text:
        classes = _parse_classes(classes_text)
    elif num_classes:
        classes = list(range(num_classes))
    elif dataset.dataset_json is not None:
        classes = json_classes
    else:
        return _scan_classes(dataset, ignore_label, max_classes, jobs, quiet, runner)
    if ignore_label is not None and ignore_label in classes:
        raise UsageError(f"the ignore label {ignore_label} is also in the class list {classes}")
    return classes, ignore_label, {}


def _parse_classes(text: str) -> list[int]:
    try:
        classes = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UsageError(f"--classes {text!r}: expected comma-separated integers such as 0,1,2,4") from None
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
        raise UsageError(f"--classes {text!r}: expected distinct non-negative integers")
    return classes


def _scan_classes(dataset, ignore_label, max_classes, jobs, quiet, runner=run_local):
    """The union of the label values of every case (the cases that cannot be read fail)."""
    cases = dataset.cases
    values, failed = [], {}
    bar = _progress(len(cases), "scanning labels", quiet)
    for record in runner(cases, scan_case, _jobs(jobs, len(cases)), max_classes=max_classes):
        bar.update()
        if record["status"] == "failed":
            failed[record["name"]] = record
        else:
            values.append(record["values"])
    bar.close()
    classes = [v for v in union_of_values(values) if v != ignore_label]
    if len(classes) > max_classes:
        raise UsageError(f"the inputs hold {len(classes)} distinct label values, more than --max-classes "
                         f"{max_classes}: are some of them images? Pass --classes, or raise --max-classes")
    if not classes:
        raise UsageError("no label file could be read, so there is no class list: "
                         + "; ".join(f"{name}: {r['error']}" for name, r in list(failed.items())[:3]))
    return classes, ignore_label, failed


def _open_manifest(output_dir: Path, settings: Settings, overwrite: bool) -> Manifest:
    header = {"tool": "rwmaps", "version": __version__, "parameters": settings.manifest_parameters(),
              "classes": list(settings.classes), "engine": settings.engine}
    previous = Manifest.load(output_dir)
    if previous is None or overwrite:
        return Manifest(output_dir, header)
    if previous.header.get("parameters") != header["parameters"]:
        changed = _changed(previous.header.get("parameters") or {}, header["parameters"])
        raise _Usage(f"{output_dir} holds maps made with other parameters ({changed}); "
                     "use another --output, or --overwrite to recompute them all")
    return Manifest(output_dir, header, previous.cases)


def _changed(before: dict, now: dict) -> str:
    keys = sorted(set(before) | set(now), key=str)
    return ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k))


def _compute_cases(todo: list[Case], settings: Settings, manifest: Manifest, jobs, quiet, debug,
                   runner=run_local) -> dict:
    outcome = {"done": 0, "failed": 0, "outside_classes": 0}
    if not todo:
        return outcome
    jobs = _jobs(jobs, len(todo))
    itemsize = np.dtype(settings.dtype).itemsize
    need = {case.name: case_memory_need(case, len(settings.classes), itemsize) for case in todo}
    budget = available_memory()
    too_big = {case.name for case in todo if need[case.name] > budget and runner is run_local}  # Dask: worker limits
    by_name = {case.name: case for case in todo}
    runnable = [case for case in todo if case.name not in too_big]
    results = runner(runnable, process_case, jobs, memory_need=lambda case: need[case.name],
                     settings=settings, threads=threads_per_case(jobs))
    too_big_results = ({"name": name, "status": "failed", "seconds": None,
                        "error": f"needs about {need[name] / 2**30:.1f} GiB of memory, more than the "
                                 f"{budget / 2**30:.1f} GiB available"} for name in too_big)
    bar = _progress(len(todo), "computing maps", quiet)
    for record in itertools.chain(too_big_results, results):  # lazily: the bar moves as cases finish
        case = by_name[record["name"]]
        manifest.record(case, record)
        outcome[record["status"]] += 1
        bar.update()
        if record["status"] == "failed":
            outcome["outside_classes"] += "not in the class list" in record["error"]
            with tqdm.external_write_mode(file=sys.stderr):  # keeps the bar intact
                _report_failure(case.input, record, debug)
    bar.close()
    return outcome


def _report_failure(path: Path, record: dict, debug: bool) -> None:
    click.echo(f"rwmaps: {path}: {record['error']}", err=True)
    if debug and record.get("traceback"):
        click.echo(record["traceback"], err=True)


def _progress(total: int, description: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=description, unit="case", file=sys.stderr,
                disable=quiet or not sys.stderr.isatty(), leave=False)


def _jobs(jobs: int | None, n_cases: int) -> int:
    return max(1, min(jobs or os.cpu_count() or 1, n_cases))


def _runner(scheduler: str | None, jobs: int):
    """``run_local``, or with --scheduler the Dask runner with the same call and records.

    The Dask client (and a ``local`` cluster of ``jobs`` workers) is set up now, so a missing
    Dask or an unreachable scheduler is a usage error before any work, and stays up until the
    command ends.  ``memory_need`` is local-only: Dask workers have their own memory limits.
    """
    if scheduler is None:
        return run_local
    from .cluster import dask_client, run_dask

    client = click.get_current_context().with_resource(dask_client(scheduler, jobs))

    def run_on_dask(cases, work, jobs, memory_need=None, **kwargs):
        return run_dask(cases, work, client, **kwargs)

    return run_on_dask


@cli.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON (for scripts).")
@click.option("--png", "png", type=click.Path(path_type=Path), metavar="OUT.png",
              help="Also draw the label slice and one panel per class map into this PNG.")
@click.option("--axis", type=int, default=None,
              help="Array axis the --png slice is across.  [default: the S-I axis when the file has an "
                   "orientation, else the last axis]")
@click.option("--slice", "slice_index", type=int, default=None,
              help="Index of the --png slice along --axis (give both).  [default: through the middle of the "
                   "foreground, showing the most classes]")
def inspect_command(file, as_json, png, axis, slice_index) -> None:
    """Show what a label file or a map file holds.

    \b
    Example:
        rwmaps inspect maps/case_000.nii.gz
        rwmaps inspect maps/case_000.npy --json
        rwmaps inspect maps/case_000.nii.gz --png case_000.png --axis 2

    Tells a map written by rwmaps compute (any format) from a label file, and prints its
    shape, dtype, voxel spacing, orientation and, per class / channel, the label value,
    the voxel count and, for a map, the value range and whether the values fit its kind.
    Exit code: 0 on success, 1 when the file cannot be read, 2 for a usage error.
    """
    import json

    from .errors import InputError
    from .inspection import check_slice, describe, draw_png, format_table, spatial_shape

    try:
        info = describe(file)
    except InputError as error:
        click.echo(f"rwmaps: {file}: {error}", err=True)
        sys.exit(1)
    if png is not None:
        try:
            check_slice(spatial_shape(info), axis, slice_index)
        except ValueError as error:  # --axis / --slice out of range
            raise _Usage(str(error)) from None
    click.echo(json.dumps(info, indent=1) if as_json else format_table(info))
    if png is None:
        return
    try:
        drawn = draw_png(file, png, axis=axis, index=slice_index)
    except InputError as error:
        click.echo(f"rwmaps: {file}: {error}", err=True)
        sys.exit(1)
    except OSError as error:  # the PNG cannot be written
        click.echo(f"rwmaps: {png}: cannot write ({error.strerror or error})", err=True)
        sys.exit(1)
    where = "" if drawn["axis"] is None else f"; axis {drawn['axis']}, slice {drawn['slice']}"
    click.echo(f"rwmaps: wrote {drawn['path']} ({drawn['width']} × {drawn['height']} px{where})", err=True)


@cli.command("verify")
@click.option("--input", "input_dir", required=True, type=click.Path(path_type=Path),
              help="The label folder given to rwmaps compute.")
@click.option("--output", "output_dir", required=True, type=click.Path(path_type=Path),
              help="The maps folder (with its rwmaps.json).")
@click.option("--sample", type=click.IntRange(min=0), default=None, metavar="N",
              help="Recompute only N cases, evenly spaced over the sorted case list (first and last "
                   "included; the same cases every run).  [default: all]")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Cases recomputed in parallel.  [default: all cores]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary; problems are still printed.")
def verify_command(input_dir, output_dir, sample, jobs, quiet) -> None:
    """Check that a maps folder is complete and right.

    \b
    Example:
        rwmaps verify --input labels/ --output maps/
        rwmaps verify --input Dataset001_Liver/ --output maps/ --sample 20

    Checks that every label file has a complete map that agrees with the manifest
    (rwmaps.json), that the manifest lists no other case, and recomputes the maps of
    --sample cases with the manifest's parameters: float32 maps must agree within
    rtol = atol = 1e-5, float16 maps within 1e-3.  Prints every problem on one line
    (PATH: problem) on stdout, and a summary on stderr.
    Exit code: 0 when all is well, 1 when there is any problem, 2 for a usage error.
    """
    from .verify import verify

    start = time.perf_counter()
    bar = tqdm(desc="recomputing maps", unit="case", file=sys.stderr, disable=quiet or not sys.stderr.isatty(),
               leave=False)
    try:
        report = verify(input_dir, output_dir, sample=sample, jobs=jobs or os.cpu_count() or 1,
                        progress=bar.update)
    except UsageError as error:
        raise _Usage(str(error)) from None
    finally:
        bar.close()
    for problem in report.problems:
        click.echo(problem)
    if not quiet:
        outcome = (f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}"
                   if report.problems else "all is well")
        click.echo(f"rwmaps verify: {outcome}; {report.cases} label files, {report.maps} maps checked, "
                   f"{report.recomputed} recomputed and compared; {time.perf_counter() - start:.1f} s", err=True)
    sys.exit(1 if report.problems else 0)


def main() -> None:
    cli(prog_name="rwmaps")


__all__ = ["cli", "main", "MANIFEST_NAME"]
