"""NIfTI-1 (``.nii``, ``.nii.gz``) through nibabel: label volumes and maps.

A map is stored channels last, as 4D NIfTI tools expect: ``X × Y × Z × C`` (a 2D map
``H × W × 1 × C``); a compact map is one channel, ``X × Y × Z`` (2D: ``H × W × 1``).  The
header's ``descrip`` says what the file is, ``"rwmaps KIND LAYOUT Nd"``
(:func:`~rwmaps_cli.formats.base.describe_map`), so the spatial rank is written in the
map itself.  Label arrays come back as nibabel returns them: Fortran-ordered ``(X, Y, Z)``.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import (
    FileFormat,
    LabelVolume,
    MapContent,
    MapInfo,
    check_labels,
    check_map_array,
    check_ndim,
    describe_map,
    parse_description,
)

_DESCRIP_BYTES = 80  # size of the NIfTI-1 'descrip' field


def _squeeze_trailing(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop trailing singleton dims beyond the third: (X, Y, Z, 1) -> (X, Y, Z)."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _description(header) -> str:
    return bytes(header["descrip"]).split(b"\x00")[0].decode("latin-1").strip()


class NiftiFormat(FileFormat):
    name = "NIfTI"
    map_dtypes = (np.dtype(np.float32),)  # NIfTI-1/2 have no float16 data type code

    def __init__(self, suffix: str):
        self.suffixes = (suffix,)
        self.output_name = suffix.lstrip(".")
        self.compressed = suffix.endswith(".gz")

    # ------------------------------------------------------------------ labels
    def read_labels(self, path: Path) -> LabelVolume:
        import nibabel as nib

        # mmap=False reads the voxels here and now, so a truncated file fails inside
        # read_labels, and no memory map keeps the input open afterwards.
        img = nib.load(path, mmap=False)
        shape = _squeeze_trailing(img.shape)
        check_ndim(shape)
        # asanyarray(dataobj) keeps the stored integer dtype unless the header really
        # scales (scl_slope, scl_inter not in {nan, 0, 1} x {0}); get_fdata would give float64.
        array = np.asanyarray(img.dataobj).reshape(shape, order="A")
        zooms = img.header.get_zooms()[: len(shape)]
        return LabelVolume(array=check_labels(array), spacing=tuple(float(z) for z in zooms),
                           affine=np.asarray(img.affine, dtype=np.float64), nifti_header=img.header.copy())

    def read_shape(self, path: Path) -> tuple[int, ...]:
        import nibabel as nib

        shape = _squeeze_trailing(nib.load(path).shape)  # header only: nibabel loads lazily
        check_ndim(shape)
        return shape

    def read_geometry(self, path: Path) -> tuple[tuple[float, ...], np.ndarray]:
        import nibabel as nib

        img = nib.load(path)  # header only
        ndim = len(_squeeze_trailing(img.shape))
        return tuple(float(z) for z in img.header.get_zooms()[:ndim]), np.asarray(img.affine, dtype=np.float64)

    # ------------------------------------------------------------------ maps
    def is_map(self, path: Path) -> bool | None:
        import nibabel as nib

        header = nib.load(path).header
        if parse_description(_description(header))[0]:
            return True
        return None if len(header.get_data_shape()) == 4 else False  # a 4D file may be an unlabelled map

    def write_map(self, tmp: Path, final: Path, data: np.ndarray, volume: LabelVolume, content: MapContent,
                  compresslevel: int) -> None:
        import nibabel as nib

        spatial_ndim = volume.array.ndim
        if content.layout == "full":
            data = np.moveaxis(data, 0, -1)  # (C, *spatial) -> (*spatial, C): channels last for NIfTI tools
            if spatial_ndim == 2:
                data = data[:, :, np.newaxis, :]  # (H, W, C) -> (H, W, 1, C): the 4th NIfTI dim is channels
        elif spatial_ndim == 2:
            data = data[:, :, np.newaxis]  # (H, W) -> (H, W, 1)
        header = self._header(volume, data.shape, data.dtype, describe_map(content.kind, content.layout, spatial_ndim))
        img = nib.Nifti1Image(data, None, header)  # affine None: keep the header's qform/sform untouched
        with open(tmp, "wb") as raw:
            if self.output_name == "nii.gz":
                # Own GzipFile to choose the level; mtime=0 and the final name make the bytes reproducible.
                with gzip.GzipFile(final.name[: -len(".gz")], "wb", compresslevel=compresslevel, fileobj=raw,
                                   mtime=0) as stream:
                    img.to_stream(stream)
            else:
                img.to_stream(raw)

    @staticmethod
    def _header(volume: LabelVolume, data_shape: tuple[int, ...], dtype: np.dtype, description: str):
        """A fresh header carrying only the input's geometry.

        Fresh rather than a copy of the input header: the label header's scl_slope/inter,
        cal_min/max, intent and extensions describe labels, not maps.
        """
        import nibabel as nib

        header = nib.Nifti1Header()
        header.set_data_shape(data_shape)
        header.set_data_dtype(dtype)
        source = volume.nifti_header
        if source is not None:
            # Matrices AND codes: img.affine alone would lose which of the two is set.
            header.set_qform(source.get_qform(), code=int(source["qform_code"]))
            header.set_sform(source.get_sform(), code=int(source["sform_code"]))
            header["xyzt_units"] = source["xyzt_units"]
        else:
            header.set_qform(volume.affine, code=1)  # 1 = scanner
            header.set_sform(volume.affine, code=1)
            header.set_xyzt_units("mm")
        spatial = list(volume.spacing) + [1.0] * (3 - len(volume.spacing))
        header.set_zooms(tuple(spatial) + (1.0,) * (len(data_shape) - 3))  # a 4th axis is channels, not time
        header["descrip"] = description.encode()[:_DESCRIP_BYTES]
        return header

    def read_map_info(self, path: Path) -> MapInfo:
        import nibabel as nib

        return self._info(nib.load(path))

    def _info(self, img) -> MapInfo:
        stored = tuple(int(n) for n in img.shape)
        dtype = img.get_data_dtype()
        ours, kind, layout, ndim = parse_description(_description(img.header))
        layout = layout or ("full" if len(stored) == 4 else None)
        if layout is None:
            raise _not_a_map(stored, ours)
        if layout == "full":
            if len(stored) != 4:
                raise _not_a_map(stored, ours)
            ndim = ndim or 3
            spatial = stored[:3] if ndim == 3 else stored[:2]
            shape = (stored[3], *spatial)
        else:
            ndim = ndim or 3
            spatial = stored[:3] if ndim == 3 else stored[:2]
            shape = spatial
        check_map_array(shape, dtype, layout)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:ndim])
        return MapInfo(shape=shape, spatial_ndim=ndim, layout=layout, kind=kind, dtype=str(dtype), stored_shape=stored,
                       spacing=zooms, affine=np.asarray(img.affine, dtype=np.float64))

    def load_map(self, path: Path, mmap: bool = False) -> tuple[np.ndarray, MapInfo]:
        import nibabel as nib

        img = nib.load(path, mmap=False)
        info = self._info(img)
        data = np.asanyarray(img.dataobj)  # Fortran-ordered (X, Y, Z, C), as nibabel reads it
        if info.layout == "full":
            # Channels first as a view: each channel stays one contiguous Fortran-ordered block,
            # the labels' own order; a C-ordered copy would double the memory of an 83-class map.
            data = np.moveaxis(data, -1, 0)
        return data.astype(np.float32, copy=False).reshape(info.shape), info


def _not_a_map(stored: tuple[int, ...], ours: bool):
    from rwmaps_cli.errors import InputError

    if ours:
        return InputError(f"has shape {stored}; a full map is 4D (X × Y × Z × C)")
    return InputError(f"is a {len(stored)}D NIfTI; a map is 4D (X × Y × Z × C), or says 'rwmaps' in its descrip")
