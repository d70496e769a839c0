"""Fuzz ``rwmaps compute`` with malformed and hostile input files in every input format.

One corpus is generated per module (:func:`corpus`): a few good label files of every format
beside many bad ones (empty, random, truncated at several points, lying headers, wrong
dtypes, special files, odd names), and ``rwmaps compute`` runs ONCE on it, as a real
process under a memory cap (:data:`MEMORY_CAP`), so an allocation of what a lying header
claims shows up as a failure.  Each test below checks one point of the contract on that
one run, and names the files that break it:

1. the run exits 1 (one bad case never stops the others; no usage error, no refusal);
2. every good case gets its map;
3. every line on stderr is rwmaps' own (``rwmaps: ...``): no traceback, no stray library
   line (nibabel, libtiff, ITK, Python warnings), nothing on stdout;
4. every bad file is named in exactly one stderr line, ``rwmaps: PATH: cause``, and the
   summary counts every one of them as failed, special files (dangling symlink, symlink
   loop, FIFO, device) included;
5. a header that claims more data than its file holds fails alone, in one line, without
   the disk check refusing the run and without allocating (or asking memory for) what it claims.

A TIFF whose IFD chain loops to itself is run apart (a hang would hide every other
result): it must fail alone, in read_labels and in compute.

A property test (hypothesis) then mutates a small valid file of each format (truncation,
byte flips, pokes of large integers, inserted digits) and checks that
``rwmaps_cli.formats.read_labels`` returns a 2D/3D label array or raises ``InputError``,
and nothing else: each read runs in a forked child under a memory cap, killed if it hangs.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import blobs
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rwmaps_cli.errors import InputError
from rwmaps_cli.formats import read_labels

CLASSES = "0,1,2"
JOBS = 2
# The address-space cap of the rwmaps process and each of its workers.  A good-only run of
# this corpus's good files needs well under it (test_good_files_alone_fit_the_memory_cap;
# it passed down to a 1 GiB cap on 2 cores); what a lying header claims (30000^3 bytes,
# 99999^3, 100000^2) is far above it.
MEMORY_CAP = 6 * 2**30
RUN_TIMEOUT = 60  # seconds (the run takes a few); a FIFO, /dev/zero or a looping TIFF IFD chain would hang it
LIBRARY_NOISE = (  # lines libraries print by themselves, never rwmaps' own words
    "Traceback", "sizeof_hdr should be", "not recognized", "TIFFReadDirectory", "TIFFFetch", "WARNING",
    "Warning", "UserWarning", "DeprecationWarning", "RuntimeWarning", "ResourceWarning", "libpng",
)


# --------------------------------------------------------------------------- file makers


def labels3d(seed: int = 0, shape=(12, 10, 6)) -> np.ndarray:
    """uint8 labels with every class of CLASSES present."""
    array = blobs(shape, 3, seed=seed)
    array.flat[:3] = [0, 1, 2]
    return array


def labels2d(seed: int = 0, shape=(16, 14)) -> np.ndarray:
    array = blobs(shape, 3, seed=seed)
    array.flat[:3] = [0, 1, 2]
    return array


def nifti_bytes(array: np.ndarray) -> bytes:
    """A single-file NIfTI-1 (348-byte header, 4-byte extension flag, data at 352)."""
    image = nib.Nifti1Image(array, np.eye(4))
    image.header["vox_offset"] = 352
    return image.to_bytes()


def nifti_header_bytes(shape, dtype=np.uint8) -> bytes:
    """A NIfTI-1 header (352 bytes with the extension flag) claiming ``shape``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0\0\0\0"


def patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    """``data`` with ``struct.pack(fmt, value)`` written at ``offset``."""
    packed = struct.pack(fmt, value)
    return data[:offset] + packed + data[offset + len(packed):]


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=allow_pickle)
    return stream.getvalue()


def npy_header_bytes(shape, descr="|u1", fortran=False) -> bytes:
    """A .npy header (version 1.0) claiming ``shape``, without data."""
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return stream.getvalue()


def npy_raw_header(text: str, version=(1, 0)) -> bytes:
    """A .npy magic and a header of ``text`` as it is (padded to 64 bytes, no checks)."""
    body = text.encode("latin-1")
    pad = (-(10 + len(body) + 1)) % 64
    body = body + b" " * pad + b"\n"
    if version == (1, 0):
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(body)) + body


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return stream.getvalue()


def npz_bytes(**arrays) -> bytes:
    return zip_bytes({f"{key}.npy": npy_bytes(value) for key, value in arrays.items()}, zipfile.ZIP_DEFLATED)


MET_TYPES = {np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.float32): "MET_FLOAT", np.dtype(np.int16): "MET_SHORT"}


def metaimage_header(size_xyz, element_type="MET_UCHAR", data_file="LOCAL", extra=()) -> bytes:
    lines = ["ObjectType = Image", f"NDims = {len(size_xyz)}", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             "CompressedData = False", f"DimSize = {' '.join(map(str, size_xyz))}", *extra,
             f"ElementType = {element_type}", f"ElementDataFile = {data_file}"]
    return ("\n".join(lines) + "\n").encode()


def mha_bytes(array_zyx: np.ndarray, extra=()) -> bytes:
    """A MetaImage with its data LOCAL; ``array_zyx`` in numpy (z, y, x) order."""
    return metaimage_header(array_zyx.shape[::-1], MET_TYPES[array_zyx.dtype], extra=extra) + array_zyx.tobytes()


NRRD_TYPES = {np.dtype(np.uint8): "uint8", np.dtype(np.float32): "float", np.dtype(np.int16): "int16"}


def nrrd_header(size_xyz, type_="uint8", encoding="raw", data_file=None, extra=()) -> bytes:
    lines = ["NRRD0004", f"type: {type_}", f"dimension: {len(size_xyz)}", f"sizes: {' '.join(map(str, size_xyz))}",
             f"encoding: {encoding}", "endian: little", *extra]
    if data_file is not None:
        lines.append(f"data file: {data_file}")
    return ("\n".join(lines) + "\n\n").encode()


def nrrd_bytes(array_zyx: np.ndarray, extra=()) -> bytes:
    return nrrd_header(array_zyx.shape[::-1], NRRD_TYPES[array_zyx.dtype], extra=extra) + array_zyx.tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(array: np.ndarray, width=None, height=None, color_type=0, ihdr_crc_ok=True) -> bytes:
    """An 8-bit PNG of ``array`` ((H, W) grey or (H, W, 3) RGB); ``width``/``height`` may lie."""
    h, w = array.shape[:2]
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width or w, height or h, 8, color_type, 0, 0, 0))
    if not ihdr_crc_ok:
        ihdr = ihdr[:-4] + bytes(b ^ 0xFF for b in ihdr[-4:])
    rows = b"".join(b"\0" + row.tobytes() for row in array)
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")


PNG_HEADER_END = 8 + 25  # signature and IHDR chunk


def tiff_bytes(array: np.ndarray, width=None, height=None, strip_offset=None, strip_byte_counts=None,
               samples=1, next_ifd=0) -> bytes:
    """A little-endian, uncompressed, one-strip 2D TIFF of ``array`` (uint8 or float32), written
    by hand so that each tag can lie."""
    h, w = array.shape[:2]
    bits, sample_format = (32, 3) if array.dtype == np.float32 else (8, 1)
    entries = [(256, 4, width or w), (257, 4, height or h), (258, 3, bits), (259, 3, 1),
               (262, 3, 2 if samples == 3 else 1),
               (273, 4, None), (277, 3, samples), (278, 4, height or h), (279, 4, None), (339, 3, sample_format)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    values = {273: data_offset if strip_offset is None else strip_offset,
              279: array.nbytes if strip_byte_counts is None else strip_byte_counts}
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = values.get(tag, value)
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 8 if next_ifd == "loop" else next_ifd)
    return b"II*\0" + struct.pack("<I", 8) + ifd + array.tobytes()


TIFF_HEADER_END = 8 + 2 + 12 * 10 + 4


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    root: Path  # the input folder
    good: list[Path] = field(default_factory=list)  # must be computed
    bad: dict[Path, str] = field(default_factory=dict)  # must fail, one line each: path -> what it is
    either: dict[Path, str] = field(default_factory=dict)  # may be computed or fail (one line), never noise
    lying: list[Path] = field(default_factory=list)  # bad files whose header claims far more than the file holds
    special: list[Path] = field(default_factory=list)  # not regular files: symlinks, FIFO, device
    markers: list[Path] = field(default_factory=list)  # files a hostile payload would create if executed

    def add(self, kind: str, name: str, data: bytes, why: str = "") -> Path:
        path = self.root / name
        path.write_bytes(data)
        if kind == "good":
            self.good.append(path)
        else:
            {"bad": self.bad, "either": self.either}[kind][path] = why
        return path

    def side(self, name: str, data: bytes) -> Path:
        """A data file (.raw) beside a detached header: not a label file."""
        path = self.root / name
        path.write_bytes(data)
        return path

    def has_map(self, path: Path, out: Path) -> bool:
        try:
            return self.expected_output(path, out).is_file()
        except OSError:  # a name over NAME_MAX: no such map
            return False

    def expected_output(self, path: Path, out: Path) -> Path:
        name = path.name
        for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".tiff", ".tif", ".npy", ".npz"):
            if name.lower().endswith(suffix):
                return out / f"{name[: -len(suffix)]}.nii.gz"
        raise AssertionError(f"no label suffix: {name}")


def write_good(corpus: Corpus) -> None:
    """One good file per format, and some with odd names."""
    a3, b3, a2 = labels3d(1), labels3d(2), labels2d(3)
    corpus.add("good", "good_nii.nii", nifti_bytes(a3))
    corpus.add("good", "good_niigz.nii.gz", gz(nifti_bytes(b3)))
    corpus.add("good", "good_mha.mha", mha_bytes(a3))
    corpus.side("good_mhd_data.raw", b3.tobytes())
    corpus.add("good", "good_mhd.mhd", metaimage_header(b3.shape[::-1], data_file="good_mhd_data.raw"))
    corpus.add("good", "good_nrrd.nrrd", nrrd_bytes(a3))
    corpus.side("good_nhdr_data.raw", b3.tobytes())
    corpus.add("good", "good_nhdr.nhdr", nrrd_header(b3.shape[::-1], data_file="good_nhdr_data.raw"))
    corpus.add("good", "good_png.png", png_bytes(a2))
    corpus.add("good", "good_tif.tif", tiff_bytes(a2))
    corpus.add("good", "good_tiff.tiff", tiff_bytes(labels2d(4)))
    corpus.add("good", "good_npy.npy", npy_bytes(a3))
    corpus.add("good", "good_npz.npz", npz_bytes(labels=b3))
    # odd names, good content
    corpus.add("good", "good with spaces.nii.gz", gz(nifti_bytes(a3)))
    corpus.add("good", "good_ünïcødé_标签.npy", npy_bytes(b3))
    corpus.add("good", "-good-leading-dash.mha", mha_bytes(b3))
    corpus.add("good", "G" * (255 - len(".nii.gz")) + ".nii.gz", gz(nifti_bytes(a3)))  # 255 bytes, and its map too
    link = corpus.root / "good_symlink.nii.gz"
    link.symlink_to("good_niigz.nii.gz")
    corpus.good.append(link)


def write_truncations(corpus: Corpus, prefix: str, suffix: str, data: bytes, header_end: int) -> None:
    """``data`` cut inside the header, just after it, and mid-data; empty; random bytes."""
    cuts = {"cut_in_header": max(1, header_end // 2), "cut_after_header": header_end,
            "cut_mid_data": header_end + (len(data) - header_end) // 2, "cut_last_byte": len(data) - 1}
    for what, at in cuts.items():
        corpus.add("bad", f"{prefix}_{what}{suffix}", data[:at], f"truncated at byte {at} of {len(data)}")
    corpus.add("bad", f"{prefix}_empty{suffix}", b"", "0 bytes")
    corpus.add("bad", f"{prefix}_random{suffix}", random_bytes(3000, seed=len(prefix) + len(suffix)), "random bytes")


def write_bad(corpus: Corpus) -> None:
    a3, a2 = labels3d(5), labels2d(6)

    # ---- NIfTI (.nii)
    nii = nifti_bytes(a3)
    write_truncations(corpus, "nii", ".nii", nii, 352)
    corpus.add("bad", "nii_vox_offset_lies.nii", patch(nii, 108, "<f", 1e9), "vox_offset 1e9 in a small file")
    corpus.add("bad", "nii_datatype_1234.nii", patch(nii, 70, "<h", 1234), "unknown datatype code 1234")
    corpus.add("bad", "nii_dim0_9.nii", patch(nii, 40, "<h", 9), "dim[0] = 9")
    corpus.add("bad", "nii_5d.nii", nifti_bytes(np.zeros((4, 4, 4, 2, 2), np.uint8)), "5D volume")
    corpus.add("bad", "nii_complex64.nii", nifti_bytes((a3 + 1j).astype(np.complex64)), "complex64 labels")
    corpus.add("bad", "nii_nan.nii", nifti_bytes(np.where(a3 == 1, np.nan, a3).astype(np.float32)), "NaN labels")
    corpus.add("either", "nii_sizeof_hdr_0.nii", patch(nii, 0, "<i", 0), "sizeof_hdr 0, data intact")

    # ---- NIfTI (.nii.gz)
    niigz = gz(nifti_bytes(labels3d(7)))
    for what, at in {"cut_gzip_header": 5, "cut_gzip_mid": len(niigz) // 2}.items():
        corpus.add("bad", f"niigz_{what}.nii.gz", niigz[:at], f"gzip cut at byte {at} of {len(niigz)}")
    inner = nifti_bytes(labels3d(8))
    corpus.add("bad", "niigz_gz_of_cut_header.nii.gz", gz(inner[:200]), "valid gzip of a NIfTI cut in its header")
    corpus.add("bad", "niigz_gz_of_header_only.nii.gz", gz(inner[:352]), "valid gzip of a NIfTI header, no data")
    corpus.add("bad", "niigz_gz_of_cut_data.nii.gz", gz(inner[: 352 + (len(inner) - 352) // 2]), "valid gzip, data cut")
    corpus.add("bad", "niigz_empty.nii.gz", b"", "0 bytes")
    corpus.add("bad", "niigz_random.nii.gz", random_bytes(2000, seed=11), "random bytes")
    corpus.add("bad", "niigz_gzip_magic_garbage.nii.gz", b"\x1f\x8b\x08\x00" + random_bytes(2000, seed=12),
               "gzip magic then garbage")
    corpus.add("bad", "niigz_gz_of_garbage.nii.gz", gz(random_bytes(4000, seed=13)), "valid gzip of random bytes")
    corpus.add("bad", "niigz_vox_offset_lies.nii.gz", gz(patch(inner, 108, "<f", 1e9)), "vox_offset 1e9")
    corpus.add("bad", "niigz_datatype_1234.nii.gz", gz(patch(inner, 70, "<h", 1234)), "unknown datatype code 1234")
    corpus.add("bad", "niigz_5d.nii.gz", gz(nifti_bytes(np.zeros((4, 4, 4, 2, 2), np.uint8))), "5D volume")
    corpus.add("bad", "niigz_nan.nii.gz", gz(nifti_bytes(np.where(a3 == 2, np.nan, a3).astype(np.float32))),
               "NaN labels")
    corpus.add("either", "niigz_no_gzip_trailer.nii.gz", niigz[:-8], "gzip without its CRC/size trailer, data complete")
    corpus.add("either", "niigz_bad_crc.nii.gz", niigz[:-8] + bytes(b ^ 0xFF for b in niigz[-8:-4]) + niigz[-4:],
               "gzip with a wrong CRC, data complete")

    # ---- MetaImage (.mha, .mhd + .raw)
    mha = mha_bytes(a3)
    mha_header_end = len(metaimage_header(a3.shape[::-1]))
    write_truncations(corpus, "mha", ".mha", mha, mha_header_end)
    corpus.add("bad", "mha_4d.mha", mha_bytes(np.zeros((2, 3, 4, 5), np.uint8)), "4D volume")
    corpus.add("bad", "mha_3_channels.mha", metaimage_header(a3.shape[::-1], extra=["ElementNumberOfChannels = 3"])
               + np.repeat(a3, 3).tobytes(), "vector pixels")
    corpus.add("bad", "mha_nan.mha", mha_bytes(np.where(a3 == 1, np.nan, a3).astype(np.float32)), "NaN labels")
    corpus.add("bad", "mha_bogus_type.mha", metaimage_header(a3.shape[::-1], "MET_BOGUS") + a3.tobytes(),
               "ElementType MET_BOGUS")
    corpus.add("bad", "mha_negative_size.mha", metaimage_header((-6, 10, 12)) + a3.tobytes(), "DimSize -6")
    corpus.add("bad", "mha_compressed_garbage.mha", metaimage_header(a3.shape[::-1]).replace(
        b"CompressedData = False", b"CompressedData = True") + random_bytes(300, seed=14), "CompressedData, not zlib")
    corpus.add("bad", "mhd_missing_data.mhd", metaimage_header(a3.shape[::-1], data_file="nowhere.raw"),
               "data file missing")
    corpus.side("mhd_cut_data.raw", a3.tobytes()[:100])
    corpus.add("bad", "mhd_cut_data.mhd", metaimage_header(a3.shape[::-1], data_file="mhd_cut_data.raw"),
               "data file cut")
    corpus.side("mhd_cut_header_data.raw", a3.tobytes())
    corpus.add("bad", "mhd_cut_header.mhd", metaimage_header(a3.shape[::-1], data_file="mhd_cut_header_data.raw")[:40],
               "header cut mid-line")
    corpus.add("bad", "mhd_empty.mhd", b"", "0 bytes")
    corpus.add("bad", "mhd_random.mhd", random_bytes(500, seed=15), "random bytes")

    # ---- NRRD (.nrrd, .nhdr + .raw)
    nrrd = nrrd_bytes(a3)
    write_truncations(corpus, "nrrd", ".nrrd", nrrd, len(nrrd_header(a3.shape[::-1])))
    corpus.add("bad", "nrrd_4d.nrrd", nrrd_bytes(np.zeros((2, 3, 4, 5), np.uint8)), "4D volume")
    corpus.add("bad", "nrrd_nan.nrrd", nrrd_bytes(np.where(a3 == 1, np.nan, a3).astype(np.float32)), "NaN labels")
    corpus.add("bad", "nrrd_bogus_type.nrrd", nrrd_header(a3.shape[::-1], "bogus") + a3.tobytes(), "type bogus")
    corpus.add("bad", "nrrd_gzip_garbage.nrrd",
               nrrd_header(a3.shape[::-1], encoding="gzip") + random_bytes(300, seed=16), "encoding gzip, not gzip")
    corpus.add("bad", "nhdr_missing_data.nhdr", nrrd_header(a3.shape[::-1], data_file="nowhere_n.raw"),
               "data file missing")
    corpus.side("nhdr_cut_data.raw", a3.tobytes()[:100])
    corpus.add("bad", "nhdr_cut_data.nhdr", nrrd_header(a3.shape[::-1], data_file="nhdr_cut_data.raw"), "data file cut")
    corpus.add("bad", "nhdr_empty.nhdr", b"", "0 bytes")
    corpus.add("bad", "nhdr_random.nhdr", random_bytes(500, seed=17), "random bytes")

    # ---- PNG
    png = png_bytes(a2)
    write_truncations(corpus, "png", ".png", png, PNG_HEADER_END)
    corpus.add("bad", "png_ihdr_crc.png", png_bytes(a2, ihdr_crc_ok=False), "IHDR with a wrong CRC")
    corpus.add("bad", "png_rgb.png", png_bytes(np.repeat(a2[..., None], 3, axis=2), color_type=2), "RGB pixels")
    corpus.add("bad", "png_signature_only.png", b"\x89PNG\r\n\x1a\n", "the signature alone")

    # ---- TIFF (.tif, .tiff)
    tif = tiff_bytes(a2)
    write_truncations(corpus, "tif", ".tif", tif, TIFF_HEADER_END)
    corpus.add("bad", "tiff_cut_mid_data.tiff", tif[: TIFF_HEADER_END + a2.nbytes // 2], "truncated mid-data")
    # libtiff ignores a StripByteCounts larger than the file and recomputes it: the labels are intact
    corpus.add("either", "tif_bogus_strip_byte_counts.tif", tiff_bytes(a2, strip_byte_counts=0xFFFFFF00),
               "StripByteCounts 0xFFFFFF00, data intact")
    corpus.add("bad", "tif_strip_offset_past_eof.tif", tiff_bytes(a2, strip_offset=10**9), "StripOffsets past the end")
    corpus.add("bad", "tif_ifd_past_eof.tif", b"II*\0" + struct.pack("<I", 10**9) + a2.tobytes(),
               "IFD offset past the end")
    corpus.add("bad", "tif_rgb.tif", tiff_bytes(np.repeat(a2[..., None], 3, axis=2), samples=3), "RGB pixels")
    corpus.add("bad", "tif_nan.tif", tiff_bytes(np.where(a2 == 1, np.nan, a2).astype(np.float32)), "NaN labels")

    # ---- .npy
    npy = npy_bytes(a3)
    npy_header_end = len(npy) - a3.nbytes
    write_truncations(corpus, "npy", ".npy", npy, npy_header_end)
    corpus.add("bad", "npy_complex64.npy", npy_bytes((a3 + 1j).astype(np.complex64)), "complex64")
    corpus.add("bad", "npy_object.npy", npy_bytes(np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True),
               "object array (pickle)")
    corpus.add("bad", "npy_structured.npy", npy_bytes(np.zeros((4, 4, 4), [("a", "u1"), ("b", "<f4")])),
               "structured dtype")
    corpus.add("bad", "npy_5d.npy", npy_bytes(np.zeros((2, 2, 2, 2, 2), np.uint8)), "5D volume")
    corpus.add("bad", "npy_nan.npy", npy_bytes(np.where(a3 == 1, np.nan, a3).astype(np.float32)), "NaN labels")
    corpus.add("bad", "npy_inf.npy", npy_bytes(np.where(a3 == 1, np.inf, a3).astype(np.float64)), "inf labels")
    corpus.add("bad", "npy_negative_shape.npy",
               npy_raw_header("{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 12, 12), }") + bytes(200),
               "negative shape")
    marker = corpus.root.parent / "PWNED_BY_NPY_HEADER"
    corpus.markers.append(marker)
    corpus.add("bad", "npy_header_code.npy", npy_raw_header(
        f"{{'descr': __import__('os').system('touch {marker}'), 'fortran_order': False, 'shape': (2, 2, 2), }}")
        + bytes(8), "code in the header dict")
    corpus.add("bad", "npy_v2_huge_header_len.npy", b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{'descr'",
               "version 2 header length 0xFFFFFFF0")
    pickle_marker = corpus.root.parent / "PWNED_BY_PICKLE"
    corpus.markers.append(pickle_marker)

    class Payload:
        def __reduce__(self):
            return open, (str(pickle_marker), "w")

    corpus.add("bad", "npy_pickle_payload.npy",
               npy_raw_header("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }")
               + pickle.dumps(Payload(), protocol=2), "object array whose pickle creates a file")

    # ---- .npz
    npz = npz_bytes(labels=a3)
    write_truncations(corpus, "npz", ".npz", npz, 30 + len("labels.npy"))  # the first local file header
    corpus.add("bad", "npz_no_arrays.npz", zip_bytes({}), "an empty zip")
    corpus.add("bad", "npz_two_arrays.npz", npz_bytes(first=a3, second=a3), "two arrays, neither named labels")
    corpus.add("bad", "npz_object.npz", zip_bytes({"labels.npy": npy_bytes(np.array([{"a": 1}], dtype=object),
                                                                          allow_pickle=True)}), "object member")
    corpus.add("bad", "npz_complex.npz", npz_bytes(labels=(a3 + 1j).astype(np.complex64)), "complex64 member")
    corpus.add("bad", "npz_member_cut.npz", zip_bytes({"labels.npy": npy[: len(npy) // 2]}), "member .npy cut mid-data")
    corpus.add("bad", "npz_member_random.npz", zip_bytes({"labels.npy": random_bytes(500, seed=18)}),
               "member is random bytes")
    corpus.add("bad", "npz_nan.npz", npz_bytes(labels=np.where(a3 == 1, np.nan, a3).astype(np.float32)), "NaN labels")
    corpus.add("bad", "npz_5d.npz", npz_bytes(labels=np.zeros((2, 2, 2, 2, 2), np.uint8)), "5D volume")
    corpus.add("bad", "npz_bad_spacing.npz", npz_bytes(labels=a3, spacing=np.ones(7)), "7 spacing values for 3D")

    # ---- odd names, bad content
    corpus.add("bad", "bad with spaces.nii.gz", random_bytes(600, seed=19), "random bytes, name with spaces")
    corpus.add("bad", "bad_ünïcødé_标签.png", random_bytes(600, seed=20), "random bytes, unicode name")
    corpus.add("bad", "-bad-leading-dash.mha", b"", "0 bytes, name starts with a dash")
    corpus.add("bad", "B" * (254 - len(".npy")) + ".npy", random_bytes(600, seed=21), "random bytes, 254-byte name")
    corpus.add("bad", "M" * (255 - len(".npy")) + ".npy", npy_bytes(a3),
               "valid labels, but the map's name would be 258 bytes (over NAME_MAX)")


def write_lying(corpus: Corpus) -> None:
    """Headers that claim far more data than their files hold."""
    few = bytes(range(16))
    huge3 = (30000, 30000, 30000)
    entries = {
        "lie_nii.nii": nifti_header_bytes(huge3) + few,
        "lie_niigz.nii.gz": gz(nifti_header_bytes(huge3) + few),
        "lie_npy.npy": npy_header_bytes((99999, 99999, 99999)) + few,
        "lie_npz_stored.npz": zip_bytes({"labels.npy": npy_header_bytes((99999, 99999, 99999)) + few}),
        "lie_npz_deflated.npz": zip_bytes({"arr_0.npy": npy_header_bytes((99999, 99999, 99999)) + few},
                                          zipfile.ZIP_DEFLATED),
        "lie_png.png": png_bytes(labels2d(9), width=100000, height=100000),
        "lie_mha.mha": metaimage_header(huge3) + few,
        "lie_nrrd.nrrd": nrrd_header(huge3) + few,
        "lie_nhdr.nhdr": nrrd_header(huge3, data_file="lie_nhdr_data.raw"),
        "lie_mhd.mhd": metaimage_header(huge3, data_file="lie_mhd_data.raw"),
        "lie_tif.tif": tiff_bytes(labels2d(10), width=100000, height=100000),
    }
    corpus.side("lie_nhdr_data.raw", few)
    corpus.side("lie_mhd_data.raw", few)
    for name, data in entries.items():
        corpus.lying.append(corpus.add("bad", name, data, "header claims far more data than the file holds"))


def write_special(corpus: Corpus) -> None:
    """Not regular files: each must be named with its cause and counted as failed."""
    root = corpus.root
    (root / "dangling.nii.gz").symlink_to("missing")
    (root / "loop_a.nii.gz").symlink_to("loop_b.nii.gz")
    (root / "loop_b.nii.gz").symlink_to("loop_a.nii.gz")
    os.mkfifo(root / "fifo.nii.gz")
    (root / "devzero.mha").symlink_to("/dev/zero")  # read as a file: never ends
    (root / "devnull.npy").symlink_to("/dev/null")
    why = {"dangling.nii.gz": "dangling symlink", "loop_a.nii.gz": "symlink loop", "loop_b.nii.gz": "symlink loop",
           "fifo.nii.gz": "FIFO", "devzero.mha": "symlink to /dev/zero", "devnull.npy": "symlink to /dev/null"}
    for name, what in why.items():
        corpus.bad[root / name] = what
        corpus.special.append(root / name)


def build_corpus(root: Path, with_bad: bool = True) -> Corpus:
    root.mkdir(parents=True)
    corpus = Corpus(root)
    write_good(corpus)
    if with_bad:
        write_bad(corpus)
        write_lying(corpus)
        write_special(corpus)
    names = [str(p) for p in [*corpus.good, *corpus.bad, *corpus.either]]
    assert len(set(names)) == len(names)
    for name in names:  # so that "the line names this file" is unambiguous
        assert not any(name != other and name + ":" in other for other in names), name
        assert len(os.path.basename(name).encode()) <= 255, name
    return corpus


# --------------------------------------------------------------------------- running rwmaps


@dataclass
class Run:
    args: list[str]
    returncode: int | None  # None: killed at RUN_TIMEOUT
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()

    def describe(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f} s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def _cap_memory() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_compute(input_dir: Path, output_dir: Path, timeout: float = RUN_TIMEOUT) -> Run:
    """``rwmaps compute`` as a real process (as helpers.run_rwmaps_process), under MEMORY_CAP."""
    args = [sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(input_dir), "--output", str(output_dir),
            "--jobs", str(JOBS), "--classes", CLASSES]
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_cap_memory,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group this test started: rwmaps and its workers
        out, err = process.communicate()
        code = None
    return Run(args, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.perf_counter() - start)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("hostile") / "labels")


@pytest.fixture(scope="module")
def run(corpus) -> Run:
    return run_compute(corpus.root, corpus.root.parent / "maps")


def out_dir(corpus: Corpus) -> Path:
    return corpus.root.parent / "maps"


def naming_lines(run: Run, path: Path) -> list[str]:
    """The stderr lines that name ``path`` (as ``PATH:``)."""
    return [line for line in run.lines if f"{path}:" in line]


def summary(run: Run) -> dict[str, int] | None:
    match = re.search(r"rwmaps: (\d+) done, (\d+) skipped \(already done\), (\d+) failed, (\d+) other files? ignored",
                      run.stderr)
    return None if match is None else dict(zip(("done", "skipped", "failed", "ignored"), map(int, match.groups())))


# --------------------------------------------------------------------------- the contract, on one run


def test_good_files_alone_fit_the_memory_cap(tmp_path):
    """The cap is fair: the good files alone compute under it, exit 0, every map written."""
    corpus = build_corpus(tmp_path / "labels", with_bad=False)
    result = run_compute(corpus.root, tmp_path / "maps")
    assert result.returncode == 0, result.describe()
    missing = [str(p) for p in corpus.good if not corpus.has_map(p, tmp_path / "maps")]
    assert not missing, f"no map for {missing}\n{result.describe()}"


def test_the_run_exits_1(run):
    assert run.returncode is not None, \
        f"rwmaps did not finish in {RUN_TIMEOUT} s (a FIFO or device read? a looping file?)\n{run.describe()}"
    assert run.returncode == 1, f"expected exit 1 (bad cases failed, the others done)\n{run.describe()}"


def test_every_good_case_is_computed(run, corpus):
    out = out_dir(corpus)
    missing = [str(p) for p in corpus.good if not corpus.has_map(p, out)]
    assert not missing, f"good cases without a map: {missing}\n{run.describe()}"
    for path in corpus.good:
        assert not naming_lines(run, path), f"a good case is named on stderr: {naming_lines(run, path)}"


def test_stderr_holds_only_rwmaps_lines(run):
    stray = [line for line in run.lines if not line.startswith("rwmaps: ")]
    stray += [f"(stdout) {line}" for line in run.stdout.splitlines()]
    assert not stray, "lines that are not rwmaps' own (each must start with 'rwmaps: '):\n" + "\n".join(stray)


def test_no_traceback_and_no_library_noise(run):
    noisy = [line for line in run.lines if "Traceback" in line
             or (not line.startswith("rwmaps: ") and any(word in line for word in LIBRARY_NOISE))]
    assert not noisy, "traceback or library lines on stderr:\n" + "\n".join(noisy)


def test_every_bad_file_is_named_in_exactly_one_line(run, corpus):
    problems = []
    for path, what in corpus.bad.items():
        lines = naming_lines(run, path)
        if len(lines) != 1:
            problems.append(f"{path.name} ({what}): named in {len(lines)} lines {lines}")
        elif not lines[0].startswith(f"rwmaps: {path}: "):
            problems.append(f"{path.name} ({what}): line is not 'rwmaps: PATH: cause': {lines[0]!r}")
    for path, what in corpus.either.items():
        lines = naming_lines(run, path)
        if len(lines) > 1 or (not lines and not corpus.has_map(path, out_dir(corpus))):
            problems.append(f"{path.name} ({what}): neither computed nor named in one line: {lines}")
    assert not problems, f"{len(problems)} of {len(corpus.bad)} bad files break the one-line rule:\n" \
        + "\n".join(problems)


def test_special_files_are_named_with_their_cause(run, corpus):
    """Dangling symlinks, symlink loops, a FIFO and device files are failed cases, not silence."""
    silent = [f"{path.name} ({corpus.bad[path]})" for path in corpus.special if not naming_lines(run, path)]
    assert not silent, f"special files skipped in silence: {silent}"


def test_summary_counts_every_bad_file_as_failed(run, corpus):
    counts = summary(run)
    assert counts is not None, f"no summary line\n{run.describe()}"
    either_failed = sum(1 for p in corpus.either if not corpus.has_map(p, out_dir(corpus)))
    expected_failed = len(corpus.bad) + either_failed
    expected_done = len(corpus.good) + len(corpus.either) - either_failed
    assert (counts["done"], counts["failed"]) == (expected_done, expected_failed), (
        f"summary says {counts['done']} done, {counts['failed']} failed; expected {expected_done} done, "
        f"{expected_failed} failed ({len(corpus.bad)} bad files + {either_failed} ambiguous ones that failed). "
        f"Bad files not named on stderr: {[p.name for p in corpus.bad if not naming_lines(run, p)]}")


def test_lying_headers_fail_alone(run, corpus):
    """Not refused by the disk check, not trusted by the memory check, never allocated."""
    assert "the maps need about" not in run.stderr, "the disk-space check refused the whole run:\n" + run.stderr
    problems = []
    for path in corpus.lying:
        lines = naming_lines(run, path)
        if len(lines) != 1:
            problems.append(f"{path.name}: named in {len(lines)} lines {lines}")
        elif re.search(r"memory|MemoryError|worker process died|Unable to allocate", lines[0], re.IGNORECASE):
            problems.append(f"{path.name}: its claim was trusted (memory asked or allocated): {lines[0]}")
    assert not problems, "lying headers:\n" + "\n".join(problems) + f"\n\nfull stderr:\n{run.stderr}"


def test_bad_files_leave_no_map_and_no_temporary(run, corpus):
    out = out_dir(corpus)
    written = [p.name for p in corpus.bad if corpus.has_map(p, out)]
    assert not written, f"maps written for bad files: {written}"
    temporaries = [p.name for p in out.rglob("*") if ".rwmaps-tmp-" in p.name] if out.is_dir() else []
    assert not temporaries, f"temporaries left: {temporaries}"


def test_hostile_payloads_never_run(run, corpus):
    ran = [str(m) for m in corpus.markers if m.exists()]
    assert not ran, f"a header or pickle payload was executed: {ran}"


def test_looping_tiff_fails_alone_in_compute(tmp_path):
    """Kept out of the main corpus (a hang there would hide every other result): a TIFF whose
    IFD chain loops to itself, beside a good TIFF, fails alone in one line."""
    root = tmp_path / "labels"
    root.mkdir()
    (root / "good_tif.tif").write_bytes(tiff_bytes(labels2d(3)))
    loop = root / "tif_ifd_loop.tif"
    loop.write_bytes(tiff_bytes(labels2d(5), next_ifd="loop"))
    result = run_compute(root, tmp_path / "maps", timeout=20)
    assert result.returncode is not None, \
        f"rwmaps hangs on a TIFF whose IFD chain loops (killed at 20 s)\n{result.describe()}"
    assert result.returncode == 1, f"expected exit 1\n{result.describe()}"
    assert (tmp_path / "maps" / "good_tif.nii.gz").is_file(), result.describe()
    named = [line for line in result.lines if f"{loop}:" in line]
    assert len(named) == 1 and named[0].startswith(f"rwmaps: {loop}: "), result.describe()
    assert all(line.startswith("rwmaps: ") for line in result.lines), result.describe()



# --------------------------------------------------------------------------- property: read_labels never escapes


READ_TIMEOUT = 10  # seconds for one read_labels of a tiny mutated file; more is a hang


def read_labels_in_child(path: Path, extra_address_space: int = 3 * 2**30) -> tuple:
    """``read_labels(path)`` in a forked child whose address space is capped at what this
    process uses now plus ``extra_address_space`` (so that allocating what a lying header
    claims raises MemoryError there, instead of succeeding by overcommit here), and that is
    killed after READ_TIMEOUT (a read that loops in C cannot be interrupted in-process).

    Returns ("ok", shape, dtype str, dtype kind, nbytes), ("InputError", message),
    ("other", exception type, message), ("hang",) or ("died", wait status)."""
    with open("/proc/self/status") as status:
        vm_size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read, report, and leave without running pytest's exit code
        try:
            os.close(reader)
            resource.setrlimit(resource.RLIMIT_AS, (vm_size + extra_address_space,) * 2)
            try:
                array = read_labels(path).array
                result = ("ok", array.shape, array.dtype.str, array.dtype.kind, array.nbytes)
            except InputError as error:
                result = ("InputError", str(error))
            except BaseException as error:  # noqa: BLE001 - reported to the parent, which judges
                result = ("other", type(error).__name__, str(error)[:500])
            os.write(writer, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(writer)
    try:
        ready, _, _ = select.select([reader], [], [], READ_TIMEOUT)
        if not ready:
            os.kill(pid, signal.SIGKILL)  # the child this test forked
            os.waitpid(pid, 0)
            return ("hang",)
        chunks = []
        while chunk := os.read(reader, 65536):
            chunks.append(chunk)
    finally:
        os.close(reader)
    _, wait_status = os.waitpid(pid, 0)
    return pickle.loads(b"".join(chunks)) if chunks else ("died", wait_status)


def _valid_files() -> dict[str, tuple[dict[str, bytes], str, int]]:
    """suffix -> ({file name: bytes}, the member to mutate, where its header ends)."""
    a3, a2 = labels3d(30), labels2d(31)
    nii, npy = nifti_bytes(a3), npy_bytes(a3)
    return {
        ".nii": ({"case.nii": nii}, "case.nii", 352),
        ".nii.gz": ({"case.nii.gz": gz(nii)}, "case.nii.gz", 20),
        ".nii.gz (inner)": ({"case.nii.gz": nii}, "case.nii.gz", 352),  # mutated, then gzipped
        ".mha": ({"case.mha": mha_bytes(a3)}, "case.mha", len(metaimage_header(a3.shape[::-1]))),
        ".mhd": ({"case.mhd": metaimage_header(a3.shape[::-1], data_file="case.raw"), "case.raw": a3.tobytes()},
                 "case.mhd", 200),
        ".mhd (raw)": ({"case.mhd": metaimage_header(a3.shape[::-1], data_file="case.raw"), "case.raw": a3.tobytes()},
                       "case.raw", 0),
        ".nrrd": ({"case.nrrd": nrrd_bytes(a3)}, "case.nrrd", len(nrrd_header(a3.shape[::-1]))),
        ".nhdr": ({"case.nhdr": nrrd_header(a3.shape[::-1], data_file="case.raw"), "case.raw": a3.tobytes()},
                  "case.nhdr", 200),
        ".png": ({"case.png": png_bytes(a2)}, "case.png", PNG_HEADER_END),
        ".tif": ({"case.tif": tiff_bytes(a2)}, "case.tif", TIFF_HEADER_END),
        ".npy": ({"case.npy": npy}, "case.npy", len(npy) - a3.nbytes),
        ".npz": ({"case.npz": npz_bytes(labels=a3)}, "case.npz", 60),
        ".npz (member)": ({"case.npz": npy}, "case.npz", len(npy) - a3.nbytes),  # mutated, then zipped
    }


VALID = _valid_files()


def _wrap(kind: str, data: bytes) -> bytes:
    if kind == ".nii.gz (inner)":
        return gz(data)
    if kind == ".npz (member)":
        return zip_bytes({"labels.npy": data})
    return data


def mutations(length: int, header_end: int):
    """Lists of edits: cut, flip a byte, poke a large integer, insert digits."""
    near_header = st.integers(0, max(0, min(length - 1, header_end + 16)))
    anywhere = st.integers(0, max(0, length - 1))
    position = st.one_of(near_header, anywhere)
    edit = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("poke"), position, st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 30000, 0, 1])),
        st.tuples(st.just("insert"), position, st.sampled_from([b"9", b"99999", b"-", b" 0", b"\n", b"\0"])),
        st.tuples(st.just("cut"), position, st.just(0)),
    )
    return st.lists(edit, min_size=1, max_size=4)


def mutate(data: bytes, edits) -> bytes:
    buffer = bytearray(data)
    for op, at, value in edits:
        at = min(at, max(0, len(buffer) - 1))
        if op == "flip" and buffer:
            buffer[at] ^= value
        elif op == "poke":
            buffer[at:at + 4] = struct.pack("<I", value)
        elif op == "insert":
            buffer[at:at] = value
        elif op == "cut":
            del buffer[at:]
    return bytes(buffer)


def test_looping_tiff_ifd_chain_fails_fast(tmp_path):
    """A TIFF whose IFD points at itself must fail, not spin: read_labels raises InputError."""
    path = tmp_path / "loop.tif"
    path.write_bytes(tiff_bytes(labels2d(1), next_ifd="loop"))
    result = read_labels_in_child(path)
    assert result[0] == "InputError", f"read_labels of a TIFF whose IFD chain loops: {result}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mutants")


@pytest.mark.parametrize("kind", list(VALID))
def test_read_labels_returns_labels_or_input_error(kind, scratch):
    files, target, header_end = VALID[kind]
    folder = scratch / re.sub(r"[^a-z]", "_", kind)
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(_wrap(kind, data) if name == target else data)
    label_file = folder / next(name for name in files if not name.endswith(".raw"))
    assert read_labels_in_child(label_file)[0] == "ok"  # the unmutated file is valid

    # No shrinking: a read that hangs costs READ_TIMEOUT per try, and the edits are short anyway.
    @settings(max_examples=30, deadline=None, database=None, derandomize=True,
              phases=(Phase.explicit, Phase.reuse, Phase.generate),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(edits=mutations(len(files[target]), header_end))
    def check(edits):
        (folder / target).write_bytes(_wrap(kind, mutate(files[target], edits)))
        result = read_labels_in_child(label_file)
        if result[0] == "InputError":
            assert "\n" not in result[1], f"{kind} mutated by {edits}: a multi-line InputError {result[1]!r}"
            return
        assert result[0] == "ok", f"{kind} mutated by {edits}: read_labels gave {result} (not labels, not InputError)"
        _, shape, dtype, dtype_kind, nbytes = result
        assert len(shape) in (2, 3) and 0 not in shape, f"{kind} {edits}: shape {shape}"
        assert dtype_kind in "biuf", f"{kind} {edits}: dtype {dtype}"
        assert nbytes < 2**27, f"{kind} {edits}: a {nbytes}-byte array from a tiny file"

    check()
