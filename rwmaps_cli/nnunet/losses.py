"""Region-wise losses for nnU-Net, as in the paper's training code.

- RW alone: ``mean(softmax(logits) * map)`` (sigmoid for region-based datasets, whose
  outputs are one independent probability per region), whatever the map's kind: with an
  ``sdf`` map (``rwmaps compute --kind sdf``) it is the normalised Boundary loss, with a
  ``boundary`` or ``kervadec`` map the Boundary loss in voxels (or mm);
- "equal": ``base + RW`` with ``base`` nnU-Net's CE (BCE for regions) or soft Dice;
- "gradual": ``alpha * base + (1 - alpha) * RW`` with ``alpha = max((100 - epoch) / 100, 0.01)``.

Deep supervision: each output scale gets the map at that scale and nnU-Net's weights
(``1 / 2**i``, the lowest scale 0, normalised to sum 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def full_map_rw_loss(logits: torch.Tensor, rwmap: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """``mean(p * rwmap)`` with ``p`` the softmax over channels (or the sigmoid of each).

    The full map of any kind: ``rrw`` (the RW loss), ``sdf`` (the normalised Boundary loss),
    ``boundary``, ``kervadec`` or ``ac``.

    Parameters
    ----------
    logits : (B, C, *spatial) float tensor
    rwmap : (B, C, *spatial) float tensor
        Moved to the logits' device and cast to the probabilities' dtype.
    sigmoid : bool
        True for region-based outputs (one independent probability per channel).

    Returns
    -------
    0-dim tensor
    """
    probs = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, 1)
    # the map follows the probabilities (the logits' device; float32 under bfloat16 autocast)
    return (probs * rwmap.to(device=probs.device, dtype=probs.dtype)).mean()


def gradual_alpha(epoch: int) -> float:
    """The paper's schedule: ``max((100 - epoch) / 100, 0.01)``."""
    return max((100 - epoch) / 100, 0.01)


class RWCompoundLoss(nn.Module):
    """RW loss, alone or with a base loss, for one output scale.

    Parameters
    ----------
    base : nn.Module, optional
        nnU-Net's loss called as ``base(logits, target)`` (CE or Dice); None for RW alone.
    schedule : {"equal", "gradual"}
    sigmoid : bool
        True for region-based datasets.
    """

    def __init__(self, base: nn.Module | None = None, schedule: str = "equal", sigmoid: bool = False):
        super().__init__()
        if schedule not in ("equal", "gradual"):
            raise ValueError(f"unknown schedule {schedule!r}")
        self.base = base
        self.schedule = schedule
        self.sigmoid = sigmoid
        self.epoch = 0

    def forward(self, logits, target, rwmap):
        rw = full_map_rw_loss(logits, rwmap, self.sigmoid)
        if self.base is None:
            return rw
        base = self.base(logits, target)
        if self.schedule == "equal":
            return base + rw
        alpha = gradual_alpha(self.epoch)
        return alpha * base + (1 - alpha) * rw


class RWDeepSupervisionLoss(nn.Module):
    """Applies a per-scale loss to every output with nnU-Net's weights.

    nnU-Net calls ``loss(output, target)``; the maps of the current batch are handed over
    before with :meth:`set_maps` (the trainer does it in ``train_step``).  When
    ``record`` is a list, each call appends the full-resolution ``(target, map)`` it used
    (for tests that check alignment).
    """

    def __init__(self, loss: RWCompoundLoss, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.maps = None
        self.record: list | None = None

    @property
    def epoch(self) -> int:
        return self.loss.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.loss.epoch = value

    def set_maps(self, maps, device) -> None:
        if isinstance(maps, (list, tuple)):
            self.maps = [m.to(device, non_blocking=True) for m in maps]
        else:
            self.maps = [maps.to(device, non_blocking=True)]

    def forward(self, output, target):
        if self.maps is None:
            raise RuntimeError("no region-wise maps for this batch: the data loader gave none")
        outputs = output if isinstance(output, (list, tuple)) else [output]
        targets = target if isinstance(target, (list, tuple)) else [target]
        maps = self.maps
        self.maps = None
        if len(maps) < len(outputs):
            raise RuntimeError(f"{len(outputs)} network outputs but maps at {len(maps)} scales")
        if self.record is not None:
            self.record.append((targets[0].detach().cpu(), maps[0].detach().cpu()))
        weights = self.weights if self.weights is not None and len(outputs) > 1 else (1.0,) * len(outputs)
        total = 0
        for w, o, t, m in zip(weights, outputs, targets, maps):
            if w != 0:
                total = total + w * self.loss(o, t, m)
        return total
