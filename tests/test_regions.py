"""Region-based maps and dataset.json label specifications."""

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import blobs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import reference_maps

from rwmaps_cli import KINDS
from rwmaps_cli.regions import LabelSpecError, compute_region_maps, read_label_spec

BRATS_REGIONS = [[1, 2, 3], [2, 3], [3]]


def reference_region_maps(labels, regions, kind="rrw", spacing=None, slice_axis=None, ignore_label=None):
    """One binary map per region, from the formulas: mask = label in region; ignore voxels
    are outside every region for the distances and 0 in the map."""
    out = []
    for region in regions:
        binary = np.isin(labels, region).astype(np.int64)
        if ignore_label is not None:
            binary[labels == ignore_label] = 2
        out.append(reference_maps(binary, [1], kind, spacing, slice_axis,
                                  ignore_label=None if ignore_label is None else 2)[0])
    return np.stack(out)


@settings(max_examples=80, deadline=None)
@given(labels=st.integers(2, 3).flatmap(lambda nd: hnp.arrays(
           np.uint8, hnp.array_shapes(min_dims=nd, max_dims=nd, min_side=1, max_side=7), elements=st.integers(0, 4))),
       kind=st.sampled_from(KINDS), anisotropic=st.booleans(), per_slice=st.booleans(), ignore=st.booleans())
def test_random_region_maps_match_reference(labels, kind, anisotropic, per_slice, ignore):
    spacing = [2.5, 0.8, 1.0][: labels.ndim] if anisotropic else None
    slice_axis = 0 if per_slice else None
    ignore_label = 4 if ignore else None
    if not ignore:
        labels = np.where(labels == 4, 0, labels).astype(np.uint8)
    actual = compute_region_maps(labels, BRATS_REGIONS, kind, spacing, slice_axis, ignore_label)
    assert actual.shape == (3, *labels.shape) and actual.dtype == np.float32
    expected = reference_region_maps(labels, BRATS_REGIONS, kind, spacing, slice_axis, ignore_label)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_realistic_overlapping_regions():
    labels = blobs((24, 28, 20), 4, seed=5)
    actual = compute_region_maps(labels, BRATS_REGIONS, spacing=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(actual, reference_region_maps(labels, BRATS_REGIONS, spacing=(2.0, 1.0, 1.0)),
                               rtol=1e-5, atol=1e-5)
    # regions overlap: a voxel of label 3 is inside all three regions
    inside = labels == 3
    assert (actual[:, inside] <= 0).all()
    assert (actual[0][labels == 0] == 1).all()


def test_hand_made_region_map():
    labels = np.zeros((1, 7), dtype=np.uint8)
    labels[0, 1:6] = [1, 2, 3, 2, 1]
    maps = compute_region_maps(labels, [[1, 2, 3], [3], 2])
    # whole region 1..5, distances 1,2,3,2,1 -> -d/3
    np.testing.assert_allclose(maps[0, 0], [1, -1 / 3, -2 / 3, -1, -2 / 3, -1 / 3, 1], atol=1e-6)
    # region {3}: a single voxel, distance 1 -> -1
    np.testing.assert_allclose(maps[1, 0], [1, 1, 1, -1, 1, 1, 1], atol=1e-6)
    # region 2 given as a scalar: two separate voxels, each at distance 1
    np.testing.assert_allclose(maps[2, 0], [1, 1, -1, 1, -1, 1, 1], atol=1e-6)


def test_empty_and_full_regions():
    labels = np.full((4, 5), 2, dtype=np.uint8)
    maps = compute_region_maps(labels, [[1, 2], [3]])
    assert (maps[0] == -1).all() and (maps[1] == 1).all()


def test_region_maps_reject_bad_labels():
    with pytest.raises(ValueError, match="negative"):
        compute_region_maps(np.array([[-1, 0, 1]]), [[1]])
    with pytest.raises(ValueError, match="no regions"):
        compute_region_maps(np.zeros((3, 3), np.uint8), [])


# ---------------------------------------------------------------------------------------
# dataset.json


def test_label_spec_of_a_label_based_dataset(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}}))
    spec = read_label_spec(path)
    assert spec.classes == [0, 1, 2] and spec.ignore_label == 3 and spec.regions is None
    assert spec.names == ["background", "liver", "tumour"] and spec.n_outputs == 3 and not spec.has_regions


def test_label_spec_of_a_v1_dataset():
    spec = read_label_spec({"labels": {"0": "background", "1": "liver"}})
    assert spec.classes == [0, 1] and spec.names == ["background", "liver"]


def test_label_spec_of_a_region_based_dataset(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        "regions_class_order": [1, 2, 3]}))
    spec = read_label_spec(path)
    assert spec.has_regions and spec.regions == BRATS_REGIONS and spec.n_outputs == 3
    assert spec.classes == [0, 1, 2, 3] and spec.regions_class_order == [1, 2, 3]
    assert spec.names == ["whole tumor", "tumor core", "enhancing tumor"]


@pytest.mark.parametrize("content, message", [
    ({"labels": {"background": 0, "a": [1, 2]}}, "regions_class_order"),
    ({"labels": {"background": 0, "a": 1, "b": 1}}, "share a value"),
    ({"labels": {"background": 0, "a": "x"}}, "expected an integer"),
    ({"labels": {"background": 0, "a": 1, "ignore": 1}}, "also a class"),
    ({"name": "no labels"}, "no 'labels'"),
])
def test_label_spec_errors_name_the_cause(tmp_path, content, message):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(content))
    with pytest.raises(LabelSpecError, match=message) as info:
        read_label_spec(path)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


def test_label_spec_of_an_unreadable_file(tmp_path):
    with pytest.raises(LabelSpecError, match="cannot read"):
        read_label_spec(tmp_path / "missing.json")


def test_a_raw_region_based_dataset_gets_one_map_per_region(tmp_path):
    """rwmaps compute on an nnU-Net raw dataset whose dataset.json has regions (BraTS-like):
    no background channel, one binary map per (overlapping) region, and verify agrees."""
    from helpers import run_rwmaps, write_nifti

    from rwmaps_cli import load_map

    root = tmp_path / "Dataset900_Regions"
    for i in range(2):
        write_nifti(root / "labelsTr" / f"case_{i}.nii.gz", blobs((20, 22, 12), 4, seed=i))
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
        "regions_class_order": [1, 2, 3], "channel_names": {"0": "T1"}, "numTraining": 2, "file_ending": ".nii.gz"}))
    run_rwmaps("compute", "--input", root, "--output", tmp_path / "maps", "--format", "npy", check=0)
    maps, meta = load_map(tmp_path / "maps" / "case_0.npy")
    labels = np.asarray(nib.load(root / "labelsTr" / "case_0.nii.gz").dataobj)
    np.testing.assert_array_equal(maps, compute_region_maps(labels, [[1, 2, 3], [2, 3], [3]]))
    assert meta.regions == [[1, 2, 3], [2, 3], [3]] and meta.classes is None  # classes: a class list only
    assert load_map(tmp_path / "maps" / "case_0.npy", mmap=True)[1].classes is None
    run_rwmaps("verify", "--input", root, "--output", tmp_path / "maps", check=0)
    refused = run_rwmaps("compute", "--input", root, "--output", tmp_path / "compact", "--layout", "compact", check=2)
    assert "regions overlap" in refused.stderr
