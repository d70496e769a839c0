"""The examples train, as a user runs them, on maps written by the real ``rwmaps compute``.

Every script in ``examples/`` takes ``--quick`` and exits 0.  The compact maps are the
CLI's full maps cut to each voxel's own-class channel (what ``--layout compact`` stores),
until the CLI writes them itself; then the ``--layout compact`` runs below stop skipping.
"""

from __future__ import annotations

import math
import py_compile
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import REPO, SAMPLE_DATA, run_rwmaps

EXAMPLES = sorted((REPO / "examples").glob("*.py"))
PLAIN = REPO / "examples" / "train_tiny_rw.py"
MONAI = REPO / "examples" / "train_monai_rw.py"
LABELS = SAMPLE_DATA / "Dataset001_Toy" / "labelsTr"


def run_example(script, *args) -> list[float]:
    """Run an example with --quick; return the region-wise loss of every step."""
    result = subprocess.run([sys.executable, str(script), "--quick", *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"region-wise loss ([-+][0-9.]+)", result.stdout)]
    assert len(losses) == 15, result.stdout
    assert all(math.isfinite(v) for v in losses)
    return losses


def goes_down(losses: list[float]) -> bool:
    return sum(losses[-3:]) < sum(losses[:3])


def cli_has_compact_layout() -> bool:
    return "--layout" in run_rwmaps("compute", "--help", check=0).stdout


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """The toy dataset's full maps by the real CLI (npy and nii.gz), and compact maps cut from them."""
    root = tmp_path_factory.mktemp("example_maps")
    for fmt in ("npy", "nii.gz"):
        run_rwmaps("compute", "--input", LABELS.parent, "--output", root / fmt, "--format", fmt, "--quiet", check=0)
    for sub in ("compact_npy", "compact_nii"):
        (root / sub).mkdir()
    for label_file in sorted(LABELS.glob("*.nii.gz")):
        label = nib.load(label_file)
        codes = np.asarray(label.dataobj).astype(np.int64)  # classes 0, 1, 2 are channels 0, 1, 2
        case = label_file.name.replace(".nii.gz", "")
        full = np.load(root / "npy" / f"{case}.npy")
        np.save(root / "compact_npy" / f"{case}.npy", np.take_along_axis(full, codes[None], axis=0)[0])
        header = label.header.copy()
        header.set_data_dtype(np.float32)
        compact = np.take_along_axis(full, codes[None], axis=0)[0]
        nib.save(nib.Nifti1Image(compact, label.affine, header), root / "compact_nii" / label_file.name)
    return root


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_python(script, tmp_path):
    py_compile.compile(str(script), cfile=str(tmp_path / "example.pyc"), doraise=True)


def test_every_example_has_a_test():
    assert set(EXAMPLES) == {PLAIN, MONAI}, "a new example needs its --quick run below"


def test_plain_pytorch_example_trains_on_cli_maps():
    pytest.importorskip("torch")
    assert goes_down(run_example(PLAIN))  # computes the full npy maps with the CLI itself


def test_plain_pytorch_example_trains_on_compact_maps_with_patch_normalisation(maps):
    pytest.importorskip("torch")
    assert goes_down(run_example(PLAIN, "--maps", maps / "compact_npy", "--renormalize", "patch"))


def test_plain_pytorch_example_with_the_cli_compact_layout():
    pytest.importorskip("torch")
    if not cli_has_compact_layout():
        pytest.skip("rwmaps compute has no --layout yet (the compact-layout branch)")
    assert goes_down(run_example(PLAIN, "--layout", "compact"))


@pytest.mark.parametrize("mode", ["precomputed", "compact", "on-the-fly"])
def test_monai_example_trains(maps, mode):
    pytest.importorskip("monai")
    folder = {"precomputed": ["--maps", maps / "nii.gz"], "compact": ["--maps", maps / "compact_nii"],
              "on-the-fly": []}[mode]
    assert goes_down(run_example(MONAI, "--map", mode, *folder))


def test_monai_example_trains_with_dice_and_cross_entropy(maps):
    pytest.importorskip("monai")
    run_example(MONAI, "--maps", maps / "nii.gz", "--loss", "dice_ce")  # finite; DiceCE on 15 steps is noisy


def test_monai_example_with_the_cli_compact_layout():
    pytest.importorskip("monai")
    if not cli_has_compact_layout():
        pytest.skip("rwmaps compute has no --layout yet (the compact-layout branch)")
    assert goes_down(run_example(MONAI, "--map", "compact"))
