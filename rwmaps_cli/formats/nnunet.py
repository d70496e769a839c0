"""nnU-Net v2's preprocessed data, read without importing nnU-Net: the format's one owner.

A preprocessed configuration folder is ``nnUNet_preprocessed/DatasetXXX_Name/<plans>_<cfg>``
(for example ``nnUNetPlans_3d_fullres``), beside ``<plans>.json`` and ``dataset.json``.
What nnU-Net 2.0 to 2.8 write in it, per case:

- 2.6 and later: ``<case>.b2nd`` (data), ``<case>_seg.b2nd`` (seg), ``<case>.pkl``;
- 2.0 to 2.5: ``<case>.npz`` (keys ``data`` and ``seg``), ``<case>.pkl``, and after training
  unpacked it, ``<case>.npy`` and ``<case>_seg.npy``.

The seg is int16 ``(1, *spatial)``, transposed and resampled to the configuration; ``-1``
marks voxels outside the nonzero crop, which training turns into background 0.

Everything here is a pure function of the files (blosc2 is imported only to read
``.b2nd``; it comes with the ``nnunet`` extra).  Maps never go inside that folder:
nnU-Net takes every ``*.npz`` and every ``*.b2nd`` not ending in ``_seg`` there as a case,
and re-running preprocessing deletes it.  The default output is the sibling
``<folder>_rwmaps``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..regions import LabelSpec, read_label_spec
from .base import FileFormat, LabelVolume, check_ndim, diagonal_affine
from .numpy import npy_header

#: Files beside the configuration folders that are not plans.
_NOT_PLANS = {"dataset.json", "dataset_fingerprint.json", "splits_final.json"}

#: Suffix of the default maps folder, a sibling of the configuration folder.
MAPS_SUFFIX = "_rwmaps"


class PreprocessedError(InputError, ValueError):
    """Input that is not a usable nnU-Net preprocessed folder (one line, names the cause)."""


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


def find_plans(folder: str | Path) -> tuple[Path, dict, str]:
    """The plans file beside a configuration folder, its content, and the configuration.

    Parameters
    ----------
    folder : path of the configuration folder (``.../nnUNetPlans_3d_fullres``)

    Returns
    -------
    (plans_file, plans, configuration_name)

    Raises
    ------
    PreprocessedError
        When no JSON file beside the folder has a configuration whose ``data_identifier``
        is the folder's name.
    """
    folder = Path(folder)
    candidates = sorted(p for p in folder.parent.glob("*.json") if p.name not in _NOT_PLANS)
    for plans_file in candidates:
        try:
            plans = json.loads(plans_file.read_text())
        except (OSError, ValueError):
            continue
        configurations = plans.get("configurations") if isinstance(plans, dict) else None
        if not isinstance(configurations, dict):
            continue
        matching = [name for name in configurations
                    if _resolved(configurations, name).get("data_identifier") == folder.name]
        if matching:
            plans_name = plans.get("plans_name", plans_file.stem)
            suffix = folder.name[len(plans_name) + 1:] if folder.name.startswith(plans_name + "_") else None
            configuration = suffix if suffix in matching else matching[0]
            return plans_file, plans, configuration
    raise PreprocessedError(f"{folder}: no plans file beside it (looked for a <plans>.json whose configuration's "
                            f"data_identifier is {folder.name!r}); is this an nnU-Net preprocessed folder?")


def _resolved(configurations: dict, name: str, depth: int = 0) -> dict:
    """A configuration with its ``inherits_from`` chain applied (as nnU-Net's PlansManager)."""
    config = configurations.get(name)
    if not isinstance(config, dict):
        return {}
    parent = config.get("inherits_from")
    if parent is None or depth > 10:
        return config
    return {**_resolved(configurations, parent, depth + 1), **config}


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
    config = _resolved(plans["configurations"], configuration)
    patch_size = [int(v) for v in config.get("patch_size", [])]
    spacing = [float(v) for v in config.get("spacing", [])]
    if len(patch_size) not in (2, 3):
        raise PreprocessedError(f"{plans_file}: configuration {configuration!r} has no 2D or 3D patch_size")
    return PreprocessedFolder(folder, plans_file, plans.get("plans_name", plans_file.stem), configuration,
                              dataset_json, _file_format(folder), patch_size, spacing)


def _file_format(folder: Path) -> str:
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith("_seg.b2nd") for n in names):
        return "b2nd"
    if any(n.endswith(".npz") for n in names):
        return "npz"
    if any(n.endswith("_seg.npy") for n in names):
        return "npy"
    raise PreprocessedError(f"{folder}: no preprocessed case found (looked for <case>_seg.b2nd, <case>.npz and "
                            f"<case>_seg.npy)")


def list_cases(folder: str | Path) -> list[PreprocessedCase]:
    """The cases of a preprocessed configuration folder, sorted by name.

    Case identifiers follow nnU-Net's own rule for the folder's format: every ``*.b2nd``
    not ending in ``_seg.b2nd`` (2.6+), every ``*.npz`` (2.0-2.5), or, when only unpacked
    files are left, every ``*_seg.npy``.  For ``.npz`` cases an unpacked
    ``<case>_seg.npy`` beside it is preferred (it memory-maps).

    Raises
    ------
    PreprocessedError
        When there is no case, or a case's seg file is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PreprocessedError(f"{folder}: not a folder")
    fmt = _file_format(folder)
    names = {p.name for p in folder.iterdir() if p.is_file()}
    cases = []
    if fmt == "b2nd":
        for name in sorted(n[:-5] for n in names if n.endswith(".b2nd") and not n.endswith("_seg.b2nd")):
            if f"{name}_seg.b2nd" not in names:
                raise PreprocessedError(f"{folder / (name + '.b2nd')}: its seg {name}_seg.b2nd is missing")
            cases.append(PreprocessedCase(name, folder / f"{name}_seg.b2nd"))
    elif fmt == "npz":
        for name in sorted(n[:-4] for n in names if n.endswith(".npz")):
            seg = f"{name}_seg.npy" if f"{name}_seg.npy" in names else f"{name}.npz"
            cases.append(PreprocessedCase(name, folder / seg))
    else:
        for name in sorted(n[: -len("_seg.npy")] for n in names if n.endswith("_seg.npy")):
            cases.append(PreprocessedCase(name, folder / f"{name}_seg.npy"))
    if not cases:
        raise PreprocessedError(f"{folder}: no preprocessed case found")
    return cases


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
    PreprocessedError
        When the file cannot be read, is not ``(1, *spatial)`` integers, or is ``.b2nd``
        and blosc2 is not installed (``pip install 'rwmaps_cli[nnunet]'``).
    """
    path = Path(path)
    try:
        if path.name.endswith(".b2nd"):
            try:
                import blosc2
            except ImportError:
                raise PreprocessedError(f"{path}: reading .b2nd needs blosc2: pip install 'rwmaps_cli[nnunet]'") \
                    from None
            seg = blosc2.open(urlpath=str(path), mode="r")[:]
        elif path.suffix == ".npy":
            seg = np.load(path, mmap_mode="r")
        elif path.suffix == ".npz":
            with np.load(path) as archive:
                if "seg" not in archive.files:
                    raise PreprocessedError(f"{path}: no 'seg' key (keys: {', '.join(archive.files)})")
                seg = archive["seg"]
        else:
            raise PreprocessedError(f"{path}: not a preprocessed seg (.b2nd, .npy or .npz)")
    except PreprocessedError:
        raise
    except Exception as error:  # corrupt or truncated files raise many kinds of errors
        raise PreprocessedError(f"{path}: cannot read it ({type(error).__name__}: {error})") from None
    if seg.ndim not in (3, 4) or seg.shape[0] != 1:
        raise PreprocessedError(f"{path}: seg has shape {tuple(seg.shape)}; expected (1, *spatial)")
    if not np.issubdtype(seg.dtype, np.integer):
        raise PreprocessedError(f"{path}: seg has dtype {seg.dtype}; expected integers")
    labels = np.array(seg[0])
    labels[labels == -1] = 0
    return labels


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


def default_output(folder: str | Path) -> Path:
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
                                f"read them as cases, and re-preprocessing deletes it); use {default_output(folder)}")
    return output


def map_spacing(preprocessed: PreprocessedFolder, ndim: int = 3) -> list[float] | None:
    """Voxel sizes of the preprocessed arrays, for physical-unit maps.

    For a 2d configuration the plans hold only the in-plane spacing; the slice axis gets
    1.0, which per-slice maps never use.
    """
    spacing = list(preprocessed.spacing)
    if len(spacing) == ndim:
        return spacing
    if len(spacing) == ndim - 1 and preprocessed.is_2d:
        return [1.0, *spacing]
    return None


class NnunetSegFormat(FileFormat):
    """A preprocessed seg (``<case>_seg.b2nd``, ``<case>_seg.npy``, ``<case>.npz`` key ``seg``)
    as a label volume: ``(*spatial)``, -1 as background 0, the configuration's spacing.

    The registry gives it ``.b2nd`` files; the ``.npy`` / ``.npz`` segs of nnU-Net 2.0-2.5
    reach it by name (``formats.read_labels(path, reader="nnunet")``), as the cases of a
    preprocessed folder do.
    """

    name = "nnU-Net preprocessed seg"
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
    try:
        spacing = map_spacing(open_preprocessed(Path(path).parent), ndim)
    except PreprocessedError:
        spacing = None
    return tuple(float(s) for s in spacing) if spacing else (1.0,) * ndim


def _seg_shape(path: Path) -> tuple[int, ...]:
    """The stored ``(1, *spatial)`` shape of a seg, from its header (no voxel is decompressed)."""
    path = Path(path)
    if path.name.endswith(".b2nd"):
        import blosc2

        return tuple(blosc2.open(urlpath=str(path), mode="r").shape)
    if path.suffix == ".npy":
        with open(path, "rb") as file:
            return npy_header(file)[0]
    with zipfile.ZipFile(path) as archive, archive.open("seg.npy") as member:
        return npy_header(member)[0]

