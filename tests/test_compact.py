"""The compact rrw layout and expand_map, against the slow reference in tests/reference.py."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import blobs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import reference_compact, reference_expanded, reference_maps, reference_patch_rrw

from rwmaps_cli.maps import LAYOUTS, compute_maps, compute_maps_batch, expand_map
from rwmaps_cli.synthetic import as_simpleitk, brain_like_labels

TOL = dict(rtol=1e-5, atol=1e-6)  # float32 output against a float64 reference
CLASSES = [0, 1, 2, 3, 4]  # 4 never occurs in the random labels: an absent class in every example
IGNORE = 7

# Labels 0..3, sometimes with the ignore label, C or Fortran order (as nibabel returns them).
label_arrays = st.tuples(st.integers(2, 3), st.booleans(), st.sampled_from("CF")).flatmap(
    lambda t: hnp.arrays(np.uint8, hnp.array_shapes(min_dims=t[0], max_dims=t[0], min_side=1, max_side=7),
                         elements=st.sampled_from([0, 1, 2, 3, IGNORE] if t[1] else [0, 1, 2, 3])).map(
        lambda a: np.asfortranarray(a) if t[2] == "F" else a)
)
spacings = st.one_of(st.none(), st.lists(st.sampled_from([0.5, 0.8, 1.0, 2.5, 3.0]), min_size=3, max_size=3))


def ignore_of(labels):
    return IGNORE if (labels == IGNORE).any() else None


# ---------------------------------------------------------------------------------------
# compact -> expand_map == full == reference


@settings(max_examples=200, deadline=None)
@given(labels=label_arrays, engine=st.sampled_from(["edt", "scipy"]), spacing=spacings,
       slice_axis=st.sampled_from([None, 0, -1]))
def test_expanded_compact_equals_full_and_the_reference(labels, engine, spacing, slice_axis):
    spacing = None if spacing is None else spacing[: labels.ndim]
    ignore = ignore_of(labels)
    kwargs = dict(spacing=spacing, slice_axis=slice_axis, engine=engine, ignore_label=ignore)
    compact = compute_maps(labels, CLASSES, layout="compact", **kwargs)
    full = compute_maps(labels, CLASSES, layout="full", **kwargs)
    assert compact.shape == labels.shape and compact.dtype == np.float32
    axis = None if slice_axis is None else slice_axis % labels.ndim
    np.testing.assert_allclose(compact, reference_compact(labels, CLASSES, spacing, axis, ignore), **TOL)
    np.testing.assert_allclose(full, reference_maps(labels, CLASSES, "rrw", spacing, axis, ignore), **TOL)
    # Bit for bit: the full map is built from the same values.
    np.testing.assert_array_equal(expand_map(compact, labels, CLASSES, ignore_label=ignore), full)


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays, outside=st.lists(st.floats(0, 2, width=32), min_size=5, max_size=5))
def test_per_class_outside_values(labels, outside):
    ignore = ignore_of(labels)
    compact = compute_maps(labels, CLASSES, layout="compact", ignore_label=ignore)
    expanded = expand_map(compact, labels, CLASSES, outside=outside, ignore_label=ignore)
    expected = reference_expanded(reference_compact(labels, CLASSES, ignore_label=ignore), labels, CLASSES, outside,
                                  ignore)
    np.testing.assert_allclose(expanded, expected, **TOL)


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays)
def test_ac_map_from_the_labels_alone(labels):
    ignore = ignore_of(labels)
    ac = expand_map(None, labels, CLASSES, kind="ac", ignore_label=ignore)
    np.testing.assert_array_equal(ac, compute_maps(labels, CLASSES, kind="ac", ignore_label=ignore))
    np.testing.assert_array_equal(ac, reference_maps(labels, CLASSES, "ac", ignore_label=ignore))


def test_class_filling_the_field_is_minus_one():
    labels = np.full((4, 5, 6), 2, dtype=np.uint8)
    assert (compute_maps(labels, [0, 2], layout="compact") == -1).all()
    labels[0] = IGNORE  # now class 2 no longer fills the field: an ordinary class
    compact = compute_maps(labels, [0, 2], layout="compact", ignore_label=IGNORE)
    np.testing.assert_allclose(compact, reference_compact(labels, [0, 2], ignore_label=IGNORE), **TOL)
    assert (compact[0] == 0).all()


def test_field_of_ignore_label_only_is_zero():
    labels = np.full((3, 4), IGNORE, dtype=np.uint8)
    assert (compute_maps(labels, [0, 1], layout="compact", ignore_label=IGNORE) == 0).all()


def test_per_slice_compact_is_normalised_per_slice():
    labels = np.zeros((2, 9, 9), dtype=np.uint8)
    labels[0, 1:8, 1:8] = 1  # a big square in slice 0
    labels[1, 4, 4] = 1  # one voxel in slice 1
    labels[1, 0, :] = 2  # class 2 only in slice 1
    compact = compute_maps(labels, [0, 1, 2], layout="compact", slice_axis=0)
    assert compact[0].min() == -1 and compact[1, 4, 4] == -1  # each slice reaches -1 on its own
    np.testing.assert_allclose(compact, reference_compact(labels, [0, 1, 2], slice_axis=0), **TOL)


@pytest.mark.parametrize("kind", ["rrw", "boundary", "kervadec", "ac"])
def test_per_slice_on_1d_labels_makes_one_voxel_fields(kind):
    """Each slice of a 1D array is one voxel: its class fills the field (this used to
    return uninitialised memory)."""
    labels = np.array([0, 1, 1, 2], dtype=np.uint8)
    maps = compute_maps(labels, [0, 1, 2, 3], kind=kind, slice_axis=0)
    np.testing.assert_array_equal(maps, reference_maps(labels, [0, 1, 2, 3], kind, slice_axis=0))
    if kind == "rrw":
        np.testing.assert_array_equal(compute_maps(labels, [0, 1, 2, 3], layout="compact", slice_axis=0), -1)


def test_largest_value_is_exactly_minus_one():
    labels = blobs((17, 19, 13), 4, seed=3)
    compact = compute_maps(labels, [0, 1, 2, 3], layout="compact", spacing=(0.7, 0.9, 2.5))
    for k in range(4):
        assert compact[labels == k].min() == -1.0
        assert compact[labels == k].max() < 0


# ---------------------------------------------------------------------------------------
# renormalize="patch": the seed's per-patch maxima, the whole volume's distances


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays, data=st.data(), spacing=spacings)
def test_renormalized_crop_is_the_per_patch_map(labels, data, spacing):
    labels = np.where(labels == IGNORE, 0, labels).astype(np.uint8)
    spacing = None if spacing is None else spacing[: labels.ndim]
    crop = tuple(slice(lo, data.draw(st.integers(lo + 1, n))) for n in labels.shape
                 for lo in [data.draw(st.integers(0, n - 1))])
    compact = compute_maps(labels, CLASSES, layout="compact", spacing=spacing)
    patch = expand_map(compact[crop], labels[crop], CLASSES, renormalize="patch")
    expected = reference_patch_rrw(labels, CLASSES, crop, spacing)
    np.testing.assert_allclose(patch, expected, **TOL)
    for c, k in enumerate(CLASSES):
        if (labels[crop] == k).any():
            assert patch[c][labels[crop] == k].min() == -1.0  # exactly, where the patch maximum is


def test_renormalize_keeps_zero_classes_and_the_ignore_label():
    labels = np.array([[0, 0, 1, IGNORE]], dtype=np.uint8)
    compact = np.array([[0.0, -0.5, -0.25, 0.3]], dtype=np.float32)  # class 0 has a 0 and -0.5
    out = expand_map(compact, labels, [0, 1], ignore_label=IGNORE, renormalize="patch")
    np.testing.assert_array_equal(out, [[[0, -1, 1, 0]], [[1, 1, -1, 0]]])


# ---------------------------------------------------------------------------------------
# Arrays as the readers return them


@pytest.mark.parametrize("order", ["F", "C"])
def test_memory_order_is_kept(order):
    labels = brain_like_labels((21, 24, 19), n_classes=9, order=order, seed=1)
    compact = compute_maps(labels, range(9), layout="compact")
    full = compute_maps(labels, range(9))
    assert compact.flags[f"{order}_CONTIGUOUS"]
    assert all(channel.flags[f"{order}_CONTIGUOUS"] for channel in full)
    assert all(channel.flags[f"{order}_CONTIGUOUS"] for channel in expand_map(compact, labels, range(9)))


@pytest.mark.parametrize("reader", ["nibabel", "simpleitk"])
def test_brain_like_volume_matches_the_reference(reader):
    labels = brain_like_labels((23, 26, 21), n_classes=14, spacing=(1.0, 1.2, 2.0), seed=2)
    spacing = (1.0, 1.2, 2.0)
    if reader == "simpleitk":
        labels, spacing = as_simpleitk(labels), spacing[::-1]
    classes = list(range(14))
    compact = compute_maps(labels, classes, layout="compact", spacing=spacing)
    np.testing.assert_allclose(compact, reference_compact(labels, classes, spacing), **TOL)
    full = compute_maps(labels, classes, spacing=spacing)
    np.testing.assert_allclose(full, reference_maps(labels, classes, "rrw", spacing), **TOL)
    np.testing.assert_array_equal(expand_map(compact, labels, classes), full)


def test_both_readers_give_the_same_maps():
    labels = brain_like_labels((20, 22, 18), n_classes=11, seed=3)
    spacing = (0.9, 1.1, 2.2)
    for kind in ("rrw", "boundary", "kervadec", "ac"):
        nib_maps = compute_maps(labels, range(11), kind=kind, spacing=spacing, slice_axis=2)
        itk_maps = compute_maps(as_simpleitk(labels), range(11), kind=kind, spacing=spacing[::-1], slice_axis=0)
        np.testing.assert_array_equal(nib_maps, itk_maps.transpose(0, 3, 2, 1))


def test_labels_and_compact_in_different_orders():
    labels = brain_like_labels((15, 17, 13), n_classes=6, seed=4)  # Fortran, as nibabel
    compact = np.ascontiguousarray(compute_maps(labels, range(6), layout="compact"))  # e.g. read from a C npy
    np.testing.assert_array_equal(expand_map(compact, labels, range(6)), compute_maps(labels, range(6)))


def test_brain_like_labels():
    labels = brain_like_labels((31, 29, 33), n_classes=12, seed=5)
    assert labels.shape == (31, 29, 33) and labels.dtype == np.uint8 and labels.flags.f_contiguous
    np.testing.assert_array_equal(np.unique(labels), np.arange(12))
    assert (labels[0] == 0).all() and (labels[:, :, -1] == 0).all()  # background outside the head
    np.testing.assert_array_equal(labels, brain_like_labels((31, 29, 33), n_classes=12, seed=5))
    assert as_simpleitk(labels).shape == (33, 29, 31) and as_simpleitk(labels).flags.c_contiguous


# ---------------------------------------------------------------------------------------
# out=, batches, dtypes


@pytest.mark.parametrize("order", ["C", "F"])
def test_out_buffer(order):
    labels = brain_like_labels((12, 14, 11), n_classes=5, seed=6)  # Fortran labels, either buffer order
    buffer = np.full(labels.shape, np.nan, dtype=np.float32, order=order)
    assert compute_maps(labels, range(5), layout="compact", out=buffer) is buffer
    np.testing.assert_allclose(buffer, reference_compact(labels, range(5)), **TOL)
    buffer[:] = np.nan
    compute_maps(labels, range(5), layout="compact", out=buffer, slice_axis=1)
    np.testing.assert_allclose(buffer, reference_compact(labels, range(5), slice_axis=1), **TOL)
    with pytest.raises(ValueError, match="out has shape"):
        compute_maps(labels, range(5), layout="compact", out=np.empty((5, *labels.shape), np.float32))


def test_batch_compact():
    batch = np.stack([blobs((10, 12), 3, seed=s) for s in range(3)])
    maps = compute_maps_batch(batch, [0, 1, 2], layout="compact", dtype=np.float16)
    assert maps.shape == (3, 10, 12) and maps.dtype == np.float16
    for item, item_map in zip(batch, maps):
        np.testing.assert_array_equal(item_map, compute_maps(item, [0, 1, 2], layout="compact", dtype=np.float16))


def test_float16_compact_and_expand():
    labels = blobs((10, 12, 8), 3, seed=10)
    compact = compute_maps(labels, [0, 1, 2], layout="compact", dtype=np.float16)
    assert compact.dtype == np.float16
    full = expand_map(compact, labels, [0, 1, 2], dtype=np.float16)
    assert full.dtype == np.float16
    np.testing.assert_array_equal(full, compute_maps(labels, [0, 1, 2], dtype=np.float16))


# ---------------------------------------------------------------------------------------
# Errors


def test_layouts():
    assert LAYOUTS == ("full", "compact")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="ac", layout="compact"), r"expand_map\(None, labels, classes, kind='ac'\)"),
        (dict(kind="boundary", layout="compact"), "no compact layout"),
        (dict(kind="kervadec", layout="compact"), "no compact layout"),
        (dict(layout="sparse"), "unknown layout"),
    ],
)
def test_compact_is_for_rrw_only(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_maps(np.zeros((3, 3), np.uint8), [0, 1], **kwargs)
    with pytest.raises(ValueError, match=message):
        compute_maps_batch(np.zeros((2, 3, 3), np.uint8), [0, 1], **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((np.zeros((2, 2)), np.array([[0, 3], [1, 9]])), {}, r"not in the class list \[0, 1\]: 3, 9"),
        ((np.zeros((2, 2)), np.array([[0, 1], [1, 7]])), dict(ignore_label=5), r"not in the class list \[0, 1\]: 7"),
        ((np.zeros((2, 2)), np.zeros((2, 3), np.uint8)), {}, "compact map has shape"),
        ((np.zeros((2, 2), np.int32), np.zeros((2, 2), np.uint8)), {}, "expected a float array"),
        ((np.zeros((2, 2)), np.zeros((2, 2), np.uint8)), dict(outside=[1, 2, 3]), "3 values for 2 classes"),
        ((np.zeros((2, 2)), np.zeros((2, 2), np.uint8)), dict(kind="boundary"), "no compact form"),
        ((np.zeros((2, 2)), np.zeros((2, 2), np.uint8)), dict(kind="ac"), "needs no compact channel"),
        ((None, np.zeros((2, 2), np.uint8)), {}, "only kind='ac'"),
        ((np.zeros((2, 2)), np.zeros((2, 2), np.uint8)), dict(renormalize="volume"), "unknown renormalize"),
        ((None, np.zeros((2, 2), np.uint8)), dict(kind="ac", renormalize="patch"), "applies to rrw"),
        ((np.zeros((2, 2)), np.zeros((2, 2), np.uint8)), dict(dtype=np.int8), "float32 or float16"),
    ],
)
def test_expand_map_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        expand_map(*args, [0, 1], **kwargs)


# ---------------------------------------------------------------------------------------
# Memory: the compact map never holds C channels

_PROBE = r"""
import json, sys
import nibabel as nib
import numpy as np
from rwmaps_cli.maps import compute_maps
labels = np.load(sys.argv[1])  # made in another process: no freed temporaries to reuse here
compute_maps(labels[:8, :8, :8], range(16), layout="compact")  # import edt, warm up
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
compact = compute_maps(labels, range(16), layout="compact")
print(json.dumps({"peak": status("VmHWM:") - before, "volume": compact.nbytes, "labels": labels.nbytes}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-memory reset")
def test_compact_peak_memory_is_at_most_labels_plus_three_volumes(tmp_path):
    np.save(tmp_path / "labels.npy", brain_like_labels((160, 176, 144), n_classes=16, seed=0))
    result = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "labels.npy")], capture_output=True,
                            text=True, check=True)
    measured = json.loads(result.stdout)
    # The bound the issue sets at 512^3, checked at 4 M voxels; the output is one of the volumes.
    assert measured["volume"] <= measured["peak"] <= measured["labels"] + 3 * measured["volume"], measured


@pytest.mark.parametrize("kind, layout", [("rrw", "compact"), ("rrw", "full"), ("ac", "full"), ("kervadec", "full")])
@pytest.mark.parametrize("order", ["F", "C"])
def test_threads_split_the_passes_after_the_edt_without_changing_a_value(kind, layout, order):
    """A case's threads share the passes after the distance transform (chunks, channels):
    the maps are bit for bit the one-thread maps, in nibabel's and SimpleITK's order."""
    labels = brain_like_labels((37, 41, 29), n_classes=23, order=order, seed=3)
    labels[labels == 5] = 30  # an ignore label spread over its box
    classes = [c for c in range(23) if c != 5]
    one = compute_maps(labels, classes, kind=kind, layout=layout, ignore_label=30, threads=1)
    for threads in (2, 3, 64):  # 64: more threads than chunks or channels
        np.testing.assert_array_equal(compute_maps(labels, classes, kind=kind, layout=layout, ignore_label=30,
                                                   threads=threads), one)


def test_a_map_compressed_on_several_threads_reads_back_the_same(tmp_path):
    from rwmaps_cli.formats import load_map_array, read_labels, write_map

    labels = brain_like_labels((64, 70, 90), n_classes=12)
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    volume = read_labels(path)
    compact = compute_maps(volume.array, list(range(12)), layout="compact")
    write_map(tmp_path / "one.nii.gz", compact, volume, list(range(12)), "rrw", layout="compact")
    write_map(tmp_path / "two.nii.gz", compact, volume, list(range(12)), "rrw", layout="compact", threads=2)
    for name in ("one.nii.gz", "two.nii.gz"):
        np.testing.assert_array_equal(load_map_array(tmp_path / name)[0], compact)
        np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / name).dataobj), compact)
