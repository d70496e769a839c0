"""One owner per file format, and a registry that picks one by file name.

Each format is a small :class:`~rwmaps_cli.formats.base.FileFormat` object (the model is
nnU-Net v2's ``imageio/``): ``nifti.py`` (nibabel), ``sitk.py`` (SimpleITK: MetaImage,
NRRD, PNG, TIFF), ``numpy.py`` (``.npy``, ``.npz``), ``nnunet.py`` (nnU-Net's preprocessed
segs).  To add a format, write one such object and list it in ``FORMATS``; nothing else in
the package looks at a suffix.  A format whose files carry another format's suffix is chosen
by the name it carries (``FileFormat.reader_name``, e.g. ``read_labels(path, reader="nnunet")``).

The functions here are the whole file API the rest of rwmaps uses: read a label volume
(:func:`read_labels`, :func:`read_shape`, :func:`read_geometry`), write a map atomically
(:func:`write_map`), and read what a map file says about itself (:func:`read_map_header`,
:func:`load_map_array`).  The libraries behind each format are imported on first use.
The file contract they implement is in ``docs/design.md`` ("Files").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rwmaps_cli.contract import check_layout
from rwmaps_cli.errors import InputError

from . import base
from .base import (
    DEFAULT_COMPRESSLEVEL,
    DEFAULT_LAYOUT,
    SCHEMA,
    TMP_MARKER,
    FileFormat,
    LabelVolume,
    MapContent,
    MapHeader,
    capturing_library_output,
    clean_temporaries,
    input_errors,
    newer_schema,
)
from .nifti import NiftiFormat
from .nnunet import NnunetSegFormat
from .numpy import NpyFormat, NpzFormat, npy_header
from .sitk import SitkFormat, sitk_affine

FORMATS: tuple[FileFormat, ...] = (
    NiftiFormat(".nii.gz"),
    NiftiFormat(".nii"),
    SitkFormat("MetaImage", (".mha", ".mhd"), "MetaImageIO"),
    SitkFormat("NRRD", (".nrrd", ".nhdr"), "NrrdImageIO"),
    SitkFormat("PNG", (".png",), "PNGImageIO"),
    SitkFormat("TIFF", (".tif", ".tiff"), "TIFFImageIO"),
    NpzFormat(),
    NpyFormat(),
    NnunetSegFormat(),
)
_BY_NAME = {file_format.reader_name: file_format for file_format in FORMATS if file_format.reader_name}  # readers chosen by name (read_labels)
LABEL_SUFFIXES = tuple(suffix for file_format in FORMATS for suffix in file_format.suffixes)
OUTPUT_FORMATS = tuple(file_format.output_name for file_format in FORMATS if file_format.output_name)
DEFAULT_FORMAT = "nii.gz"  # --format: what 4D NIfTI tools and nnU-Net's raw datasets read
OUTPUT_DTYPES = {file_format.output_name: file_format.map_dtypes for file_format in FORMATS if file_format.output_name}
OUTPUT_STORES_CLASSES = {file_format.output_name: file_format.stores_classes for file_format in FORMATS if file_format.output_name}
_BY_OUTPUT_NAME = {file_format.output_name: file_format for file_format in FORMATS if file_format.output_name}


def label_suffix(path: str | os.PathLike) -> str | None:
    """The registered suffix ``path``'s name ends with (case-insensitive), or None.

    None too for a bare suffix such as ``.nii.gz`` and for this tool's own temporaries
    (names containing ``TMP_MARKER``), which are never inputs.
    """
    name = Path(path).name.lower()
    if TMP_MARKER in name:
        return None
    for suffix in LABEL_SUFFIXES:  # ".nii.gz" is listed before ".nii"
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def format_for(path: str | os.PathLike) -> FileFormat:
    """The format that owns ``path``'s suffix; InputError (one line) for an unknown one."""
    suffix = label_suffix(path)
    if suffix is None:
        raise InputError(f"unsupported file type; expected one of {', '.join(LABEL_SUFFIXES)}")
    return next(file_format for file_format in FORMATS if suffix in file_format.suffixes)


def format_name(path: str | os.PathLike) -> str:
    """A human name of the file's format, such as ``"NIfTI (.nii.gz)"`` or ``"NRRD"``."""
    suffix = label_suffix(path)
    if suffix is None:
        return Path(path).suffix
    file_format = format_for(path)
    return f"{file_format.name} ({suffix})" if file_format.name == "NIfTI" else file_format.name


def output_format(path: str | os.PathLike) -> str:
    """The ``OUTPUT_FORMATS`` entry ``path`` ends with; ValueError otherwise."""
    name = Path(path).name.lower()
    for fmt in OUTPUT_FORMATS:  # "nii.gz" is tried before "nii"
        if name.endswith("." + fmt):
            return fmt
    raise ValueError(f"{path}: output name must end with one of {', '.join('.' + f for f in OUTPUT_FORMATS)}")


def is_output_file(path: str | os.PathLike, fmt: str) -> bool:
    """Whether ``path``'s name is that of a map in output format ``fmt``."""
    try:
        return output_format(path) == fmt
    except ValueError:
        return False


def output_is_compressed(fmt: str) -> bool:
    """Whether output format ``fmt`` compresses its maps (gzip, deflate)."""
    return _BY_OUTPUT_NAME[fmt].compressed


def can_mmap(path: str | os.PathLike) -> bool:
    """Whether a map in ``path``'s format can be loaded as a memory map."""
    return _BY_OUTPUT_NAME[output_format(path)].can_mmap


def output_path(input_path: str | os.PathLike, input_root: str | os.PathLike, output_root: str | os.PathLike,
                fmt: str) -> Path:
    """Mirror ``input_path`` from ``input_root`` into ``output_root`` with extension ``fmt``.

    ``labels/sub/case.nii.gz`` -> ``maps/sub/case.<fmt>``.  ValueError if ``fmt`` is not
    in ``OUTPUT_FORMATS``, the name has no label suffix, or the input is not under
    ``input_root``.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    input_path = Path(input_path)
    suffix = label_suffix(input_path)
    if suffix is None:
        raise ValueError(f"{input_path}: not a label file name (expected one of {', '.join(LABEL_SUFFIXES)})")
    try:
        relative = input_path.relative_to(input_root)
    except ValueError:  # one side relative, the other absolute, or via symlinks
        try:
            relative = input_path.resolve().relative_to(Path(input_root).resolve())
        except ValueError:
            raise ValueError(f"{input_path} is not under the input root {input_root}") from None
    stem = relative.name[: -len(suffix)]
    return Path(output_root) / relative.parent / f"{stem}.{fmt}"


def atomic_path(path: str | os.PathLike):
    """:func:`rwmaps_cli.formats.base.atomic_path` keeping the whole registered suffix
    (``.nii.gz``, not ``.gz``) at the end of the temporary's name."""
    return base.atomic_path(path, suffix=label_suffix(path) or Path(path).suffix)


# --------------------------------------------------------------------------- labels


def read_labels(path: str | os.PathLike, reader: str | None = None) -> LabelVolume:
    """Read a 2D or 3D label volume; see :class:`LabelVolume` for what comes back.

    ``reader``: a format by name instead of by suffix (``"nnunet"``: nnU-Net's preprocessed
    ``.npy`` / ``.npz`` segs, whose suffixes other formats own).

    Raises
    ------
    InputError
        Unsupported name, missing or unreadable file, truncated or corrupt data, a dtype
        that cannot hold labels, vector pixels, or not 2D/3D.  One line, without the path.
    """
    path = Path(path)
    file_format = _reader(path, reader)
    with input_errors(path, file_format.name):
        return file_format.read_labels(path)


def read_shape(path: str | os.PathLike, reader: str | None = None) -> tuple[int, ...]:
    """Spatial shape of ``read_labels(path).array`` from the header only (cheap)."""
    path = Path(path)
    file_format = _reader(path, reader)
    with input_errors(path, file_format.name):
        return file_format.read_shape(path)


def read_geometry(path: str | os.PathLike, reader: str | None = None) -> tuple[tuple[float, ...], np.ndarray | None]:
    """(spacing per array axis, RAS+ affine or None) of a label file, from its header."""
    path = Path(path)
    file_format = _reader(path, reader)
    with input_errors(path, file_format.name):
        return file_format.read_geometry(path)


def _reader(path: Path, reader: str | None) -> FileFormat:
    """The format named ``reader``, or the one that owns ``path``'s suffix."""
    if reader is None:
        return format_for(path)
    try:
        return _BY_NAME[reader]
    except KeyError:
        raise ValueError(f"unknown reader {reader!r}; expected one of {', '.join(sorted(_BY_NAME))}") from None


# --------------------------------------------------------------------------- maps


def write_map(
    path: str | os.PathLike,
    data: np.ndarray,
    volume: LabelVolume,
    classes: Sequence[int] | np.ndarray,
    kind: str,
    layout: str = DEFAULT_LAYOUT,
    compresslevel: int | None = None,
    threads: int = 1,
) -> None:
    """Write a map atomically; the format follows ``path``'s suffix.

    Parameters
    ----------
    path : path ending with .nii.gz, .nii, .npz or .npy
    data : ndarray, float32 (any format) or float16 (.npz, .npy)
        ``(C, *volume.array.shape)`` for ``layout="full"``, ``volume.array.shape`` for
        ``"compact"``; written in its dtype.
    volume : LabelVolume
        The labels the map was computed from (geometry for the output).
    classes : sequence of int
        The label value of each channel (full), or the class list (compact).
    kind : str
        The map kind, e.g. ``"rrw"``; stored in the file where the format can.
    layout : {"full", "compact"}
    compresslevel : int, 0-9, optional
        A zlib level for .nii.gz and .npz.  Default: .nii.gz through ISA-L at its level 2
        (standard gzip, 4-5x faster than zlib at about zlib 1's size: see
        ``formats/nifti.py``), .npz at zlib level 1.
    threads : int
        Threads that may compress (ISA-L's .nii.gz: the bytes then differ, the map not).

    Raises
    ------
    ValueError
        An unsupported suffix, dtype or layout, or mismatched shapes.
    """
    path = Path(path)
    file_format = _BY_OUTPUT_NAME[output_format(path)]
    classes = np.asarray(classes, dtype=np.int64)
    _check_map(file_format, data, volume, classes, kind, layout, compresslevel)
    with atomic_path(path) as tmp:
        file_format.write_map(tmp, path, data, volume, MapContent(classes, kind, layout), compresslevel, threads)


def _check_map(file_format: FileFormat, data, volume: LabelVolume, classes: np.ndarray, kind: str, layout: str,
               compresslevel: int) -> None:
    if not isinstance(data, np.ndarray) or data.dtype not in file_format.map_dtypes:
        dtype = getattr(data, "dtype", type(data).__name__)
        allowed = " or ".join(str(d) for d in file_format.map_dtypes)
        raise ValueError(f"cannot write a {dtype} map as .{file_format.output_name}; expected {allowed}")
    check_layout(kind, layout)  # the contract's rule
    expected = volume.array.shape if layout == "compact" else (len(classes), *volume.array.shape)
    if layout == "full" and data.shape[1:] != volume.array.shape:
        raise ValueError(f"map shape {data.shape} does not match (C, *{volume.array.shape})")
    if layout == "full" and classes.shape != (data.shape[0],):
        raise ValueError(f"{classes.size} classes for {data.shape[0]} map channels")
    if data.shape != expected:
        raise ValueError(f"{layout} map shape {data.shape} does not match {expected}")
    if compresslevel is not None and not 0 <= compresslevel <= 9:
        raise ValueError(f"compresslevel must be 0..9, got {compresslevel}")


def header_says_map(path: str | os.PathLike) -> bool | None:
    """Whether the file says it is a map: True, False, or None when it cannot tell
    (a bare 2D/3D float ``.npy``, a 4D NIfTI without rwmaps' description).  Never raises."""
    try:
        return format_for(path).header_says_map(Path(path))
    except Exception:  # unreadable: the reader will say why
        return False


def read_map_header(path: str | os.PathLike) -> MapHeader:
    """What a map file's header says (shape, rank, layout, kind, dtype...); see :class:`MapHeader`."""
    path = Path(path)
    file_format = format_for(path)
    with input_errors(path, file_format.name):
        return file_format.read_map_header(path)


def load_map_array(path: str | os.PathLike, mmap: bool = False) -> tuple[np.ndarray, MapHeader]:
    """The map array of a file in its logical shape (float32, or the stored dtype with
    ``mmap``) and its :class:`MapHeader`.  Use :func:`rwmaps_cli.load_map` in training code."""
    path = Path(path)
    file_format = format_for(path)
    with input_errors(path, file_format.name):
        return file_format.load_map(path, mmap)


__all__ = [
    "DEFAULT_COMPRESSLEVEL", "FORMATS", "LABEL_SUFFIXES", "DEFAULT_FORMAT", "OUTPUT_DTYPES", "OUTPUT_FORMATS", "OUTPUT_STORES_CLASSES", "SCHEMA", "TMP_MARKER",
    "FileFormat", "LabelVolume", "MapHeader", "atomic_path", "capturing_library_output", "clean_temporaries", "format_for", "format_name",
    "header_says_map", "label_suffix", "load_map_array", "npy_header", "output_format", "output_path", "read_geometry",
    "newer_schema", "read_labels", "read_map_header", "read_shape", "sitk_affine", "write_map",
]
