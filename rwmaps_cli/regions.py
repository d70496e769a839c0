"""Region-based maps and the label specification of an nnU-Net ``dataset.json``.

nnU-Net's region-based training (BraTS-style) declares labels as lists of values::

    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
    "regions_class_order": [1, 2, 3]

The network then has one sigmoid output per region (no background output), and regions
overlap.  The map of region ``r`` is the binary map of the mask ``isin(labels, r)``: one
binary distance transform per region, no background channel.

The label-based case (one softmax output per label value, background included) is the
usual class list; :func:`read_label_spec` reads both, for raw and preprocessed datasets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .contract import DEFAULT_DEVICE, DEFAULT_ENGINE, DEFAULT_KIND
from .maps import compute_maps


class LabelSpecError(InputError, ValueError):
    """A ``dataset.json`` whose labels cannot be used (one line, names the cause)."""


@dataclass(frozen=True)
class LabelSpec:
    """What the network's outputs are, as nnU-Net's ``LabelManager`` derives them.

    Attributes
    ----------
    classes : list of int
        Every label value except the ignore label, sorted (nnU-Net's ``all_labels``).  For
        a label-based dataset these are the softmax output channels, background first.
    ignore_label : int or None
        The value of the ``"ignore"`` entry, if any.
    regions : list of list of int, or None
        For a region-based dataset: one list of label values per sigmoid output, in the
        order of ``dataset.json`` (background and ignore left out).  None otherwise.
    regions_class_order : list of int, or None
        ``dataset.json``'s ``regions_class_order`` (how nnU-Net turns regions back into labels).
    names : list of str
        The output channels' names: label names for classes, region names for regions.
    """

    classes: list[int]
    ignore_label: int | None
    regions: list[list[int]] | None
    regions_class_order: list[int] | None
    names: list[str]

    @property
    def has_regions(self) -> bool:
        return self.regions is not None

    @property
    def n_outputs(self) -> int:
        """Number of network outputs (map channels)."""
        return len(self.regions) if self.regions is not None else len(self.classes)


def read_label_spec(dataset_json: str | Path | dict) -> LabelSpec:
    """Read the classes, ignore label and regions of an nnU-Net ``dataset.json``.

    Works for raw (``nnUNet_raw/DatasetXXX/dataset.json``) and preprocessed
    (``nnUNet_preprocessed/DatasetXXX/dataset.json``) datasets alike.  Follows nnU-Net
    v2's ``LabelManager``: a dataset is region-based when any label is a list of more than
    one value; the ignore label is the entry named ``"ignore"``.  nnU-Net v1 label maps
    (``{"0": "background", "1": "liver"}``) are read as label-based.

    Parameters
    ----------
    dataset_json : path or the parsed dict

    Returns
    -------
    LabelSpec

    Raises
    ------
    LabelSpecError
        When the file cannot be read, has no ``labels``, a value is not an integer, two
        labels share a value, or regions come without a matching ``regions_class_order``.
    """
    data, where = _read_dataset_json(dataset_json)
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise LabelSpecError(f"{where}: no 'labels' mapping")
    entries, ignore = _label_entries(labels, where)
    classes = sorted({v for _, values in entries for v in values})
    if ignore is not None and ignore in classes:
        raise LabelSpecError(f"{where}: the ignore label {ignore} is also a class")
    if not any(len(set(values)) > 1 for _, values in entries):
        singles = [values[0] for _, values in entries]
        if len(set(singles)) != len(singles):
            raise LabelSpecError(f"{where}: two labels share a value: {labels}")
        by_value = {values[0]: name for name, values in entries}
        return LabelSpec(classes, ignore, None, None, [by_value[c] for c in classes])
    regions, names = [], []
    for name, values in entries:
        if set(values) == {0}:  # background is no region (nnU-Net's LabelManager)
            continue
        regions.append(sorted(set(values)))
        names.append(name)
    order = data.get("regions_class_order")
    if not isinstance(order, (list, tuple)) or len(order) != len(regions) or not all(_is_int(v) for v in order):
        raise LabelSpecError(f"{where}: region-based labels need 'regions_class_order' with one value per region "
                             f"({len(regions)}), got {order!r}")
    return LabelSpec(classes, ignore, regions, [int(v) for v in order], names)


def _read_dataset_json(dataset_json: str | Path | dict) -> tuple[object, str]:
    """The parsed ``dataset.json`` and how to name it in a message."""
    if isinstance(dataset_json, dict):
        return dataset_json, "dataset.json"
    try:
        return json.loads(Path(dataset_json).read_text()), str(dataset_json)
    except (OSError, ValueError) as error:
        raise LabelSpecError(f"{dataset_json}: cannot read it ({error})") from None


def _label_entries(labels: dict, where: str) -> tuple[list[tuple[str, list[int]]], int | None]:
    """``labels``' entries as ``(name, values)`` (nnU-Net v1's ``{"1": "liver"}`` read
    too), and the ignore label (the entry named ``"ignore"``), checked."""
    entries: list[tuple[str, list[int]]] = []
    ignore = None
    for key, value in labels.items():
        if isinstance(value, str) and _is_int(key):  # nnU-Net v1: {"1": "liver"}
            key, value = value, int(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(_is_int(v) for v in values):
            raise LabelSpecError(f"{where}: label {key!r} is {value!r}; expected an integer or a list of integers")
        values = [int(v) for v in values]
        if any(v < 0 for v in values):
            raise LabelSpecError(f"{where}: label {key!r} has a negative value {value!r}")
        if key == "ignore":
            if len(values) != 1:
                raise LabelSpecError(f"{where}: the ignore label must be one integer, got {value!r}")
            ignore = values[0]
        else:
            entries.append((key, values))
    return entries, ignore


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return int(value) == float(value)
    except (TypeError, ValueError):
        return False


def region_masks(labels: np.ndarray, regions: Sequence[Sequence[int] | int]) -> np.ndarray:
    """Boolean masks ``(R, *labels.shape)``: mask ``r`` is ``isin(labels, regions[r])``."""
    labels = np.asarray(labels)
    out = np.empty((len(regions), *labels.shape), dtype=bool)
    for r, region in enumerate(regions):
        values = [int(region)] if np.isscalar(region) else [int(v) for v in region]
        if len(values) == 1:
            np.equal(labels, values[0], out=out[r])
        else:
            out[r] = np.isin(labels, values)
    return out


def compute_region_maps(
    labels: np.ndarray,
    regions: Sequence[Sequence[int] | int],
    kind: str = DEFAULT_KIND,
    spacing: Sequence[float] | None = None,
    slice_axis: int | None = None,
    ignore_label: int | None = None,
    engine: str = DEFAULT_ENGINE,
    dtype: np.dtype | type = np.float32,
    threads: int = 1,
    device: str = DEFAULT_DEVICE,
) -> np.ndarray:
    """One binary region-wise map per region: ``(R, *labels.shape)``, no background channel.

    Region ``r``'s mask is ``M = isin(labels, regions[r])``; its map is the class-1 channel
    of :func:`rwmaps_cli.maps.compute_maps` on the binary image ``M`` (so every kind keeps
    its definition from the kinds table of ``README.md``: for ``rrw``, ``-EDT(M)/max`` inside and 1 outside).
    Regions overlap, so each one is its own binary transform.

    Parameters
    ----------
    labels : (*spatial) integer array
        Label values, not yet converted to regions.
    regions : sequence of (sequence of int or int), length R
        The label values of each region, e.g. ``[[1, 2, 3], [2, 3], [3]]``.
    kind, spacing, slice_axis, engine, dtype, threads, device
        As for :func:`rwmaps_cli.maps.compute_maps`.
    ignore_label : int, optional
        Voxels with this value get 0 in every channel, and count as outside every region
        for the distances (as the ignore label does in ``compute_maps``).

    Returns
    -------
    maps : (R, *labels.shape) array of ``dtype``

    Raises
    ------
    ValueError
        When ``labels`` holds values that are negative or not integers, or an argument is
        invalid.
    """
    labels = np.asarray(labels)
    if labels.size and np.issubdtype(labels.dtype, np.number) and labels.min() < 0:
        raise ValueError("negative label values in a region-based label array")
    if not len(regions):
        raise ValueError("no regions given")
    ignored = None if ignore_label is None else labels == int(ignore_label)
    return compute_mask_maps(region_masks(labels, regions), kind=kind, spacing=spacing, slice_axis=slice_axis,
                             ignored=ignored, engine=engine, dtype=dtype, threads=threads,
                             device=device)


def compute_mask_maps(
    masks: np.ndarray,
    kind: str = DEFAULT_KIND,
    spacing: Sequence[float] | None = None,
    slice_axis: int | None = None,
    ignored: np.ndarray | None = None,
    engine: str = DEFAULT_ENGINE,
    dtype: np.dtype | type = np.float32,
    threads: int = 1,
    device: str = DEFAULT_DEVICE,
) -> np.ndarray:
    """One binary map per boolean mask: ``(R, *spatial)`` from masks ``(R, *spatial)``.

    Channel ``r`` is the class-1 channel of :func:`rwmaps_cli.maps.compute_maps` on the
    binary image ``masks[r]``.  ``ignored`` (boolean, ``(*spatial)``) voxels are outside
    every mask for the distances and 0 in every channel.  This is what a region-based
    data loader needs on the fly, where the segmentation already is one mask per region.
    """
    masks = np.asarray(masks)
    out = np.empty(masks.shape, dtype=np.dtype(dtype))
    for r, mask in enumerate(masks):
        binary = mask.astype(np.uint8)
        if ignored is not None:
            binary[ignored] = 2
        maps = compute_maps(binary, [0, 1], kind=kind, spacing=spacing, slice_axis=slice_axis, engine=engine,
                            dtype=dtype, ignore_label=None if ignored is None else 2, threads=threads,
                            device=device)
        out[r] = maps[1]
    return out
