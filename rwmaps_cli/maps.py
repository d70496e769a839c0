"""Region-wise maps from label arrays: the pure kernels (no files, no printing).

Every function here takes a label array and returns float maps of shape
``(C, *labels.shape)``, one channel per entry of ``classes``.  The exact definitions of
the kinds (``rrw``, ``boundary``, ``kervadec``, ``ac``) are the table of ``README.md`` ("The
maps"), with ``M = (labels == classes[c])`` and ``EDT(M)`` the distance of each voxel of ``M``
to the nearest voxel outside ``M`` (0 outside ``M``; the image border is not a boundary);
``docs/design.md`` adds what the table does not say.

Layouts.  An ``rrw`` map is the outside value 1 in every channel but the voxel's own
class, so ``layout="compact"`` returns one channel ``(*spatial)``: each voxel's own-class
value ``-EDT / max`` (0 on the ignore label).  :func:`expand_map` turns it back into the
full map exactly, with a per-class outside value or per-patch normalisation if asked;
``expand_map(None, labels, classes, kind="ac")`` gives the ``ac`` map.

Why it is fast: one multi-label EDT (the ``edt`` package) gives every voxel its distance
to the nearest voxel of a *different* label, which is the inside distance of every class
at once.  The per-class maxima and the division are then two chunked passes over the
volume, whatever the number of classes: runs of equal labels along the memory order
carry one maximum and one divisor each.  A full map then writes each channel (its own
cost) and touches each class only inside its bounding box: real parcellations have
dozens of thin classes, and a whole-volume pass per class costs many times the EDT.
Fortran-ordered labels (as nibabel returns them) are handled through their transposed,
C-ordered view, so no float volume is ever transposed; new outputs have the labels'
memory order.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import numpy as np

from .errors import UnknownLabelsError

KINDS = ("rrw", "boundary", "kervadec", "ac")
ENGINES = ("edt", "scipy")
LAYOUTS = ("full", "compact")
# The defaults of every API and option that takes these (the kernels, the services, the
# command line): defined here once.
DEFAULT_KIND, DEFAULT_ENGINE, DEFAULT_LAYOUT = "rrw", "edt", "full"
# More distinct values than this in one file (or a whole dataset, for an automatic class
# list) is an image mistaken for labels: --max-classes.
DEFAULT_MAX_CLASSES = 256
#: The dtypes a map is made and stored in: the kernels compute in float32, and float16
#: halves a map in memory and on disk.  The formats store these (NIfTI float32 only).
MAP_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

# Label values up to this bound are mapped to channel codes with a lookup table (one
# gather); larger values fall back to np.searchsorted.
_LUT_MAX_LABEL = 1 << 16

# The chunked passes work on this many voxels at a time: the temporaries stay in cache
# and their memory does not grow with the volume.
_CHUNK = 1 << 18


def compute_maps(
    labels: np.ndarray,
    classes: Sequence[int],
    kind: str = DEFAULT_KIND,
    spacing: Sequence[float] | None = None,
    slice_axis: int | None = None,
    engine: str = DEFAULT_ENGINE,
    dtype: np.dtype | type = np.float32,
    ignore_label: int | None = None,
    threads: int = 1,
    out: np.ndarray | None = None,
    layout: str = DEFAULT_LAYOUT,
) -> np.ndarray:
    """Compute the region-wise maps of one label array.

    Parameters
    ----------
    labels : (*spatial) integer array, 1D to 3D (2D and 3D are the usual cases)
        Integer-valued float arrays are accepted.  Any memory order; the result keeps it.
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
        paper's 2D nnU-Net trained with).  In the compact layout the maxima are then
        per class and per slice.
    engine : {"edt", "scipy"}
        ``edt``: one multi-label distance transform for all classes (fast);
        ``scipy``: one ``scipy.ndimage.distance_transform_edt`` per class (reference).
    dtype : float32 or float16 (:data:`MAP_DTYPES`)
        Output dtype.  Computation is in float32 either way.
    ignore_label : int, optional
        Voxels with this value get 0 in every channel and count as "not this class" for
        every distance.  It gets no channel.
    threads : int
        Threads for the ``edt`` engine.
    out : float array, optional
        Write the maps here (e.g. a reused buffer or a memory-mapped ``.npy``) instead of
        a new array; ``dtype`` is then ignored.  Shape ``(C, *labels.shape)``, or
        ``labels.shape`` for the compact layout.  Filling fresh memory costs page faults,
        so a data loader may want to reuse one buffer.
    layout : {"full", "compact"}
        ``full``: one channel per class.  ``compact`` (``rrw`` only): one channel, each
        voxel's own-class value ``-EDT / max`` (``-1`` for a class filling the field,
        0 on the ignore label); :func:`expand_map` gives the full map back.

    Returns
    -------
    maps : (C, *labels.shape) array of ``dtype``; ``(*labels.shape)`` when compact
        A new array has the memory order of ``labels`` within each channel: for a
        Fortran-ordered ``labels`` the channel axis is the slowest and the first spatial
        axis the fastest, the memory layout of a 4D NIfTI ``X x Y x Z x C``.

    Raises
    ------
    ValueError
        If ``labels`` holds values that are not integers, are negative, or are neither
        in ``classes`` nor ``ignore_label``; or if an argument is invalid, e.g. the
        compact layout for another kind than ``rrw``.
    """
    labels = np.asarray(labels)
    _check_options(kind, engine, layout)
    shape = labels.shape if layout == "compact" else (len(classes), *labels.shape)
    if out is None:
        dtype = _check_dtype(dtype)
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}; expected {shape}")
    else:
        dtype = _check_dtype(out.dtype)
    return _compute(labels, classes, kind, spacing, slice_axis, engine, ignore_label, threads, layout, dtype, out)


def compute_maps_batch(labels: np.ndarray, classes: Sequence[int], **kwargs) -> np.ndarray:
    """Compute maps for a batch, each item on its own (as the paper's training loop).

    Parameters
    ----------
    labels : (B, *spatial) integer array
    classes, **kwargs
        As for :func:`compute_maps` (without ``out``); ``spacing`` and ``slice_axis``
        refer to the spatial axes (without the batch axis).

    Returns
    -------
    maps : (B, C, *spatial) array; ``(B, *spatial)`` with ``layout="compact"``
    """
    labels = np.asarray(labels)
    options = _with_defaults(kwargs)
    dtype = _check_dtype(options.pop("dtype"))
    _check_options(options["kind"], options["engine"], options["layout"])
    channels = () if options["layout"] == "compact" else (len(classes),)
    out = np.empty((labels.shape[0], *channels, *labels.shape[1:]), dtype=dtype)
    for item, item_out in zip(labels, out):
        _compute(item, classes, out=item_out, dtype=dtype, **options)
    return out


def expanded_channels(
    compact: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    outside: float | Sequence[float] = 1.0,
    ignore_label: int | None = None,
) -> Iterator[np.ndarray]:
    """The channels of ``expand_map(compact, labels, classes, outside, ignore_label=...)``,
    one at a time: for a check that must never hold the C channels at once.

    Yields
    ------
    channel : (*spatial) float32 array, for each class in order
    """
    codes = class_codes(labels, classes, ignore_label)
    values = np.broadcast_to(np.asarray(outside, dtype=np.float32), (len(classes),))
    compact = np.asarray(compact, dtype=np.float32)
    for c in range(len(classes)):
        channel = np.where(codes == c + 1, compact, values[c])
        channel[codes == len(classes) + 1] = 0  # the ignore label: 0 in every channel
        yield channel


def expand_map(
    compact: np.ndarray | None,
    labels: np.ndarray,
    classes: Sequence[int],
    outside: float | Sequence[float] = 1.0,
    kind: str = DEFAULT_KIND,
    ignore_label: int | None = None,
    renormalize: str | None = None,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """The full ``(C, *spatial)`` map from a compact one (or from the labels alone for ``ac``).

    Channel ``c`` is ``compact`` where ``labels == classes[c]`` and ``outside`` (or
    ``outside[c]``) elsewhere; voxels with the ignore label are 0 in every channel.  On
    the output of ``compute_maps(..., layout="compact")`` this is exactly
    ``compute_maps(..., layout="full")`` with the same arguments.

    Parameters
    ----------
    compact : (*spatial) float array, or None for ``kind="ac"``
        Each voxel's own-class value, as ``compute_maps(..., layout="compact")`` returns
        it, or a crop of it (together with the same crop of ``labels``).
    labels : (*spatial) integer array
        The labels the compact map was computed from (or the same crop of them).
    classes : sequence of int, length C
        The ordered class list, one output channel each.
    outside : float or sequence of C floats
        The value outside each class: 1 for the paper's map; ``ratio[c]`` for the
        authors' class-imbalance variant.
    kind : {"rrw", "ac"}
        ``ac`` needs no compact channel: ``expand_map(None, labels, classes, kind="ac")``
        is ``1 - one-hot`` (0 on the ignore label), equal to
        ``compute_maps(labels, classes, kind="ac")``.
    ignore_label : int, optional
        Label value that is 0 in every channel (it has no channel).
    renormalize : {None, "patch"}
        ``"patch"``: before expanding, divide the values of each class by the largest
        ``|value|`` of that class in ``compact``.  For a crop of a whole-volume compact
        map (values ``-EDT / M``, ``M`` the class's largest EDT in the volume) this gives
        ``-EDT / m``, ``m`` the class's largest EDT *within the crop*, to float32 rounding
        and exactly ``-1`` where ``m`` is reached: the seed's per-patch normalisation,
        with the distances still measured in the whole volume (a distance computed on the
        patch alone would also treat the patch border as a boundary-free edge and can
        differ near it).  A class whose values in the crop are all 0 stays 0.
    dtype : float32 or float16 (:data:`MAP_DTYPES`)
        Output dtype.

    Returns
    -------
    maps : (C, *labels.shape) array of ``dtype``
        Each channel has the memory order of ``labels``.

    Raises
    ------
    ValueError
        If a label value is neither in ``classes`` nor the ignore label (naming the
        values), if shapes differ, if ``outside`` has the wrong length, or if ``kind``
        has no compact form (``boundary``, ``kervadec``).
    """
    labels = np.asarray(labels)
    n_classes = len(classes)
    _check_expand_options(compact, kind, renormalize)
    outside = _check_outside(outside, n_classes)
    dtype = _check_dtype(dtype)
    codes = class_codes(labels, classes, ignore_label)
    if compact is not None:
        compact = np.asarray(compact)
        if compact.shape != labels.shape:
            raise ValueError(f"compact map has shape {compact.shape}; labels have {labels.shape}")
        if not np.issubdtype(compact.dtype, np.floating):
            raise ValueError(f"compact map has dtype {compact.dtype}; expected a float array")
    flip = _is_fortran(codes)
    if flip:  # work on the C-ordered transposed views; no data moves
        codes = codes.T
        compact = None if compact is None else compact.T
    codes = np.ascontiguousarray(codes)
    if renormalize == "patch":
        compact = _renormalized(compact, codes, n_classes)
    out = np.empty((n_classes, *codes.shape), dtype=dtype)
    _expand(out, compact, codes, n_classes, outside)
    return _transpose_spatial(out, "full") if flip else out


def _with_defaults(kwargs: dict) -> dict:
    """``kwargs`` over :func:`compute_maps`' own defaults (read from its signature, so they
    are stated once), without ``out``, which a batch allocates itself."""
    defaults = {name: parameter.default for name, parameter in inspect.signature(compute_maps).parameters.items()
                if parameter.default is not inspect.Parameter.empty and name != "out"}
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    return {**defaults, **kwargs}


def _compute(labels, classes, kind, spacing, slice_axis, engine, ignore_label, threads, layout, dtype, out):
    """The maps of one label array, written into ``out`` if given; returns them."""
    _check_options(kind, engine, layout)
    if not 1 <= labels.ndim <= 3:
        raise ValueError(f"labels must be 1D, 2D or 3D, got shape {labels.shape}")
    spacing = _check_spacing(spacing, labels.ndim)
    axis = None if slice_axis is None else _check_axis(slice_axis, labels.ndim)
    codes = class_codes(labels, classes, ignore_label)
    given = out
    flip = _is_fortran(codes)
    if flip:
        # Fortran-ordered labels (nibabel) are C-ordered seen transposed: the kernel runs
        # on that view, so every pass walks memory in order and no float map moves.
        codes = codes.T
        spacing = None if spacing is None else spacing[::-1]
        axis = None if axis is None else codes.ndim - 1 - axis
        out = None if out is None else _transpose_spatial(out, layout)
    maps = _compute_c(np.ascontiguousarray(codes), len(classes), kind, spacing, axis, engine, threads, layout,
                      dtype, out)
    if given is not None:
        return given
    return _transpose_spatial(maps, layout) if flip else maps


def _compute_c(codes, n_classes, kind, spacing, axis, engine, threads, layout, dtype, out):
    """:func:`_compute` on C-contiguous channel codes."""
    if layout == "compact":
        return _own_class_values(codes, n_classes, spacing, axis, engine, threads, dtype, out)
    if out is None:
        out = np.empty((n_classes, *codes.shape), dtype=dtype)
    ones = np.ones(n_classes)
    if kind == "ac":
        _expand(out, None, codes, n_classes, ones, threads=threads)
    elif kind == "rrw" and axis is None:
        _full_rrw_field(out, codes, n_classes, spacing, engine, threads)
    elif kind == "rrw":
        values = _own_class_values(codes, n_classes, spacing, axis, engine, threads, np.float32, None)
        _expand(out, values, codes, n_classes, ones, threads=threads)
    else:
        _boundary_maps(out, codes, n_classes, kind, spacing, axis, engine, threads)
    return out


def _is_fortran(array: np.ndarray) -> bool:
    """True for a Fortran-contiguous array that is not also C-contiguous."""
    return array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous


def _transpose_spatial(maps: np.ndarray, layout: str) -> np.ndarray:
    """Reverse the spatial axes (a view); the channel axis, if any, stays first."""
    if layout == "compact":
        return maps.T
    return maps.transpose(0, *range(maps.ndim - 1, 0, -1))


# ---------------------------------------------------------------------------------------
# rrw: each voxel's own-class value, then the channels


def _own_class_values(codes, n_classes, spacing, axis, engine, threads, dtype, out) -> np.ndarray:
    """The compact rrw map of C-contiguous ``codes``: ``-EDT / max`` of each voxel's class.

    Written into ``out`` if given, else returned as a new ``dtype`` array.  With ``axis``
    every slice along it is its own field (its own distances and maxima).
    """
    direct = out if out is not None and out.flags.c_contiguous else None
    if axis is None:
        values = _own_values_field(codes, n_classes, spacing, engine, threads, direct)
    else:
        values = direct if direct is not None else np.empty(codes.shape, dtype=np.float32)
        in_plane = None if spacing is None else tuple(s for a, s in enumerate(spacing) if a != axis)
        for i in range(codes.shape[axis]):
            index = (slice(None),) * axis + (i,)
            plane = np.ascontiguousarray(codes[index])  # edt needs a contiguous array (1D at least)
            values[index] = _own_values_field(plane, n_classes, in_plane, engine, threads, None).reshape(
                values[index].shape)
    if out is not None:
        if values is not out:
            np.copyto(out, values, casting="same_kind")
        return out
    return values if values.dtype == dtype else values.astype(dtype)


def _own_values_field(codes, n_classes, spacing, engine, threads, out) -> np.ndarray:
    """Compact rrw values of one field (a volume or a slice); ``out`` C-contiguous or None.

    Two chunked passes after the EDT: the per-class maxima, then the division.  The
    division (rather than a multiplication by a reciprocal) makes every value the float32
    rounding of ``-EDT / max`` and the largest exactly -1.
    """
    if codes.size == 0 or codes.min() == codes.max():
        # One code fills the field: its class is all -1 by definition, the ignore label 0.
        # (The EDT has no finite answer there: no voxel of another label exists.)
        values = out if out is not None else np.empty(codes.shape, dtype=np.float32)
        values.fill(-1.0 if codes.size and codes.flat[0] <= n_classes else 0.0)
        return values
    distance = _inside_distance(codes, n_classes, spacing, engine, threads)
    runs = list(_chunk_runs(codes))  # found once, used by both passes
    # Both passes split the chunks over the case's threads: numpy's loops release the GIL,
    # so one large case uses the cores after the EDT too (each thread owns its chunks).
    shares = _shares(runs, threads)
    partial = _in_threads(lambda share: _class_maxima_and_boxes(codes, n_classes + 2, values=distance, runs=share)[0], shares)
    maxima = np.maximum.reduce(partial)
    values = distance if out is None else out
    divisors = _rrw_divisors(maxima)
    _in_threads(lambda share: _divide_by_class(distance.reshape(-1), divisors, values.reshape(-1), share), shares)
    return values


def _shares(items: list, threads: int) -> list[list]:
    """``items`` cut into ``threads`` contiguous shares (fewer if there are fewer items)."""
    threads = max(1, min(threads, len(items)))
    bounds = np.linspace(0, len(items), threads + 1).astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _in_threads(function, items: list) -> list:
    """``[function(item) for item in items]``, one thread per item (in this thread if one)."""
    if len(items) <= 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(function, items))


def _full_rrw_field(out, codes, n_classes, spacing, engine, threads) -> None:
    """The full rrw map of a whole volume: each channel divides the distances in its box.

    The same float32 division as the compact layout (so ``expand_map`` of that equals
    this bit for bit), without writing the compact volume first.
    """
    if codes.size == 0 or codes.min() == codes.max():
        values = _own_values_field(codes, n_classes, spacing, engine, threads, None)
        _expand(out, values, codes, n_classes, np.ones(n_classes))
        return
    distance = _inside_distance(codes, n_classes, spacing, engine, threads)
    maxima, boxes = _class_maxima_and_boxes(codes, n_classes + 2, values=distance, boxes=True)
    _expand(out, distance, codes, n_classes, np.ones(n_classes), boxes, _rrw_divisors(maxima), threads)


def _rrw_divisors(maxima: np.ndarray) -> np.ndarray:
    """Divisor of each code's distances: ``-max``; the ignore code (last) ``inf``, giving 0."""
    divisors = -maxima
    divisors[-1] = np.inf
    return divisors


def _divide_by_class(values: np.ndarray, divisors: np.ndarray, out: np.ndarray, runs: list) -> None:
    """``out = values / divisors[code]`` over flat arrays, chunked, one divisor per run."""
    for start, stop, starts, run_codes in runs:
        lengths = np.diff(starts, append=stop - start)
        per_voxel = np.repeat(divisors[run_codes].astype(values.dtype), lengths)
        np.divide(values[start:stop], per_voxel, out=out[start:stop], casting="same_kind")


def _chunk_runs(codes: np.ndarray):
    """Runs of equal values of C-contiguous ``codes`` in memory order, chunk by chunk.

    Yields ``(start, stop, starts, run_codes)`` for each chunk ``flat[start:stop]``:
    where its runs start (int32, within the chunk) and their codes.  Real labels have
    long runs (a few per row), so the passes that follow work per run, not per voxel.
    """
    flat = codes.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK]
        changes = np.flatnonzero(chunk[1:] != chunk[:-1]).astype(np.int32)
        changes += 1
        starts = np.concatenate((np.zeros(1, np.int32), changes))
        yield start, start + chunk.size, starts, chunk[starts]


def _renormalized(compact: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """``compact`` divided, per class, by that class's largest ``|value|`` in it (a copy)."""
    work_dtype = np.result_type(compact.dtype, np.float32)
    values = np.array(compact, dtype=work_dtype, order="C")  # codes are C-contiguous
    if values.size == 0:
        return values
    runs = list(_chunk_runs(codes))
    maxima, _ = _class_maxima_and_boxes(codes, n_classes + 2, values=values, absolute=True, runs=runs)
    divisors = np.where(maxima > 0, maxima, 1)  # an all-zero class (or the ignore label) stays
    _divide_by_class(values.reshape(-1), divisors, values.reshape(-1), runs)
    return values


def _expand(out, values, codes, n_classes, outside, boxes=None, divisors=None, threads=1) -> None:
    """Fill ``out`` (C, *codes.shape) from C-contiguous ``codes``: class c gets ``values``
    (0 if None; ``values / divisors[c + 1]`` if divisors are given), other voxels
    ``outside[c]``, the ignore label 0.

    Each channel is filled once (the output's own cost); then each class is written only
    inside its bounding box, and the ignore label set to 0 inside its own.
    """
    if boxes is None:
        _, boxes = _class_maxima_and_boxes(codes, n_classes + 2, boxes=True)
    ignore_box = boxes[n_classes + 1]
    ignored = None if ignore_box is None else codes[ignore_box] == n_classes + 1

    def fill(channels: list[int]) -> None:  # channels are disjoint: the threads share nothing they write
        for c in channels:
            _fill_channel(out[c], c, values, codes, outside, boxes, divisors, ignore_box, ignored)

    _in_threads(fill, _shares(list(range(n_classes)), threads))


def _fill_channel(channel, c, values, codes, outside, boxes, divisors, ignore_box, ignored) -> None:
    """Channel ``c`` of :func:`_expand`."""
    channel.fill(outside[c])
    for part_codes, part_values, part_out in _parts(boxes[c + 1], codes, values, channel):
        mask = part_codes == c + 1
        if values is None:
            np.copyto(part_out, 0, where=mask)
        elif divisors is None:
            np.copyto(part_out, part_values, where=mask, casting="same_kind")
        else:
            np.divide(part_values, divisors[c + 1], out=part_out, where=mask, casting="same_kind")
    if ignored is not None:
        np.copyto(channel[ignore_box], 0, where=ignored)


def _parts(box, codes, values, channel):
    """Matching pieces of ``codes``, ``values`` (or None) and ``channel`` that cover ``box``.

    Pieces of about ``_CHUNK`` voxels, so that their masks stay in cache and reuse the
    same memory.  Either the box's span of flat memory (from its first corner to its
    last), in contiguous ranges, or slabs of the box itself: contiguous masked passes
    cost about a third of strided ones per voxel, so the span wins unless it is more
    than 3 times the box (thin classes spread along the slowest axis).
    """
    if box is None:
        return
    shape = codes.shape
    first = int(np.ravel_multi_index([s.start for s in box], shape))
    last = int(np.ravel_multi_index([s.stop - 1 for s in box], shape)) + 1
    volume = int(np.prod([s.stop - s.start for s in box]))
    contiguous = channel.flags.c_contiguous and (values is None or values.flags.c_contiguous)
    if contiguous and last - first <= 3 * volume:
        flat_codes, flat_out = codes.reshape(-1), channel.reshape(-1)
        flat_values = None if values is None else values.reshape(-1)
        for start in range(first, last, _CHUNK):
            piece = slice(start, min(start + _CHUNK, last))
            yield flat_codes[piece], None if values is None else flat_values[piece], flat_out[piece]
        return
    rows = max(1, _CHUNK // max(1, volume // (box[0].stop - box[0].start)))  # first-axis steps per piece
    for start in range(box[0].start, box[0].stop, rows):
        part = (slice(start, min(start + rows, box[0].stop)), *box[1:])
        yield codes[part], None if values is None else values[part], channel[part]


def _class_maxima_and_boxes(codes: np.ndarray, size: int, values: np.ndarray | None = None, absolute: bool = False,
                  boxes: bool = False, runs: list | None = None) -> tuple[np.ndarray | None, list | None]:
    """One chunked pass over C-contiguous ``codes``: each code's largest value and box.

    Parameters
    ----------
    codes : (*shape) C-contiguous unsigned array, values below ``size``
    size : int
        Number of codes.
    values : (*shape) C-contiguous float array, optional
        Give the largest value of each code (``|value|`` if ``absolute``); 0 if absent.
    boxes : bool
        Give the bounding box of each code, as ``scipy.ndimage.find_objects`` (None if
        absent).
    runs : list, optional
        ``list(_chunk_runs(codes))``, if the caller has it already.

    Returns
    -------
    maxima : (size,) array of values.dtype, or None
    boxes : list of ``size`` tuples of slices (or None), or None

    Runs of equal codes along memory carry the work: one ``np.maximum.reduceat`` per
    run, and only the runs (few, on real labels) go through the unbuffered ufunc.at.
    For the boxes, a run within one row spans its own columns, a run over several rows
    all columns, and so on up: a few times faster than ``find_objects`` on every voxel.
    """
    flat_values = None if values is None else values.reshape(-1)
    maxima = None if values is None else np.zeros(size, dtype=values.dtype)
    low = np.full((codes.ndim, size), np.iinfo(np.int64).max)
    high = np.full((codes.ndim, size), -1)
    block = [int(np.prod(codes.shape[axis:])) for axis in range(codes.ndim)]  # voxels per step of axis - 1
    for start, stop, starts, run_codes in _chunk_runs(codes) if runs is None else runs:
        if maxima is not None:
            chunk = np.abs(flat_values[start:stop]) if absolute else flat_values[start:stop]
            np.maximum.at(maxima, run_codes, np.maximum.reduceat(chunk, starts))
        if boxes:
            first = starts.astype(np.int64) + start
            last = np.append(first[1:] - 1, stop - 1)
            first_at, last_at = np.unravel_index(first, codes.shape), np.unravel_index(last, codes.shape)
            for axis in range(codes.ndim):
                lo, hi = first_at[axis], last_at[axis]
                if axis:
                    spans = first // block[axis] != last // block[axis]  # crosses a row (plane, ...)
                    lo, hi = np.where(spans, 0, lo), np.where(spans, codes.shape[axis] - 1, hi)
                np.minimum.at(low[axis], run_codes, lo)
                np.maximum.at(high[axis], run_codes, hi)
    if not boxes:
        return maxima, None
    return maxima, [None if high[0, code] < 0 else
                    tuple(slice(int(low[axis, code]), int(high[axis, code]) + 1) for axis in range(codes.ndim))
                    for code in range(size)]


# ---------------------------------------------------------------------------------------
# boundary and kervadec: every class needs its own outside distance


def _boundary_maps(out, codes, n_classes, kind, spacing, axis, engine, threads) -> None:
    """Fill ``out`` (C, *codes.shape) with boundary or kervadec maps, per field."""
    if axis is None:
        _boundary_field(out, codes, n_classes, kind, spacing, engine, threads)
        return
    in_plane = None if spacing is None else tuple(s for a, s in enumerate(spacing) if a != axis)
    for i in range(codes.shape[axis]):
        index = (slice(None),) * axis + (i,)
        plane = np.ascontiguousarray(codes[index])  # edt needs a contiguous array
        _boundary_field(out[(slice(None), *index)], plane, n_classes, kind, in_plane, engine, threads)


def _boundary_field(out, codes, n_classes, kind, spacing, engine, threads) -> None:
    """One field (a volume or a slice) of boundary or kervadec maps."""
    if codes.size == 0 or codes.min() == codes.max():
        out.fill(0)  # every class is empty or fills the field; or all is ignored
        return
    inside = _inside_distance(codes, n_classes, spacing, engine, threads)
    inner_boundary = _label_change(codes) if kind == "kervadec" and spacing is not None else None
    ignored = codes == n_classes + 1
    ignored = ignored if ignored.any() else None
    for c in range(n_classes):
        channel = out[c]
        mask = codes == c + 1
        if not mask.any():
            channel.fill(0)
            continue
        _boundary_channel(channel, inside, mask, kind, spacing, engine, threads)
        if inner_boundary is not None:
            np.copyto(channel, 0, where=mask & inner_boundary)
        if ignored is not None:
            np.copyto(channel, 0, where=ignored)


def _boundary_channel(channel, inside, mask, kind, spacing, engine, threads) -> None:
    """EDT(not M) outside ``mask``; -EDT(M), or -(EDT(M) - unit) for kervadec, inside."""
    np.copyto(channel, _distance(~mask, spacing, engine, threads), casting="unsafe")
    if kind == "boundary":
        np.negative(inside, out=channel, where=mask, casting="unsafe")
    else:
        unit = np.float32(1.0 if spacing is None else min(spacing))
        np.subtract(unit, inside, out=channel, where=mask, casting="unsafe")


# ---------------------------------------------------------------------------------------
# Distances


def _inside_distance(codes, n_classes, spacing, engine, threads) -> np.ndarray:
    """Float32 array: each voxel's distance to the nearest voxel with another code."""
    if engine == "edt":
        return _edt(codes, spacing, threads)
    inside = np.zeros(codes.shape, dtype=np.float32)
    for c in range(n_classes):  # the ignore label needs none: its values are 0
        mask = codes == c + 1
        if mask.any() and not mask.all():  # EDT is 0 for an empty class, undefined for a full one
            np.copyto(inside, _distance(mask, spacing, "scipy", threads), where=mask, casting="unsafe")
    return inside


def _distance(mask, spacing, engine, threads) -> np.ndarray:
    """EDT of a boolean mask: for each True voxel, distance to the nearest False one."""
    if engine == "edt":
        return _edt(mask, spacing, threads)
    # Imported here: scipy.ndimage costs ~0.2 s to import, paid by every process and worker
    # of a run that does not use the scipy engine.
    import scipy.ndimage as ndi

    return ndi.distance_transform_edt(mask, sampling=spacing)


def _edt(labels: np.ndarray, spacing, threads: int) -> np.ndarray:
    """The ``edt`` package's multi-label EDT (float32); a bool array is one label.

    Called on C-contiguous arrays only, with ``spacing`` in array-axis order: that is
    unambiguous in every ``edt`` version (older ones read Fortran order differently).
    """
    import edt  # imported here so `import rwmaps_cli` stays light

    labels = np.ascontiguousarray(labels)
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


# ---------------------------------------------------------------------------------------
# Label values to channel codes, and argument checks


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
        Same memory order as ``labels`` when that is C or Fortran order.

    Raises
    ------
    ValueError
        Naming the offending values when ``labels`` has non-integer, negative or unknown
        values.
    """
    class_values = check_classes(classes, ignore_label)
    labels = _as_integer_labels(labels)
    known = class_values if ignore_label is None else class_values + [int(ignore_label)]
    code_dtype = np.min_scalar_type(len(known))
    if not labels.size:
        return np.zeros(labels.shape, dtype=code_dtype)
    low, top = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"negative label values: {_preview(np.unique(labels[labels < 0]))}")
    if known and known == list(range(known[0], known[0] + len(known))) and known[0] <= low and top <= known[-1]:
        # Consecutive values in order (0..C-1, ignore label C: the usual case): one
        # vectorised subtraction instead of a table lookup, and nothing left to check.
        if known[0] == 0:
            return np.add(labels, 1, dtype=code_dtype, casting="unsafe")
        return np.subtract(labels, known[0] - 1, dtype=code_dtype, casting="unsafe")
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
    # A histogram beats sorting (O(n) against O(n log n)) whenever the values are small, as
    # label values are; ravel(order="K") reads nibabel's Fortran order without a copy.
    # In chunks: bincount converts its input to intp, a whole-volume int64 copy otherwise.
    if labels.size and (labels.dtype.itemsize <= 2 or int(labels.max()) < _LUT_MAX_LABEL):
        flat = labels.ravel(order="K")
        counts = np.zeros(int(flat.max()) + 1, dtype=np.int64)
        for start in range(0, flat.size, _CHUNK):
            chunk = np.bincount(flat[start:start + _CHUNK])
            counts[: chunk.size] += chunk
        return np.flatnonzero(counts).astype(np.int64)
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


def check_classes(classes: Sequence[int], ignore_label: int | None = None) -> list[int]:
    """The one rule for a class list, everywhere (kernels, torch, the command line): at least
    one value, integers, distinct, non-negative, and not the ignore label.  The values as
    ints; ValueError saying which rule fails."""
    values = [int(v) for v in classes]
    if not values:
        raise ValueError("classes is empty: a map has one channel per class, so it needs at least one")
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
    if dtype not in MAP_DTYPES:
        raise ValueError(f"dtype must be {' or '.join(map(str, MAP_DTYPES))}, got {dtype}")
    return dtype


def _check_options(kind: str, engine: str, layout: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    check_layout(kind, layout)


def check_layout(kind: str, layout: str) -> None:
    """ValueError, naming the way out, when ``kind`` has no map in ``layout``.

    Only ``rrw`` has a compact form: ``boundary`` and ``kervadec`` need every class's
    outside distance, and ``ac`` needs no file at all.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if layout == "compact" and kind == "ac":
        raise ValueError("an ac map needs no compact file: it is 1 - one-hot of the labels, which a loader "
                         "computes with rwmaps_cli.expand_map(None, labels, classes, kind='ac')")
    if layout == "compact" and kind != "rrw":
        raise ValueError(f"kind {kind!r} has no compact layout: each class's outside distance is "
                         "different information; use layout='full'")


def _check_expand_options(compact, kind: str, renormalize) -> None:
    if kind not in ("rrw", "ac"):
        raise ValueError(f"kind {kind!r} has no compact form; expand_map takes 'rrw' or 'ac'")
    if kind == "ac" and compact is not None:
        raise ValueError("an ac map needs no compact channel: call expand_map(None, labels, classes, kind='ac')")
    if kind == "rrw" and compact is None:
        raise ValueError("compact is None: only kind='ac' is made from the labels alone")
    if renormalize not in (None, "patch"):
        raise ValueError(f"unknown renormalize {renormalize!r}; expected None or 'patch'")
    if renormalize is not None and kind == "ac":
        raise ValueError("renormalize applies to rrw maps, not ac")


def _check_outside(outside, n_classes: int) -> np.ndarray:
    values = np.asarray(outside, dtype=np.float64)
    if values.ndim == 0:
        return np.full(n_classes, float(values))
    if values.shape != (n_classes,):
        raise ValueError(f"outside has {values.size} values for {n_classes} classes; give one or one per class")
    return values
