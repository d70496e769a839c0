"""Region-wise maps from label arrays: the pure kernels (no files, no printing).

Every function here takes a label array and returns float maps of shape
``(C, *labels.shape)``, one channel per entry of ``classes``.  The exact definitions
(see ``DESIGN.md``), with ``M = (labels == classes[c])`` and ``EDT(M)`` the distance of
each voxel of ``M`` to the nearest voxel outside ``M`` (0 outside ``M``; the image
border is not a boundary):

==========  ============================  ===========  =========  ==================
kind        inside ``M``                  outside      ``M`` empty ``M`` fills field
==========  ============================  ===========  =========  ==================
rrw         ``-EDT / max(EDT)``           ``1``        all 1      all -1
boundary    ``-EDT(M)``                   EDT(not M)   all 0      all 0
kervadec    ``-(EDT(M) - 1)``             EDT(not M)   all 0      all 0
ac          ``0``                         ``1``        all 1      all 0
==========  ============================  ===========  =========  ==================

Why it is fast: one multi-label EDT (the ``edt`` package) gives every voxel its distance
to the nearest voxel of a *different* label, which is the inside distance of every class
at once.  The per-class normalisation is then a handful of whole-array passes per
channel; no boolean-mask gathers (``d[m].max()``), which cost more than the EDT itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi

from .errors import UnknownLabelsError

KINDS = ("rrw", "boundary", "kervadec", "ac")
ENGINES = ("edt", "scipy")

# Label values up to this bound are mapped to channel codes with a lookup table (one
# gather); larger values fall back to np.searchsorted.
_LUT_MAX_LABEL = 1 << 16


def compute_maps(
    labels: np.ndarray,
    classes: Sequence[int],
    kind: str = "rrw",
    spacing: Sequence[float] | None = None,
    slice_axis: int | None = None,
    engine: str = "edt",
    dtype: np.dtype | type = np.float32,
    ignore_label: int | None = None,
    threads: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Compute the region-wise maps of one label array.

    Parameters
    ----------
    labels : (*spatial) integer array, 1D to 3D (2D and 3D are the usual cases)
        Integer-valued float arrays are accepted.
    classes : sequence of int, length C
        Ordered label values, one output channel each.  A class absent from ``labels``
        still gets its channel (the "empty class" column of the table above).
    kind : {"rrw", "boundary", "kervadec", "ac"}
        Which map; see the module docstring.
    spacing : sequence of float, one per axis of ``labels``, optional
        Voxel sizes in array-axis order.  None measures distances in voxels.  With a
        spacing, ``kervadec`` is ``-(EDT - min(spacing))`` inside, and its inner-boundary
        voxels (those with a face neighbour outside ``M``) are exactly 0 even on
        anisotropic grids, where the reference implementation leaves them non-zero.
    slice_axis : int, optional
        Compute every map independently on each slice along this axis (the 2D maps the
        paper's 2D nnU-Net trained with).
    engine : {"edt", "scipy"}
        ``edt``: one multi-label distance transform for all classes (fast);
        ``scipy``: one ``scipy.ndimage.distance_transform_edt`` per class (reference).
    dtype : float32 or float16
        Output dtype.  Computation is in float32 either way.
    ignore_label : int, optional
        Voxels with this value get 0 in every channel and count as "not this class" for
        every distance.  It gets no channel.
    threads : int
        Threads for the ``edt`` engine.
    out : (C, *labels.shape) float array, optional
        Write the maps here (e.g. a reused buffer or a memory-mapped ``.npy``) instead of
        a new array; ``dtype`` is then ignored.  Filling fresh memory costs page faults
        worth a third of the EDT, so a data loader may want to reuse one buffer.

    Returns
    -------
    maps : (C, *labels.shape) array of ``dtype``

    Raises
    ------
    ValueError
        If ``labels`` holds values that are not integers, are negative, or are neither
        in ``classes`` nor ``ignore_label``; or if an argument is invalid.
    """
    labels = np.asarray(labels)
    shape = (len(classes), *labels.shape)
    if out is None:
        out = np.empty(shape, dtype=_check_dtype(dtype))
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}; expected {shape}")
    else:
        _check_dtype(out.dtype)
    _compute_into(out, labels, classes, kind, spacing, slice_axis, engine, ignore_label, threads)
    return out


def compute_maps_batch(labels: np.ndarray, classes: Sequence[int], **kwargs) -> np.ndarray:
    """Compute maps for a batch, each item on its own (as the paper's training loop).

    Parameters
    ----------
    labels : (B, *spatial) integer array
    classes, **kwargs
        As for :func:`compute_maps`; ``spacing`` and ``slice_axis`` refer to the
        spatial axes (without the batch axis).

    Returns
    -------
    maps : (B, C, *spatial) array
    """
    labels = np.asarray(labels)
    dtype = _check_dtype(kwargs.pop("dtype", np.float32))
    out = np.empty((labels.shape[0], len(classes), *labels.shape[1:]), dtype=dtype)
    for item, item_out in zip(labels, out):
        _compute_into(item_out, item, classes, **_with_defaults(kwargs))
    return out


def _with_defaults(kwargs: dict) -> dict:
    defaults = dict(kind="rrw", spacing=None, slice_axis=None, engine="edt", ignore_label=None, threads=1)
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    return {**defaults, **kwargs}


def _compute_into(out, labels, classes, kind, spacing, slice_axis, engine, ignore_label, threads) -> None:
    """Fill ``out`` (C, *labels.shape) with the maps of ``labels``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if not 1 <= labels.ndim <= 3:
        raise ValueError(f"labels must be 1D, 2D or 3D, got shape {labels.shape}")
    spacing = _check_spacing(spacing, labels.ndim)
    codes = class_codes(labels, classes, ignore_label)
    n_classes = len(classes)
    if slice_axis is None:
        _field_maps(out, codes, n_classes, kind, spacing, engine, threads)
        return
    axis = _check_axis(slice_axis, labels.ndim)
    in_plane = None if spacing is None else tuple(s for a, s in enumerate(spacing) if a != axis)
    for i in range(labels.shape[axis]):
        index = (slice(None),) * axis + (i,)
        plane = np.ascontiguousarray(codes[index])  # edt needs a contiguous array
        _field_maps(out[(slice(None), *index)], plane, n_classes, kind, in_plane, engine, threads)

def class_codes(labels: np.ndarray, classes: Sequence[int], ignore_label: int | None = None) -> np.ndarray:
    """Replace each label value by its 1-based channel code.

    Class ``classes[c]`` becomes ``c + 1``, ``ignore_label`` becomes ``C + 1``.  Codes
    start at 1 because the ``edt`` package treats 0 as background with no distance.

    Parameters
    ----------
    labels : integer (or integer-valued float) array
    classes : sequence of C distinct non-negative ints

    Returns
    -------
    codes : array of labels.shape, the smallest unsigned dtype that holds ``C + 1``

    Raises
    ------
    ValueError
        Naming the offending values when ``labels`` has non-integer, negative or unknown
        values.
    """
    class_values = _check_classes(classes, ignore_label)
    labels = _as_integer_labels(labels)
    known = class_values if ignore_label is None else class_values + [int(ignore_label)]
    code_dtype = np.min_scalar_type(len(known))
    if labels.size and labels.min() < 0:
        raise ValueError(f"negative label values: {_preview(np.unique(labels[labels < 0]))}")
    top = int(labels.max()) if labels.size else 0
    if max(top, max(known, default=0)) < _LUT_MAX_LABEL:
        lut = np.zeros(max(top, max(known, default=0)) + 1, dtype=code_dtype)
        lut[known] = np.arange(1, len(known) + 1)
        codes = lut[labels]
    else:
        order = np.argsort(known)
        sorted_known = np.asarray(known, dtype=np.int64)[order]
        pos = np.clip(np.searchsorted(sorted_known, labels), 0, len(known) - 1)
        found = sorted_known[pos] == labels
        codes = np.where(found, order[pos] + 1, 0).astype(code_dtype)
    if not codes.all():
        unknown = np.unique(labels[codes == 0])
        raise UnknownLabelsError(f"label values not in the class list {class_values}: {_preview(unknown)}")
    return codes


def unique_labels(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label array, as int64.

    Raises
    ------
    ValueError
        Naming the offending values when labels are not integers or are negative.
    """
    labels = _as_integer_labels(np.asarray(labels))
    if labels.size and labels.min() < 0:
        raise ValueError(f"negative label values: {_preview(np.unique(labels[labels < 0]))}")
    if labels.dtype.itemsize <= 2:  # a histogram beats sorting for small integer types
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=1)).astype(np.int64)
    return np.unique(labels).astype(np.int64)


def _as_integer_labels(labels: np.ndarray) -> np.ndarray:
    """Return labels as an integer array; reject fractions, NaN and infinities."""
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.integer):
        return labels
    if not np.issubdtype(labels.dtype, np.floating):
        raise ValueError(f"labels have dtype {labels.dtype}; expected integers")
    bad = labels != np.round(labels)  # true for fractions and NaN
    bad |= ~np.isfinite(labels)
    if bad.any():
        raise ValueError(f"labels are not integers: {_preview(np.unique(labels[bad]))}")
    return labels.astype(np.int64)


def _preview(values: np.ndarray, limit: int = 8) -> str:
    """A short listing of values for a one-line error message."""
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:limit].tolist())
    more = f", ... ({len(values)} distinct)" if len(values) > limit else ""
    return shown + more


def _field_maps(out, codes, n_classes, kind, spacing, engine, threads) -> None:
    """Fill ``out`` (C, *codes.shape) from one field (a whole volume or one slice)."""
    ignored = codes == n_classes + 1
    ignored = ignored if ignored.any() else None
    # Distances are needed unless one code fills the field: then every class is empty or full.
    uniform = codes.size == 0 or codes.min() == codes.max()
    inside = None if kind == "ac" or uniform else _inside_distance(codes, n_classes, spacing, engine, threads)
    inner_boundary = _label_change(codes) if kind == "kervadec" and spacing is not None and not uniform else None
    for c in range(n_classes):
        channel = out[c]
        mask = codes == c + 1
        count = np.count_nonzero(mask)
        if count == 0:
            channel.fill(1 if kind in ("rrw", "ac") else 0)
        elif count == codes.size:
            channel.fill(-1 if kind == "rrw" else 0)
        elif kind == "ac":
            np.logical_not(mask, out=channel, casting="unsafe")
        elif kind == "rrw":
            _rrw_channel(channel, inside, mask)
        else:
            _boundary_channel(channel, inside, mask, kind, spacing, engine, threads)
            if inner_boundary is not None:
                np.copyto(channel, 0, where=mask & inner_boundary)
        if ignored is not None:
            np.copyto(channel, 0, where=ignored)


def _rrw_channel(channel, inside, mask) -> None:
    """-EDT / max(EDT) inside ``mask``, 1 outside: three whole-array passes."""
    largest = inside.max(where=mask, initial=0.0)
    channel.fill(1)
    np.multiply(inside, np.float32(-1.0 / largest), out=channel, where=mask, casting="unsafe")


def _boundary_channel(channel, inside, mask, kind, spacing, engine, threads) -> None:
    """EDT(not M) outside ``mask``; -EDT(M), or -(EDT(M) - unit) for kervadec, inside."""
    np.copyto(channel, _distance(~mask, spacing, engine, threads), casting="unsafe")
    if kind == "boundary":
        np.negative(inside, out=channel, where=mask, casting="unsafe")
    else:
        unit = np.float32(1.0 if spacing is None else min(spacing))
        np.subtract(unit, inside, out=channel, where=mask, casting="unsafe")


def _inside_distance(codes, n_classes, spacing, engine, threads) -> np.ndarray:
    """Float32 array: each voxel's distance to the nearest voxel with another code."""
    if engine == "edt":
        return _edt(codes, spacing, threads)
    inside = np.zeros(codes.shape, dtype=np.float32)
    for c in range(n_classes):
        mask = codes == c + 1
        if mask.any() and not mask.all():  # EDT is 0 for an empty class, undefined for a full one
            np.copyto(inside, _distance(mask, spacing, "scipy", threads), where=mask, casting="unsafe")
    return inside


def _distance(mask, spacing, engine, threads) -> np.ndarray:
    """EDT of a boolean mask: for each True voxel, distance to the nearest False one."""
    if engine == "edt":
        return _edt(mask, spacing, threads)
    return ndi.distance_transform_edt(mask, sampling=spacing)


def _edt(labels: np.ndarray, spacing, threads: int) -> np.ndarray:
    """The ``edt`` package's multi-label EDT (float32); a bool array is one label."""
    import edt  # imported here so `import rwmaps_cli` stays light

    if labels.ndim == 1:  # edt's 1D transform takes a scalar anisotropy
        return edt.edt(labels, anisotropy=1.0 if spacing is None else spacing[0], black_border=False)
    return edt.edt(labels, anisotropy=spacing, black_border=False, parallel=max(1, threads))


def _label_change(codes: np.ndarray) -> np.ndarray:
    """Boolean array: True where a face neighbour (inside the field) has another code."""
    changed = np.zeros(codes.shape, dtype=bool)
    for axis in range(codes.ndim):
        lo = [slice(None)] * codes.ndim
        hi = [slice(None)] * codes.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        differs = codes[tuple(lo)] != codes[tuple(hi)]
        changed[tuple(lo)] |= differs
        changed[tuple(hi)] |= differs
    return changed


def _check_classes(classes: Sequence[int], ignore_label: int | None) -> list[int]:
    values = [int(v) for v in classes]
    if any(v != float(c) for v, c in zip(values, classes)):
        raise ValueError(f"classes must be integers, got {list(classes)}")
    if len(set(values)) != len(values):
        raise ValueError(f"classes must be distinct, got {values}")
    if any(v < 0 for v in values):
        raise ValueError(f"classes must be non-negative, got {values}")
    if ignore_label is not None and int(ignore_label) in values:
        raise ValueError(f"ignore label {ignore_label} is also in the class list")
    return values


def _check_spacing(spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for {ndim}D labels")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return spacing


def _check_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"slice_axis {axis} is out of range for {ndim}D labels")
    return axis % ndim


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float16, np.float64):
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    return dtype
