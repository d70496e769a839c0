"""The maps of a batch's targets, on the training device, at every deep-supervision scale.

``nnUNetTrainerRWOnTheFly`` (with its default ``rw_engine = "torch"``) computes the maps in
the train step instead of the data loader: nnU-Net's augmented, nearest-downsampled targets
reach the GPU, and :func:`rwmaps_cli.torch.compute_maps` makes each scale's maps there, exact
for any augmentation, with no CPU worker time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..torch_engine import compute_maps


def target_maps(target: torch.Tensor, classes: Sequence[int], regions: Sequence[Sequence[int]] | None,
                kind: str, ignore_label: int | None = None) -> torch.Tensor:
    """The maps of one scale's target, on its device.

    Parameters
    ----------
    target : (B, 1, *spatial) integer tensor, or (B, R[+1], *spatial) region masks
        nnU-Net's target at one scale: the label values, or for a region-based dataset one
        mask per region (and the ignore mask last, when the dataset has an ignore label).
    classes : sequence of int
        The network's output labels (``label_manager.all_labels``).
    regions : sequence of sequences of int, optional
        The dataset's regions; None for labels.
    kind : str
    ignore_label : int, optional

    Returns
    -------
    maps : (B, C, *spatial) float32 tensor, or (B, R, *spatial) for regions
        Each item's map from its own maxima (the paper's per-patch maps); a region's map is
        the class-1 channel of its mask's map (as :func:`rwmaps_cli.regions.compute_mask_maps`).
    """
    if regions is None:
        return compute_maps(target[:, 0], classes, kind=kind, ignore_label=ignore_label)
    n_regions = len(regions)
    codes = target[:, :n_regions].bool().to(torch.int64)  # 1 inside the region, 0 outside
    ignored = ignore_label is not None and target.shape[1] > n_regions
    if ignored:
        codes = torch.where(target[:, n_regions:n_regions + 1].bool(), 2, codes)
    fields = codes.reshape(-1, *codes.shape[2:])  # every (item, region) its own field
    maps = compute_maps(fields, [0, 1], kind=kind, ignore_label=2 if ignored else None)[:, 1]
    return maps.reshape(codes.shape)
