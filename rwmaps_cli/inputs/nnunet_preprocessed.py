"""nnU-Net v2's preprocessed configuration folder, understood without importing nnU-Net.

A configuration folder is ``nnUNet_preprocessed/DatasetXXX_Name/<plans>_<cfg>`` (for
example ``nnUNetPlans_3d_fullres``), beside ``<plans>.json`` and ``dataset.json``.  This
module says whether a folder is one, what its plans and ``dataset.json`` say, which cases
it holds, and where its maps go.  The seg files themselves are read by the label format
``rwmaps_cli/formats/nnunet.py``; the plans JSON by ``rwmaps_cli/formats/nnunet_plans.py``.

Maps never go inside the configuration folder: nnU-Net takes every ``*.npz`` and every
``*.b2nd`` not ending in ``_seg`` there as a case, and re-running preprocessing deletes
it.  The default output is the sibling ``<folder>_rwmaps``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import PreprocessedError
from ..formats.nnunet import find_segs, read_seg, seg_storage
from ..regions import LabelSpec, read_label_spec
from ..formats.nnunet_plans import find_plans, resolve_configuration, spacing_for

#: Suffix of the default maps folder, a sibling of the configuration folder.
MAPS_SUFFIX = "_rwmaps"


@dataclass(frozen=True)
class PreprocessedCase:
    """One case of a preprocessed configuration folder.

    Attributes
    ----------
    name : str
        nnU-Net's case identifier (``BraTS_001``): the file name without ``.b2nd``/``.npz``.
    seg : Path
        The file the seg is read from: ``<name>_seg.b2nd``, ``<name>_seg.npy`` (unpacked)
        or ``<name>.npz`` (key ``seg``).
    """

    name: str
    seg: Path


@dataclass(frozen=True)
class PreprocessedFolder:
    """A recognised configuration folder and what the files beside it say about it.

    Attributes
    ----------
    folder : Path
        The configuration folder (``.../DatasetXXX_Name/nnUNetPlans_3d_fullres``).
    plans_file : Path
        ``<plans>.json`` whose configuration's ``data_identifier`` is the folder name.
    plans_name : str
        The plans identifier (``nnUNetPlans``).
    configuration : str
        The configuration name (``3d_fullres``, ``2d``, ...).  When several configurations
        share the folder (``3d_cascade_fullres`` reuses ``3d_fullres`` data), the one named
        by the folder.
    dataset_json : Path
    file_format : {"b2nd", "npz", "npy"}
        How the segs are stored (``npy``: only unpacked ``<case>_seg.npy`` files).
    patch_size : list of int
        The configuration's patch size; 2 entries for a 2d configuration.
    spacing : list of float
        The configuration's target spacing, in the preprocessed arrays' axis order (2
        entries for a 2d configuration: the in-plane axes).
    """

    folder: Path
    plans_file: Path
    plans_name: str
    configuration: str
    dataset_json: Path
    file_format: str
    patch_size: list[int]
    spacing: list[float]

    @property
    def is_2d(self) -> bool:
        """True for a 2d configuration: nnU-Net trains on slices along the first spatial axis."""
        return len(self.patch_size) == 2

    @property
    def slice_axis(self) -> int | None:
        """The spatial axis a 2d configuration slices along (0), or None for 3d."""
        return 0 if self.is_2d else None


def is_preprocessed_folder(folder: str | Path) -> bool:
    """True when ``folder`` is an nnU-Net preprocessed configuration folder.

    That is: a folder beside ``dataset.json`` and a plans file that names it as a
    configuration's ``data_identifier``.  Cheap: reads the small JSON files only.
    """
    folder = Path(folder)
    if not folder.is_dir() or not (folder.parent / "dataset.json").is_file():
        return False
    try:
        find_plans(folder)
    except PreprocessedError:
        return False
    return True


def open_preprocessed(folder: str | Path) -> PreprocessedFolder:
    """Recognise a preprocessed configuration folder and read what the files beside it say.

    Parameters
    ----------
    folder : path of ``nnUNet_preprocessed/DatasetXXX_Name/<plans>_<configuration>``

    Returns
    -------
    PreprocessedFolder

    Raises
    ------
    PreprocessedError
        When the folder does not exist, has no ``dataset.json`` or plans beside it, or
        holds no case in a format nnU-Net writes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PreprocessedError(f"{folder}: not a folder")
    dataset_json = folder.parent / "dataset.json"
    if not dataset_json.is_file():
        raise PreprocessedError(f"{folder}: no dataset.json beside it; expected nnUNet_preprocessed/DatasetXXX/"
                                f"<plans>_<configuration>")
    plans_file, plans, configuration = find_plans(folder)
    config = resolve_configuration(plans["configurations"], configuration)
    patch_size = [int(v) for v in config.get("patch_size", [])]
    spacing = [float(v) for v in config.get("spacing", [])]
    if len(patch_size) not in (2, 3):
        raise PreprocessedError(f"{plans_file}: configuration {configuration!r} has no 2D or 3D patch_size")
    return PreprocessedFolder(folder, plans_file, plans.get("plans_name", plans_file.stem), configuration,
                              dataset_json, seg_storage(folder), patch_size, spacing)


def list_cases(folder: str | Path) -> list[PreprocessedCase]:
    """The cases of a preprocessed configuration folder, sorted by name.

    Case identifiers follow nnU-Net's own rule for the folder's format (see
    :func:`rwmaps_cli.formats.nnunet.find_segs`).

    Raises
    ------
    PreprocessedError
        When there is no case, or a case's seg file is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PreprocessedError(f"{folder}: not a folder")
    return [PreprocessedCase(name, seg) for name, seg in find_segs(folder)]


def read_classes(preprocessed: PreprocessedFolder | str | Path) -> LabelSpec:
    """The class list, ignore label and regions of the ``dataset.json`` beside the folder."""
    if not isinstance(preprocessed, PreprocessedFolder):
        preprocessed = open_preprocessed(preprocessed)
    return read_label_spec(preprocessed.dataset_json)


def plans_fingerprint(plans_file: str | Path) -> dict:
    """Fingerprint of a plans file: its SHA-256, size and modification time.

    Re-running ``nnUNetv2_plan_and_preprocess`` rewrites the plans file (new mtime, and a
    new hash when the plans changed), so a manifest that recorded this fingerprint can tell
    that its maps may no longer match the preprocessed data.
    """
    path = Path(plans_file)
    data = path.read_bytes()
    stat = path.stat()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def maps_folder_beside(folder: str | Path) -> Path:
    """The default maps folder: the sibling ``<folder>_rwmaps`` (never inside the data folder)."""
    folder = Path(folder)
    return folder.parent / (folder.name + MAPS_SUFFIX)


def check_output(folder: str | Path, output: str | Path) -> Path:
    """Refuse an output folder that is the data folder or inside it.

    nnU-Net takes every ``*.npz`` and non-seg ``*.b2nd`` there as a case, and re-running
    preprocessing deletes the folder.

    Raises
    ------
    PreprocessedError
    """
    folder, output = Path(folder).resolve(), Path(output).resolve()
    if output == folder or folder in output.parents:
        raise PreprocessedError(f"{output}: maps must not go inside the preprocessed folder {folder} (nnU-Net would "
                                f"read them as cases, and re-preprocessing deletes it); use {maps_folder_beside(folder)}")
    return output


def map_spacing(preprocessed: PreprocessedFolder, ndim: int = 3) -> list[float] | None:
    """Voxel sizes of the preprocessed arrays, for physical-unit maps.

    For a 2d configuration the plans hold only the in-plane spacing; the slice axis gets
    1.0, which per-slice maps never use.
    """
    return spacing_for(preprocessed.spacing, preprocessed.patch_size, ndim)


__all__ = [
    "MAPS_SUFFIX", "PreprocessedCase", "PreprocessedError", "PreprocessedFolder", "check_output", "maps_folder_beside",
    "find_plans", "is_preprocessed_folder", "list_cases", "map_spacing", "open_preprocessed", "plans_fingerprint",
    "read_classes", "read_seg", "resolve_configuration",
]
