"""NIfTI-1 (``.nii``, ``.nii.gz``) through nibabel: label volumes and maps.

A map is stored channels last, as 4D NIfTI tools expect: ``X × Y × Z × C`` (a 2D map
``H × W × 1 × C``); a compact map is one channel, ``X × Y × Z`` (2D: ``H × W × 1``).  The
header's ``descrip`` says what the file is, ``"rwmaps KIND LAYOUT Nd"``
(:func:`~rwmaps_cli.formats.base.describe_map`), so the spatial rank is written in the
map itself.  Label arrays come back as nibabel returns them: Fortran-ordered ``(X, Y, Z)``.

``.nii.gz`` is read and written with ISA-L's gzip (PyPI ``isal``), standard gzip that every
gzip reader opens (nibabel, SimpleITK, MONAI's ``LoadImage``: tested), 4-5x faster than
zlib: see :data:`ISAL_LEVEL`.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from rwmaps_cli.errors import InputError

from .base import (
    DEFLATE_INFLATION,
    FileFormat,
    LabelVolume,
    MapContent,
    MapHeader,
    check_claim,
    check_labels,
    check_map_array,
    check_ndim,
    check_schema,
    describe_map,
    parse_description,
)

_DESCRIP_BYTES = 80  # size of the NIfTI-1 'descrip' field
_VOX_OFFSET = 352  # a single-file NIfTI-1 without extensions: 348-byte header, 4-byte extension flag
_WRITE_CHUNK = 1 << 24  # bytes per write: a large map is never copied whole to write it
# ISA-L (igzip) level for .nii.gz maps, against zlib level 1 (what nibabel and rwmaps 0.1
# wrote), on the same bytes: the compact channel of a CT-sized brain-like case (512x512x400,
# 118 classes, nibabel order, 419 MB raw), `python benchmarks/bench_scale.py --only kernel`:
# zlib 1 3.00 s / 109.5 MB; isal 0 0.73 s / 136.5 MB, 1 0.72 s / 116.5 MB, 2 0.75 s /
# 110.1 MB, 3 1.16 s / 100.0 MB.  Level 2: zlib 1's size (+0.5 %), 4x faster; level 1 is as
# fast but 6 % larger, level 3 9 % smaller but 1.5x slower.
ISAL_LEVEL = 2


@contextmanager
def _gzip_writer(tmp: Path, final: Path, level: int | None, threads: int = 1) -> Iterator:
    """A gzip stream into ``tmp``: ISA-L at :data:`ISAL_LEVEL` (on ``threads`` threads, in
    blocks, as pigz does), or zlib at ``level`` when a caller chose a zlib level (0-9).  The
    header has mtime 0 (and names ``final``), so the bytes do not depend on the
    temporary's name or the time."""
    member_name = final.name[: -len(".gz")]
    if level is None and threads > 1:
        from isal import igzip_threaded

        with igzip_threaded.open(tmp, "wb", compresslevel=ISAL_LEVEL, threads=threads) as stream:
            yield stream
        return
    with open(tmp, "wb") as raw:
        if level is None:
            from isal import igzip

            stream = igzip.IGzipFile(member_name, "wb", compresslevel=ISAL_LEVEL, fileobj=raw, mtime=0)
        else:
            stream = gzip.GzipFile(member_name, "wb", compresslevel=level, fileobj=raw, mtime=0)
        with stream:
            yield stream


def _load(path: Path):
    """nibabel's image of ``path``, header parsed; a ``.nii.gz`` decompressed by ISA-L
    (nibabel would use zlib).  The voxels are read when the caller takes ``dataobj``; call
    :func:`_close` after that."""
    import nibabel as nib

    if not str(path).endswith(".gz"):
        return nib.load(path, mmap=False)
    from isal import igzip
    from nibabel.fileholders import FileHolder

    stream = igzip.open(path, "rb")
    try:
        # nibabel's own test of which header this is (nib.load sniffs the same way).
        image_class = nib.Nifti2Image if nib.Nifti2Header.may_contain_header(stream.read(540)) else nib.Nifti1Image
        stream.seek(0)
        holder = FileHolder(filename=str(path), fileobj=stream)
        return image_class.from_file_map({"header": holder, "image": holder}, mmap=False)
    except BaseException:
        stream.close()
        raise


def _close(img) -> None:
    """Close the stream an image of :func:`_load` reads from (nib.load's images hold none)."""
    fileobj = img.file_map["image"].fileobj
    if fileobj is not None:
        fileobj.close()


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
        # mmap=False reads the voxels here and now, so a truncated file fails inside
        # read_labels, and no memory map keeps the input open afterwards.
        img = _load(path)
        try:
            shape = _squeeze_trailing(img.shape)
            check_ndim(shape)
            self._check_claim(img, path)
            # asanyarray(dataobj) keeps the stored integer dtype unless the header really
            # scales (scl_slope, scl_inter not in {nan, 0, 1} x {0}); get_fdata would give float64.
            array = np.asanyarray(img.dataobj).reshape(shape, order="A")
        finally:
            _close(img)
        zooms = img.header.get_zooms()[: len(shape)]
        return LabelVolume(array=check_labels(array), spacing=tuple(float(z) for z in zooms),
                           affine=np.asarray(img.affine, dtype=np.float64), nifti_header=img.header.copy())

    def read_shape(self, path: Path) -> tuple[int, ...]:
        import nibabel as nib

        img = nib.load(path)  # header only: nibabel loads lazily
        shape = _squeeze_trailing(img.shape)
        check_ndim(shape)
        self._check_claim(img, path)
        return shape

    def _check_claim(self, img, path: Path) -> None:
        """The voxels start after the header, and the ones it claims fit in the file (see
        ``base.check_claim``): nibabel would read a vox_offset of 0 as voxels from byte 0."""
        header = img.header  # a copy, whose vox_offset nibabel resets: the file's is the proxy's
        offset, first = int(img.dataobj.offset), type(header).single_vox_offset
        if offset < first:
            raise InputError(f"the header puts the voxels at byte {offset}, inside the header itself "
                             f"(a single-file NIfTI holds them from byte {first} on)")
        size = os.path.getsize(path)
        holds = size * DEFLATE_INFLATION if self.compressed else size - offset
        check_claim(header.get_data_shape(), header.get_data_dtype().itemsize, holds)

    def read_geometry(self, path: Path) -> tuple[tuple[float, ...], np.ndarray]:
        import nibabel as nib

        img = nib.load(path)  # header only
        ndim = len(_squeeze_trailing(img.shape))
        return tuple(float(z) for z in img.header.get_zooms()[:ndim]), np.asarray(img.affine, dtype=np.float64)

    # ------------------------------------------------------------------ maps
    def header_says_map(self, path: Path) -> bool | None:
        import nibabel as nib

        header = nib.load(path).header
        if parse_description(_description(header))[0]:
            return True
        return None if len(header.get_data_shape()) == 4 else False  # a 4D file may be an unlabelled map

    def write_map(self, tmp: Path, final: Path, data: np.ndarray, volume: LabelVolume, content: MapContent,
                  compresslevel: int | None, threads: int = 1) -> None:
        spatial_ndim = volume.array.ndim
        if content.layout == "full":
            data = np.moveaxis(data, 0, -1)  # (C, *spatial) -> (*spatial, C): channels last for NIfTI tools
            if spatial_ndim == 2:
                data = data[:, :, np.newaxis, :]  # (H, W, C) -> (H, W, 1, C): the 4th NIfTI dim is channels
        elif spatial_ndim == 2:
            data = data[:, :, np.newaxis]  # (H, W) -> (H, W, 1)
        header = self._header(volume, data.shape, data.dtype, describe_map(content.kind, content.layout, spatial_ndim))
        header["vox_offset"] = _VOX_OFFSET
        head = io.BytesIO()
        header.write_to(head)
        if head.tell() != _VOX_OFFSET:
            raise ValueError(f"a NIfTI header of {head.tell()} bytes; expected {_VOX_OFFSET}")
        with _gzip_writer(tmp, final, compresslevel, threads) if self.compressed else open(tmp, "wb") as stream:
            stream.write(head.getvalue())
            for chunk in _fortran_chunks(data):
                stream.write(chunk)

    @staticmethod
    def _header(volume: LabelVolume, data_shape: tuple[int, ...], dtype: np.dtype, description: str):
        """A fresh header carrying only the input's geometry.

        Fresh rather than a copy of the input header: the label header's scl_slope/inter,
        cal_min/max, intent and extensions describe labels, not maps.
        """
        import nibabel as nib

        header = nib.Nifti1Header(endianness="<")  # the byte order _fortran_chunks writes
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

    def read_map_header(self, path: Path) -> MapHeader:
        import nibabel as nib

        return self._info(nib.load(path))  # header only: nibabel loads lazily

    def _info(self, img) -> MapHeader:
        stored = tuple(int(n) for n in img.shape)
        dtype = img.get_data_dtype()
        ours, kind, layout, ndim, schema = parse_description(_description(img.header))
        check_schema(schema)
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
        return MapHeader(shape=shape, spatial_ndim=ndim, layout=layout, kind=kind, dtype=str(dtype), stored_shape=stored,
                       spacing=zooms, affine=np.asarray(img.affine, dtype=np.float64))

    def load_map(self, path: Path, mmap: bool = False) -> tuple[np.ndarray, MapHeader]:
        img = _load(path)
        try:
            info = self._info(img)
            self._check_claim(img, path)
            data = np.asanyarray(img.dataobj)  # Fortran-ordered (X, Y, Z, C), as nibabel reads it
        finally:
            _close(img)
        if info.layout == "full":
            # Channels first as a view: each channel stays one contiguous Fortran-ordered block,
            # the labels' own order; a C-ordered copy would double the memory of an 83-class map.
            data = np.moveaxis(data, -1, 0)
        return data.astype(np.float32, copy=False).reshape(info.shape), info


def _fortran_chunks(data: np.ndarray) -> Iterator[memoryview]:
    """The bytes of ``data`` in Fortran order (NIfTI's), in pieces of about
    :data:`_WRITE_CHUNK`: slabs along the last axis, copied only when not Fortran-ordered
    already (a map of nibabel's labels is, and so is a full map with channels moved last)."""
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)  # NIfTI files here are little-endian
    slab = max(1, _WRITE_CHUNK // max(1, data[..., 0].nbytes))
    for start in range(0, data.shape[-1], slab):
        piece = np.asfortranarray(data[..., start:start + slab])
        yield memoryview(piece.T).cast("B")  # the transpose of a Fortran array is C-contiguous


def _not_a_map(stored: tuple[int, ...], ours: bool):
    from rwmaps_cli.errors import InputError

    if ours:
        return InputError(f"has shape {stored}; a full map is 4D (X × Y × Z × C)")
    return InputError(f"is a {len(stored)}D NIfTI; a map is 4D (X × Y × Z × C), or says 'rwmaps' in its descrip")
