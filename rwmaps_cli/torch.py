"""Region-wise loss in PyTorch, from the compact (one channel) map or from maps it computes.

An ``rrw`` map has, at every voxel, its own class's value ``v = -EDT/max`` in the channel
of that voxel's class and the outside value in every other channel (``docs/design.md``, "The
compact layout").  So the loss ``mean(softmax(logits) * full_map)`` needs only ``v``::

    sum_c p_c * full_c = sum_c p_c * outside_c + p_own * (v - outside_own)

where ``p_own`` is the probability of the voxel's own class (one gather).  That is what
:func:`region_wise_loss` computes; it never builds the ``(B, C, *spatial)`` map.
:func:`expand_map` builds that map when a user wants it (or for a test to compare).

With ``compact=None``, :func:`region_wise_loss` computes the maps of the batch's labels
itself, on the logits' device, with the PyTorch engine (:func:`compute_maps`): the paper's
per-patch maps, exact after any augmentation, in the training step::

    loss = region_wise_loss(logits, labels, None, classes)               # rrw, computed here
    loss = region_wise_loss(logits, labels, None, classes, kind="sdf")   # the normalised Boundary loss

Only ``rrw`` has a compact map, and ``ac`` needs none.  The other kinds (``boundary``,
``kervadec``, ``sdf``) exist only as full maps: computed here with ``compact=None``, or, given
one, a loss of one line::

    loss = (torch.softmax(logits, dim=1) * full_map).mean()

With an ``sdf`` map that is the normalised Boundary loss.  :func:`expand_map`, and
:func:`region_wise_loss` given a map, refuse those kinds with a ``ValueError`` that says so.

This module needs the optional extra ``rwmaps_cli[torch]``.  ``import rwmaps_cli`` never
imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .contract import (
    DEFAULT_KIND,
    KINDS,
    RENORMALIZE,
    Codes,
    check_expansion,
    check_kind,
    known_labels,
)
from .torch_engine import compute_maps, integer_labels as _integer_labels, label_codes  # the PyTorch engine

__all__ = ["COMPACT_KINDS", "RENORMALIZE", "check_compact_kind", "class_index", "compute_maps", "expand_map",
           "region_wise_loss", "renormalize_patch"]

Outside = float | Sequence[float] | torch.Tensor

#: The kinds with a compact form here: ``rrw`` (its compact map) and ``ac`` (from the labels alone).
#: The others are full maps, which :func:`region_wise_loss` computes itself with ``compact=None``.
COMPACT_KINDS = ("rrw", "ac")


def check_compact_kind(kind: str) -> None:
    """ValueError, in one line naming the way, unless ``kind`` is one of :data:`COMPACT_KINDS`.

    ``boundary``, ``kervadec`` and ``sdf`` maps have no compact form (each class's outside
    distance is its own information): their loss is ``mean(softmax(logits) * full_map)``
    with the full map itself, which needs no expansion.

    Parameters
    ----------
    kind : str

    Raises
    ------
    ValueError
        For a kind without a compact form (naming the full-map loss), or an unknown kind.
    """
    if kind in COMPACT_KINDS:
        return
    if kind in KINDS:
        raise ValueError(f"kind {kind!r} has no compact form (nothing to expand): use its full map as it is "
                         f"(rwmaps_cli.load_map, or rwmaps_cli.compute_maps(labels, classes, kind={kind!r})); "
                         "the loss is (torch.softmax(logits, dim=1) * full_map).mean()")
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(COMPACT_KINDS)} "
                     f"(the full-map kinds {', '.join(k for k in KINDS if k not in COMPACT_KINDS)} need no expansion)")


def class_index(
    labels: torch.Tensor, classes: Sequence[int], ignore_label: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel index of every voxel's class.

    Parameters
    ----------
    labels : (*shape) integer tensor (integer-valued floats are accepted, as MONAI gives)
    classes : sequence of C distinct ints
    ignore_label : int, optional

    Returns
    -------
    index : (*shape) int64 tensor
        ``c`` where ``labels == classes[c]``; 0 on the ignore label (masked by ``valid``).
    valid : (*shape) bool tensor
        False on the ignore label.

    Raises
    ------
    ValueError
        If a label value is not an integer, or is neither in ``classes`` nor the ignore label.
    """
    # The channel codes of the contract (rwmaps_cli.contract.Codes): 0 unknown, c + 1 for
    # classes[c], C + 1 for the ignore label; the same tables as the numpy kernel's.
    known = known_labels(classes, ignore_label)  # the one rule (contract.check_classes)
    codes = label_codes(_integer_labels(labels), known, len(classes))
    valid = codes != Codes(len(classes)).ignore
    return torch.where(valid, Codes.class_index(codes), 0), valid


def renormalize_patch(compact: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Divide ``v`` by its largest ``|v|`` within each batch item and class.

    With whole-volume distances in ``v``, this is exactly the seed's per-patch map
    ``-EDT / max_patch(EDT)`` (the distances are the volume's, the maximum the patch's).

    Parameters
    ----------
    compact : (B, *spatial) float tensor
    index, valid : (B, *spatial) tensors from :func:`class_index`
    n_classes : int

    Returns
    -------
    (B, *spatial) tensor of ``compact``'s dtype; 0 where ``valid`` is False, and where a
    class has no non-zero value in the patch (nothing to normalise by).
    """
    batch = compact.shape[0]
    item = torch.arange(batch, device=compact.device).view(batch, *([1] * (compact.ndim - 1)))
    # One bucket per (item, class); the ignore label goes to a spare bucket that is dropped.
    bucket = torch.where(valid, item * n_classes + index, batch * n_classes)
    magnitude = compact.detach().abs()
    largest = torch.zeros(batch * n_classes + 1, dtype=compact.dtype, device=compact.device)
    largest = largest.scatter_reduce(0, bucket.reshape(-1), magnitude.reshape(-1), reduce="amax", include_self=True)
    scale = largest[bucket]
    return torch.where(scale > 0, compact / torch.where(scale > 0, scale, 1), 0)


def expand_map(
    compact: torch.Tensor | None,
    labels: torch.Tensor,
    classes: Sequence[int],
    outside: Outside = 1.0,
    kind: str = DEFAULT_KIND,
    ignore_label: int | None = None,
    renormalize: str | None = None,
) -> torch.Tensor:
    """The full ``(B, C, *spatial)`` map from the compact channel (or the ``ac`` map).

    Channel ``c`` is ``v`` where ``labels == classes[c]``, ``outside[c]`` elsewhere, and
    0 in every channel on the ignore label.

    Parameters
    ----------
    compact : (B, *spatial) float tensor, or None with ``kind="ac"``
        The own-class value ``v`` of every voxel.  For one sample, pass ``x[None]``.
    labels : (B, *spatial) integer tensor (a (B, 1, *spatial) MONAI label is accepted)
    classes : sequence of C ints
    outside : float, or C floats (sequence or (C,) tensor)
        The value outside each class: 1 for the paper's map, the class-imbalance ratios
        for the authors' variant.
    kind : {"rrw", "ac"}
        ``ac`` (Active-Contour RW map, ``1 - one-hot``) needs no compact map: ``v = 0``.
        ``boundary``, ``kervadec`` and ``sdf`` have no compact form and are refused
        (:func:`check_compact_kind`): their full map is already what this returns.
    ignore_label : int, optional
    renormalize : {None, "patch"}
        ``"patch"``: divide ``v`` per item and class by its largest ``|v|`` (the seed's
        per-patch normalisation; see :func:`renormalize_patch`).

    Returns
    -------
    (B, C, *spatial) tensor, dtype of ``compact`` (float32 for ``ac``), on its device.

    Raises
    ------
    ValueError
        Unknown label values, mismatched shapes, a bad ``outside`` or ``kind`` (a kind
        without a compact form: one line naming its full map).
    """
    compact, labels = _compact_for(compact, labels, kind, renormalize)
    index, valid = class_index(labels.to(compact.device), classes, ignore_label)  # the map's device decides
    value = _own_value(compact, index, valid, len(classes), renormalize)
    weights = _outside_weights(outside, len(classes), compact)
    shape = (compact.shape[0], len(classes), *compact.shape[1:])
    # One write of the C channels (the outside values), then one scatter of v into each
    # voxel's own channel: a comparison per channel would cost three passes over C channels.
    full = torch.empty(shape, dtype=compact.dtype, device=compact.device)
    full.copy_(weights.view(1, -1, *([1] * (compact.ndim - 1))) if weights.ndim else weights)
    full.scatter_(1, index.unsqueeze(1), value.unsqueeze(1))
    if not bool(valid.all()):
        full.masked_fill_(~valid.unsqueeze(1), 0)
    return full


def region_wise_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    compact: torch.Tensor | None,
    classes: Sequence[int],
    outside: Outside = 1.0,
    renormalize: str | None = None,
    ignore_label: int | None = None,
    kind: str = DEFAULT_KIND,
    spacing: Sequence[float] | None = None,
    slice_axis: int | None = None,
) -> torch.Tensor:
    """Region-wise loss ``mean(softmax(logits, dim=1) * full_map)`` from the compact map, or
    from maps computed here, on the logits' device, from the labels of the batch.

    The mean runs over the batch, the C channels and the voxels (ignored voxels count in
    the denominator with weight 0, as in the full map), so the value and its gradient
    equal those of the full-map loss.  Memory: the softmax and a few ``(B, *spatial)``
    tensors; never ``(B, C, *spatial)`` map channels, except the full maps of ``boundary``,
    ``kervadec`` and ``sdf`` computed here.

    Parameters
    ----------
    logits : (B, C, *spatial) float tensor
        Network output before the softmax; 1D to 3D spatial.
    labels : (B, *spatial) integer tensor (or (B, 1, *spatial), as MONAI batches them)
        The ground truth of the patch, transformed exactly as ``compact``.
    compact : (B, *spatial) float tensor (or (B, 1, *spatial)), or None
        Each voxel's own-class value ``v`` (``compute_maps(..., layout="compact")``).
        Moved to the logits' device and cast to the softmax's dtype; no gradient flows into it.
        None: the maps of ``labels`` are computed here, exactly, on the logits' device
        (:func:`compute_maps`; each item normalised by its own maxima, the paper's per-patch
        maps after any augmentation), for every kind: ``rrw`` through its compact channel,
        ``boundary``, ``kervadec`` and ``sdf`` as full maps.
    classes : sequence of C ints
        The label value of each logit channel.
    outside : float or C floats
        Value outside each class (1 for the paper's map).
    renormalize : {None, "patch"}
        ``"patch"``: per-patch normalisation, as the seed computed maps on each patch.
    ignore_label : int, optional
        Voxels with this label carry no weight.
    kind : {"rrw", "ac", "boundary", "kervadec", "sdf"}
        ``ac``: the Active-Contour RW loss, from the labels alone.  ``boundary``,
        ``kervadec`` and ``sdf`` only with ``compact=None``: they have no compact form
        (:func:`check_compact_kind`); with a full map of theirs the loss is
        ``(torch.softmax(logits, dim=1) * full_map).mean()`` (for ``sdf``, the normalised
        Boundary loss).
    spacing : sequence of float, one per spatial axis, optional
        Maps computed here only: voxel sizes; None measures in voxels, as the paper.
    slice_axis : int, optional
        Maps computed here only: a spatial axis (without the batch axis) whose slices are each
        their own field (what a 2D network sees of a 3D batch).

    Returns
    -------
    0-dim tensor on the logits' device, of ``logits.dtype`` (under autocast, of the dtype
    autocast gives the softmax).

    Raises
    ------
    ValueError
        Unknown label values, mismatched shapes, a bad ``outside``, ``kind`` or ``renormalize``.
    """
    _check_map_options(compact, kind, outside, renormalize, spacing, slice_axis)
    if logits.ndim < 2 or logits.shape[1] != len(classes):
        raise ValueError(f"logits have shape {tuple(logits.shape)}; expected (B, {len(classes)}, *spatial)")
    # Everything follows the softmax: the logits' device and dtype (under autocast, the dtype
    # autocast gives the softmax: float32 on CUDA, the logits' bfloat16 on CPU).  Nothing is
    # made on the default device or in a fixed dtype.
    probs = torch.softmax(logits, dim=1)
    labels = _squeeze_channel(labels, logits.ndim).to(logits.device)
    if compact is None and kind != "ac":
        maps = _maps_here(labels, logits, classes, kind, spacing, slice_axis, ignore_label)
        if kind != "rrw":  # a full map: the loss is its mean product with the softmax
            return (probs * maps.to(probs.dtype)).mean()
        compact = maps
    if compact is not None:
        compact = _squeeze_channel(compact, logits.ndim).to(device=logits.device, dtype=probs.dtype)
    compact, labels = _compact_for(compact, labels, kind, renormalize, dtype=probs.dtype, device=logits.device)
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; logits {tuple(logits.shape)}")
    index, valid = class_index(labels, classes, ignore_label)
    value = _own_value(compact.detach(), index, valid, len(classes), renormalize)
    own = probs.gather(1, index.unsqueeze(1)).squeeze(1)
    weights = _outside_weights(outside, len(classes), probs)
    if weights.ndim == 0:  # sum_c p_c * w = w: the softmax sums to 1
        outside_sum, outside_own = weights, weights
    else:
        outside_sum = torch.einsum("bc...,c->b...", probs, weights)
        outside_own = weights[index]
    per_voxel = torch.where(valid, outside_sum + own * (value - outside_own), 0)
    return per_voxel.sum() / probs.numel()


def _check_map_options(compact, kind, outside, renormalize, spacing, slice_axis) -> None:
    """ValueError for an option the loss would not use with this map."""
    if compact is not None:
        check_compact_kind(kind)  # before the shapes: a full map of another kind would fail them first
    check_kind(kind)
    computed_here = compact is None and kind != "ac"
    if not computed_here and (spacing is not None or slice_axis is not None):
        raise ValueError("spacing and slice_axis are for maps computed here (compact=None, a kind with "
                         "distances); " + ("an ac map has none" if kind == "ac" else "a compact map was made with its own"))
    if computed_here and kind not in COMPACT_KINDS:
        outside_given = not (isinstance(outside, (int, float)) and outside == 1.0)
        if outside_given or renormalize is not None:
            raise ValueError(f"outside and renormalize shape rrw maps; a {kind} map computed here is used as it is")


def _maps_here(labels, logits, classes, kind, spacing, slice_axis, ignore_label) -> torch.Tensor:
    """The maps of ``labels`` (B, *spatial) on the logits' device: the compact channel for
    ``rrw``, the full map otherwise (float32; no gradient)."""
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; logits {tuple(logits.shape)}")
    layout = "compact" if kind == "rrw" else "full"
    with torch.no_grad():
        return compute_maps(labels, classes, kind=kind, spacing=spacing, slice_axis=slice_axis,
                            ignore_label=ignore_label, layout=layout)


def _own_value(compact, index, valid, n_classes, renormalize) -> torch.Tensor:
    """``v`` on valid voxels (renormalised if asked), 0 on the ignore label."""
    if renormalize == "patch":
        return renormalize_patch(compact, index, valid, n_classes)
    return torch.where(valid, compact, 0)


def _compact_for(compact, labels, kind, renormalize, dtype=torch.float32, device=None):
    """Check shapes; for ``ac`` return a zero compact map (inside value 0)."""
    check_compact_kind(kind)
    check_expansion(kind, compact is not None, renormalize)
    if kind == "ac":
        return torch.zeros(labels.shape, dtype=dtype, device=device or labels.device), labels
    if not torch.is_floating_point(compact):
        compact = compact.to(dtype)
    if labels.ndim == compact.ndim + 1 and labels.shape[1] == 1:  # a MONAI (B, 1, *spatial) label
        labels = labels[:, 0]
    if compact.shape != labels.shape:
        raise ValueError(f"compact map {tuple(compact.shape)} and labels {tuple(labels.shape)} differ in shape")
    return compact, labels


def _squeeze_channel(tensor: torch.Tensor, logits_ndim: int) -> torch.Tensor:
    """(B, 1, *spatial) -> (B, *spatial): MONAI keeps a channel axis on labels."""
    if tensor.ndim == logits_ndim and tensor.shape[1] == 1:
        return tensor[:, 0]
    return tensor


def _outside_weights(outside: Outside, n_classes: int, like: torch.Tensor) -> torch.Tensor:
    """Outside values as a 0-dim tensor (scalar) or a (C,) tensor, dtype and device of ``like``."""
    weights = torch.as_tensor(outside, dtype=like.dtype, device=like.device)
    if weights.ndim == 0:
        return weights
    if weights.shape != (n_classes,):
        raise ValueError(f"outside has shape {tuple(weights.shape)}; expected a scalar or ({n_classes},)")
    return weights
