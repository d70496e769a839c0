"""NumPy files, ``.npy`` and ``.npz``: label arrays and maps.

- A ``.npy`` map is the bare array: ``(C, *spatial)`` full, ``(*spatial)`` compact,
  memory-mappable with ``np.load(path, mmap_mode="r")``.  It holds nothing else, so its
  layout, classes and kind come from the manifest (:mod:`rwmaps_cli.mapfile`).
- A ``.npz`` map has the keys ``map``, ``classes`` (int64), ``spacing`` (float64),
  ``kind`` and ``layout`` (str).
- A label ``.npy`` is a 2D or 3D integer array (spacing 1); a label ``.npz`` holds one
  array (or one named ``labels``, ``label``, ``seg``, ``segmentation``, ``arr_0``) and
  optionally ``spacing``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rwmaps_cli.errors import InputError

from .base import (
    DEFAULT_COMPRESSLEVEL,
    DEFLATE_INFLATION,
    MAP_DTYPES,
    SCHEMA,
    check_schema,
    FileFormat,
    LabelVolume,
    MapContent,
    MapHeader,
    check_claim,
    check_labels,
    check_map_array,
    check_ndim,
    diagonal_affine,
)

_NPZ_LABEL_KEYS = ("labels", "label", "seg", "segmentation", "arr_0")


def npy_header(fileobj: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an open .npy stream, reading the header only."""
    version = np.lib.format.read_magic(fileobj)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fileobj)
    else:  # 2.0; 3.0 differs only in utf-8 field names, which these arrays never have
        shape, _, dtype = np.lib.format.read_array_header_2_0(fileobj)
    return tuple(int(n) for n in shape), dtype


class NpyFormat(FileFormat):
    name = ".npy"
    suffixes = (".npy",)
    output_name = "npy"
    map_dtypes = MAP_DTYPES
    can_mmap = True

    def read_labels(self, path: Path) -> LabelVolume:
        self._header(path)  # the claim checked before numpy allocates it
        array = check_labels(np.load(path, allow_pickle=False))
        spacing = (1.0,) * array.ndim
        return LabelVolume(array=array, spacing=spacing, affine=diagonal_affine(spacing))

    def read_shape(self, path: Path) -> tuple[int, ...]:
        shape, _ = self._header(path)
        check_ndim(shape)
        return shape

    def read_geometry(self, path: Path) -> tuple[tuple[float, ...], None]:
        return (1.0,) * len(self.read_shape(path)), None

    def header_says_map(self, path: Path) -> bool | None:
        shape, dtype = self._header(path)
        if dtype.kind != "f":
            return False
        return True if len(shape) == 4 else None  # labels are 2D or 3D; a 2D/3D float array needs the manifest

    def write_map(self, tmp: Path, final: Path, data: np.ndarray, volume: LabelVolume, content: MapContent,
                  compresslevel: int | None, threads: int = 1) -> None:
        data = data if data.flags.c_contiguous or data.flags.f_contiguous else np.ascontiguousarray(data)
        with open(tmp, "wb") as raw:  # np.save's bytes, written by Python: a full disk raises ENOSPC
            header = np.lib.format.header_data_from_array_1_0(data)
            np.lib.format.write_array_header_1_0(raw, header) if _fits_header_1_0(header) \
                else np.lib.format.write_array_header_2_0(raw, header)
            # memoryview of the C-ordered view: F-ordered data is stored as it is (fortran_order=True),
            # without a copy; numpy's own tofile() reports a full disk without an errno.
            raw.write(memoryview(data.T if header["fortran_order"] else data).cast("B"))

    def read_map_header(self, path: Path) -> MapHeader:
        shape, dtype = self._header(path)
        check_map_array(shape, dtype, None)
        full_3d = len(shape) == 4  # a bare array tells its rank only when it is 4D
        return MapHeader(shape=shape, spatial_ndim=3 if full_3d else None, layout="full" if full_3d else None,
                       kind=None, dtype=str(dtype), stored_shape=shape)

    def load_map(self, path: Path, mmap: bool = False) -> tuple[np.ndarray, MapHeader]:
        info = self.read_map_header(path)
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
        if mmap:
            return stored, info
        return np.array(stored, dtype=np.float32), info  # a copy: no memory map stays open

    @staticmethod
    def _header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype, once the file is known to hold them (``base.check_claim``)."""
        with open(path, "rb") as f:
            shape, dtype = npy_header(f)
            check_claim(shape, dtype.itemsize, os.fstat(f.fileno()).st_size - f.tell())
        return shape, dtype


class NpzFormat(FileFormat):
    name = ".npz"
    suffixes = (".npz",)
    output_name = "npz"
    stores_classes = True
    map_dtypes = MAP_DTYPES
    compressed = True

    def read_labels(self, path: Path) -> LabelVolume:
        with zipfile.ZipFile(path) as archive:
            key, _ = _member_header(archive, _npz_label_key(_npz_keys(archive)))  # the claim, before numpy
        with np.load(path, allow_pickle=False) as npz:
            array = check_labels(npz[key])
            spacing = (tuple(float(s) for s in npz["spacing"].ravel()) if "spacing" in npz.files
                       else (1.0,) * array.ndim)
        if len(spacing) != array.ndim:
            raise InputError(f"'spacing' has {len(spacing)} values for a {array.ndim}D label array")
        return LabelVolume(array=array, spacing=spacing, affine=diagonal_affine(spacing))

    def read_shape(self, path: Path) -> tuple[int, ...]:
        # Read the member's .npy header from the zip, so a large compressed volume is not inflated.
        with zipfile.ZipFile(path) as archive:
            _, (shape, _) = _member_header(archive, _npz_label_key(_npz_keys(archive)))
        check_ndim(shape)
        return shape

    def read_geometry(self, path: Path) -> tuple[tuple[float, ...], None]:
        with np.load(path, allow_pickle=False) as npz:
            if "spacing" in npz.files:
                return tuple(float(s) for s in npz["spacing"].ravel()), None
        return (1.0,) * len(self.read_shape(path)), None

    def header_says_map(self, path: Path) -> bool:
        with zipfile.ZipFile(path) as archive:
            return "map.npy" in archive.namelist()

    def write_map(self, tmp: Path, final: Path, data: np.ndarray, volume: LabelVolume, content: MapContent,
                  compresslevel: int | None, threads: int = 1) -> None:
        arrays = {
            "map": data,
            "classes": np.asarray(content.classes, dtype=np.int64),
            "spacing": np.asarray(volume.spacing, dtype=np.float64),
            "kind": np.asarray(content.kind),  # 0-d unicode array: str(npz["kind"]) gives the kind back
            "layout": np.asarray(content.layout),
            "schema": np.asarray(SCHEMA),  # what rwmaps wrote this by (formats/base.py SCHEMA)
        }
        # The layout of np.savez_compressed (one 'key.npy' member per array), written with
        # zipfile directly because savez_compressed has no compression level (it uses 6).
        compresslevel = DEFAULT_COMPRESSLEVEL if compresslevel is None else compresslevel
        compression = zipfile.ZIP_DEFLATED if compresslevel > 0 else zipfile.ZIP_STORED
        with open(tmp, "wb") as raw, zipfile.ZipFile(raw, "w", compression, compresslevel=compresslevel) as archive:
            for key, array in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)

    def read_map_header(self, path: Path) -> MapHeader:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "map.npy" not in names:
                keys = ", ".join(sorted(n[: -len(".npy")] for n in names))
                raise InputError(f"has no 'map' array (keys: {keys}); not an rwmaps map")
            _, (shape, dtype) = _member_header(archive, "map")
        with np.load(path, allow_pickle=False) as npz:  # the small keys only; 'map' stays unread
            small = {key: npz[key] for key in ("classes", "spacing", "kind", "layout", "schema") if key in npz.files}
        return self._info(shape, dtype, small)

    @staticmethod
    def _info(shape, dtype, small: dict) -> MapHeader:
        check_schema(int(small["schema"]) if "schema" in small else 1)
        layout = str(small["layout"]) if "layout" in small else "full"  # the first schema-1 maps were full only
        check_map_array(shape, dtype, layout if layout in ("full", "compact") else None)
        spatial_ndim = len(shape) - (1 if layout == "full" else 0)
        return MapHeader(
            shape=shape, spatial_ndim=spatial_ndim, layout=layout,
            kind=str(small["kind"]) if "kind" in small else None, dtype=str(dtype), stored_shape=shape,
            classes=[int(v) for v in small["classes"].ravel()] if "classes" in small else None,
            spacing=tuple(float(s) for s in small["spacing"].ravel()) if "spacing" in small else None,
        )

    def load_map(self, path: Path, mmap: bool = False) -> tuple[np.ndarray, MapHeader]:
        info = self.read_map_header(path)
        with np.load(path, allow_pickle=False) as npz:
            data = npz["map"]
        return data.astype(np.float32, copy=False), info


def _npz_keys(archive: zipfile.ZipFile) -> list[str]:
    return [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]


# How much a member's stored bytes can inflate, by zip method: numpy writes stored or deflated
# (bzip2 and LZMA members, which numpy reads too, are not bounded here).
_ZIP_INFLATION = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: DEFLATE_INFLATION}


def _member_header(archive: zipfile.ZipFile, key: str) -> tuple[str, tuple[tuple[int, ...], np.dtype]]:
    """(key, (shape, dtype)) of member ``key.npy``, once its stored bytes can hold what its
    header claims (``base.check_claim``)."""
    info = archive.getinfo(key + ".npy")
    with archive.open(info) as member:
        shape, dtype = npy_header(member)
    inflation = _ZIP_INFLATION.get(info.compress_type)
    if inflation is not None:
        check_claim(shape, dtype.itemsize, info.compress_size * inflation)
    return key, (shape, dtype)


def _fits_header_1_0(header: dict) -> bool:
    return len(repr(header)) < 65000  # version 1.0 stores the header length in 2 bytes


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
