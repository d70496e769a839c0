"""Fixtures: real label files written to a temporary folder."""

from pathlib import Path

import numpy as np
import pytest
from helpers import blobs, write_nifti
from map_fixtures import compute_all


@pytest.fixture
def labels_dir(tmp_path) -> Path:
    """Three 3D NIfTI cases in a tree, anisotropic, one without class 3."""
    root = tmp_path / "labels"
    write_nifti(root / "case_000.nii.gz", blobs((20, 24, 12), 4, seed=1), zooms=(0.8, 0.8, 2.5))
    write_nifti(root / "sub" / "case_001.nii.gz", blobs((18, 22, 10), 4, seed=2), zooms=(0.7, 0.7, 3.0))
    no_three = blobs((16, 16, 8), 3, seed=3)
    write_nifti(root / "sub" / "case_002.nii.gz", no_three, zooms=(1.0, 1.0, 1.0))
    return root


@pytest.fixture(scope="session")
def computed(tmp_path_factory):
    """Label files and their maps in every output format, written once per test run by the
    real ``rwmaps compute`` (see tests/map_fixtures.py); copy before changing them."""
    return compute_all(tmp_path_factory)


@pytest.fixture
def mixed_folder(tmp_path):
    """Images and labels in one folder, as many datasets ship them."""
    root = tmp_path / "data"
    for i in range(3):
        write_nifti(root / f"case{i}_seg.nii.gz", blobs((16, 18, 10), 3, seed=i))
        write_nifti(root / f"case{i}_img.nii.gz", np.random.default_rng(i).integers(0, 999, (16, 18, 10)).astype(np.int16))
    return root
