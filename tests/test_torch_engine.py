"""The PyTorch engine (``rwmaps_cli.torch.compute_maps``): exact against the numpy kernel and the
slow reference, on every device the machine has (CPU always; CUDA where there is one)."""

import numpy as np
import pytest
import torch
from helpers import blobs
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_maps

from rwmaps_cli import compute_maps
from rwmaps_cli.contract import KINDS
from rwmaps_cli.synthetic import brain_like_labels
from rwmaps_cli.torch import compute_maps as torch_maps

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 on both sides; distances summed in another order


def numpy_batch(labels: np.ndarray, classes, **kwargs) -> np.ndarray:
    """The numpy kernel on each item."""
    return np.stack([compute_maps(item, classes, **kwargs) for item in labels])


@st.composite
def requests(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    n_classes = draw(st.integers(1, 4))
    ignore = draw(st.sampled_from([None, n_classes]))
    top = n_classes if ignore is not None else n_classes - 1
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    labels = np.random.default_rng(seed).integers(0, top + 1, size=(batch, *shape))
    kind = draw(st.sampled_from(KINDS))
    layout = draw(st.sampled_from(["full", "compact"])) if kind == "rrw" else "full"
    spacing = draw(st.none() | st.tuples(*[st.floats(0.3, 3.0)] * ndim))
    axis = draw(st.none() | st.integers(0, ndim - 1)) if ndim > 1 else None
    options = dict(kind=kind, layout=layout, spacing=spacing, slice_axis=axis, ignore_label=ignore)
    return labels, list(range(n_classes)), options


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=150, deadline=None)
@given(case=requests())
def test_random_batches_equal_the_numpy_kernel(device, case):
    labels, classes, options = case
    expected = numpy_batch(labels, classes, **options)
    actual = torch_maps(torch.from_numpy(labels).to(device), classes, **options)
    assert actual.device.type == device and actual.dtype == torch.float32
    np.testing.assert_allclose(actual.cpu().numpy(), expected, **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spacing", [None, (1.0, 1.2, 3.0)])
def test_thin_classes_anisotropic_against_the_reference(device, kind, spacing):
    """A brain-like parcellation (thin Voronoi parcels), Fortran-ordered as nibabel reads it,
    against the slow reference; a class in the list occurs in no voxel."""
    labels = brain_like_labels((23, 26, 19), n_classes=9, seed=1)
    classes = [*range(9), 20]
    actual = torch_maps(torch.from_numpy(labels[None].astype(np.int64)).to(device), classes, kind=kind, spacing=spacing)
    np.testing.assert_allclose(actual[0].cpu().numpy(), reference_maps(labels, classes, kind, spacing), **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_whose_items_differ(device, kind):
    """Items with other classes present, a class filling one item, a single voxel, the
    ignore label in one item only: each item is its own field."""
    items = np.stack([blobs((9, 12, 10), 3, seed=4), np.full((9, 12, 10), 1), np.zeros((9, 12, 10), int)])
    items[2, 4, 6, 5] = 2  # a single voxel of class 2
    items[0, :2] = 7  # the ignore label
    options = dict(kind=kind, ignore_label=7)
    actual = torch_maps(torch.from_numpy(items).to(device), [0, 1, 2], **options)
    np.testing.assert_allclose(actual.cpu().numpy(), numpy_batch(items, [0, 1, 2], **options), **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_per_slice_maps_and_the_compact_layout(device):
    labels = np.stack([blobs((6, 15, 13), 4, seed=s) for s in (1, 2)])
    for axis in (0, 1, 2):
        options = dict(layout="compact", slice_axis=axis, spacing=(2.5, 0.8, 0.7))
        actual = torch_maps(torch.from_numpy(labels).to(device), range(4), **options)
        np.testing.assert_allclose(actual.cpu().numpy(), numpy_batch(labels, range(4), **options), **TOL)


def test_long_lines_are_taken_in_blocks(monkeypatch):
    """The candidate block never holds more than BLOCK_ELEMENTS: a tiny bound gives the same maps."""
    import rwmaps_cli.torch_engine as engine

    labels = torch.from_numpy(blobs((5, 40, 37), 3, seed=6))[None]
    whole = torch_maps(labels, [0, 1, 2], kind="sdf", spacing=(2.0, 1.0, 0.5))
    monkeypatch.setattr(engine, "BLOCK_ELEMENTS", 40 * 40 * 3)  # three lines at a time
    torch.testing.assert_close(torch_maps(labels, [0, 1, 2], kind="sdf", spacing=(2.0, 1.0, 0.5)), whole)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"label values not in the class list \[0, 1\]: \[5\]"):
        torch_maps(torch.tensor([[0, 1, 5]]), [0, 1])
    with pytest.raises(ValueError, match="not integers"):
        torch_maps(torch.tensor([[0.0, 0.5]]), [0, 1])
    with pytest.raises(ValueError, match="no compact layout"):
        torch_maps(torch.zeros((1, 3, 3), dtype=torch.long), [0], kind="sdf", layout="compact")
    with pytest.raises(ValueError, match=r"\(B, \*spatial\)"):
        torch_maps(torch.zeros(3, dtype=torch.long), [0])


def test_integer_valued_floats_and_the_output_dtype():
    labels = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
    maps = torch_maps(labels, [0, 1], dtype=torch.float16)
    assert maps.dtype == torch.float16
    np.testing.assert_allclose(maps.float().numpy(), compute_maps(np.array([[0, 1, 1, 0]]), [0, 1])[None], atol=1e-3)
