"""The ``rwmaps`` command: click options in, one service call, lines out.

The services (``compute.py``, ``verify.py``, ``inspect/``) hold the policy and name their
options as Python spells them, in backquotes (``space_check=False``); :func:`in_flags`
turns each into the flag a user of this command typed (``--no-space-check``).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from . import __version__
from .errors import UsageError
from .formats import DEFAULT_FORMAT, OUTPUT_FORMATS
from .contract import (DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_ENGINE, DEFAULT_KIND, DEFAULT_LAYOUT,
                       DEFAULT_MAX_CLASSES, DEFAULT_SPACING, DTYPE_NAMES, ENGINES, KINDS, LAYOUTS, SPACINGS)


#: The flag of each service option whose name is not its flag's (``output_dir`` is ``--output``).
FLAG_OF_OPTION = {"input_dir": "--input", "output_dir": "--output", "fmt": "--format", "classes_text": "--classes"}
_OPTION = re.compile(r"`(?P<name>[a-z][a-z_]*)(?:=(?P<value>[^`]*))?`")


def in_flags(message: str) -> str:
    """``message`` with each service option (```name=value```) written as its flag.

    ```space_check=False``` becomes ``--no-space-check``, ```strict=True``` ``--strict``,
    ```layout=compact``` ``--layout compact`` and ```classes``` ``--classes``.
    """
    def flag(match: re.Match) -> str:
        option = FLAG_OF_OPTION.get(match["name"], "--" + match["name"].replace("_", "-"))
        value = match["value"]
        if value == "False":
            return "--no-" + option[2:]
        return option if value in (None, "True") else f"{option} {value}"

    return _OPTION.sub(flag, message)


class _Usage(click.ClickException):
    """A usage error found before any work: one line, exit code 2, in the style of every
    other line rwmaps prints (``rwmaps: ...``), with the command's flags."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"rwmaps: {in_flags(self.format_message())}", err=True)


EXIT_ON_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as shells report it


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rwmaps")
def cli() -> None:
    """Precompute Region-wise loss maps for a dataset of segmentation label volumes."""


def _quiet_libraries() -> None:
    """rwmaps owns the terminal while a command runs: what a library prints while reading a
    file goes into that file's one line, or nowhere (``formats.capturing_library_output``)."""
    from .formats import capturing_library_output

    click.get_current_context().with_resource(capturing_library_output())


@cli.command()
@click.option("--input", "input_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of label files, searched recursively; one label file; an nnU-Net dataset / labelsTr "
                   "folder; or an nnU-Net v2 preprocessed folder ($nnUNet_preprocessed/DatasetXXX/nnUNetPlans_3d_fullres).")
@click.option("--output", "output_dir", type=click.Path(path_type=Path),
              help="Folder for the maps; mirrors the input tree.  [required; for an nnU-Net preprocessed folder "
                   "the default is its sibling <folder>_rwmaps]")
@click.option("--kind", type=click.Choice(KINDS), default=DEFAULT_KIND, show_default=True,
              help="rrw: rectified RW map; boundary: signed distance; kervadec: LIVIAETS Boundary-loss map; "
                   "ac: Active-Contour RW map; sdf: normalised signed distance in [-1, 1] (DTC).")
@click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default=None,
              help="Output format. nii.gz/nii: X*Y*Z*C NIfTI with the input affine; npz/npy: (C, *spatial). "
                   f"npy and nii are the fastest (no compression).  [default: {DEFAULT_FORMAT}; npy for nnU-Net's "
                   "preprocessed data]")
@click.option("--layout", type=click.Choice(LAYOUTS), default=DEFAULT_LAYOUT, show_default=True,
              help="full: one channel per class, the file any training code loads; compact (rrw only): one "
                   "channel, each voxel's own-class value, C times smaller; rwmaps_cli.load_map / expand_map "
                   "rebuild the full map from it and the labels.")
@click.option("--classes", "classes_text", metavar="V,V,...",
              help="Label values, one channel each, in this order (e.g. 0,1,2,4).  "
                   "[default: dataset.json's labels, else every value found in the inputs]")
@click.option("--num-classes", type=click.IntRange(min=1), help="Shorthand for --classes 0,1,...,N-1.")
@click.option("--spacing", type=click.Choice(SPACINGS), default=DEFAULT_SPACING, show_default=True,
              help="Distances in voxels (as the paper), or in mm from the voxel sizes in each file header.")
@click.option("--slice-axis", type=int, default=None,
              help="Compute 2D maps on each slice along this array axis (what a 2D network sees).  "
                   "[default: 3D maps]")
@click.option("--engine", type=click.Choice(ENGINES), default=DEFAULT_ENGINE, show_default=True,
              help="edt: one multi-label distance transform for all classes; scipy: one per class (reference); "
                   "torch: the multi-label transform in PyTorch, on a GPU when there is one (pip install -e "
                   "'.[torch]').")
@click.option("--device", default=DEFAULT_DEVICE, show_default=True, metavar="auto|cpu|cuda|cuda:N",
              help="Where --engine torch computes: auto is the first GPU PyTorch sees, else the CPU.")
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default=DEFAULT_DTYPE, show_default=True,
              help="Data type of the maps; float16 only with --format npz or npy (NIfTI has no float16).")
@click.option("--ignore-label", type=int, default=None,
              help="Label value that gets 0 in every channel and no channel of its own.  "
                   "[default: dataset.json's 'ignore' entry, if any]")
@click.option("--max-classes", type=click.IntRange(min=1), default=DEFAULT_MAX_CLASSES, show_default=True,
              help="Refuse an automatic class list longer than this (an image mistaken for labels).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Cases computed in parallel.  [default: all cores; 4 with --engine torch on a GPU]")
@click.option("--scheduler", metavar="ADDRESS",
              help="Compute on a Dask cluster: its scheduler (tcp://HOST:PORT, or a scheduler file), or 'local' "
                   "for a LocalCluster of --jobs worker processes here. The workers must see the same files; "
                   "needs pip install -e '.[dask]' in the rwmaps clone.  [default: local processes (joblib)]")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files whose name (or path under --input) matches; repeatable.  "
                   "E.g. --include '*_seg.nii.gz' when images and labels share a folder.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files whose name (or path) matches; repeatable.")
@click.option("--strict", is_flag=True,
              help="Refuse a class list (--classes, --num-classes, dataset.json) with values that occur in no "
                   "case (a typo gives a constant channel); costs one extra read of every case.")
@click.option("--no-space-check", is_flag=True,
              help="Start even when the output file system seems to lack the space the maps need.")
@click.option("--num-parts", type=click.IntRange(min=1), default=None,
              help="Split the cases into N parts (a job array), by sorted name; see --part-id.")
@click.option("--part-id", type=click.IntRange(min=0), default=None,
              help="Compute part I (0..N-1) of --num-parts N.  Parts may run at once into one --output; each "
                   "records its cases in its own manifest file, and verify and reruns see them all.")
@click.option("--overwrite", is_flag=True,
              help="Recompute every case, even those already done, and allow other parameters than the "
                   "output folder's maps were made with.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary; errors are still printed.")
@click.option("--debug", is_flag=True, help="Print a traceback for internal errors.")
def compute(input_dir, output_dir, kind, fmt, layout, classes_text, num_classes, spacing, slice_axis, engine, device,
            dtype, ignore_label, max_classes, jobs, include, exclude, strict, no_space_check, num_parts, part_id, overwrite,
            quiet, debug, scheduler) -> None:
    """Compute the maps of every label file under --input into --output.

    \b
    Example:
        rwmaps compute --input labels/ --output maps/
        rwmaps compute --input Dataset001_Liver/ --output maps/ --kind boundary --format npy
        rwmaps compute --input $nnUNet_preprocessed/Dataset001_Liver/nnUNetPlans_3d_fullres

    A rerun skips the cases already done (see rwmaps.json in the output folder).
    Exit code: 0 when every case succeeded, 1 when any failed, 2 for a usage error.
    """
    from .compute import compute_dataset

    _quiet_libraries()
    start = time.perf_counter()

    def report_failure(path: Path, result) -> None:
        with tqdm.external_write_mode(file=sys.stderr):  # keeps the bar intact
            _report_failure(path, result, debug)

    try:
        outcome = compute_dataset(
            input_dir, output_dir, kind=kind, fmt=fmt, layout=layout,
            classes=_class_list(classes_text, num_classes), spacing=spacing, slice_axis=slice_axis, engine=engine,
            device=device, dtype=dtype, ignore_label=ignore_label, max_classes=max_classes, jobs=jobs, scheduler=scheduler,
            overwrite=overwrite, include=include, exclude=exclude, strict=strict, space_check=not no_space_check,
            part=_part(num_parts, part_id),
            progress=lambda total, description: _progress(total, description, quiet),
            on_failure=report_failure,
        )
    except UsageError as error:
        raise _Usage(str(error)) from None
    for hint in outcome.hints:
        click.echo(f"rwmaps: hint: {in_flags(hint)}", err=True)
    if outcome.stopped:
        why = "no space left on the output file system" if outcome.stopped == "disk full" else outcome.stopped
        click.echo(f"rwmaps: stopped ({why}): {outcome.done} done, {outcome.not_finished} not finished; "
                   "run the same command again to resume", err=True)
        sys.exit(EXIT_ON_SIGNAL.get(outcome.stopped, 1))
    if not quiet:
        removed = outcome.removed_temporaries
        click.echo(
            f"rwmaps: {outcome.done} done, {outcome.skipped} skipped (already done), {outcome.failed} failed, "
            f"{outcome.ignored_files} other files ignored"
            + (f", {removed} stale temporary file{'s' if removed > 1 else ''} removed" if removed else "")
            + (f"; {_channels(outcome.classes)}" if outcome.classes else "")
            + f"; {time.perf_counter() - start:.1f} s"
            + (f"; manifest {outcome.manifest}" if outcome.manifest else "; no manifest"),
            err=True,
        )
    sys.exit(1 if outcome.failed else 0)


def _channels(classes) -> str:
    """``4 channels (0, 1, 2, 3)``, or for many ``83 channels (label values 0 to 255)``."""
    values = list(classes)
    if len(values) <= 8:
        return f"{len(values)} channels ({', '.join(map(str, values))})"
    return f"{len(values)} channels (label values {min(values)} to {max(values)}; all in the manifest)"


def _part(num_parts: int | None, part_id: int | None) -> tuple[int, int] | None:
    if (num_parts is None) != (part_id is None):
        raise _Usage("give --num-parts and --part-id together")
    return None if num_parts is None else (part_id, num_parts)


def _class_list(classes_text: str | None, num_classes: int | None) -> list[int] | None:
    """The --classes or --num-classes list, or None (then dataset.json or the data decide)."""
    if classes_text and num_classes:
        raise _Usage("give --classes or --num-classes, not both")
    if num_classes:
        return list(range(num_classes))
    if not classes_text:
        return None
    try:
        classes = [int(v) for v in classes_text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise _Usage(f"--classes {classes_text!r}: expected comma-separated integers such as 0,1,2,4") from None
    return classes  # the service checks the list (classlist.settle_classes), with the ignore label


def _report_failure(path: Path, result, debug: bool) -> None:
    click.echo(f"rwmaps: {path}: {in_flags(result.error)}", err=True)
    if debug and result.traceback:
        click.echo(result.traceback, err=True)


def _progress(total: int, description: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=in_flags(description), unit="case", file=sys.stderr,
                disable=quiet or not sys.stderr.isatty(), leave=False)


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
@click.option("--max-classes", type=click.IntRange(min=1), default=DEFAULT_MAX_CLASSES, show_default=True,
              help="A label file with more distinct values is flagged as an image (as rwmaps compute does).")
def inspect_command(file, as_json, png, axis, slice_index, max_classes) -> None:
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

    _quiet_libraries()
    from .inspect import check_slice, describe, draw_png, format_table, spatial_shape

    try:
        info = describe(file, max_classes=max_classes)
    except InputError as error:
        click.echo(f"rwmaps: {file}: {in_flags(str(error))}", err=True)
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
        drawn = draw_png(file, png, axis=axis, index=slice_index, max_classes=max_classes)
    except InputError as error:
        click.echo(f"rwmaps: {file}: {in_flags(str(error))}", err=True)
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

    _quiet_libraries()

    start = time.perf_counter()
    try:
        report = verify(input_dir, output_dir, sample=sample, jobs=jobs,
                        progress=lambda total, description: _progress(total, description, quiet))
    except UsageError as error:
        raise _Usage(str(error)) from None
    for problem in report.problems:
        click.echo(in_flags(problem))
    if not quiet:
        outcome = (f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}"
                   if report.problems else "all is well")
        click.echo(f"rwmaps verify: {outcome}; {report.cases} label files, {report.maps} maps checked, "
                   f"{report.recomputed} recomputed and compared; {time.perf_counter() - start:.1f} s", err=True)
    sys.exit(1 if report.problems else 0)


def _attach_nnunet() -> None:
    """``rwmaps nnunet ...``: nnU-Net training with RW loss.  The group imports nnU-Net only
    when a command runs, and says which extra to install when it is missing."""
    from .nnunet.command import nnunet

    cli.add_command(nnunet)


_attach_nnunet()


def main() -> None:
    cli(prog_name="rwmaps")


__all__ = ["cli", "main"]
