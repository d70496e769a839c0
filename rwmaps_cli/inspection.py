"""What a label file or a map file holds: numbers (a dict, a table) and a picture (PNG).

:func:`describe` tells a map written by ``rwmaps compute`` from a label file and returns a
JSON-ready dict; :func:`format_table` renders it for a terminal; :func:`draw_png` draws
the label slice and one panel per class map.  matplotlib is imported inside
:func:`draw_png` only, so ``import rwmaps_cli`` stays light.

How a map is told from a label file:

- NIfTI: 4D with a ``descrip`` starting with ``rwmaps`` (``write_map`` writes
  ``"rwmaps KIND"``), or listed as an output in a ``rwmaps.json`` above it;
- ``.npz``: has a ``map`` array;
- ``.npy``: a float array listed as an output in a ``rwmaps.json`` in its folder or a
  parent folder (a ``.npy`` holds nothing else that could tell), or any 4D float array
  (labels are 2D or 3D);
- anything else that :func:`~rwmaps_cli.io.read_labels` reads is a label file.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputError
from .io import label_suffix, load_map, npy_header, read_labels
from .manifest import manifest_for_map
from .maps import KINDS, compute_maps, unique_labels

# Figure geometry: each panel is PANEL_INCHES, up to MAX_COLUMNS panels a row, plus a
# title band; saved at DPI without tight cropping, so the PNG is exactly figure_pixels().
PANEL_INCHES = (3.2, 3.0)
TITLE_INCHES = 0.4
DPI = 100
MAX_COLUMNS = 5
# A "label file" with more distinct values is listed only in part (it is likely an image).
MAX_LISTED_VALUES = 64
# An rrw channel reaches -1 inside (-EDT / max EDT); float16 stores -1 exactly, float32
# products may miss it by an ulp.
_RRW_MIN_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- describe


def is_map_file(path: str | Path) -> bool:
    """True when ``path`` is a map written by ``rwmaps compute`` (see the module docstring)."""
    path = Path(path)
    suffix = label_suffix(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            header = nib.load(path).header  # header only
            descrip = bytes(header["descrip"]).split(b"\x00")[0].decode("latin-1")
            if descrip.startswith("rwmaps"):
                return True
            return len(header.get_data_shape()) == 4 and _listed_in_manifest(path)
        if suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                return "map.npy" in archive.namelist()
        if suffix == ".npy":
            with open(path, "rb") as f:
                shape, dtype = npy_header(f)
            # A 4D float array cannot be labels (2D or 3D): a map, even if no manifest lists it.
            return dtype.kind == "f" and (len(shape) == 4 or _listed_in_manifest(path))
    except Exception:  # unreadable: read_labels will say why
        return False
    return False


def _listed_in_manifest(path: Path) -> bool:
    found = manifest_for_map(path)
    return found is not None and found[2] is not None


def describe(path: str | Path) -> dict:
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
    return _describe_labels(path)


def _describe_labels(path: Path) -> dict:
    volume = read_labels(path)
    array = volume.array
    values, counts = _value_counts(array)
    total = int(array.size)
    names = _class_names(path)
    integer = bool(array.dtype.kind in "biu" or np.all(np.mod(values, 1) == 0))
    problems = []
    if not integer:
        problems.append("some values are not integers: not usable as labels")
    elif values.size and values.min() < 0:
        problems.append("negative values: not usable as labels")
    if values.size > MAX_LISTED_VALUES:
        problems.append(f"{values.size} distinct values (only the first {MAX_LISTED_VALUES} listed): "
                        "is this an image rather than labels?")
    classes = []
    for value, count in list(zip(values.tolist(), counts.tolist()))[:MAX_LISTED_VALUES]:
        value = int(value) if integer else (float(value) if math.isfinite(value) else str(value))  # JSON has no NaN
        classes.append({"label": value, "name": names.get(value) if integer else None, "voxels": int(count),
                        "fraction": round(count / total, 6)})
    return {
        "path": str(path),
        "type": "labels",
        "format": _format_name(path),
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "spacing": _rounded(volume.spacing),
        "orientation": _orientation(volume.affine) if label_suffix(path) not in (".npy", ".npz") else None,
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


def _describe_map(path: Path) -> dict:
    maps, meta = load_map(path, mmap=label_suffix(path) == ".npy")
    n_channels, spatial = maps.shape[0], tuple(maps.shape[1:])
    parameters = meta["parameters"] or {}
    kind = meta["kind"] if meta["kind"] in KINDS else None
    slice_axis = parameters.get("slice_axis")
    stats, problems = _map_statistics(maps, kind, slice_axis if isinstance(slice_axis, int) else None)
    classes = meta["classes"]
    names = _class_names(Path(meta["input"])) if meta["input"] else {}
    channels = []
    for c, stat in enumerate(stats):
        label = classes[c] if classes is not None else None
        channels.append({"channel": c, "label": label, "name": names.get(label), **stat})
    problems = [f"channel {c['channel']}: {c['problem']}" for c in channels if c["problem"]] + problems
    if kind is None:
        problems.append("unknown map kind: values not checked")
    affine = meta["affine"] if meta["affine"] is not None else _input_affine(meta["input"])
    stored_shape = list(nib.load(path).shape) if meta["format"] in ("nii", "nii.gz") else [n_channels, *spatial]
    return {
        "path": str(path),
        "type": "map",
        "format": _format_name(path),
        "kind": meta["kind"],
        "shape": [n_channels, *spatial],
        "stored_shape": stored_shape,
        "dtype": meta["dtype"],
        "spacing": _rounded(meta["spacing"]),
        "orientation": _orientation(affine) if affine is not None else None,
        "manifest": meta["manifest"],
        "input": meta["input"],
        "parameters": meta["parameters"],
        "classes": channels,
        "consistent": None if kind is None else not problems,
        "problems": problems,
    }


def _map_statistics(maps, kind: str | None, slice_axis: int | None) -> tuple[list[dict], list[str]]:
    """Per channel: inside voxels, value range, whether the values fit ``kind``; and the
    problems of the channels taken together (every voxel inside exactly one class...).

    Reads one channel at a time (``maps`` may be a memory map).

    "Inside" voxels, by kind: ``rrw``, ``boundary``: value < 0; ``ac``: value 0;
    ``kervadec``: value < 0, or 0 on the inner boundary (0 in a channel that is not 0
    everywhere in its field).  Voxels that are 0 in every channel (the ignore label)
    are inside no class.  A class that fills a whole field is all 0 in ``boundary``
    and ``kervadec`` maps, like an empty one, and is not counted.
    """
    n_channels = maps.shape[0]
    spatial = maps.shape[1:]
    count_dtype = np.uint8 if n_channels < 255 else np.uint16
    zero_count = np.zeros(spatial, dtype=count_dtype)
    neg_count = np.zeros(spatial, dtype=count_dtype)
    stats = []
    for c in range(n_channels):
        channel = np.asarray(maps[c], dtype=np.float32)
        finite = np.isfinite(channel)
        all_finite = bool(finite.all())
        shown = channel if all_finite else channel[finite]
        low = float(shown.min()) if shown.size else math.nan
        high = float(shown.max()) if shown.size else math.nan
        zeros = channel == 0
        negative = channel < 0
        zero_count += zeros
        neg_count += negative
        problem = _channel_problem(channel, kind, low, all_finite, negative)
        stats.append({"voxels": int(np.count_nonzero(zeros if kind == "ac" else negative)),
                      "min": _finite_or_none(low), "max": _finite_or_none(high),
                      "consistent": None if kind is None else problem is None, "problem": problem})
    ignored = zero_count == n_channels
    n_ignored = int(np.count_nonzero(ignored))
    if kind == "ac":
        for stat in stats:
            stat["voxels"] -= n_ignored  # 0 in every channel: the ignore label
    elif kind == "kervadec":
        for c, stat in enumerate(stats):
            channel = np.asarray(maps[c], dtype=np.float32)
            inner = (channel == 0) & ~ignored & _field_not_zero(channel, slice_axis)
            stat["voxels"] += int(np.count_nonzero(inner))
    return stats, _cross_channel_problems(kind, n_channels, zero_count, neg_count, ignored)


def _channel_problem(channel, kind, low, all_finite, negative) -> str | None:
    """Why one channel's values do not fit ``kind``, or None."""
    if not all_finite:
        return f"{int(np.count_nonzero(~np.isfinite(channel)))} values are NaN or infinite"
    if kind == "rrw":
        bad = ~((channel >= -1) & negative | (channel == 1) | (channel == 0))
        if bad.any():
            example = float(channel[bad].flat[0])
            return (f"{int(np.count_nonzero(bad))} values are neither in [-1, 0) nor 1 (e.g. {example:.4g}); "
                    "an rrw map is -EDT/max(EDT) inside and 1 outside")
        if negative.any() and low > -1 + _RRW_MIN_TOLERANCE:
            return f"the minimum is {low:.4g}, not -1: an rrw map reaches -1 deepest inside its class"
    elif kind == "ac":
        bad = (channel != 0) & (channel != 1)
        if bad.any():
            example = float(channel[bad].flat[0])
            return f"{int(np.count_nonzero(bad))} values are neither 0 nor 1 (e.g. {example:.4g}); an ac map is 0 or 1"
    return None


def _cross_channel_problems(kind, n_channels, zero_count, neg_count, ignored) -> list[str]:
    """Problems of the channels taken together: which classes each voxel is inside."""
    problems = []
    counted = ~ignored
    if kind == "rrw":
        stray = np.count_nonzero((zero_count > 0) & counted)
        if stray:
            problems.append(f"{stray} voxels are 0 in some channels but not in all "
                            "(0 marks ignored voxels, in every channel)")
        wrong = np.count_nonzero((neg_count != 1) & counted & (zero_count == 0))
        if wrong:
            problems.append(f"{wrong} voxels are inside no class or several (negative in a number of channels "
                            "other than 1); an rrw map puts every voxel inside exactly one class")
    elif kind == "ac" and n_channels > 1:
        wrong = np.count_nonzero((zero_count != 1) & counted)
        if wrong:
            problems.append(f"{wrong} voxels are 0 in a number of channels other than 1; "
                            "an ac map puts every voxel inside exactly one class")
    elif kind in ("boundary", "kervadec"):
        several = np.count_nonzero(neg_count > 1)
        if several:
            problems.append(f"{several} voxels are negative (inside) in several channels")
    return problems


def _field_not_zero(channel: np.ndarray, slice_axis: int | None) -> np.ndarray | bool:
    """Whether each voxel's field (the volume, or its slice) has a non-zero value in ``channel``."""
    if slice_axis is None or not -channel.ndim <= slice_axis < channel.ndim:
        return bool(channel.any())
    axis = slice_axis % channel.ndim
    others = tuple(a for a in range(channel.ndim) if a != axis)
    per_slice = np.any(channel != 0, axis=others)
    return np.expand_dims(per_slice, others)


def _input_affine(input_path: str | None) -> np.ndarray | None:
    """The affine of a NIfTI or SimpleITK label file, from its header; None otherwise."""
    from .io import sitk_affine, sitk_reader

    try:
        suffix = label_suffix(input_path) if input_path else None
        if suffix in (".nii", ".nii.gz"):
            return np.asarray(nib.load(input_path).affine)
        if suffix not in (None, ".npy", ".npz"):
            return sitk_affine(sitk_reader(Path(input_path)))  # the reader has the image's geometry getters
    except Exception:  # missing or unreadable: no orientation
        return None
    return None


def _class_names(label_path: Path) -> dict[int, str]:
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


def _format_name(path: Path) -> str:
    suffix = label_suffix(path) or path.suffix
    return {".nii.gz": "NIfTI (.nii.gz)", ".nii": "NIfTI (.nii)", ".npy": ".npy", ".npz": ".npz",
            ".mha": "MetaImage", ".mhd": "MetaImage", ".nrrd": "NRRD", ".nhdr": "NRRD",
            ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, suffix)


def _orientation(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(np.asarray(affine)))


def _rounded(values) -> list[float] | None:
    return None if values is None else [float(f"{v:.6g}") for v in values]


def _scalar(value):
    return value.item() if hasattr(value, "item") else value


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------- table


def format_table(info: dict) -> str:
    """A compact, human-readable table of :func:`describe`'s dict."""
    lines = []
    if info["type"] == "map":
        lines.append(f"{info['path']}: rwmaps map, kind {info['kind'] or 'unknown'}, {info['format']}")
        shape = _times(info["shape"])
        if info["stored_shape"] != info["shape"]:
            shape += f" (C × spatial; stored {_times(info['stored_shape'])})"
        else:
            shape += " (C × spatial)"
    else:
        lines.append(f"{info['path']}: label file, {info['format']}")
        shape = _times(info["shape"])
    fields = [("shape", shape), ("dtype", info["dtype"]),
              ("spacing", _times(info["spacing"]) if info["spacing"] else "unknown"),
              ("orientation", info["orientation"] or "none (no affine)")]
    if info["type"] == "map":
        parameters = info["parameters"]
        if parameters:
            fields.append(("parameters", ", ".join(
                f"{key} {_value_text(parameters.get(key))}" for key in ("spacing", "slice_axis", "ignore_label")
            ) + f" (from {info['manifest']})"))
        else:
            fields.append(("parameters", "unknown (no rwmaps.json lists this map)"))
        if info["input"]:
            fields.append(("input", info["input"]))
    else:
        value_range = info["value_range"]
        fields.append(("values", f"{info['distinct_values']} distinct, "
                                 + (f"{value_range[0]} to {value_range[1]}" if value_range else "none")))
    width = max(len(name) for name, _ in fields)
    lines += [f"  {name:<{width}}  {value}" for name, value in fields]
    lines.append("")
    if info["type"] == "map":
        header = ["channel", "label", "name", "inside voxels", "min", "max", "consistent"]
        rows = [[str(c["channel"]), _value_text(c["label"]), c["name"] or "", f"{c['voxels']:,}",
                 _number(c["min"]), _number(c["max"]), _yes_no(c["consistent"])] for c in info["classes"]]
        right = {0, 1, 3, 4, 5}
    else:
        header = ["label", "name", "voxels", "fraction"]
        rows = [[str(c["label"]), c["name"] or "", f"{c['voxels']:,}", f"{100 * c['fraction']:.2f} %"]
                for c in info["classes"]]
        right = {0, 2, 3}
    lines += _columns(header, rows, right)
    if info["type"] == "map":
        lines.append("")
        if info["consistent"] is None:
            lines.append("  consistent with its kind: unknown (kind not known)")
        else:
            lines.append(f"  consistent with {info['kind']}: {_yes_no(info['consistent'])}")
    lines += [f"  problem: {problem}" for problem in info["problems"] if info["type"] == "labels" or
              not problem.startswith("unknown map kind")]
    return "\n".join(lines)


def _columns(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    if not any(row[header.index("name")] for row in rows):  # no names: drop the column
        keep = [i for i, name in enumerate(header) if name != "name"]
    else:
        keep = list(range(len(header)))

    def line(cells):
        return "  " + "  ".join(cells[i].rjust(widths[i]) if i in right else cells[i].ljust(widths[i])
                                for i in keep).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _times(values) -> str:
    return " × ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _value_text(value) -> str:
    return "none" if value is None else str(value)


def _number(value) -> str:
    return "nan" if value is None else f"{value:.4g}"


def _yes_no(flag) -> str:
    return "unknown" if flag is None else ("yes" if flag else "NO")


# --------------------------------------------------------------------------- picture


def figure_pixels(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG :func:`draw_png` writes with ``n_panels`` panels."""
    columns = min(n_panels, MAX_COLUMNS)
    rows = math.ceil(n_panels / columns)
    return round(columns * PANEL_INCHES[0] * DPI), round((rows * PANEL_INCHES[1] + TITLE_INCHES) * DPI)


def draw_png(path: str | Path, out: str | Path, axis: int | None = None, index: int | None = None) -> dict:
    """Draw the label slice and one panel per class map of a label or map file.

    A map file shows its channels, and the labels of its input file when the manifest
    names one that can be read (else the labels the map implies: the channel each voxel
    is inside).  A label file shows the ``rrw`` maps computed from it (voxel units).
    Maps use a diverging colour map centred at 0 (blue inside, red outside), scaled to
    each channel's range over the whole volume, with the class outline drawn on top.

    Args:
        axis: the array axis the slice is across; default: a singleton axis (a 2D map),
            else the axis nearest to the S-I direction when the file has an affine,
            else the last axis.
        index: the slice; default: through the middle of the foreground: of the slices
            that show the most classes other than 0, the one nearest to the median, along
            ``axis``, of the voxels whose label is not 0.

    Returns:
        ``{"path", "width", "height", "axis", "slice"}``; the PNG is ``figure_pixels`` big.

    Raises:
        InputError: the file cannot be read.  ValueError: ``axis`` or ``index`` out of range.
    """
    path, out = Path(path), Path(out)
    view = _view(path)
    spatial = view["maps"].shape[1:]
    axis, index = _choose_slice(view, axis, index)
    width, height = figure_pixels(1 + view["maps"].shape[0])
    figure = _figure(view, path, axis, index)
    from .io import atomic_path

    with atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    return {"path": str(out), "width": width, "height": height, "axis": axis,
            "slice": index if len(spatial) == 3 else None}


def _view(path: Path) -> dict:
    """Everything the figure needs: maps (C, *spatial), labels, classes, names, geometry."""
    if is_map_file(path):
        maps, meta = load_map(path)
        classes = meta["classes"]
        labels, source = None, "implied by the map"
        affine = meta["affine"] if meta["affine"] is not None else _input_affine(meta["input"])
        names = {}
        if meta["input"]:
            names = _class_names(Path(meta["input"]))
            try:
                volume = read_labels(meta["input"])
                if volume.array.shape == maps.shape[1:]:
                    labels, source = volume.array, "labels"
            except InputError:
                pass
        if labels is None:
            labels = _implied_labels(maps, classes)
        kind = meta["kind"] or "unknown"
        return {"maps": maps, "labels": labels, "label_source": source, "classes": classes, "names": names,
                "spacing": meta["spacing"], "affine": affine,
                "what": f"{kind} map", "computed": False}
    volume = read_labels(path)
    names = _class_names(path)
    try:
        values = unique_labels(volume.array)
    except ValueError as error:  # fractions, NaN, negative values
        raise InputError(f"cannot compute maps from these labels: {error}") from None
    classes = sorted(names) if names and set(values.tolist()) <= set(names) else values.tolist()
    if len(classes) > MAX_LISTED_VALUES:
        raise InputError(f"{len(classes)} distinct values: too many classes to draw (is this an image?)")
    try:
        maps = compute_maps(volume.array, classes, kind="rrw")
    except ValueError as error:
        raise InputError(f"cannot compute maps from these labels: {error}") from None
    return {"maps": maps, "labels": volume.array, "label_source": "labels", "classes": [int(c) for c in classes],
            "names": names, "spacing": volume.spacing,
            "affine": volume.affine if label_suffix(path) not in (".npy", ".npz") else None,
            "what": "labels, rrw maps computed from them",
            "computed": True}


def _implied_labels(maps: np.ndarray, classes) -> np.ndarray:
    """The class each voxel is inside by the map (lowest channel), -1 where every channel is 0."""
    codes = np.argmin(maps, axis=0).astype(np.int64)
    values = np.asarray(classes if classes is not None else range(maps.shape[0]), dtype=np.int64)
    labels = values[codes]
    labels[np.all(maps == 0, axis=0)] = -1
    return labels


def spatial_shape(info: dict) -> tuple[int, ...]:
    """The spatial shape of what :func:`describe` described (a map without its channels)."""
    return tuple(info["shape"][1:] if info["type"] == "map" else info["shape"])


def check_slice(spatial: tuple[int, ...], axis: int | None, index: int | None) -> None:
    """ValueError (a usage error) when ``axis`` / ``index`` cannot select a slice of ``spatial``."""
    if len(spatial) == 2:
        if axis is not None or index is not None:
            raise ValueError("this file is 2D: --axis and --slice do not apply")
        return
    if axis is not None and not -3 <= axis < 3:
        raise ValueError(f"--axis {axis} is out of range for 3D data (0, 1 or 2)")
    if index is not None:
        if axis is None:
            raise ValueError("--slice needs --axis")
        n = spatial[axis % 3]
        if not 0 <= index < n:
            raise ValueError(f"--slice {index} is out of range: axis {axis % 3} has {n} slices (0 to {n - 1})")


def _choose_slice(view: dict, axis: int | None, index: int | None) -> tuple[int | None, int | None]:
    spatial = view["maps"].shape[1:]
    check_slice(spatial, axis, index)
    if len(spatial) == 2:
        return None, None
    axis = _default_axis(spatial, view["affine"]) if axis is None else axis % 3
    if index is None:
        index = _foreground_middle(view["labels"], axis)
    return axis, index


def _default_axis(spatial: tuple[int, ...], affine) -> int:
    if 1 in spatial:
        return spatial.index(1)
    if affine is not None:
        columns = np.asarray(affine, dtype=np.float64)[:3, :3]
        norms = np.linalg.norm(columns, axis=0)
        norms[norms == 0] = 1
        return int(np.argmax(np.abs(columns[2]) / norms))  # the axis most along S-I
    return 2


def _foreground_middle(labels: np.ndarray, axis: int) -> int:
    """The slice showing the most foreground classes, nearest to the foreground's median."""
    others = tuple(a for a in range(3) if a != axis)
    present = [np.any(labels == value, axis=others) for value in np.unique(labels) if value > 0]
    if not present:
        return labels.shape[axis] // 2
    per_slice = np.count_nonzero((labels > 0), axis=others)
    median = int(np.searchsorted(np.cumsum(per_slice), (int(per_slice.sum()) + 1) // 2))
    n_classes = np.sum(present, axis=0)
    candidates = np.flatnonzero(n_classes == n_classes.max())
    return int(candidates[np.argmin(np.abs(candidates - median))])


def _figure(view: dict, path: Path, axis: int | None, index: int | None):
    from matplotlib.colors import BoundaryNorm, ListedColormap, TwoSlopeNorm
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    maps, classes, names = view["maps"], view["classes"], view["names"]
    n_channels = maps.shape[0]
    columns = min(1 + n_channels, MAX_COLUMNS)
    rows = math.ceil((1 + n_channels) / columns)
    width, height = figure_pixels(1 + n_channels)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()

    def plane(volume):
        return volume if axis is None else np.take(volume, index, axis=axis)

    kept = [a for a in range(maps.ndim - 1) if a != axis]  # array axes left in the slice
    spacing = view["spacing"]
    if spacing is not None and len(spacing) == maps.ndim - 1:
        steps = [spacing[a] for a in kept]
    else:
        steps = [1.0, 1.0]
    transpose, origin = _screen_axes(view["affine"], kept)
    aspect = steps[1] / steps[0] if transpose else steps[0] / steps[1]

    def show(ax, image, **kwargs):
        image = image.T if transpose else image
        return ax.imshow(image, origin=origin, aspect=aspect, interpolation="nearest", **kwargs)

    # Labels: one colour per class (the first class grey); ignored / unknown voxels white.
    values = list(classes) if classes is not None else list(range(n_channels))
    label_plane = plane(view["labels"])
    codes = np.full(label_plane.shape, -1, dtype=np.int64)
    for code, value in enumerate(values):
        codes[label_plane == value] = code
    palette = ["#d9d9d9", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
               "#17becf", "#bcbd22", "#7f7f7f"]
    label_colours = ListedColormap([palette[i % len(palette)] for i in range(len(values))])
    label_colours.set_bad("#ffffff")
    image = show(axes[0], np.ma.masked_less(codes, 0), cmap=label_colours,
                 norm=BoundaryNorm(np.arange(-0.5, len(values)), len(values)))
    bar = figure.colorbar(image, ax=axes[0], shrink=0.8, ticks=range(len(values)))
    bar.ax.set_yticklabels([_class_title(v, names, classes is not None) for v in values], fontsize=7)
    axes[0].set_title("labels" if view["label_source"] == "labels" else f"labels ({view['label_source']})",
                      fontsize=10)

    for c in range(n_channels):
        ax = axes[1 + c]
        channel = maps[c]
        low, high = float(np.nanmin(channel)), float(np.nanmax(channel))
        low, high = min(low, 0.0), max(high, 0.0)
        if low == 0 and high == 0:
            low, high = -1.0, 1.0
        elif low == 0:
            low = -high
        elif high == 0:
            high = -low
        image = show(ax, plane(channel), cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high))
        figure.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
        mask = (label_plane == values[c]).astype(np.float32)
        if 0 < mask.sum() < mask.size:
            ax.contour(mask.T if transpose else mask, levels=[0.5], colors="black", linewidths=0.6)
        ax.set_title(_class_title(values[c], names, classes is not None, channel=c), fontsize=10)

    where = "" if axis is None else f"; axis {axis}, slice {index} of 0-{maps.shape[1 + axis] - 1}"
    figure.suptitle(f"{path.name}: {view['what']}{where}", fontsize=11)
    return figure


def _screen_axes(affine, kept: list[int]) -> tuple[bool, str]:
    """(transpose, imshow origin) that put a slice on screen as a viewer would.

    Without an affine: the array as an image (first axis down).  With one: the kept axis
    most along S-I (or, for an axial slice, along A-P) goes up the screen, pointing S (A);
    the other goes across.
    """
    if affine is None:
        return False, "upper"
    columns = np.asarray(affine, dtype=np.float64)[:3, kept]
    columns = columns / np.where(np.linalg.norm(columns, axis=0) == 0, 1, np.linalg.norm(columns, axis=0))
    world = 2 if np.abs(columns[2]).max() > 0.5 else 1  # S-I, else A-P for an axial slice
    vertical = int(np.argmax(np.abs(columns[world])))
    return vertical == 1, "lower" if columns[world, vertical] > 0 else "upper"


def _class_title(value, names: dict, known: bool, channel: int | None = None) -> str:
    if not known:
        return f"channel {value}"
    name = names.get(value)
    return f"{value}: {name}" if name else f"class {value}"
