"""The kernels against the slow reference in tests/reference.py, hand-made cases, and the
kernel's peak memory on a many-class volume."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import blobs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import dtc_sdf, edt_brute, edt_scipy, liviaets_one_hot2dist, reference_maps, seed_rrw
from scipy import ndimage as ndi

from rwmaps_cli import KINDS, compute_maps, compute_maps_batch, unique_labels

ENGINES = ("edt", "scipy")
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 output against a float64 reference


def assert_maps_equal(actual, expected):
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOL)


# ---------------------------------------------------------------------------------------
# Random inputs against the reference

label_arrays = st.integers(2, 3).flatmap(
    lambda ndim: hnp.arrays(np.uint8, hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=7),
                            elements=st.integers(0, 3))
)
spacings = st.one_of(st.none(), st.lists(st.sampled_from([0.5, 0.8, 1.0, 2.5, 3.0]), min_size=3, max_size=3))


@settings(max_examples=150, deadline=None)
@given(labels=label_arrays, kind=st.sampled_from(KINDS), engine=st.sampled_from(ENGINES), spacing=spacings,
       per_slice=st.booleans())
def test_random_labels_match_reference(labels, kind, engine, spacing, per_slice):
    classes = [0, 1, 2, 3, 4]  # 4 never occurs: an empty class in every example
    spacing = None if spacing is None else spacing[: labels.ndim]
    slice_axis = labels.ndim - 1 if per_slice else None
    actual = compute_maps(labels, classes, kind=kind, spacing=spacing, slice_axis=slice_axis, engine=engine)
    assert actual.dtype == np.float32
    assert_maps_equal(actual, reference_maps(labels, classes, kind, spacing, slice_axis))


@settings(max_examples=40, deadline=None)
@given(labels=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4),
                         elements=st.integers(0, 2)),
       kind=st.sampled_from(KINDS), anisotropic=st.booleans())
def test_reference_agrees_with_brute_force_distances(labels, kind, anisotropic):
    """Guards the reference itself: scipy's EDT against checking every pair of voxels."""
    spacing = [2.5, 0.8, 1.0][: labels.ndim] if anisotropic else None
    by_scipy = reference_maps(labels, [0, 1, 2], kind, spacing, edt=edt_scipy)
    by_brute = reference_maps(labels, [0, 1, 2], kind, spacing, edt=edt_brute)
    np.testing.assert_allclose(by_scipy, by_brute, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("spacing", [None, (2.5, 0.7, 0.9)])
def test_realistic_volume_matches_reference(kind, engine, spacing):
    labels = blobs((24, 30, 28), 4, seed=1)
    actual = compute_maps(labels, [0, 1, 2, 3], kind=kind, spacing=spacing, engine=engine)
    assert_maps_equal(actual, reference_maps(labels, [0, 1, 2, 3], kind, spacing))


@pytest.mark.parametrize("kind", KINDS)
def test_engines_agree(kind):
    labels = blobs((20, 40, 36), 5, seed=2)
    kwargs = dict(kind=kind, spacing=(3.0, 0.8, 0.8))
    by_edt = compute_maps(labels, range(5), engine="edt", **kwargs)
    by_scipy = compute_maps(labels, range(5), engine="scipy", **kwargs)
    np.testing.assert_allclose(by_edt, by_scipy, **TOL)


# ---------------------------------------------------------------------------------------
# Equal to the formulas people use today


def test_rrw_equals_the_seed_formula():
    labels = blobs((16, 20, 18), 3, seed=3)
    one_hot = np.stack([labels == k for k in range(3)]).astype(np.float64)[None]
    np.testing.assert_allclose(compute_maps(labels, [0, 1, 2])[None], seed_rrw(one_hot), **TOL)


def test_kervadec_equals_liviaets_one_hot2dist_in_voxel_units():
    labels = blobs((16, 20, 18), 3, seed=4)
    one_hot = np.stack([labels == k for k in range(3)])
    np.testing.assert_allclose(compute_maps(labels, [0, 1, 2], kind="kervadec"), liviaets_one_hot2dist(one_hot), **TOL)


def test_sdf_equals_dtcs_compute_sdf_per_class():
    labels = blobs((16, 20, 18), 3, seed=5)
    maps = compute_maps(labels, [0, 1, 2], kind="sdf")
    for c in range(3):
        np.testing.assert_allclose(maps[c], dtc_sdf(labels == c), **TOL)


# ---------------------------------------------------------------------------------------
# The signed distance map (sdf): exact against the formula on what real labels look like


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("order", ["nibabel", "simpleitk"])
def test_sdf_of_a_brain_like_parcellation_with_anisotropic_spacing(engine, order):
    """Thin Voronoi parcels in a head, Fortran-ordered as nibabel reads them (or C-ordered
    (Z, Y, X) as SimpleITK does), 1 x 1.2 x 3 mm voxels; an empty class in the list."""
    from rwmaps_cli.synthetic import brain_like_labels

    spacing = (1.0, 1.2, 3.0)
    labels = brain_like_labels((41, 46, 31), n_classes=12, spacing=spacing, seed=3)  # Fortran order
    if order == "simpleitk":  # the same volume as SimpleITK gives it: (Z, Y, X), C order
        labels, spacing = np.ascontiguousarray(labels.T), spacing[::-1]
    classes = [*range(12), 40]  # 40 occurs in no case: its channel is 0
    maps = compute_maps(labels, classes, kind="sdf", spacing=spacing, engine=engine)
    assert_maps_equal(maps, reference_maps(labels, classes, "sdf", spacing))
    assert (maps[-1] == 0).all() and maps.min() >= -1 and maps.max() <= 1


def test_sdf_hand_made():
    labels = np.zeros((1, 9), dtype=np.uint8)
    labels[0, 2:7] = 1  # five voxels of class 1: EDT 1 2 3 2 1 inside (max 3), 2 1 | 1 2 outside (max 2)
    sdf = compute_maps(labels, [0, 1], kind="sdf")[1, 0]
    np.testing.assert_allclose(sdf, [2 / 2, 1 / 2, 0, -2 / 3, -3 / 3, -2 / 3, 0, 1 / 2, 2 / 2], **TOL)  # inner boundary 0
    single = np.zeros((5, 5), dtype=np.uint8)
    single[2, 2] = 1  # one voxel: its own inner boundary, so 0; outside up to 1 at the corners
    one = compute_maps(single, [0, 1], kind="sdf")[1]
    assert one[2, 2] == 0 and one.max() == 1 and one.min() == 0
    np.testing.assert_allclose(one[0, 0], 1.0) and np.testing.assert_allclose(one[2, 3], 1 / np.sqrt(8), **TOL)


def test_sdf_is_minus_one_at_the_deepest_voxel_and_one_at_the_farthest():
    labels = blobs((30, 32, 28), 3, seed=8)
    maps = compute_maps(labels, [0, 1, 2], kind="sdf")
    for c in range(3):
        inside, outside = maps[c][labels == c], maps[c][labels != c]
        assert inside.min() == -1 and inside.max() == 0 and outside.max() == 1 and outside.min() > 0


def test_sdf_has_no_compact_layout():
    with pytest.raises(ValueError, match="kind 'sdf' has no compact layout"):
        compute_maps(np.zeros((4, 4), np.uint8), [0], kind="sdf", layout="compact")


# ---------------------------------------------------------------------------------------
# Hand-made edge cases, with the exact values the kinds table of README.md defines

EMPTY = {"rrw": 1, "boundary": 0, "kervadec": 0, "ac": 1, "sdf": 0}
FULL = {"rrw": -1, "boundary": 0, "kervadec": 0, "ac": 0, "sdf": 0}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("engine", ENGINES)
def test_empty_class_and_class_filling_the_field(kind, engine):
    labels = np.full((5, 6, 4), 2, dtype=np.uint8)
    maps = compute_maps(labels, [0, 2], kind=kind, engine=engine)
    assert (maps[0] == EMPTY[kind]).all()
    assert (maps[1] == FULL[kind]).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_one_voxel_class(engine):
    labels = np.zeros((5, 5, 5), dtype=np.uint8)
    labels[2, 3, 1] = 1
    rrw = compute_maps(labels, [0, 1], engine=engine)[1]
    assert rrw[2, 3, 1] == -1 and (np.delete(rrw.ravel(), np.ravel_multi_index((2, 3, 1), labels.shape)) == 1).all()
    boundary = compute_maps(labels, [0, 1], kind="boundary", spacing=(2.0, 0.5, 1.0), engine=engine)[1]
    assert boundary[2, 3, 1] == -0.5  # the nearest outside voxel is one 0.5 mm step away
    assert boundary[2, 3, 2] == 1.0
    kervadec = compute_maps(labels, [0, 1], kind="kervadec", spacing=(2.0, 0.5, 1.0), engine=engine)[1]
    assert kervadec[2, 3, 1] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_touching_classes_measure_to_each_other(engine):
    labels = np.zeros((1, 8), dtype=np.uint8)
    labels[0, :3], labels[0, 3:6], labels[0, 6:] = 1, 2, 3
    boundary = compute_maps(labels, [1, 2, 3], kind="boundary", engine=engine)
    np.testing.assert_array_equal(boundary[1, 0], [3, 2, 1, -1, -2, -1, 1, 2])
    rrw = compute_maps(labels, [1, 2, 3], engine=engine)
    np.testing.assert_array_equal(rrw[1, 0], [1, 1, 1, -0.5, -1, -0.5, 1, 1])


def test_image_border_is_not_a_boundary():
    labels = np.array([[1, 1, 1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(compute_maps(labels, [0, 1], kind="boundary")[1, 0], [-3, -2, -1, 1])


def test_kervadec_inner_boundary_is_zero_with_anisotropic_spacing():
    """LIVIAETS boundary-loss issue #45: the published formula leaves 0.5 there."""
    labels = np.zeros((5, 5), dtype=np.uint8)
    labels[1:4, 1:4] = 1
    maps = compute_maps(labels, [0, 1], kind="kervadec", spacing=(1.0, 0.5))[1]
    ring = (labels == 1) & ~ndi.binary_erosion(labels == 1)
    assert (maps[ring] == 0).all()
    assert maps[2, 2] < 0
    published = liviaets_one_hot2dist(np.stack([labels == 0, labels == 1]), resolution=(1.0, 0.5))[1]
    assert not (published[ring] == 0).all()  # the bug this definition fixes


def test_2d_labels():
    labels = blobs((30, 40), 3, seed=5)
    assert_maps_equal(compute_maps(labels, [0, 1, 2], spacing=(0.5, 1.5)),
                      reference_maps(labels, [0, 1, 2], "rrw", (0.5, 1.5)))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_per_slice_maps_are_stacked_2d_maps(axis):
    labels = blobs((6, 7, 8), 3, seed=6)
    maps = compute_maps(labels, [0, 1, 2], kind="boundary", slice_axis=axis, spacing=(3.0, 1.0, 0.5))
    in_plane = [s for a, s in enumerate((3.0, 1.0, 0.5)) if a != axis % 3]
    for i in range(labels.shape[axis]):
        plane = compute_maps(np.take(labels, i, axis=axis), [0, 1, 2], kind="boundary", spacing=in_plane)
        np.testing.assert_array_equal(np.take(maps, i, axis=axis % 3 + 1), plane)


def test_per_slice_class_filling_one_slice_is_minus_one():
    labels = np.zeros((3, 4, 4), dtype=np.uint8)
    labels[1] = 1
    maps = compute_maps(labels, [0, 1], slice_axis=0)
    assert (maps[1, 1] == -1).all() and (maps[1, 0] == 1).all()


def test_class_absent_from_one_case_still_gets_its_channel():
    present = blobs((10, 12), 3, seed=7)
    absent = np.where(present == 2, 0, present).astype(np.uint8)
    batch = compute_maps_batch(np.stack([present, absent]), [0, 1, 2])
    assert batch.shape == (2, 3, 10, 12)
    assert (batch[1, 2] == 1).all()
    assert_maps_equal(batch[0], reference_maps(present, [0, 1, 2]))
    assert_maps_equal(batch[1], reference_maps(absent, [0, 1, 2]))


def test_channels_follow_the_class_order():
    labels = blobs((9, 11), 3, seed=8)
    forward = compute_maps(labels, [0, 1, 2], kind="boundary")
    backward = compute_maps(labels, [2, 1, 0], kind="boundary")
    np.testing.assert_array_equal(forward, backward[::-1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("engine", ENGINES)
def test_ignore_label(kind, engine):
    labels = blobs((12, 14, 10), 3, seed=9)
    labels[3:6, 2:9, :] = 255
    maps = compute_maps(labels, [0, 1, 2], kind=kind, ignore_label=255, engine=engine)
    assert (maps[:, labels == 255] == 0).all()
    assert_maps_equal(maps, reference_maps(labels, [0, 1, 2], kind, ignore_label=255))


def test_large_label_values():
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[1:3, 1:4] = 100_000
    labels[4:, 4:] = 7
    classes = [0, 7, 100_000]
    assert_maps_equal(compute_maps(labels, classes, kind="boundary"), reference_maps(labels, classes, "boundary"))


def test_float16_output():
    labels = blobs((10, 12, 8), 3, seed=10)
    maps = compute_maps(labels, [0, 1, 2], dtype=np.float16)
    assert maps.dtype == np.float16
    np.testing.assert_allclose(maps, reference_maps(labels, [0, 1, 2]), atol=1e-3)


def test_integer_valued_float_labels_are_fine():
    labels = blobs((8, 9), 3, seed=11)
    np.testing.assert_array_equal(compute_maps(labels.astype(np.float32), [0, 1, 2]), compute_maps(labels, [0, 1, 2]))


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([[0, 1.5], [1, 0]]), "not integers: 1.5"),
        (np.array([[0, np.nan], [1, 0]]), "not integers: nan"),
        (np.array([[0, -1], [1, 0]]), "negative label values: -1"),
        (np.array([[0, 3], [1, 9]]), r"not in the class list \[0, 1\]: 3, 9"),
    ],
)
def test_bad_labels_name_the_offending_values(labels, message):
    with pytest.raises(ValueError, match=message):
        compute_maps(labels, [0, 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="dice"), "unknown kind"),
        (dict(engine="gpu"), "unknown engine"),
        (dict(spacing=(1.0,)), "spacing"),
        (dict(spacing=(1.0, 0.0)), "positive"),
        (dict(slice_axis=2), "out of range"),
        (dict(dtype=np.int32), "float32 or float16"),
        (dict(ignore_label=1), "also in the class list"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_maps(np.zeros((3, 3), np.uint8), [0, 1], **kwargs)


def test_out_buffer_is_filled_and_returned():
    labels = blobs((8, 9, 7), 3, seed=12)
    buffer = np.full((3, 8, 9, 7), np.nan, dtype=np.float32)
    result = compute_maps(labels, [0, 1, 2], kind="kervadec", out=buffer)
    assert result is buffer
    assert_maps_equal(buffer, reference_maps(labels, [0, 1, 2], "kervadec"))
    with pytest.raises(ValueError, match="out has shape"):
        compute_maps(labels, [0, 1], out=buffer)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float64])
def test_unique_labels(dtype):
    labels = np.array([[0, 5, 5], [2, 0, 9]], dtype=dtype)
    np.testing.assert_array_equal(unique_labels(labels), [0, 2, 5, 9])


@pytest.mark.parametrize("labels, message", [(np.array([0.5, 1.0]), "not integers"), (np.array([-2, 1]), "negative")])
def test_unique_labels_rejects_bad_values(labels, message):
    with pytest.raises(ValueError, match=message):
        unique_labels(labels)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_size_labels_give_zero_size_maps(kind):
    assert compute_maps(np.zeros((0, 4), np.uint8), [0, 1], kind=kind).shape == (2, 0, 4)


def test_the_map_dtypes_are_one_constant_the_kernels_and_the_formats_share():
    from rwmaps_cli.formats import OUTPUT_DTYPES
    from rwmaps_cli.maps import MAP_DTYPES

    labels = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="float32 or float16, got float64"):
        compute_maps(labels, [0], dtype=np.float64)
    assert all(set(dtypes) <= set(MAP_DTYPES) for dtypes in OUTPUT_DTYPES.values())
    assert OUTPUT_DTYPES["npy"] == OUTPUT_DTYPES["npz"] == MAP_DTYPES


def test_an_empty_class_list_is_refused():
    with pytest.raises(ValueError, match="classes is empty"):
        compute_maps(np.zeros((4, 4), np.uint8), [])


# ---------------------------------------------------------------------------------------
# Peak memory of the kernel

_PEAK_PROBE = r"""
import json, numpy as np
from rwmaps_cli import compute_maps
from rwmaps_cli.synthetic import brain_like_labels
labels = brain_like_labels((180, 180, 200), 83)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current resident size
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
before = status("VmRSS:")
maps = compute_maps(labels, list(range(83)))
ok = bool((maps.min(axis=(1, 2, 3)) >= -1).all() and (maps.max(axis=(1, 2, 3)) == 1).all())
print(json.dumps({"peak": status("VmHWM:") - before, "shape": maps.shape, "ok": ok}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure the peak")
def test_83_class_whole_brain_volume_stays_within_output_plus_three_volumes():
    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, check=True,
                         timeout=300)
    result = json.loads(out.stdout)
    assert result["shape"] == [83, 180, 180, 200] and result["ok"]
    volume = 180 * 180 * 200 * 4
    assert result["peak"] <= 83 * volume + 3 * volume, result["peak"] / volume - 83
