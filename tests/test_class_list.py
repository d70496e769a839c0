"""The class list a run settles when none is given: read before computing (full maps), or
gathered while computing (compact maps, whose channel does not depend on it)."""

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import run_rwmaps, write_nifti

from rwmaps_cli import compute_maps, load_map
from rwmaps_cli.compute import compute_dataset
from rwmaps_cli.synthetic import brain_like_labels


@pytest.fixture
def uneven_values(tmp_path):
    """Three brain-like cases in nibabel's order, each holding only some of the values."""
    folder = tmp_path / "labels"
    keep = [(0, 3, 5, 9), (0, 1, 3), (0, 2, 7, 9, 11)]
    for i, values in enumerate(keep):
        labels = brain_like_labels((23, 19, 17), n_classes=12, seed=i, spacing=(1.0, 1.2, 2.5))
        labels[~np.isin(labels, values)] = 0
        write_nifti(folder / f"case_{i}.nii.gz", labels, zooms=(1.0, 1.2, 2.5))
    return folder


def _bars(input_dir, output_dir, **kwargs):
    """The progress bars a run opened (its passes over the cases), and its outcome."""
    bars = []

    class Bar:
        def update(self, n=1): ...

        def close(self): ...

    def progress(total, description):
        bars.append(description)
        return Bar()

    return bars, compute_dataset(input_dir, output_dir, progress=progress, **kwargs)


def test_compact_maps_read_each_case_once_and_settle_the_union_at_the_end(uneven_values, tmp_path):
    bars, outcome = _bars(uneven_values, tmp_path / "maps", layout="compact")
    assert bars == ["computing maps"]  # no scan: one read per case
    assert outcome.classes == (0, 1, 2, 3, 5, 7, 9, 11) and outcome.done == 3
    manifest = json.loads((tmp_path / "maps" / "rwmaps.json").read_text())
    assert manifest["classes"] == manifest["parameters"]["classes"] == list(outcome.classes)
    for i in range(3):  # the same maps as with the class list given
        full, _ = load_map(tmp_path / "maps" / f"case_{i}.nii.gz")
        labels = np.asanyarray(nib.load(uneven_values / f"case_{i}.nii.gz").dataobj)
        np.testing.assert_array_equal(full, compute_maps(labels, list(outcome.classes)))
    bars, again = _bars(uneven_values, tmp_path / "maps", layout="compact")  # a rerun reuses them all
    assert again.skipped == 3 and again.done == 0 and again.classes == outcome.classes


def test_full_maps_still_read_the_values_first(uneven_values, tmp_path):
    bars, outcome = _bars(uneven_values, tmp_path / "maps", layout="full", fmt="npy")
    assert bars == ["scanning labels", "computing maps"]
    assert np.load(tmp_path / "maps" / "case_1.npy").shape[0] == len(outcome.classes) == 8


def test_npz_compact_maps_store_the_class_list_so_they_scan_first(uneven_values, tmp_path):
    bars, outcome = _bars(uneven_values, tmp_path / "maps", layout="compact", fmt="npz")
    assert bars == ["scanning labels", "computing maps"]
    np.testing.assert_array_equal(np.load(tmp_path / "maps" / "case_0.npz")["classes"], outcome.classes)


def test_the_ignore_label_gets_no_channel_when_the_list_is_settled_at_the_end(uneven_values, tmp_path):
    _, outcome = _bars(uneven_values, tmp_path / "maps", layout="compact", ignore_label=9)
    assert outcome.classes == (0, 1, 2, 3, 5, 7, 11)
    compact, _ = load_map(tmp_path / "maps" / "case_0.nii.gz", expand=False)
    labels = np.asanyarray(nib.load(uneven_values / "case_0.nii.gz").dataobj)
    assert (compact[labels == 9] == 0).all()


def test_an_image_among_compact_labels_fails_alone(uneven_values, tmp_path):
    write_nifti(uneven_values / "image.nii.gz", np.arange(20 * 20 * 3, dtype=np.int16).reshape(20, 20, 3))
    result = run_rwmaps("compute", "--input", uneven_values, "--output", tmp_path / "maps", "--layout", "compact",
                        check=1)
    assert "image.nii.gz: 1200 distinct values (more than --max-classes 256)" in result.stderr
    assert "3 done" in result.stderr and "8 channels" in result.stderr


def test_a_union_longer_than_max_classes_is_refused_at_the_end(uneven_values, tmp_path):
    result = run_rwmaps("compute", "--input", uneven_values, "--output", tmp_path / "maps", "--layout", "compact",
                        "--max-classes", "5", check=2)
    assert "the inputs hold 8 distinct label values, more than --max-classes 5" in result.stderr
