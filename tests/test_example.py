"""The examples train, as a user runs them, on maps written by the real ``rwmaps compute``.

Every script in ``examples/`` takes ``--quick`` and exits 0.  Full and compact maps are
written by ``rwmaps compute`` itself (``--layout compact``).
"""

from __future__ import annotations

import math
import py_compile
import re
import subprocess
import sys

import pytest
from helpers import REPO, SAMPLE_DATA, run_rwmaps

EXAMPLES = sorted((REPO / "examples").glob("*.py"))
PLAIN = REPO / "examples" / "train_tiny_rw.py"
MONAI = REPO / "examples" / "train_monai_rw.py"
TORCHIO = REPO / "examples" / "train_torchio_rw.py"
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


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """The toy dataset's maps by the real CLI: full and compact, npy and nii.gz."""
    root = tmp_path_factory.mktemp("example_maps")
    for fmt in ("npy", "nii.gz"):
        run_rwmaps("compute", "--input", LABELS.parent, "--output", root / fmt, "--format", fmt, "--quiet", check=0)
        run_rwmaps("compute", "--input", LABELS.parent, "--output", root / f"compact_{fmt}", "--format", fmt,
                   "--layout", "compact", "--quiet", check=0)
    return root


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_python(script, tmp_path):
    py_compile.compile(str(script), cfile=str(tmp_path / "example.pyc"), doraise=True)


def test_every_example_has_a_test():
    assert set(EXAMPLES) == {PLAIN, MONAI, TORCHIO}, "a new example needs its --quick run below"


def test_plain_pytorch_example_trains_on_cli_maps():
    pytest.importorskip("torch")
    assert goes_down(run_example(PLAIN))  # computes the full npy maps with the CLI itself


def test_plain_pytorch_example_trains_on_compact_maps_with_patch_normalisation(maps):
    pytest.importorskip("torch")
    assert goes_down(run_example(PLAIN, "--maps", maps / "compact_npy", "--renormalize", "patch"))


def test_plain_pytorch_example_with_the_cli_compact_layout():
    pytest.importorskip("torch")
    assert goes_down(run_example(PLAIN, "--layout", "compact"))


@pytest.mark.parametrize("mode", ["precomputed", "compact", "on-the-fly"])
def test_monai_example_trains(maps, mode):  # compact: maps written by rwmaps compute --layout compact
    pytest.importorskip("monai")
    folder = {"precomputed": ["--maps", maps / "nii.gz"], "compact": ["--maps", maps / "compact_nii.gz"],
              "on-the-fly": []}[mode]
    assert goes_down(run_example(MONAI, "--map", mode, *folder))


def test_monai_example_trains_with_dice_and_cross_entropy(maps):
    pytest.importorskip("monai")
    run_example(MONAI, "--maps", maps / "nii.gz", "--loss", "dice_ce")  # finite; DiceCE on 15 steps is noisy


@pytest.mark.parametrize("mode", ["compact", "full", "on-the-fly"])
def test_torchio_example_trains_on_queue_patches(maps, mode):
    """Subjects, augmentation and tio.Queue patches; the compact and full npy maps are the CLI's."""
    pytest.importorskip("torchio")
    folder = {"compact": ["--maps", maps / "compact_npy"], "full": ["--maps", maps / "npy"], "on-the-fly": []}[mode]
    assert goes_down(run_example(TORCHIO, "--map", mode, *folder))


def test_torchio_example_computes_its_own_maps_with_the_cli():
    pytest.importorskip("torchio")
    assert goes_down(run_example(TORCHIO))  # no --maps: rwmaps compute --layout compact into a temporary folder


STUDY_ARMS = ["dice_ce", "rw_fly", "rw_compact", "rw_full", "ce_rw", "dice_ce_boundary", "dice_ce_sdf"]


def test_training_outcome_study_quick_run():
    """benchmarks/study_outcome.py --quick (no --arms: every arm, the optional ones too) trains
    each arm, prints the table and the paired differences from dice_ce."""
    pytest.importorskip("torchio")
    pytest.importorskip("monai")
    script = REPO / "benchmarks" / "study_outcome.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--against", "dice_ce"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| (\w+) \| ([0-9.]+) ± ", result.stdout, flags=re.M)
    assert [arm for arm, _ in rows] == STUDY_ARMS, result.stdout
    assert all(0 <= float(dice) <= 1 for _, dice in rows)
    differences = re.findall(r"^\| (\w+) \| ([-+][0-9.]+) ± ", result.stdout, flags=re.M)
    assert [arm for arm, _ in differences] == STUDY_ARMS[1:], result.stdout
