"""What a label file or a map file holds, as a JSON-ready dict.

:func:`describe` tells a map written by ``rwmaps compute`` from a label file
(:func:`rwmaps_cli.mapfile.is_map_file`) and describes either; the values of a map are
checked against its kind by :mod:`rwmaps_cli.checks`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from rwmaps_cli.checks import channel_statistics
from rwmaps_cli.errors import InputError
from rwmaps_cli.formats import format_name, read_geometry, read_labels
from rwmaps_cli.mapfile import is_map_file, read_map
from rwmaps_cli.maps import DEFAULT_MAX_CLASSES, KINDS, expanded_channels

# A "label file" with more distinct values than --max-classes (compute's threshold too) is
# listed only that far, and flagged: it is likely an image.


def describe(path: str | Path, max_classes: int = DEFAULT_MAX_CLASSES) -> dict:
    """Describe a label file or a map file as a JSON-ready dict.

    Common keys: ``path``, ``type`` ("map" or "labels"), ``format``, ``shape``, ``dtype``,
    ``spacing``, ``orientation`` (axis codes such as "RAS", None for numpy files) and
    ``classes`` (one dict per class / channel).  A map adds ``kind``, ``stored_shape``,
    ``manifest``, ``input``, ``parameters``, ``consistent`` and ``problems``.

    Raises:
        InputError: the file cannot be read (one line, without the path).
    """
    path = Path(path)
    if is_map_file(path):
        return _describe_map(path)
    return _describe_labels(path, max_classes)


def _describe_labels(path: Path, max_classes: int) -> dict:
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
    """[min, max] of the finite values (JSON has no NaN), or None."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    return [_scalar(finite.min()), _scalar(finite.max())] if finite.size else None


def _value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and their counts; a histogram for small integer types."""
    if array.dtype == bool:
        array = array.view(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize <= 2 and (array.dtype.kind == "u" or array.min() >= 0):
        counts = np.bincount(array.ravel(), minlength=1)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(array, return_counts=True)


class _ExpandedChannels:
    """The channels of a compact map, expanded one at a time as they are read: inspecting a
    compact map of many classes never holds its C channels at once."""

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
        "input": meta.input,
        "parameters": meta.parameters,
        "classes": channels,
        "consistent": None if kind is None else not problems,
        "problems": problems,
    }


def class_names(label_path: Path) -> dict[int, str]:
    """Label value -> name from the nnU-Net dataset.json of a label file under ``labelsTr``."""
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
    """Axis codes such as "RAS" of a 3D affine; None without one, or for a 2D file (whose
    third axis is not an image axis)."""
    if affine is None:
        return None
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine)))


def label_affine(path) -> np.ndarray | None:
    """The RAS+ affine of a label file from its header; None when the format has none
    (numpy files) or the file cannot be read."""
    if path is None:
        return None
    try:
        return read_geometry(path)[1]
    except InputError:
        return None


def _rounded(values) -> list[float] | None:
    return None if values is None else [float(f"{v:.6g}") for v in values]


def _scalar(value):
    return value.item() if hasattr(value, "item") else value


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value
