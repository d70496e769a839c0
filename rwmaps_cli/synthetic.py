"""Label volumes that look like real parcellations, as the readers return them.

Benchmarks and tests on C-ordered volumes with a few large blobs miss what real files
do to a kernel: an 83-label brain parcellation has many thin, elongated classes, each
filling a small part of the volume, and nibabel hands it over as a Fortran-ordered
array (SimpleITK as a C-ordered ``(Z, Y, X)`` one).  :func:`brain_like_labels` imitates
that; :func:`as_simpleitk` gives the same volume as SimpleITK would.  :func:`blob_labels`
makes the simpler volumes of the tests and of the nnU-Net datasets: a few smooth, touching
regions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

# The nearest-seed search runs on a grid of at most this many voxels and is upsampled
# by repetition: a 512^3 volume would otherwise need gigabytes of index arrays.
_MAX_SEARCH_VOXELS = 24_000_000


def blob_labels(shape: Sequence[int], n_classes: int, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    """Smooth random regions with touching classes, like a real segmentation.

    Parameters
    ----------
    shape : sequence of int
        The spatial shape (1D to 3D).
    n_classes : int
        Label values ``0 .. n_classes - 1``; a small volume may miss some.
    rng : numpy Generator
    sigma : float
        Smoothing of the random fields, in voxels: the regions' size.

    Returns
    -------
    labels : (*shape) uint8 ndarray, C-ordered
    """
    noise = ndi.gaussian_filter(rng.normal(size=(n_classes, *shape)), sigma, axes=range(1, len(shape) + 1))
    return noise.argmax(axis=0).astype(np.uint8)


def brain_like_labels(
    shape: Sequence[int] = (182, 182, 218),
    n_classes: int = 83,
    order: str = "F",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    dtype: np.dtype | type = np.uint8,
) -> np.ndarray:
    """A whole-head parcellation: many thin, elongated classes, as nibabel returns it.

    Imitates an atlas-style brain parcellation (e.g. the 83-region Hammers atlas on an
    MNI-sized 182x182x218 grid, 1 mm): background 0 outside an ellipsoidal head; inside
    it a thin cortical ribbon cut into parcels (about two thirds of the labels) around
    deep regions (the rest).  Both are Voronoi cells of random seed points measured with
    a stretched metric, so cells are elongated along axis 1 (front to back), as gyri
    and deep structures are.  Every class ``0 .. n_classes - 1`` is present.

    Parameters
    ----------
    shape : (3,) ints
        Voxel-array shape (odd sizes are the realistic case).
    n_classes : int, at least 3
        Number of label values including the background 0.
    order : {"F", "C"}
        Memory order of the result: "F" as nibabel returns NIfTI data.
    spacing : (3,) floats
        Voxel sizes in mm: the head is round in mm, so squashed in voxels when the
        spacing is anisotropic.
    seed : int
        Seed of the random generator; the result is deterministic.
    dtype : integer dtype
        Label dtype (uint8 as most parcellation files store it; 83 labels fit).

    Returns
    -------
    labels : (*shape) array of ``dtype``, memory order ``order``
    """
    if n_classes < 3:
        raise ValueError(f"n_classes must be at least 3 (background, ribbon, deep), got {n_classes}")
    if order not in ("F", "C"):
        raise ValueError(f"order must be 'F' or 'C', got {order!r}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=float)
    step = max(1, int(np.ceil((np.prod(shape) / _MAX_SEARCH_VOXELS) ** (1 / 3))))
    coarse = tuple(-(-s // step) for s in shape)
    # Ellipsoidal radius in units of the head: < 1 inside the head, on a coarse grid.
    extent = np.asarray(shape) * spacing
    grid = np.ogrid[tuple(slice(0, s) for s in coarse)]
    radius = np.sqrt(sum(((g * step + step / 2) * sp - e / 2) ** 2 / (0.45 * e) ** 2
                         for g, sp, e in zip(grid, spacing, extent)))
    n_ribbon = max(1, round(2 * (n_classes - 1) / 3))
    n_deep = n_classes - 1 - n_ribbon
    ribbon = (radius >= 0.88) & (radius < 1)  # about 10 voxels thick at 182^3: thin parcels
    deep = radius < 0.88
    cells = np.zeros(coarse, dtype=np.int64)
    cells[ribbon] = _voronoi(ribbon, n_ribbon, step * spacing, rng)[ribbon]
    cells[deep] = n_ribbon + _voronoi(deep, max(n_deep, 1), step * spacing, rng)[deep]
    # Shuffle the label values so that neighbouring cells do not have neighbouring values.
    values = np.concatenate([[0], rng.permutation(np.arange(1, n_classes))]).astype(dtype)
    labels = values[np.minimum(cells, n_classes - 1)]
    labels = _upsample(labels, step, shape)
    return np.asfortranarray(labels) if order == "F" else np.ascontiguousarray(labels)


def as_simpleitk(labels: np.ndarray) -> np.ndarray:
    """The same volume as SimpleITK returns it: axes reversed to (Z, Y, X), C-ordered.

    Parameters
    ----------
    labels : (X, Y, Z) array (as nibabel returns it)

    Returns
    -------
    labels : (Z, Y, X) C-contiguous array, same dtype
    """
    return np.ascontiguousarray(labels.T)


def _voronoi(region: np.ndarray, n_cells: int, sampling: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index 1..n_cells of the nearest of n_cells random seed points inside ``region``.

    Distances are measured with axis 1 shrunk by 3, so cells stretch along axis 1.
    Every cell keeps its own seed point, so every index occurs in ``region``.
    """
    points = np.argwhere(region)
    chosen = points[rng.choice(len(points), size=n_cells, replace=False)]
    seeds = np.zeros(region.shape, dtype=np.int64)
    seeds[tuple(chosen.T)] = np.arange(1, n_cells + 1)
    stretched = sampling * np.array([1.0, 1 / 3, 1.0])
    _, nearest = ndi.distance_transform_edt(seeds == 0, sampling=stretched, return_indices=True)
    return seeds[tuple(nearest)]


def _upsample(labels: np.ndarray, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat every voxel ``step`` times along each axis and crop to ``shape``."""
    if step == 1:
        return labels
    for axis in range(labels.ndim):
        labels = np.repeat(labels, step, axis=axis)
    return labels[tuple(slice(0, s) for s in shape)]
