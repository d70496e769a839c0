"""MetaImage, NRRD, PNG and TIFF label files through SimpleITK (labels only).

Arrays come back as ``sitk.GetArrayFromImage`` gives them: C-ordered, axes reversed from
ITK's, ``(Z, Y, X)``; spacing and affine are reversed to match.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rwmaps_cli.errors import InputError

from .base import DEFLATE_INFLATION, LZW_INFLATION, FileFormat, LabelVolume, check_claim, check_labels, check_ndim

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SitkFormat(FileFormat):
    """One SimpleITK ImageIO; naming it stops ITK from probing every reader (HDF5 floods stderr)."""

    def __init__(self, name: str, suffixes: tuple[str, ...], image_io: str):
        self.name = name
        self.suffixes = suffixes
        self.image_io = image_io

    def read_labels(self, path: Path) -> LabelVolume:
        import SimpleITK as sitk

        # One read for a PNG: Execute parses the header again anyway, so the checks of
        # reader() are made on the image (reading the information first cost a third of a
        # small case), and the claim is checked on the PNG's own header, read by hand.
        image = self.reader(path, header=self.image_io != "PNGImageIO").Execute()
        self._check(image.GetNumberOfComponentsPerPixel(), image.GetSize())
        array = sitk.GetArrayFromImage(image)  # axes reversed from ITK's: (z, y, x)
        return LabelVolume(array=check_labels(array), spacing=tuple(float(s) for s in reversed(image.GetSpacing())),
                           affine=sitk_affine(image))

    def read_shape(self, path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(self.reader(path).GetSize()))

    def read_geometry(self, path: Path) -> tuple[tuple[float, ...], np.ndarray]:
        reader = self.reader(path)  # the reader has the image's geometry getters
        return tuple(float(s) for s in reversed(reader.GetSpacing())), sitk_affine(reader)

    def reader(self, path: Path, header: bool = True):
        """A reader with the header read and checked (dimension, components), data not
        loaded; with ``header=False`` only set up (the caller checks the image)."""
        import SimpleITK as sitk

        header_text = _header_text(path) if path.suffix.lower() in _DATA_FILE_LINE else ""  # read once
        data_file = _detached_data_file(path, header_text)
        if data_file is not None and not data_file.is_file():
            # ITK's own message names the header, with a misleading cause; say which file is missing.
            raise InputError(f"data file {data_file.name!r} named in the header is missing")
        if self.image_io == "PNGImageIO":
            _check_png_claim(path)
        if self.image_io == "TIFFImageIO":
            _check_tiff_directories(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO(self.image_io)
        if header:
            reader.ReadImageInformation()
            self._check(reader.GetNumberOfComponents(), reader.GetSize())
            holds = _data_bytes(path, data_file, header_text) if self.image_io != "PNGImageIO" else None
            if holds is not None:  # one byte per voxel at least, whatever the pixel type (ITK reads a
                # bilevel TIFF as RGBA, refused above; a PNG packs bits, and is checked on its IHDR)
                check_claim(reader.GetSize(), reader.GetNumberOfComponents(), holds * self._inflation(header_text))
        return reader

    def _inflation(self, header: str) -> int:
        """How far the stored bytes of a TIFF, MetaImage or NRRD can inflate: TIFF by its
        codecs (LZW the most), MetaImage and NRRD as their ``header`` text says (zlib/gzip,
        or raw and text).  A PNG's claim is checked on its IHDR (:func:`_check_png_claim`)."""
        if self.image_io == "TIFFImageIO":
            return LZW_INFLATION
        if re.search(r"^\s*CompressedData\s*=\s*[Tt1]", header, flags=re.MULTILINE):  # MetaIO: True, T or 1
            return DEFLATE_INFLATION
        encoding = re.search(r"^\s*encoding\s*:\s*(\S+)", header, flags=re.IGNORECASE | re.MULTILINE)
        if encoding and encoding.group(1).lower() not in ("raw", "ascii", "text", "txt", "hex"):
            return DEFLATE_INFLATION
        return 1

    def _check(self, components: int, size: Sequence[int]) -> None:
        if components > 1:
            hint = " (ITK expands palette PNGs to RGB; save labels as grayscale)" if self.image_io == "PNGImageIO" else ""
            raise InputError(f"has {components} components per pixel; expected a single-channel label image{hint}")
        check_ndim(tuple(reversed(size)))


def sitk_affine(image) -> np.ndarray:
    """RAS+ affine for the index order of ``sitk.GetArrayFromImage(image)``.

    ITK maps its index (i, j[, k]) to LPS by ``origin + direction @ diag(spacing) @ index``;
    the numpy array is indexed in reverse, (k, j, i), so the columns are reversed.  A 2D
    image gets a unit z axis.  ``image`` may be an image or a reader that has read the
    image information.
    """
    ndim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    columns = direction * np.asarray(image.GetSpacing(), dtype=np.float64)  # scales column c by spacing[c]
    lps = np.eye(4)
    lps[:ndim, :ndim] = columns[:, ::-1]
    lps[:ndim, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, grey+alpha, RGBA


def _check_png_claim(path: Path) -> None:
    """The signature, and the bytes the IHDR's rows need (a filter byte and the packed pixels
    of each row: 1-bit masks pack 8 to a byte) against what the file's deflate stream can
    hold: before ITK allocates the image."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[: len(_PNG_SIGNATURE)] != _PNG_SIGNATURE:  # ITK reads such a file as a 0x0 image
        raise InputError("cannot read: not a valid PNG (no PNG signature)")
    if len(head) == 26 and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        bits = head[24] * _PNG_CHANNELS.get(head[25], 1)
        row = 1 + -(-width * bits // 8)
        check_claim((height, width), 1, os.path.getsize(path) * DEFLATE_INFLATION, claimed=height * row)


_TIFF_MAX_DIRECTORIES = 1 << 20  # libtiff's own limit


def _check_tiff_directories(path: Path) -> None:
    """The chain of image directories ends, inside the file: libtiff (in ITK) follows a chain
    that loops back on itself forever, at full CPU."""
    with open(path, "rb") as f:
        head = f.read(16)
        order = {b"II": "little", b"MM": "big"}.get(head[:2])
        version = int.from_bytes(head[2:4], order) if order else 0
        if version not in (42, 43):
            return  # not a TIFF: ITK says so itself
        big = version == 43  # BigTIFF: 8-byte counts and offsets
        size, count_bytes, entry_bytes, offset_bytes = os.fstat(f.fileno()).st_size, (8 if big else 2), \
            (20 if big else 12), (8 if big else 4)
        offset, seen = int.from_bytes(head[8:16] if big else head[4:8], order), set()
        while offset:
            if len(seen) >= _TIFF_MAX_DIRECTORIES:
                raise InputError(f"cannot read: more than {_TIFF_MAX_DIRECTORIES:,} TIFF image directories")
            if offset in seen or offset + count_bytes > size:
                raise InputError("cannot read: not a valid TIFF (its chain of image directories "
                                 + ("loops back on itself)" if offset in seen else "points past the end of the file)"))
            seen.add(offset)
            f.seek(offset)
            entries = int.from_bytes(f.read(count_bytes), order)
            f.seek(offset + count_bytes + entries * entry_bytes)
            offset = int.from_bytes(f.read(offset_bytes) or b"\0", order)


def _header_text(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(65536).decode("latin-1")


# The header line that names where a MetaImage's or NRRD's voxels are: ``LOCAL`` (after the
# header, in the same file), one file, or several (``LIST``, a ``%d`` pattern).
_DATA_FILE_LINE = {".mha": r"ElementDataFile\s*=\s*(.+?)\s*$", ".mhd": r"ElementDataFile\s*=\s*(.+?)\s*$",
                   ".nrrd": r"data ?file\s*:\s*(.+?)\s*$", ".nhdr": r"data ?file\s*:\s*(.+?)\s*$"}


def _data_file_line(path: Path, text: str) -> tuple[str | None, int]:
    """(what the header ``text`` of ``path`` names as the voxels' file, or None; the offset
    where the header ends)."""
    pattern = _DATA_FILE_LINE.get(path.suffix.lower())
    if pattern is None:
        return None, 0
    offset = 0
    for line in text.splitlines(keepends=True):
        offset += len(line)
        if path.suffix.lower() in (".nrrd", ".nhdr") and not line.strip():
            return None, offset  # a NRRD header ends at its first empty line
        match = re.match(pattern, line, flags=re.IGNORECASE)
        if match:  # a MetaImage header ends with this line; a NRRD that names one has no inline voxels
            return match.group(1), offset
    return None, offset


def _data_bytes(path: Path, data_file: Path | None, header_text: str) -> int | None:
    """Bytes that hold the voxels: a detached data file's, else the file's after its header;
    None when the header names several data files (a LIST or a pattern), not measured here."""
    if data_file is not None:
        return os.path.getsize(data_file)
    named, header_end = _data_file_line(path, header_text)
    if named is not None and _several_files(named):
        return None
    return os.path.getsize(path) - header_end


def _several_files(named: str) -> bool:
    """A data-file line naming several files: ``LIST``, or a pattern (``slice%03d.raw 1 40 1``)."""
    return bool(named.upper().startswith("LIST") or "%" in named or re.fullmatch(r".*\s+-?\d+\s+-?\d+\s+-?\d+", named))


def _detached_data_file(path: Path, header_text: str) -> Path | None:
    """The data file a MetaImage or NRRD header names, when it is one file (not LOCAL, a LIST
    or a pattern); its name may hold spaces (``my case.raw``, as ITK writes it)."""
    name, _ = _data_file_line(path, header_text)
    if name is None or name.upper() == "LOCAL" or _several_files(name):
        return None
    return path.parent / name
