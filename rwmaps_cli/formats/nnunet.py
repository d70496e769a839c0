"""nnU-Net v2's preprocessed segs as a label format, read without importing nnU-Net.

What nnU-Net 2.0 to 2.8 write per case in a preprocessed configuration folder
(``nnUNet_preprocessed/DatasetXXX_Name/<plans>_<cfg>``):

- 2.6 and later: ``<case>.b2nd`` (data), ``<case>_seg.b2nd`` (seg), ``<case>.pkl``;
- 2.0 to 2.5: ``<case>.npz`` (keys ``data`` and ``seg``), ``<case>.pkl``, and after training
  unpacked it, ``<case>.npy`` and ``<case>_seg.npy``.

The seg is int16 ``(1, *spatial)``, transposed and resampled to the configuration; ``-1``
marks voxels outside the nonzero crop, which training turns into background 0.  blosc2 is
imported only to read ``.b2nd`` (it comes with the ``nnunet`` extra).

This module owns the file names; what a preprocessed folder is (its plans, classes, where
its maps go) is ``rwmaps_cli/inputs/nnunet_preprocessed.py``.  The voxel sizes come from the plans
beside the folder (``rwmaps_cli/formats/nnunet_plans.py``, which imports nothing above ``errors``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from rwmaps_cli.errors import InputError, PreprocessedError
from .nnunet_plans import folder_spacing

from .base import FileFormat, LabelVolume, check_ndim, diagonal_affine, one_line
from .numpy import npy_header

#: How a folder's segs are stored, as nnU-Net writes them (see :func:`find_segs`).
SEG_STORAGES = ("b2nd", "npz", "npy")


class SegError(PreprocessedError, InputError):
    """A preprocessed seg file that cannot be read as labels.  As every :class:`InputError`,
    one line without the file's path: the caller prefixes it."""


def seg_storage(folder: Path) -> str:
    """How the segs of a configuration folder are stored: one of :data:`SEG_STORAGES`
    (``npy``: only unpacked ``<case>_seg.npy`` files are left).

    Raises
    ------
    PreprocessedError
        When the folder holds no case in a format nnU-Net writes (names the folder).
    """
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith("_seg.b2nd") for n in names):
        return "b2nd"
    if any(n.endswith(".npz") for n in names):
        return "npz"
    if any(n.endswith("_seg.npy") for n in names):
        return "npy"
    raise PreprocessedError(f"{folder}: no preprocessed case found (looked for <case>_seg.b2nd, <case>.npz and "
                            f"<case>_seg.npy)")


def find_segs(folder: Path) -> list[tuple[str, Path]]:
    """(case name, seg file) of every case of a configuration folder, sorted by name.

    Case identifiers follow nnU-Net's own rule for the folder's storage: every ``*.b2nd``
    not ending in ``_seg.b2nd`` (2.6+), every ``*.npz`` (2.0-2.5), or, when only unpacked
    files are left, every ``*_seg.npy``.  For ``.npz`` cases an unpacked
    ``<case>_seg.npy`` beside it is preferred (it memory-maps).

    Raises
    ------
    PreprocessedError
        When there is no case, or a case's seg file is missing (names the file).
    """
    storage = seg_storage(folder)
    names = {p.name for p in folder.iterdir() if p.is_file()}
    found = []
    if storage == "b2nd":
        for name in sorted(n[:-5] for n in names if n.endswith(".b2nd") and not n.endswith("_seg.b2nd")):
            if f"{name}_seg.b2nd" not in names:
                raise PreprocessedError(f"{folder / (name + '.b2nd')}: its seg {name}_seg.b2nd is missing")
            found.append((name, folder / f"{name}_seg.b2nd"))
    elif storage == "npz":
        for name in sorted(n[:-4] for n in names if n.endswith(".npz")):
            found.append((name, folder / (f"{name}_seg.npy" if f"{name}_seg.npy" in names else f"{name}.npz")))
    else:
        found = [(name, folder / f"{name}_seg.npy")
                 for name in sorted(n[: -len("_seg.npy")] for n in names if n.endswith("_seg.npy"))]
    if not found:
        raise PreprocessedError(f"{folder}: no preprocessed case found")
    return found


def read_seg(path: str | Path) -> np.ndarray:
    """Read one preprocessed seg as a ``(*spatial)`` integer array, ``-1`` turned into 0.

    Parameters
    ----------
    path : ``<case>_seg.b2nd``, ``<case>_seg.npy`` or ``<case>.npz`` (key ``seg``)

    Returns
    -------
    labels : (*spatial) array of the stored integer dtype (int16 as nnU-Net writes it)

    Raises
    ------
    SegError
        When the file cannot be read, is not ``(1, *spatial)`` integers, or is ``.b2nd``
        and blosc2 is not installed.  One line, without the path.
    """
    path = Path(path)
    seg = _stored_seg(path)
    if seg.ndim not in (3, 4) or seg.shape[0] != 1:
        raise SegError(f"seg has shape {tuple(seg.shape)}; expected (1, *spatial)")
    if not np.issubdtype(seg.dtype, np.integer):
        raise SegError(f"seg has dtype {seg.dtype}; expected integers")
    labels = np.array(seg[0])
    labels[labels == -1] = 0  # outside nnU-Net's nonzero crop: background, as its training does
    return labels


def _stored_seg(path: Path) -> np.ndarray:
    """The ``(1, *spatial)`` seg as stored (a memory map for ``.npy``)."""
    try:
        if path.name.endswith(".b2nd"):
            return _blosc2(path).open(urlpath=str(path), mode="r")[:]
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r")
        if path.suffix == ".npz":
            with np.load(path) as archive:
                if "seg" not in archive.files:
                    raise SegError(f"no 'seg' key (keys: {', '.join(archive.files)})")
                return archive["seg"]
    except SegError:
        raise
    except Exception as error:  # corrupt or truncated files raise many kinds of errors
        raise SegError(one_line(f"cannot read it ({type(error).__name__}: {error})", path)) from None
    raise SegError("not a preprocessed seg (.b2nd, .npy or .npz)")


def _blosc2(path: Path):
    try:
        import blosc2
    except ImportError:
        raise SegError("reading .b2nd needs blosc2: pip install -e '.[nnunet]'") from None
    return blosc2


class NnunetSegFormat(FileFormat):
    """A preprocessed seg (``<case>_seg.b2nd``, ``<case>_seg.npy``, ``<case>.npz`` key ``seg``)
    as a label volume: ``(*spatial)``, -1 as background 0, the configuration's spacing.

    The registry gives it ``.b2nd`` files; the ``.npy`` / ``.npz`` segs of nnU-Net 2.0-2.5
    reach it by its :attr:`reader_name` (``formats.read_labels(path, reader="nnunet")``), as
    the cases of a preprocessed folder do.
    """

    name = "nnU-Net preprocessed seg"
    reader_name = "nnunet"
    suffixes = (".b2nd",)

    def read_labels(self, path: Path) -> LabelVolume:
        labels = read_seg(path)
        spacing = _spacing(path, labels.ndim)
        return LabelVolume(array=labels, spacing=spacing, affine=diagonal_affine(spacing))

    def read_shape(self, path: Path) -> tuple[int, ...]:
        shape = tuple(int(n) for n in _seg_shape(path)[1:])
        check_ndim(shape)
        return shape

    def read_geometry(self, path: Path) -> tuple[tuple[float, ...], None]:
        return _spacing(path, len(self.read_shape(path))), None


def _spacing(path: Path, ndim: int) -> tuple[float, ...]:
    """The configuration's voxel sizes, from the plans beside the seg's folder; 1s for a
    seg away from its folder (voxel units)."""
    spacing = folder_spacing(Path(path).parent, ndim)
    return tuple(float(s) for s in spacing) if spacing else (1.0,) * ndim


def _seg_shape(path: Path) -> tuple[int, ...]:
    """The stored ``(1, *spatial)`` shape of a seg, from its header (no voxel is decompressed)."""
    path = Path(path)
    if path.name.endswith(".b2nd"):
        return tuple(_blosc2(path).open(urlpath=str(path), mode="r").shape)
    if path.suffix == ".npy":
        with open(path, "rb") as file:
            return npy_header(file)[0]
    with zipfile.ZipFile(path) as archive, archive.open("seg.npy") as member:
        return npy_header(member)[0]
