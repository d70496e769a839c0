"""A session-wide set of real maps, written once by the real ``rwmaps compute``.

Imported by the tests of ``inspect``, ``verify`` and ``load_map``; tests that change
files copy a folder first (``copy_maps``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from helpers import blobs, run_rwmaps, write_nifti

CLASSES = [0, 1, 2, 3]
# name -> extra options of rwmaps compute; every run reads the same three label files.
RUNS = {
    "nii.gz": ["--format", "nii.gz"],
    "nii": ["--format", "nii"],
    "npz": ["--format", "npz"],
    "npy": ["--format", "npy"],
    "npy16": ["--format", "npy", "--dtype", "float16"],
    "kervadec": ["--format", "npz", "--kind", "kervadec", "--spacing", "physical", "--slice-axis", "0"],
}
SUFFIX = {"nii.gz": "nii.gz", "nii": "nii", "npz": "npz", "npy": "npy", "npy16": "npy", "kervadec": "npz"}
CASES = ["case_000", "sub/case_001", "slice_2d"]  # as map paths, without the suffix


def write_labels(root: Path) -> Path:
    """Two anisotropic 3D NIfTI cases (one in a sub folder) and a 2D PNG."""
    write_nifti(root / "case_000.nii.gz", blobs((20, 24, 12), 4, seed=1), zooms=(0.8, 0.8, 2.5))
    write_nifti(root / "sub" / "case_001.nii.gz", blobs((18, 22, 10), 4, seed=2), zooms=(0.7, 0.7, 3.0))
    sitk.WriteImage(sitk.GetImageFromArray(blobs((30, 26), 3, seed=5)), str(root / "slice_2d.png"))
    return root


def label_array(labels_root: Path, case: str) -> np.ndarray:
    """The labels of ``case`` as the readers of rwmaps return them."""
    if case == "slice_2d":
        return sitk.GetArrayFromImage(sitk.ReadImage(str(labels_root / "slice_2d.png")))
    return np.asarray(nib.load(labels_root / f"{case}.nii.gz").dataobj)


def compute_all(tmp_path_factory) -> SimpleNamespace:
    """Label files and their maps in every output format (``computed.maps[name]``)."""
    root = tmp_path_factory.mktemp("computed")
    labels = write_labels(root / "labels")
    maps = {name: root / f"maps_{name.replace('.', '_')}" for name in RUNS}
    for name in RUNS:
        run_rwmaps("compute", "--input", labels, "--output", maps[name], "--jobs", "1", "--quiet", *RUNS[name],
                   check=0)
    return SimpleNamespace(root=root, labels=labels, maps=maps)


def map_file(computed: SimpleNamespace, name: str, case: str) -> Path:
    return computed.maps[name] / f"{case}.{SUFFIX[name]}"


def copy_maps(computed: SimpleNamespace, name: str, destination: Path) -> Path:
    """A copy of one output folder (its manifest still names the original paths)."""
    return Path(shutil.copytree(computed.maps[name], destination))
