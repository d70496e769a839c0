"""Read label volumes and write RW maps, one small reader/writer per format.

Readers (``read_labels``, ``read_shape``) turn NIfTI, SimpleITK-readable images and
numpy files into a :class:`LabelVolume`: the label array exactly as stored, plus the
voxel spacing and a RAS+ affine that both follow the *array's* axis order.  Every
failure to read becomes an :class:`~rwmaps_cli.errors.InputError` with a one-line
message, so one bad case never stops a dataset run.

Writers (``write_map``) store a ``(C, *spatial)`` map as 4D NIfTI (channels last),
``.npz`` or ``.npy`` (channels first), always through a temporary file that is renamed
onto the final name, so a killed run never leaves a half-written map under the real
name (``clean_temporaries`` removes the leftovers).
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from rwmaps_cli.errors import InputError

LABEL_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npy", ".npz", ".png", ".tif", ".tiff")
OUTPUT_FORMATS = ("nii.gz", "nii", "npz", "npy")
# Map dtypes each output format can store. NIfTI-1/2 have no float16 data type code
# (nibabel: 'HeaderDataError: data dtype float16 not supported').
OUTPUT_DTYPES = {
    "nii.gz": (np.dtype(np.float32),),
    "nii": (np.dtype(np.float32),),
    "npz": (np.dtype(np.float32), np.dtype(np.float16)),
    "npy": (np.dtype(np.float32), np.dtype(np.float16)),
}
TMP_MARKER = ".rwmaps-tmp-"

# gzip/deflate level for .nii.gz and .npz. Measured on a (4, 200, 256, 256) float32 map
# (nested noisy ellipsoids, 210 MB raw; 2-core machine, nibabel 5.4, numpy 2.4):
#   rrw map,      .nii.gz: level 1 2.2-2.4 s / 22.9 MB, level 6 3.7 s / 19.7 MB, level 9 6.0 s / 19.6 MB
#   boundary map, .nii.gz: level 1 5.3 s / 107.5 MB,    level 6 8.7 s / 99.6 MB,  level 9 10.3 s / 99.4 MB
#   rrw map, .npz: np.savez_compressed (zlib level 6) 2.5 s / 19.6 MB, level 1 1.1 s / 22.9 MB
#   boundary, .npz: savez_compressed 8.0 s / 101.8 MB, level 1 4.2 s / 110 MB
#   (an uncompressed .nii of the same map takes 1.5 s: ~1 s of it is the channels-last transpose)
# Level 1 is also nibabel's own default (Opener.default_compresslevel = 1, gzip XFL byte 4).
# Against level 6 it costs 8-16 % more disk and saves 38-56 % of the write time;
# level 9 buys < 1 % more.
DEFAULT_COMPRESSLEVEL = 1

_DESCRIP_BYTES = 80  # size of the NIfTI-1 'descrip' field
_NPZ_LABEL_KEYS = ("labels", "label", "seg", "segmentation", "arr_0")
_SITK_IMAGE_IO = {  # naming the ImageIO stops ITK from probing every reader (HDF5 floods stderr)
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".png": "PNGImageIO",
    ".tif": "TIFFImageIO",
    ".tiff": "TIFFImageIO",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)  # eq=False: fields are arrays, element-wise == is ambiguous
class LabelVolume:
    """A label volume as read from disk.

    Attributes:
        array: 2D or 3D label array, exactly as stored (bool, integer or float dtype;
            NIfTI scl_slope/scl_inter applied as nibabel does).
        spacing: voxel size per *array* axis, same order and length as ``array.shape``.
        affine: (4, 4) float64, maps an index of ``array`` (i, j[, k], 1) to RAS+ world mm.
            For a 2D array the third column is a unit z axis.
        nifti_header: the input's NIfTI header (None for other formats), so a NIfTI
            output keeps the input's qform/sform and their codes.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    nifti_header: nib.Nifti1Header | None = None


# --------------------------------------------------------------------------- names


def label_suffix(path: str | os.PathLike) -> str | None:
    """Return the ``LABEL_SUFFIXES`` entry that ``path``'s name ends with (case-insensitive).

    None for other names, for a bare suffix such as ``.nii.gz`` and for this tool's own
    temporaries (names containing ``TMP_MARKER``), which are never labels.
    """
    name = Path(path).name.lower()
    if TMP_MARKER in name:
        return None
    for suffix in LABEL_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def output_format(path: str | os.PathLike) -> str:
    """The ``OUTPUT_FORMATS`` entry ``path`` ends with; ValueError otherwise."""
    name = Path(path).name.lower()
    for fmt in OUTPUT_FORMATS:  # "nii.gz" is tried before "nii"
        if name.endswith("." + fmt):
            return fmt
    raise ValueError(f"{path}: output name must end with one of {', '.join('.' + f for f in OUTPUT_FORMATS)}")


def output_path(
    input_path: str | os.PathLike,
    input_root: str | os.PathLike,
    output_root: str | os.PathLike,
    fmt: str,
) -> Path:
    """Mirror ``input_path`` from ``input_root`` into ``output_root`` with extension ``fmt``.

    ``labels/sub/case.nii.gz`` -> ``maps/sub/case.<fmt>``. Raises ValueError if ``fmt`` is
    not in ``OUTPUT_FORMATS``, the name has no label suffix, or the input is not under
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


# --------------------------------------------------------------------------- errors


def _one_line(text: str, path: Path, limit: int = 200) -> str:
    """Collapse ``text`` to one line without ``path`` in it (the caller prints the path)."""
    for form in (str(path.resolve()), str(path), path.name):
        text = text.replace(form, "<file>")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _library_detail(exc: BaseException) -> str:
    """'Type: message' of a library exception, without SimpleITK's source-location noise."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Exception thrown in SimpleITK"):
        lines = lines[1:]  # "Exception thrown in SimpleITK ImageFileReader_Execute: /src/...cxx:99:"
        teem = [line for line in lines if line.startswith("[nrrd]")]
        lines = teem[-1:] or lines  # NRRD's chain ends with the innermost cause
        lines = [line for line in lines if not line.startswith("Reason:")]  # MetaImageIO prints a stale errno
    text = " ".join(lines)
    text = re.sub(r"(?:sitk|itk|ITK)(?:::| )ERROR: (?:\w+\(0x[0-9a-fA-F]+\): )?", "", text)
    return f"{type(exc).__name__}: {text}" if text.strip() else type(exc).__name__


@contextmanager
def _input_errors(path: Path, format_name: str) -> Iterator[None]:
    """Turn any failure to read ``path`` into a one-line InputError."""
    try:
        if path.is_dir():
            raise InputError("is a directory, not a file")
        with open(path, "rb"):  # fail early with a plain cause: missing file, no permission
            pass
        yield
    except InputError:
        raise
    except MemoryError:  # not a property of the file: let the caller retry with fewer workers
        raise
    except FileNotFoundError as exc:
        raise InputError("file not found") from exc
    except PermissionError as exc:
        raise InputError("permission denied") from exc
    except IsADirectoryError as exc:
        raise InputError("is a directory, not a file") from exc
    except Exception as exc:  # nibabel, SimpleITK, numpy and zipfile raise many types
        cause = f"cannot read: file is truncated or not a valid {format_name} ({_library_detail(exc)})"
        raise InputError(_one_line(cause, path)) from exc


def _check_ndim(shape: Sequence[int]) -> None:
    if len(shape) not in (2, 3):
        raise InputError(f"{len(shape)}D label volume (shape {tuple(int(n) for n in shape)}); expected 2D or 3D")
    if 0 in shape:
        raise InputError(f"empty label volume (shape {tuple(int(n) for n in shape)})")


def _check_labels(array: np.ndarray) -> np.ndarray:
    """Reject arrays that cannot be label volumes; return ``array`` unchanged."""
    # bool masks, integers and floats compare exactly with integer class values;
    # complex, object, string, datetime and structured (e.g. NIfTI RGB24) do not.
    if array.dtype.kind not in "biuf":
        raise InputError(f"unsupported label dtype {array.dtype}; expected integer or float labels")
    _check_ndim(array.shape)
    return array


def _diagonal_affine(spacing: Sequence[float]) -> np.ndarray:
    """(4, 4) affine with ``spacing`` on the diagonal (1 for a missing third axis)."""
    diagonal = list(spacing) + [1.0] * (3 - len(spacing)) + [1.0]
    return np.diag(np.asarray(diagonal, dtype=np.float64))


# --------------------------------------------------------------------------- NIfTI


def _squeeze_trailing(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop trailing singleton dims beyond the third: (X, Y, Z, 1) -> (X, Y, Z)."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _read_nifti(path: Path) -> LabelVolume:
    # mmap=False reads the voxels here and now, so a truncated file fails inside
    # read_labels, and no memory map keeps the input open afterwards.
    img = nib.load(path, mmap=False)
    shape = _squeeze_trailing(img.shape)
    _check_ndim(shape)
    # asanyarray(dataobj) keeps the stored integer dtype unless the header really
    # scales (scl_slope, scl_inter not in {nan, 0, 1} x {0}); get_fdata would give float64.
    array = np.asanyarray(img.dataobj).reshape(shape)
    zooms = img.header.get_zooms()[: len(shape)]
    return LabelVolume(
        array=_check_labels(array),
        spacing=tuple(float(z) for z in zooms),
        affine=np.asarray(img.affine, dtype=np.float64),
        nifti_header=img.header.copy(),
    )


def _shape_nifti(path: Path) -> tuple[int, ...]:
    shape = _squeeze_trailing(nib.load(path).shape)  # header only: nibabel loads lazily
    _check_ndim(shape)
    return shape


# --------------------------------------------------------------------------- SimpleITK


def _detached_data_file(path: Path) -> Path | None:
    """The data file a .mhd/.nhdr header names, when it is one plain file (not LOCAL/LIST/pattern)."""
    pattern = {".mhd": r"\s*ElementDataFile\s*=\s*(.+?)\s*$", ".nhdr": r"\s*data ?file\s*:\s*(.+?)\s*$"}.get(
        path.suffix.lower()
    )
    if pattern is None:
        return None
    with open(path, "rb") as f:
        header = f.read(65536).decode("latin-1")
    for line in header.splitlines():
        match = re.match(pattern, line, flags=re.IGNORECASE)
        if match:
            name = match.group(1)
            plain = name.upper() not in ("LOCAL", "LIST") and not re.search(r"[\s%]", name)
            return path.parent / name if plain else None
    return None


def sitk_reader(path: Path) -> sitk.ImageFileReader:
    """A reader with the header read and checked (dimension, components), data not loaded."""
    data_file = _detached_data_file(path)
    if data_file is not None and not data_file.is_file():
        # ITK's own message names the header, with a misleading cause; say which file is missing.
        raise InputError(f"data file {data_file.name!r} named in the header is missing")
    if path.suffix.lower() == ".png":
        with open(path, "rb") as f:
            if f.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:  # ITK reads such a file as a 0x0 image
                raise InputError("cannot read: not a valid PNG (no PNG signature)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_SITK_IMAGE_IO[label_suffix(path)])
    reader.ReadImageInformation()
    components = reader.GetNumberOfComponents()
    if components > 1:
        hint = " (ITK expands palette PNGs to RGB; save labels as grayscale)" if path.suffix.lower() == ".png" else ""
        raise InputError(f"has {components} components per pixel; expected a single-channel label image{hint}")
    _check_ndim(tuple(reversed(reader.GetSize())))
    return reader


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """RAS+ affine for the index order of ``sitk.GetArrayFromImage(image)``.

    ITK maps its index (i, j[, k]) to LPS by ``origin + direction @ diag(spacing) @ index``;
    the numpy array is indexed in reverse, (k, j, i), so the columns are reversed.
    A 2D image gets a unit z axis.
    """
    ndim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    columns = direction * np.asarray(image.GetSpacing(), dtype=np.float64)  # scales column c by spacing[c]
    lps = np.eye(4)
    lps[:ndim, :ndim] = columns[:, ::-1]
    lps[:ndim, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


def _read_sitk(path: Path) -> LabelVolume:
    image = sitk_reader(path).Execute()
    array = sitk.GetArrayFromImage(image)  # axes reversed from ITK's: (z, y, x)
    return LabelVolume(
        array=_check_labels(array),
        spacing=tuple(float(s) for s in reversed(image.GetSpacing())),
        affine=sitk_affine(image),
        nifti_header=None,
    )


def _shape_sitk(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in reversed(sitk_reader(path).GetSize()))


# --------------------------------------------------------------------------- numpy


def npy_header(fileobj: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an open .npy stream, reading the header only."""
    version = np.lib.format.read_magic(fileobj)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fileobj)
    else:  # 2.0; 3.0 differs only in utf-8 field names, which label arrays never have
        shape, _, dtype = np.lib.format.read_array_header_2_0(fileobj)
    return tuple(shape), dtype


def _read_npy(path: Path) -> LabelVolume:
    array = _check_labels(np.load(path, allow_pickle=False))
    spacing = (1.0,) * array.ndim
    return LabelVolume(array=array, spacing=spacing, affine=_diagonal_affine(spacing), nifti_header=None)


def _shape_npy(path: Path) -> tuple[int, ...]:
    with open(path, "rb") as f:
        shape, _ = npy_header(f)
    _check_ndim(shape)
    return shape


def _npz_label_key(keys: Sequence[str]) -> str:
    """The label array's key: the only array besides 'spacing', else a conventional name."""
    candidates = [k for k in keys if k != "spacing"]
    if len(candidates) == 1:
        return candidates[0]
    for key in _NPZ_LABEL_KEYS:
        if key in candidates:
            return key
    raise InputError(
        f"cannot tell which array holds the labels: keys are {sorted(keys)}; "
        f"expected a single array or one named {', '.join(_NPZ_LABEL_KEYS)}"
    )


def _read_npz(path: Path) -> LabelVolume:
    with np.load(path, allow_pickle=False) as npz:
        key = _npz_label_key(npz.files)
        array = _check_labels(npz[key])
        spacing = tuple(float(s) for s in npz["spacing"].ravel()) if "spacing" in npz.files else (1.0,) * array.ndim
    if len(spacing) != array.ndim:
        raise InputError(f"'spacing' has {len(spacing)} values for a {array.ndim}D label array")
    return LabelVolume(array=array, spacing=spacing, affine=_diagonal_affine(spacing), nifti_header=None)


def _shape_npz(path: Path) -> tuple[int, ...]:
    # Read the member's .npy header from the zip, so a large compressed volume is not inflated.
    with zipfile.ZipFile(path) as archive:
        names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        with archive.open(_npz_label_key(names) + ".npy") as member:
            shape, _ = npy_header(member)
    _check_ndim(shape)
    return shape


# --------------------------------------------------------------------------- reading API


@dataclass(frozen=True)
class _Reader:
    name: str  # format name for error messages
    read: Callable[[Path], LabelVolume]
    shape: Callable[[Path], tuple[int, ...]]


_NIFTI = _Reader("NIfTI", _read_nifti, _shape_nifti)
_READERS: dict[str, _Reader] = {
    ".nii.gz": _NIFTI,
    ".nii": _NIFTI,
    ".mha": _Reader("MetaImage", _read_sitk, _shape_sitk),
    ".mhd": _Reader("MetaImage", _read_sitk, _shape_sitk),
    ".nrrd": _Reader("NRRD", _read_sitk, _shape_sitk),
    ".nhdr": _Reader("NRRD", _read_sitk, _shape_sitk),
    ".png": _Reader("PNG", _read_sitk, _shape_sitk),
    ".tif": _Reader("TIFF", _read_sitk, _shape_sitk),
    ".tiff": _Reader("TIFF", _read_sitk, _shape_sitk),
    ".npy": _Reader(".npy", _read_npy, _shape_npy),
    ".npz": _Reader(".npz", _read_npz, _shape_npz),
}


def _reader_for(path: Path) -> _Reader:
    suffix = label_suffix(path)
    if suffix is None:
        raise InputError(f"unsupported file type; expected one of {', '.join(LABEL_SUFFIXES)}")
    return _READERS[suffix]


def read_labels(path: str | os.PathLike) -> LabelVolume:
    """Read a 2D or 3D label volume; see :class:`LabelVolume` for what comes back.

    Raises:
        InputError: unsupported name, missing or unreadable file, truncated or corrupt
            data, a dtype that cannot hold labels, vector pixels, or not 2D/3D.
    """
    path = Path(path)
    reader = _reader_for(path)
    with _input_errors(path, reader.name):
        return reader.read(path)


def read_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Spatial shape of ``read_labels(path).array`` from the header only (cheap).

    Raises InputError like :func:`read_labels` for what the header can reveal.
    """
    path = Path(path)
    reader = _reader_for(path)
    with _input_errors(path, reader.name):
        return reader.shape(path)


# --------------------------------------------------------------------------- writers


def _nifti_header(volume: LabelVolume, data_shape: tuple[int, ...], dtype: np.dtype, kind: str) -> nib.Nifti1Header:
    """A fresh header for the 4D map carrying only the input's geometry.

    Fresh rather than a copy of the input header: the label header's scl_slope/inter,
    cal_min/max, intent and extensions describe labels, not maps.
    """
    header = nib.Nifti1Header()
    header.set_data_shape(data_shape)
    header.set_data_dtype(dtype)
    source = volume.nifti_header
    if source is not None:
        # Matrices AND codes: img.affine alone would lose which of the two is set and
        # nibabel would pick its own codes.
        header.set_qform(source.get_qform(), code=int(source["qform_code"]))
        header.set_sform(source.get_sform(), code=int(source["sform_code"]))
        header["xyzt_units"] = source["xyzt_units"]
    else:
        header.set_qform(volume.affine, code=1)  # 1 = scanner
        header.set_sform(volume.affine, code=1)
        header.set_xyzt_units("mm")
    spatial = list(volume.spacing) + [1.0] * (3 - len(volume.spacing))
    header.set_zooms(tuple(spatial) + (1.0,))  # the 4th axis is channels, not time
    header["descrip"] = f"rwmaps {kind}".encode()[:_DESCRIP_BYTES]
    return header


def _write_nifti(tmp: Path, final: Path, maps: np.ndarray, volume: LabelVolume, classes: np.ndarray,
                 kind: str, compresslevel: int) -> None:
    data = np.moveaxis(maps, 0, -1)  # (C, *spatial) -> (*spatial, C): 4D NIfTI tools want channels last
    if data.ndim == 3:
        data = data[:, :, np.newaxis, :]  # (H, W, C) -> (H, W, 1, C): the 4th NIfTI dim is always channels
    header = _nifti_header(volume, data.shape, maps.dtype, kind)
    img = nib.Nifti1Image(data, None, header)  # affine None: keep the header's qform/sform untouched
    with open(tmp, "wb") as raw:
        if final.name.lower().endswith(".gz"):
            # Own GzipFile to choose the level; mtime=0 and the final name make the bytes reproducible.
            name_inside = final.name[: -len(".gz")]
            with gzip.GzipFile(name_inside, "wb", compresslevel=compresslevel, fileobj=raw, mtime=0) as stream:
                img.to_stream(stream)
        else:
            img.to_stream(raw)


def _write_npz(tmp: Path, final: Path, maps: np.ndarray, volume: LabelVolume, classes: np.ndarray,
               kind: str, compresslevel: int) -> None:
    arrays = {
        "map": maps,
        "classes": classes,
        "spacing": np.asarray(volume.spacing, dtype=np.float64),
        "kind": np.asarray(kind),  # 0-d unicode array: str(npz["kind"]) gives the kind back
    }
    # The layout of np.savez_compressed (one 'key.npy' member per array), written with
    # zipfile directly because savez_compressed has no compression level (it uses 6).
    compression = zipfile.ZIP_DEFLATED if compresslevel > 0 else zipfile.ZIP_STORED
    with open(tmp, "wb") as raw, zipfile.ZipFile(raw, "w", compression, compresslevel=compresslevel) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _write_npy(tmp: Path, final: Path, maps: np.ndarray, volume: LabelVolume, classes: np.ndarray,
               kind: str, compresslevel: int) -> None:
    with open(tmp, "wb") as raw:
        np.lib.format.write_array(raw, maps, allow_pickle=False)  # what np.save writes; mmap-able


_WRITERS = {"nii.gz": _write_nifti, "nii": _write_nifti, "npz": _write_npz, "npy": _write_npy}


def _temporary_name(path: Path) -> Path:
    """Hidden name beside ``path`` with TMP_MARKER that keeps the real suffix."""
    try:
        suffix = "." + output_format(path)
    except ValueError:
        suffix = path.suffix
    stem = path.name[: len(path.name) - len(suffix)][:100]  # stay far below 255-byte names
    return path.with_name(f".{stem}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Parent folders are created. If the body (or the rename) raises, the temporary is
    removed and the exception propagates, so ``path`` is either the old file or
    the complete new one. Usable for any file (e.g. a manifest), not only maps.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a temporary behind
        tmp.unlink(missing_ok=True)
        raise


def _check_map(fmt: str, maps: np.ndarray, volume: LabelVolume, classes: np.ndarray, compresslevel: int) -> None:
    if not isinstance(maps, np.ndarray) or maps.dtype not in OUTPUT_DTYPES[fmt]:
        dtype = getattr(maps, "dtype", type(maps).__name__)
        allowed = " or ".join(str(d) for d in OUTPUT_DTYPES[fmt])
        raise ValueError(f"cannot write a {dtype} map as .{fmt}; expected {allowed}")
    if maps.shape[1:] != volume.array.shape:
        raise ValueError(f"map shape {maps.shape} does not match (C, *{volume.array.shape})")
    if classes.shape != (maps.shape[0],):
        raise ValueError(f"{classes.size} classes for {maps.shape[0]} map channels")
    if not 0 <= compresslevel <= 9:
        raise ValueError(f"compresslevel must be 0..9, got {compresslevel}")


def write_map(
    path: str | os.PathLike,
    maps: np.ndarray,
    volume: LabelVolume,
    classes: Sequence[int] | np.ndarray,
    kind: str,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
) -> None:
    """Write ``maps`` atomically; the format follows ``path``'s suffix.

    Args:
        path: ends with .nii.gz, .nii, .npz or .npy.
        maps: (C, *volume.array.shape), float32 (any format) or float16 (.npz, .npy);
            written in that dtype.
        volume: the labels the map was computed from (geometry for the output).
        classes: the label value of each channel, length C.
        kind: map kind, e.g. "rrw"; stored in the NIfTI descrip / the npz ``kind`` key.
        compresslevel: 0-9, for .nii.gz and .npz.

    On disk:
        .nii/.nii.gz: 4D (*spatial, C), a 2D map as (H, W, 1, C); the input NIfTI's
            qform/sform with their codes, else volume.affine as both with code 1.
        .npz: ``map`` (C, *spatial), ``classes`` int64 (C,), ``spacing`` float64, ``kind`` str.
        .npy: (C, *spatial), memory-mappable.

    Raises ValueError for an unsupported suffix, dtype or mismatched shapes.
    """
    path = Path(path)
    fmt = output_format(path)
    classes = np.asarray(classes, dtype=np.int64)
    _check_map(fmt, maps, volume, classes, compresslevel)
    with atomic_path(path) as tmp:
        _WRITERS[fmt](tmp, path, maps, volume, classes, kind, compresslevel)


def npy_map_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the map array of a ``.npy`` map, or of an ``.npz`` map's ``map`` key."""
    if output_format(path) == "npy":
        with open(path, "rb") as f:
            return npy_header(f)
    with zipfile.ZipFile(path) as archive, archive.open("map.npy") as member:
        return npy_header(member)


def stored_map_shape(path: Path) -> tuple[int, ...]:
    """(C, *spatial) of a map file from its header; a NIfTI map's spatial part is always 3D."""
    if output_format(path) in ("npy", "npz"):
        return npy_map_header(path)[0]
    shape = tuple(int(n) for n in nib.load(path).shape)  # (*spatial, C)
    return (shape[-1], *shape[:-1])


def map_is_complete(path: str | os.PathLike, shape: Sequence[int] | None, nbytes: int | None) -> bool:
    """True when ``path`` holds a map of ``shape`` (C, *spatial) and exactly ``nbytes`` bytes.

    Cheap (file size and header only) and never raises. Enough because write_map is
    atomic: a map file with the recorded size and header is the one that was written.
    """
    if shape is None or nbytes is None:
        return False
    path = Path(path)
    expected = tuple(int(n) for n in shape)
    try:
        if path.stat().st_size != nbytes:
            return False
        stored = stored_map_shape(path)
    except Exception:  # missing, unreadable, not a map: it has to be computed again
        return False
    if len(expected) == 3 and len(stored) == 4 and stored[-1] == 1:  # 2D map stored as (H, W, 1, C)
        stored = stored[:-1]
    return stored == expected


def clean_temporaries(root: str | os.PathLike) -> int:
    """Delete files under ``root`` (recursively) whose name contains TMP_MARKER.

    They are left by a killed run. Do not call while another run writes into ``root``.
    Returns how many files were removed.
    """
    removed = 0
    for folder, _, files in os.walk(root):  # does not follow symlinked folders
        for name in files:
            if TMP_MARKER in name:
                try:
                    os.unlink(os.path.join(folder, name))
                except FileNotFoundError:  # already gone
                    continue
                removed += 1
    return removed


# --------------------------------------------------------------------------- loading maps


def load_map(path: str | os.PathLike, mmap: bool = False) -> tuple[np.ndarray, dict]:
    """Read a map written by ``rwmaps compute``, in any output format, channels first.

    Args:
        path: a ``.nii.gz``, ``.nii``, ``.npz`` or ``.npy`` map.
        mmap: ``.npy`` only: return ``np.load(path, mmap_mode="r")``, a read-only
            ``np.memmap`` in the stored dtype (a float16 map stays float16: converting it
            would read the whole file). ValueError for the other formats.

    Returns:
        ``(maps, meta)``. ``maps`` is ``(C, *spatial)`` float32 (NIfTI's ``X × Y × Z × C``
        is moved to channels first; a 2D map stored as ``H × W × 1 × C`` comes back as
        ``(C, H, W)`` when the manifest records it as 2D). ``meta`` is a dict:

        - ``classes``: label value of each channel (list of int), or None when unknown;
        - ``spacing``: voxel size per spatial axis (tuple of float), or None when unknown;
        - ``kind``: ``"rrw"``, ``"boundary"``, ``"kervadec"``, ``"ac"``, or None;
        - ``format``, ``dtype`` (as stored), ``affine`` ((4, 4) for NIfTI, else None);
        - ``manifest`` (path of the ``rwmaps.json`` that lists this map, or None),
          ``parameters`` (its parameters) and ``input`` (the label file it records).

    Where the meta comes from: NIfTI: the header (zooms, affine, ``descrip = "rwmaps KIND"``)
    and the manifest for the classes. ``.npz``: its ``classes``, ``spacing`` and ``kind``
    keys. ``.npy`` holds only the array: classes and kind come from the manifest, found in
    the map's folder or a parent folder; the spacing from the header of the input label
    file the manifest records (header only), or None when that file is not found from the
    current directory.

    Raises:
        InputError: one line, without the path, when the file cannot be read as a map.
        ValueError: an unsupported suffix, or ``mmap`` for a format other than ``.npy``.
    """
    from copy import deepcopy

    from .manifest import manifest_for_map  # here: manifest.py imports this module

    path = Path(path)
    fmt = output_format(path)
    if mmap and fmt != "npy":
        raise ValueError(f"mmap=True needs a .npy map, not .{fmt}")
    found = manifest_for_map(path)
    header, entry = found[1] if found else {}, found[2] if found else None
    parameters = header.get("parameters") if isinstance(header.get("parameters"), dict) else None
    meta = {
        "classes": int_list(header.get("classes")) if entry is not None else None,
        "spacing": None,
        "kind": parameters.get("kind") if parameters and entry is not None else None,
        "format": fmt,
        "dtype": None,
        "affine": None,
        "manifest": str(found[0]) if found and entry is not None else None,
        "parameters": deepcopy(parameters) if parameters and entry is not None else None,  # cached: a copy
        "input": entry.get("input") if entry is not None else None,
    }
    recorded_shape = tuple(entry["shape"]) if entry is not None and isinstance(entry.get("shape"), list) else None
    with _input_errors(path, {"npy": ".npy", "npz": ".npz"}.get(fmt, "NIfTI")):
        if fmt == "npy":
            maps = _load_npy_map(path, mmap, meta, recorded_shape)
        elif fmt == "npz":
            maps = _load_npz_map(path, meta)
        else:
            maps = _load_nifti_map(path, meta, recorded_shape, listed=entry is not None)
    return maps, meta


def int_list(values) -> list[int] | None:
    """``values`` as a list of ints, or None when they are not (a manifest may be hand-edited)."""
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        return None


def _check_map_array(shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.kind != "f":
        raise InputError(f"holds a {dtype} array; a map is float32 or float16")
    if not 3 <= len(shape) <= 4:
        raise InputError(f"holds an array of shape {shape}; a map is (C, *spatial) with 2D or 3D spatial axes")


def _load_npy_map(path: Path, mmap: bool, meta: dict, recorded_shape) -> np.ndarray:
    stored = np.load(path, mmap_mode="r", allow_pickle=False)
    _check_map_array(stored.shape, stored.dtype)
    meta["dtype"] = str(stored.dtype)
    if meta["input"] is not None:
        spacing = _label_spacing(Path(meta["input"]))
        meta["spacing"] = spacing if spacing is not None and len(spacing) == stored.ndim - 1 else None
    if mmap:
        return stored
    return np.array(stored, dtype=np.float32)  # a copy: no memory map stays open


def _load_npz_map(path: Path, meta: dict) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        if "map" not in npz.files:
            raise InputError(f"has no 'map' array (keys: {', '.join(sorted(npz.files))}); not an rwmaps map")
        stored = npz["map"]
        _check_map_array(stored.shape, stored.dtype)
        if "classes" in npz.files:
            meta["classes"] = [int(v) for v in npz["classes"].ravel()]
        if "spacing" in npz.files:
            meta["spacing"] = tuple(float(s) for s in npz["spacing"].ravel())
        if "kind" in npz.files:
            meta["kind"] = str(npz["kind"])
    meta["dtype"] = str(stored.dtype)
    return stored.astype(np.float32, copy=False)


def _load_nifti_map(path: Path, meta: dict, recorded_shape, listed: bool) -> np.ndarray:
    img = nib.load(path, mmap=False)
    descrip = bytes(img.header["descrip"]).split(b"\x00")[0].decode("latin-1").strip()
    if len(img.shape) != 4:
        raise InputError(f"is a {len(img.shape)}D NIfTI; a map is 4D (X × Y × Z × C)")
    if not (descrip.startswith("rwmaps") or listed):
        raise InputError(f"is not an rwmaps map (descrip {descrip!r} does not start with 'rwmaps', "
                         "and no rwmaps.json lists it)")
    kind = descrip.split()[1] if descrip.startswith("rwmaps ") and len(descrip.split()) > 1 else None
    meta["kind"] = kind or meta["kind"]
    data = np.asanyarray(img.dataobj)  # (*spatial, C)
    _check_map_array(data.shape, data.dtype)
    meta["dtype"] = str(data.dtype)
    meta["affine"] = np.asarray(img.affine, dtype=np.float64)
    maps = np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if recorded_shape is not None and len(recorded_shape) == 3 and maps.shape[-1] == 1 \
            and tuple(maps.shape[:3]) == tuple(recorded_shape):
        maps, zooms = maps[..., 0], zooms[:2]  # a 2D map, stored as H × W × 1 × C
    meta["spacing"] = zooms
    if meta["classes"] is not None and len(meta["classes"]) != maps.shape[0]:
        meta["classes"] = None  # the manifest describes another map
    return maps


def _label_spacing(path: Path) -> tuple[float, ...] | None:
    """Voxel sizes of a label file in array-axis order, from its header only; None if unreadable."""
    try:
        suffix = label_suffix(path)
        if suffix in (".nii", ".nii.gz"):
            img = nib.load(path)  # header only
            ndim = len(_squeeze_trailing(img.shape))
            return tuple(float(z) for z in img.header.get_zooms()[:ndim])
        if suffix in _SITK_IMAGE_IO:
            return tuple(float(s) for s in reversed(sitk_reader(path).GetSpacing()))
        if suffix == ".npy":
            return (1.0,) * len(_shape_npy(path))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if "spacing" in npz.files:
                    return tuple(float(s) for s in npz["spacing"].ravel())
            return (1.0,) * len(_shape_npz(path))
    except Exception:  # a missing or unreadable input: the spacing is unknown
        return None
    return None
