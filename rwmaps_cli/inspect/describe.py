"""What a label file or a map file holds, as a JSON-ready dict.

:func:`describe` tells a map written by ``rwmaps compute`` from a label file
(:func:`rwmaps_cli.mapfile.is_map_file`) and describes either; the values of a map are
checked against its kind by :mod:`rwmaps_cli.checks`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from rwmaps_cli.checks import channel_statistics
from rwmaps_cli.errors import InputError
from rwmaps_cli.formats import format_name, read_geometry, read_labels
from rwmaps_cli.mapfile import is_map_file, read_map
from rwmaps_cli.contract import DEFAULT_MAX_CLASSES, KINDS
from rwmaps_cli.maps import expanded_channels

# A "label file" with more distinct values than --max-classes (compute's threshold too) is
# listed only that far, and flagged: it is likely an image.


def describe(path: str | Path, max_classes: int = DEFAULT_MAX_CLASSES) -> dict:
    """Describe a label file or a map file as a JSON-ready dict.

    Parameters
    ----------
    path : str or Path
        A label file or a map written by ``rwmaps compute`` (any output format); which
        one is told by :func:`rwmaps_cli.mapfile.is_map_file`.  Shown as given.
    max_classes : int
        A label file with more distinct values is flagged as an image, and only its first
        ``max_classes`` values are listed in ``classes``.

    Returns
    -------
    info : dict
        Common keys: ``path`` (``path`` as given), ``type`` (``"map"`` or ``"labels"``),
        ``format``, ``shape`` (list of int; a map's is ``[C, *spatial]``), ``dtype``,
        ``spacing`` (list of float or None), ``orientation`` (axis codes such as
        ``"RAS"``; None without an affine or for 2D data), ``classes`` (one dict per
        class / channel) and ``problems`` (list of str).  A label file adds
        ``distinct_values`` and ``value_range``; a map adds ``kind``, ``stored_shape``,
        ``layout``, ``manifest``, ``input``, ``parameters`` and ``consistent`` (None
        when the kind is unknown).

        A map's ``input`` is the label file its manifest records, as :func:`shown_path`
        writes it: relative to the current directory when it lies under it (as the user
        typed it to ``rwmaps compute`` from there), else as recorded.

    Raises
    ------
    InputError
        The file cannot be read (one line, without the path), or it is a compact map
        whose labels no ``rwmaps.json`` names.
    """
    path = Path(path)
    if is_map_file(path):
        return _describe_map(path)
    return _describe_labels(path, max_classes)


def _describe_labels(path: Path, max_classes: int) -> dict:
    """:func:`describe` of a label file: value counts, class names and problems."""
    volume = read_labels(path)
    array = volume.array
    values, counts = _value_counts(array)
    total = int(array.size)
    names = class_names(path)
    integer = bool(array.dtype.kind in "biu" or np.all(np.mod(values, 1) == 0))
    problems = []
    if not integer:
        problems.append("some values are not integers: not usable as labels")
    elif values.size and values.min() < 0:
        problems.append("negative values: not usable as labels")
    if values.size > max_classes:
        problems.append(f"{values.size} distinct values, more than --max-classes {max_classes} (only the first "
                        f"{max_classes} listed): "
                        "is this an image rather than labels?")
    classes = []
    for value, count in list(zip(values.tolist(), counts.tolist()))[:max_classes]:
        value = int(value) if integer else (float(value) if math.isfinite(value) else str(value))  # JSON has no NaN
        classes.append({"label": value, "name": names.get(value) if integer else None, "voxels": int(count),
                        "fraction": round(count / total, 6)})
    return {
        "path": str(path),
        "type": "labels",
        "format": format_name(path),
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "spacing": _rounded(volume.spacing),
        "orientation": _orientation(label_affine(path)) if array.ndim == 3 else None,
        "distinct_values": int(values.size),
        "value_range": _value_range(values),
        "classes": classes,
        "problems": problems,
    }


def _value_range(values: np.ndarray) -> list | None:
    """The range of the finite values (JSON has no NaN).

    Returns
    -------
    value_range : [min, max] of Python scalars, or None when no value is finite
    """
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    return [_scalar(finite.min()), _scalar(finite.max())] if finite.size else None


def _value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``array`` and their counts.

    A histogram (``np.bincount``) for booleans and non-negative integers of up to 16 bits,
    else ``np.unique``.

    Returns
    -------
    values : (K,) ndarray, ascending
    counts : (K,) int64 ndarray
    """
    if array.dtype == bool:
        array = array.view(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize <= 2 and (array.dtype.kind == "u" or array.min() >= 0):
        counts = np.bincount(array.ravel(), minlength=1)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(array, return_counts=True)


class _ExpandedChannels:
    """The channels of a compact map, expanded one at a time as they are read: inspecting a
    compact map of many classes never holds its C channels at once.

    Parameters
    ----------
    compact : (*spatial) float ndarray
        The compact map as stored.
    labels : (*spatial) integer ndarray
        The labels it was computed from.
    classes : sequence of int, length C
    ignore_label : int or None

    Attributes
    ----------
    shape : tuple of int
        ``(C, *spatial)``, the expanded map's.

    Notes
    -----
    ``self[c]`` is channel ``c`` as a ``(*spatial)`` float32 array.  Reading channels in
    order costs one expansion in all; going back restarts it.
    """

    def __init__(self, compact: np.ndarray, labels: np.ndarray, classes, ignore_label):
        self.shape = (len(classes), *compact.shape)
        self._expand = lambda: expanded_channels(compact, labels, classes, ignore_label=ignore_label)
        self._channels, self._next = None, 0

    def __getitem__(self, c: int) -> np.ndarray:
        if self._channels is None or c < self._next:
            self._channels, self._next = self._expand(), 0
        for _ in range(c - self._next):
            next(self._channels)
        self._next = c + 1
        return next(self._channels)


def _describe_map(path: Path) -> dict:
    """:func:`describe` of a map: its metadata and each channel's statistics
    (:func:`rwmaps_cli.checks.channel_statistics`), one channel in memory at a time."""
    maps, meta = read_map(path, mmap=None, expand=False)  # a memory map where the format allows
    if meta.layout == "compact":
        if meta.input is None or meta.classes is None:
            raise InputError("is a compact map, and no rwmaps.json names its labels: it cannot be expanded")
        labels = read_labels(meta.input, reader=meta.reader).array
        maps = _ExpandedChannels(maps, labels, meta.classes, meta.ignore_label)
    n_channels, spatial = maps.shape[0], tuple(maps.shape[1:])
    parameters = meta.parameters or {}
    kind = meta.kind if meta.kind in KINDS else None
    slice_axis = parameters.get("slice_axis")
    stats, problems = channel_statistics(maps, kind, slice_axis if isinstance(slice_axis, int) else None,
                                         exclusive=meta.regions is None)
    classes = meta.classes
    names = class_names(Path(meta.input)) if meta.input else {}
    channels = []
    for c, stat in enumerate(stats):
        label = classes[c] if classes is not None else None
        channels.append({"channel": c, "label": label, "name": names.get(label), **stat})
    problems = [f"channel {c['channel']}: {c['problem']}" for c in channels if c["problem"]] + problems
    if kind is None:
        problems.append("unknown map kind: values not checked")
    affine = meta.affine if meta.affine is not None else label_affine(meta.input)
    return {
        "path": str(path),
        "type": "map",
        "format": format_name(path),
        "kind": meta.kind,
        "shape": [n_channels, *spatial],
        "stored_shape": list(meta.stored_shape),
        "layout": meta.layout,
        "dtype": meta.dtype,
        "spacing": _rounded(meta.spacing),
        "orientation": _orientation(affine) if len(spatial) == 3 else None,
        "manifest": meta.manifest,
        "input": shown_path(meta.input),
        "parameters": meta.parameters,
        "classes": channels,
        "consistent": None if kind is None else not problems,
        "problems": problems,
    }


def class_names(label_path: Path) -> dict[int, str]:
    """Class names from the nnU-Net ``dataset.json`` of a label file under ``labelsTr``.

    Parameters
    ----------
    label_path : Path
        A label file; its resolved parents are searched for a ``labelsTr`` folder with a
        ``dataset.json`` beside it (nnU-Net v2 ``{"name": value}`` or v1
        ``{"value": "name"}``; region entries, whose value is a list, are skipped).

    Returns
    -------
    names : dict of int to str
        Label value -> name; empty when there is no such file or it cannot be read.
    """
    try:
        for folder in Path(label_path).resolve().parents:
            if folder.name == "labelsTr" and (folder.parent / "dataset.json").is_file():
                labels = json.loads((folder.parent / "dataset.json").read_text())["labels"]
                names = {}
                for key, value in labels.items():
                    if isinstance(value, str):  # nnU-Net v1: {"1": "liver"}
                        key, value = value, key
                    if not isinstance(value, list):
                        names[int(value)] = str(key)
                return names
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return {}


def _orientation(affine: np.ndarray | None) -> str | None:
    """The axis codes of a 3D affine.

    Parameters
    ----------
    affine : (4, 4) ndarray or None

    Returns
    -------
    codes : str or None
        Such as ``"RAS"`` (``nibabel.aff2axcodes``); None without an affine.  Callers pass
        None for a 2D file, whose third axis is not an image axis.
    """
    if affine is None:
        return None
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine)))


def label_affine(path) -> np.ndarray | None:
    """The RAS+ affine of a label file, from its header.

    Parameters
    ----------
    path : str or path-like or None

    Returns
    -------
    affine : (4, 4) float64 ndarray or None
        None when ``path`` is None, the format has none (numpy files) or the file cannot
        be read.
    """
    if path is None:
        return None
    try:
        return read_geometry(path)[1]
    except InputError:
        return None


def shown_path(recorded: str | None) -> str | None:
    """A path recorded in a manifest, as the user would type it here.

    ``rwmaps compute`` records each input as an absolute path; ``rwmaps inspect`` shows it
    relative to the current working directory when it lies under it (what the user typed
    when they ran compute from here, e.g. ``sample_data/abdomen_ct_like.nii.gz``), else
    as recorded (absolute: a ``../..`` path is no easier to read).  Only the text changes:
    the file is still read at the recorded path.

    Parameters
    ----------
    recorded : str or None
        The path as the manifest records it.

    Returns
    -------
    path : str or None
        ``recorded`` relative to ``os.getcwd()`` when it is absolute and under it; else
        ``recorded`` unchanged (None stays None; a relative path is already as typed).
    """
    if not recorded or not os.path.isabs(recorded):
        return recorded
    try:
        here = os.getcwd()
        if os.path.commonpath([here, recorded]) == here:
            return os.path.relpath(recorded, here)
    except (OSError, ValueError):  # no current directory; another drive
        pass
    return recorded


def _rounded(values) -> list[float] | None:
    """Each value to 6 significant digits (a float32 spacing without its noise), or None."""
    return None if values is None else [float(f"{v:.6g}") for v in values]


def _scalar(value):
    """A numpy scalar as a Python one (JSON-ready); anything else unchanged."""
    return value.item() if hasattr(value, "item") else value
