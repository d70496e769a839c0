"""batchgeneratorsv2 transforms that carry a region-wise map through nnU-Net's augmentation.

The map travels as ``regression_target``: spatial transforms interpolate it like the image,
mirroring is exact.  Interpolation blurs a map across class borders, so after augmentation
:class:`MapTargetTransform` makes the map agree with the augmented segmentation again
(for ``rrw``: inside its class clamped to ``[-1, 0]``, the outside value elsewhere; for the
signed kinds ``sdf``, ``boundary`` and ``kervadec``: at most 0 inside its class, at least 0
outside it; 0 on the ignore label), expands a compact map with the augmented labels, or, for
the on-the-fly trainer, computes the map from the augmented patch.  Deep supervision
downsamples only the segmentation, so :class:`DownsampleMapForDSTransform` downsamples the
map at the same scales with the same nearest-exact sampling: each scale's map lines up with
its seg, and no value is made up (a signed map keeps its signs, an ``sdf`` map its range).

**Padding.**  Where a patch reaches beyond the image (nnU-Net's foreground boxes may, and
rotations and scalings bring voxels in from outside the field), the map is padded with 0:
:func:`crop_map` pads with 0, and nnU-Net's ``SpatialTransform`` pads every
``regression_target`` with zeros.  The seg is padded with -1 there, which nnU-Net turns into
background (0) before :class:`MapTargetTransform` runs.  What the map becomes there depends on
the kind, and is decided as follows:

- ``rrw`` and ``ac``: the rectification gives the background's channel 0 (its inside value,
  the padded 0 clamped) and every other channel the outside value 1, as the padded
  background seg says (RW pushes towards background there, as CE does).
- ``sdf``, ``boundary``, ``kervadec``: 0 in every channel, kept as it is.  A signed distance
  beyond the image is unknown (the image border is not a boundary of the maps), so there is no
  right value to invent: the "outside" value 1 of ``rrw`` would say "far outside every class",
  and a nearest (border) value would continue the classes at the image's edge into a region
  the seg calls background, contradicting it.  0 in every channel is what the kernel gives
  voxels without information (the ignore label): ``sum_c p_c * 0`` adds nothing to the loss
  and no gradient, under a softmax or a sigmoid, so the RW term ignores padding (a base loss,
  CE or Dice, still sees nnU-Net's background there); at the image's edge, linear
  interpolation blends the map towards 0, the value of a boundary, never past it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from torch.nn.functional import interpolate

from ..contract import DEFAULT_ENGINE, DEFAULT_KIND
from ..maps import compute_maps
from ..regions import compute_mask_maps

#: The kinds with signed distances, negative inside a class and positive outside it: no
#: outside value, padded with 0 (module docstring, "Padding").
SIGNED_KINDS = ("sdf", "boundary", "kervadec")


class MapTargetTransform(BasicTransform):
    """Turn ``regression_target`` into the map the loss gets, consistent with ``segmentation``.

    Parameters
    ----------
    classes : sequence of int
        Label values, one map channel each (label-based datasets).
    regions : sequence of sequence of int, optional
        For region-based datasets: the segmentation is then already one boolean channel
        per region (plus a last ignore channel when ``ignore_label`` is set).
    mode : {"full", "compact", "onthefly"}
        ``full``: the target is the full map, rectified; ``compact``: the target is one
        channel, expanded with the labels; ``onthefly``: no target, the map is computed
        from the segmentation patch with ``compute_maps`` (normalised per patch, as the
        paper's training code did).
    kind : {"rrw", "boundary", "kervadec", "ac", "sdf"}
        The map kind.  ``rrw`` and ``ac`` are rectified to their values (inside the class
        clamped to ``[-1, 0]`` for ``rrw``, to 0 for ``ac``; ``outside`` elsewhere).  The
        signed kinds ``sdf``, ``boundary`` and ``kervadec`` get their signs made to agree
        with the augmented seg: inside the class clamped to at most 0, outside to at least 0
        (an interpolated value of the wrong sign becomes 0, a boundary); values are never
        set to ``outside``, and padding stays 0 (module docstring, "Padding").  Without
        augmentation that changes nothing: a stored map has those signs already.
    ignore_label : int, optional
    outside : float
        The value outside a class (1 for ``rrw``).
    engine : {"edt", "scipy"}
        On the fly only: rwmaps' multi-label EDT, or one scipy EDT per class (the paper's code).
    """

    def __init__(self, classes: Sequence[int], regions: Sequence[Sequence[int]] | None = None, mode: str = "full",
                 kind: str = DEFAULT_KIND, ignore_label: int | None = None, outside: float = 1.0, engine: str = DEFAULT_ENGINE):
        super().__init__()
        if mode not in ("full", "compact", "onthefly"):
            raise ValueError(f"unknown mode {mode!r}")
        self.classes = [int(c) for c in classes]
        self.regions = None if regions is None else [list(r) for r in regions]
        self.mode = mode
        self.kind = kind
        self.ignore_label = ignore_label
        self.outside = float(outside)
        self.engine = engine

    def apply(self, data_dict, **params):
        seg = data_dict["segmentation"]
        if self.regions is not None:
            n = len(self.regions)
            masks = seg[:n].bool()
            ignored = seg[n].bool() if self.ignore_label is not None and seg.shape[0] > n else None
        else:
            labels = seg[0]
            masks = torch.stack([labels == c for c in self.classes])
            ignored = labels == self.ignore_label if self.ignore_label is not None else None
        if self.mode == "onthefly":
            data_dict["regression_target"] = self._compute(seg, masks, ignored)
            return data_dict
        target = data_dict["regression_target"].float()
        if self.mode == "compact":
            target = target[:1].expand(masks.shape[0], *target.shape[1:])
        if self.kind in ("rrw", "ac"):
            low = -1.0 if self.kind == "rrw" else 0.0
            target = torch.where(masks, target.clamp(low, 0.0), torch.tensor(self.outside, dtype=target.dtype))
        elif self.kind in SIGNED_KINDS:
            target = torch.where(masks, target.clamp(max=0.0), target.clamp(min=0.0))
        if ignored is not None:
            target = target.masked_fill(ignored[None], 0.0)
        data_dict["regression_target"] = target.contiguous()
        return data_dict

    def _compute(self, seg, masks, ignored) -> torch.Tensor:
        if self.regions is not None:
            maps = compute_mask_maps(masks.numpy(), kind=self.kind, engine=self.engine,
                                     ignored=None if ignored is None else ignored.numpy())
        else:
            maps = compute_maps(seg[0].numpy(), self.classes, kind=self.kind, ignore_label=self.ignore_label,
                                engine=self.engine)
        return torch.from_numpy(maps)


class DownsampleMapForDSTransform(BasicTransform):
    """The map at every deep-supervision scale, sampled as nnU-Net samples the seg.

    ``DownsampleSegForDSTransform`` uses ``interpolate(mode="nearest-exact")`` to the shape
    ``round(size * scale)``; this does the same to ``regression_target``, so the map at each
    scale picks the same voxels as the seg at that scale.
    """

    def __init__(self, ds_scales: Sequence):
        super().__init__()
        self.ds_scales = ds_scales

    def apply(self, data_dict, **params):
        target = data_dict.get("regression_target")
        if target is None:
            return data_dict
        results = []
        for s in self.ds_scales:
            if not isinstance(s, (tuple, list)):
                s = [s] * (target.ndim - 1)
            if all(i == 1 for i in s):
                results.append(target)
            else:
                new_shape = [round(i * j) for i, j in zip(target.shape[1:], s)]
                results.append(interpolate(target[None].float(), new_shape, mode="nearest-exact")[0])
        data_dict["regression_target"] = results
        return data_dict


def crop_map(rwmap: np.ndarray, bbox, compact: bool) -> np.ndarray:
    """Crop (and zero-pad) a stored map with nnU-Net's patch box (spatial axes only)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    array = rwmap[None] if compact else rwmap
    return np.array(crop_and_pad_nd(array, bbox, 0), dtype=np.float32)  # a copy: memory maps are read-only
