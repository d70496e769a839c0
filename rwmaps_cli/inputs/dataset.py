"""A dataset on disk: its label files, where their maps go, and its class list."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..regions import LabelSpec, LabelSpecError, read_label_spec
from ..formats import LABEL_SUFFIXES, label_suffix, output_path
from .nnunet_preprocessed import PreprocessedError, check_output, is_preprocessed_folder, list_cases, open_preprocessed
from .nnunet_preprocessed import maps_folder_beside


@dataclass(frozen=True)
class Case:
    """One label file and the map file it becomes."""

    input: Path
    output: Path
    name: str  # the input's path relative to the input root, POSIX style: the case's key
    reader: str | None = None  # a format by name ("nnunet"), when the suffix does not say it


@dataclass(frozen=True)
class Dataset:
    """The label files found under an input folder."""

    labels_dir: Path  # where the label files are (``labelsTr`` for an nnU-Net dataset)
    cases: list[Case]
    skipped_files: list[Path]  # files that are not label files (ignored, counted)
    dataset_json: Path | None  # nnU-Net's dataset.json, when there is one
    preprocessed: object | None = None  # nnunet.preprocessed.PreprocessedFolder, for nnU-Net's preprocessed data


def find_dataset(input_dir: Path, output_dir: Path, fmt: str, include: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> Dataset:
    """Find every label file under ``input_dir`` and the map path each one gets.

    An nnU-Net raw dataset folder (with ``dataset.json`` and ``labelsTr/``) or its
    ``labelsTr`` folder reads only ``labelsTr``: the tree mirrored into ``output_dir`` is
    the one under ``labelsTr``.  ``input_dir`` may also be one label file.

    Parameters
    ----------
    include, exclude : sequences of glob patterns
        Keep only the files that match an ``include`` pattern (when any is given) and no
        ``exclude`` pattern.  A pattern matches the file name, or its path relative to the
        input folder (``sub/*_seg.nii.gz``); the others count as ignored files.

    Raises
    ------
    UsageError
        When the input does not exist or holds no label file, when the output folder
        is inside the input folder, or when two inputs would write the same map.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if is_preprocessed_folder(input_dir):
        return _preprocessed(input_dir, output_dir, fmt)
    if input_dir.is_file():
        return _single_file(input_dir, output_dir, fmt)
    if not input_dir.is_dir():
        raise UsageError(f"{input_dir}: input does not exist (give a folder of label files, or one file)")
    labels_dir, dataset_json = _nnunet_layout(input_dir)
    if _is_inside(output_dir, labels_dir):
        raise UsageError(f"{output_dir}: output folder is inside the input folder {labels_dir}; choose another")
    cases, skipped = [], []
    # Not only regular files: a broken or looping link, or a FIFO, with a label file's name is
    # a case that fails alone, named with its cause (the readers never open such a file).
    for path in sorted(p for p in labels_dir.rglob("*") if not p.name.startswith(".") and not p.is_dir()):
        name = path.relative_to(labels_dir).as_posix()
        if label_suffix(path) is None or not _selected(path.name, name, include, exclude):
            skipped.append(path)
        else:
            cases.append(Case(path, output_path(path, labels_dir, output_dir, fmt), name))
    if not cases:
        patterns = "".join(f" `include={p}`" for p in include) + "".join(f" `exclude={p}`" for p in exclude)
        raise UsageError(f"{labels_dir}: no label files found (looked for {', '.join(LABEL_SUFFIXES)}"
                         + (f";{patterns}" if patterns else "") + ")")
    _refuse_collisions(cases)
    return Dataset(labels_dir, cases, skipped, dataset_json)


def default_output(input_dir: Path) -> Path | None:
    """Where maps go when no output folder is given: beside nnU-Net's preprocessed folder
    (``<folder>_rwmaps``, never inside it); None for other inputs (an output is required)."""
    return maps_folder_beside(input_dir) if is_preprocessed_folder(input_dir) else None


def _preprocessed(folder: Path, output_dir: Path, fmt: str) -> Dataset:
    """nnU-Net's preprocessed configuration folder: its segs, read by the nnU-Net format."""
    try:
        preprocessed = open_preprocessed(folder)
        check_output(folder, output_dir)
        found = list_cases(folder)
    except PreprocessedError as error:
        raise UsageError(str(error)) from None
    cases = [Case(case.seg, Path(output_dir) / f"{case.name}.{fmt}", case.name, reader="nnunet") for case in found]
    return Dataset(folder, cases, [], preprocessed.dataset_json, preprocessed)


def _selected(file_name: str, relative: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    def matches(pattern: str) -> bool:
        return fnmatch.fnmatchcase(file_name, pattern) or fnmatch.fnmatchcase(relative, pattern)

    return (not include or any(map(matches, include))) and not any(map(matches, exclude))


def _single_file(path: Path, output_dir: Path, fmt: str) -> Dataset:
    """One label file as a dataset: its map goes to ``output_dir/<name>.<fmt>``."""
    if label_suffix(path) is None:
        raise UsageError(f"{path}: not a label file (expected one of {', '.join(LABEL_SUFFIXES)})")
    folder = path.parent
    dataset_json = folder.parent / "dataset.json" if folder.name == "labelsTr" else None
    case = Case(path, output_path(path, folder, output_dir, fmt), path.name)
    if case.output.resolve() == path.resolve():
        raise UsageError(f"{path}: the map would overwrite its own labels; choose another `output_dir`")
    return Dataset(folder, [case], [], dataset_json if dataset_json and dataset_json.is_file() else None)


def _nnunet_layout(input_dir: Path) -> tuple[Path, Path | None]:
    """(folder holding the labels, dataset.json or None) for a plain or nnU-Net input."""
    if (input_dir / "dataset.json").is_file() and (input_dir / "labelsTr").is_dir():
        return input_dir / "labelsTr", input_dir / "dataset.json"
    if input_dir.name == "labelsTr" and (input_dir.parent / "dataset.json").is_file():
        return input_dir, input_dir.parent / "dataset.json"
    return input_dir, None


def _is_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _refuse_collisions(cases: list[Case]) -> None:
    seen: dict[Path, Case] = {}
    for case in cases:
        other = seen.setdefault(case.output, case)
        if other is not case:
            raise UsageError(f"{case.input} and {other.input} would both write {case.output}; rename one")


def read_dataset_json(path: Path) -> LabelSpec:
    """The classes, ignore label and regions of an nnU-Net ``dataset.json`` (v1 or v2),
    as :func:`rwmaps_cli.regions.read_label_spec` reads them; a UsageError when unusable."""
    try:
        return read_label_spec(path)
    except LabelSpecError as error:
        raise UsageError(str(error)) from None


def union_of_values(value_sets: Iterable[np.ndarray]) -> list[int]:
    """Sorted union of the label values found in each case."""
    found: set[int] = set()
    for values in value_sets:
        found.update(int(v) for v in values)
    return sorted(found)
