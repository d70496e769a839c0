"""Slow, obvious reference maps, written straight from the kinds table in README.md ("The maps").

Nothing here is shared with ``rwmaps_cli.maps``: one boolean mask per class, one
``scipy.ndimage.distance_transform_edt`` per mask (or a brute-force distance on tiny
arrays), and ``np.where`` with the formulas as that table states them.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.ndimage import distance_transform_edt


def edt_scipy(mask: np.ndarray, spacing=None) -> np.ndarray:
    """EDT(M): distance of each voxel of M to the nearest voxel outside M; 0 outside."""
    return distance_transform_edt(mask, sampling=spacing) * mask


def edt_brute(mask: np.ndarray, spacing=None) -> np.ndarray:
    """EDT(M) by checking every pair of voxels: O(N^2), for tiny arrays only."""
    spacing = np.ones(mask.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    points = np.array(list(itertools.product(*map(range, mask.shape)))) * spacing
    inside = mask.ravel()
    out = np.zeros(mask.size)
    if inside.all():
        raise ValueError("EDT is undefined when M fills the field")
    for i in np.flatnonzero(inside):
        out[i] = np.sqrt(((points[~inside] - points[i]) ** 2).sum(axis=1)).min()
    return out.reshape(mask.shape)


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of M with at least one face neighbour (inside the field) outside M."""
    result = np.zeros_like(mask)
    for index in zip(*np.nonzero(mask)):
        for axis in range(mask.ndim):
            for step in (-1, 1):
                neighbour = list(index)
                neighbour[axis] += step
                if 0 <= neighbour[axis] < mask.shape[axis] and not mask[tuple(neighbour)]:
                    result[index] = True
    return result


def reference_maps(labels, classes, kind="rrw", spacing=None, slice_axis=None, ignore_label=None, edt=edt_scipy):
    """Maps of shape (C, *labels.shape), float64."""
    labels = np.asarray(labels)
    if slice_axis is not None:
        in_plane = None if spacing is None else [s for a, s in enumerate(spacing) if a != slice_axis]
        planes = [
            reference_maps(np.take(labels, i, axis=slice_axis), classes, kind, in_plane, None, ignore_label, edt)
            for i in range(labels.shape[slice_axis])
        ]
        return np.stack(planes, axis=slice_axis + 1)
    out = np.stack([_channel(labels == k, kind, spacing, edt) for k in classes])
    if ignore_label is not None:
        out[:, labels == ignore_label] = 0
    return out


def _channel(mask, kind, spacing, edt):
    if not mask.any():
        return np.full(mask.shape, {"rrw": 1.0, "boundary": 0.0, "kervadec": 0.0, "ac": 1.0, "sdf": 0.0}[kind])
    if mask.all():
        return np.full(mask.shape, {"rrw": -1.0, "boundary": 0.0, "kervadec": 0.0, "ac": 0.0, "sdf": 0.0}[kind])
    if kind == "ac":
        return np.where(mask, 0.0, 1.0)
    inside = edt(mask, spacing)
    if kind == "rrw":
        return np.where(mask, -inside / inside.max(), 1.0)
    outside = edt(~mask, spacing)
    if kind == "boundary":
        return np.where(mask, -inside, outside)
    if kind == "sdf":  # the formula of docs/design.md; dtc_sdf below is DTC's own code
        out = outside / outside.max() - inside / inside.max()
        out[inner_boundary(mask)] = 0.0
        return out
    unit = 1.0 if spacing is None else min(spacing)
    out = np.where(mask, -(inside - unit), outside)
    if spacing is not None:
        out[inner_boundary(mask)] = 0.0
    return out


def dtc_sdf(mask: np.ndarray) -> np.ndarray:
    """DTC's ``compute_sdf`` for one binary mask, verbatim (Luo et al., AAAI 2021;
    HiLab-git/DTC, ``code/utils/util.py``): scipy's EDT both ways, scikit-image's inner
    boundary (scikit-image comes with the nnunet extra the tests install)."""
    from skimage import segmentation as skimage_seg

    posmask = mask.astype(bool)
    negmask = ~posmask
    posdis = distance_transform_edt(posmask)
    negdis = distance_transform_edt(negmask)
    boundary = skimage_seg.find_boundaries(posmask, mode="inner").astype(np.uint8)
    sdf = (negdis - np.min(negdis)) / (np.max(negdis) - np.min(negdis)) - (posdis - np.min(posdis)) / (
        np.max(posdis) - np.min(posdis))
    sdf[boundary == 1] = 0
    return sdf


def seed_rrw(one_hot: np.ndarray) -> np.ndarray:
    """The seed repository's formula, verbatim (README of the paper's repository)."""
    rrwmap = np.zeros_like(one_hot, dtype=np.float64)
    for b in range(rrwmap.shape[0]):
        for c in range(rrwmap.shape[1]):
            rrwmap[b, c] = distance_transform_edt(one_hot[b, c])
            rrwmap[b, c] = -1 * (rrwmap[b, c] / (np.max(rrwmap[b, c] + 1e-15)))
    rrwmap[rrwmap == 0] = 1
    return rrwmap


def liviaets_one_hot2dist(seg: np.ndarray, resolution=None) -> np.ndarray:
    """LIVIAETS boundary-loss ``one_hot2dist`` (C, *spatial), as published."""
    res = np.zeros_like(seg, dtype=np.float64)
    for k in range(len(seg)):
        posmask = seg[k].astype(bool)
        if posmask.any():
            negmask = ~posmask
            res[k] = distance_transform_edt(negmask, sampling=resolution) * negmask - (
                distance_transform_edt(posmask, sampling=resolution) - 1
            ) * posmask
    return res


def reference_compact(labels, classes, spacing=None, slice_axis=None, ignore_label=None):
    """The compact rrw map from the full reference: each voxel's value in its own class's
    channel; 0 on the ignore label.  Shape labels.shape, float64."""
    labels = np.asarray(labels)
    full = reference_maps(labels, classes, "rrw", spacing, slice_axis, ignore_label)
    compact = np.zeros(labels.shape)
    for c, k in enumerate(classes):
        compact[labels == k] = full[c][labels == k]
    return compact


def reference_expanded(compact, labels, classes, outside, ignore_label=None):
    """Channel c: ``compact`` on class c, ``outside[c]`` elsewhere, 0 on the ignore label."""
    labels = np.asarray(labels)
    outside = np.broadcast_to(np.asarray(outside, dtype=float), (len(classes),))
    out = np.stack([np.where(labels == k, compact, outside[c]) for c, k in enumerate(classes)])
    if ignore_label is not None:
        out[:, labels == ignore_label] = 0
    return out


def reference_patch_rrw(labels, classes, crop, spacing=None):
    """The seed's per-patch rrw map of ``labels[crop]`` with the whole volume's distances:
    ``-EDT / max`` with EDT measured in the whole volume and max taken within the crop."""
    labels = np.asarray(labels)
    patch = labels[crop]
    out = []
    for k in classes:
        mask = labels == k
        if not mask.any():
            out.append(np.ones(patch.shape))
            continue
        inside = np.full(labels.shape, 1.0) if mask.all() else edt_scipy(mask, spacing)
        inside = inside[crop]
        in_patch = patch == k
        largest = inside[in_patch].max() if in_patch.any() else 1.0
        out.append(np.where(in_patch, -inside / largest, 1.0))
    return np.stack(out)


def seed_patch_map(volume: np.ndarray, window, classes, ignore_label=None) -> np.ndarray:
    """The seed's per-patch rrw map, written from the formula: each class's whole-volume
    EDT, cropped, divided by its largest value within the crop; 1 outside the class."""
    crop = volume[window]
    out = np.ones((len(classes), *crop.shape))
    for c, k in enumerate(classes):
        inside = crop == k
        if inside.any():
            distance = distance_transform_edt(volume == k)[window]
            out[c][inside] = -distance[inside] / distance[inside].max()
    if ignore_label is not None:
        out[:, crop == ignore_label] = 0
    return out
