"""What every benchmark compares against, and how it times: shared by the scripts here."""

from __future__ import annotations

import time

import numpy as np
from scipy.ndimage import distance_transform_edt


def seed_formula(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The seed README's per-class scipy loop, on the one-hot ground truth (verbatim)."""
    Y = np.stack([labels == c for c in range(n_classes)])[None].astype(np.float32)
    rrwmap = np.zeros_like(Y)
    for b in range(rrwmap.shape[0]):  # Batch dim
        for c in range(rrwmap.shape[1]):  # Channel dim
            rrwmap[b, c] = distance_transform_edt(Y[b, c])
            rrwmap[b, c] = -1 * (rrwmap[b, c] / (np.max(rrwmap[b, c] + 1e-15)))
    rrwmap[rrwmap == 0] = 1
    return rrwmap[0]


def dtc_sdf(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """DTC's ``compute_sdf`` (HiLab-git/DTC, ``code/utils/util.py``; Luo et al., AAAI 2021) per
    class, as its users run it on a multi-class label map: two scipy EDTs and scikit-image's
    inner boundary per class (scikit-image comes with the nnunet extra)."""
    from skimage import segmentation as skimage_seg

    out = np.zeros((n_classes, *labels.shape), dtype=np.float32)
    for c in range(n_classes):
        posmask = labels == c
        if posmask.any() and not posmask.all():
            negmask = ~posmask
            posdis = distance_transform_edt(posmask)
            negdis = distance_transform_edt(negmask)
            boundary = skimage_seg.find_boundaries(posmask, mode="inner").astype(np.uint8)
            sdf = (negdis - np.min(negdis)) / (np.max(negdis) - np.min(negdis)) - (posdis - np.min(posdis)) / (
                np.max(posdis) - np.min(posdis))
            sdf[boundary == 1] = 0
            out[c] = sdf
    return out


def median_times(functions: dict, repeats: int) -> dict:
    """Median seconds of each function, calls interleaved so noise hits all alike."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}
