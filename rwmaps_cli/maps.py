"""Region-wise maps from label arrays: the pure kernels (no files, no printing).

Every function here takes a label array and returns float maps of shape
``(C, *labels.shape)``, one channel per entry of ``classes``.  The exact definitions of
the kinds (``rrw``, ``boundary``, ``kervadec``, ``ac``, ``sdf``) are the table of ``README.md`` ("The
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
from dataclasses import dataclass

import numpy as np

from .contract import (  # the contract every engine shares; re-exported names are the public API's
    DEFAULT_DEVICE,
    DEFAULT_ENGINE,
    DEFAULT_KIND,
    DEFAULT_LAYOUT,
    DEFAULT_MAX_CLASSES,
    ENGINES,
    KINDS,
    LAYOUTS,
    LOOKUP_TABLE_LIMIT,
    MAP_DTYPES,
    Codes,
    MapRequest,
    check_dtype,
    check_engine,
    check_expansion,
    code_table,
    known_labels,
    rrw_divisors,
    sorted_codes,
    uniform_field_value,
)
from .errors import UnknownLabelsError

__all__ = ["DEFAULT_ENGINE", "DEFAULT_KIND", "DEFAULT_LAYOUT", "DEFAULT_MAX_CLASSES", "ENGINES", "KINDS", "LAYOUTS",
           "MAP_DTYPES", "DistanceTransform", "class_codes", "compute_maps", "compute_maps_batch", "expand_map",
           "expanded_channels", "unique_labels"]

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
    device: str = DEFAULT_DEVICE,
) -> np.ndarray:
    """Compute the region-wise maps of one label array.

    Parameters
    ----------
    labels : (*spatial) integer array, 1D to 3D (2D and 3D are the usual cases)
        Integer-valued float arrays are accepted.  Any memory order; the result keeps it.
    classes : sequence of int, length C
        Ordered label values, one output channel each.  A class absent from ``labels``
        still gets its channel (the "empty class" column of the table above).
    kind : {"rrw", "boundary", "kervadec", "ac", "sdf"}
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
    engine : {"edt", "scipy", "torch"}
        ``edt``: one multi-label distance transform for all classes (fast);
        ``scipy``: one ``scipy.ndimage.distance_transform_edt`` per class (reference);
        ``torch``: the PyTorch engine's multi-label transform on ``device`` (a GPU), the
        same maps within float32 rounding (needs ``rwmaps_cli[torch]``).
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
    device : str
        The ``torch`` engine's device: ``"auto"`` (a GPU when PyTorch sees one), ``"cpu"``,
        ``"cuda"``, ``"cuda:1"``...

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
    request = MapRequest.checked(classes, labels.shape, kind, layout, spacing, slice_axis, ignore_label)
    _check_engine_device(engine, device)
    if out is not None and out.shape != request.map_shape(labels.shape):
        raise ValueError(f"out has shape {out.shape}; expected {request.map_shape(labels.shape)}")
    dtype = check_dtype(dtype if out is None else out.dtype)
    return _compute(labels, _Job(request, DistanceTransform(engine, threads, device)), dtype, out)


def _check_engine_device(engine: str, device: str) -> None:
    """ValueError unless ``engine`` is known and ``device`` is one it can compute on here
    (``device`` chooses only for the ``torch`` engine; PyTorch is imported only for it)."""
    check_engine(engine)
    if engine != "torch":
        if device != DEFAULT_DEVICE:
            raise ValueError(f"device {device!r} chooses where engine 'torch' computes; this call uses {engine!r}")
        return
    try:
        from .torch_engine import resolve_device  # PyTorch is an optional extra
    except ImportError:
        raise ImportError("engine 'torch' needs PyTorch: pip install -e '.[torch]' in the rwmaps clone") from None
    resolve_device(device)


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
    request = MapRequest.checked(classes, labels.shape[1:], options["kind"], options["layout"], options["spacing"],
                                 options["slice_axis"], options["ignore_label"])
    _check_engine_device(options["engine"], options["device"])
    job = _Job(request, DistanceTransform(options["engine"], options["threads"], options["device"]))
    out = np.empty((labels.shape[0], *request.map_shape(labels.shape[1:])), dtype=check_dtype(options["dtype"]))
    for item, item_out in zip(labels, out):
        _compute(item, job, out.dtype, item_out)
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
    ignore = Codes(len(classes)).ignore
    for c in range(len(classes)):
        channel = np.where(codes == Codes.of_class(c), compact, values[c])
        channel[codes == ignore] = 0  # the ignore label: 0 in every channel
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
    check_expansion(kind, compact is not None, renormalize)
    outside = _check_outside(outside, n_classes)
    dtype = check_dtype(dtype)
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
    _expand(out, codes, _Fill(outside, compact))
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


@dataclass(frozen=True)
class DistanceTransform:
    """What the numpy engine's distances come from: the one thing an engine supplies.

    Attributes
    ----------
    engine : {"edt", "scipy", "torch"}
        ``edt``: the ``edt`` package's multi-label transform (all classes in one pass);
        ``scipy``: ``scipy.ndimage.distance_transform_edt`` once per class (the reference);
        ``torch``: the PyTorch engine's multi-label pass
        (:func:`rwmaps_cli.torch_engine.inside_distance`) on ``device``.
    threads : int
        Threads for the ``edt`` engine, and for ``torch`` on the CPU.
    device : str
        The ``torch`` engine's device (:data:`~rwmaps_cli.contract.DEFAULT_DEVICE`).
    """

    engine: str = DEFAULT_ENGINE
    threads: int = 1
    device: str = DEFAULT_DEVICE

    def inside(self, codes: np.ndarray, n_classes: int, spacing) -> np.ndarray:
        """Float32 array: each voxel's distance to the nearest voxel with another code."""
        if self.engine == "edt":
            return _edt(codes, spacing, self.threads)
        if self.engine == "torch":
            return self._torch(codes, spacing)
        inside = np.zeros(codes.shape, dtype=np.float32)
        for c in range(n_classes):  # the ignore label needs none: its values are 0
            mask = codes == Codes.of_class(c)
            if mask.any() and not mask.all():  # EDT is 0 for an empty class, undefined for a full one
                np.copyto(inside, self.of_mask(mask, spacing), where=mask, casting="unsafe")
        return inside

    def of_mask(self, mask: np.ndarray, spacing) -> np.ndarray:
        """The EDT of a boolean mask: each True voxel's distance to the nearest False one
        (0 on False voxels)."""
        if self.engine == "edt":
            return _edt(mask, spacing, self.threads)
        if self.engine == "torch":
            return np.where(mask, self._torch(mask, spacing), np.float32(0))
        # Imported here: scipy.ndimage costs ~0.2 s to import, paid by every process and worker
        # of a run that does not use the scipy engine.
        import scipy.ndimage as ndi

        return ndi.distance_transform_edt(mask, sampling=spacing)

    def _torch(self, codes: np.ndarray, spacing) -> np.ndarray:
        from .torch_engine import numpy_inside_distance  # PyTorch is an optional extra

        return numpy_inside_distance(codes, spacing, self.device, self.threads)


@dataclass(frozen=True)
class _Job:
    """One call of the numpy engine: the checked request and the distance transform.

    Past :func:`_compute`, the request's spacing and slice axis are in the order of the
    C-ordered codes the kernel runs on.
    """

    request: MapRequest
    distances: DistanceTransform

    @property
    def codes(self) -> Codes:
        return self.request.codes

    @property
    def threads(self) -> int:
        return self.distances.threads


def _compute(labels: np.ndarray, job: _Job, dtype: np.dtype, out: np.ndarray | None) -> np.ndarray:
    """The maps of one label array, written into ``out`` if given; returns them."""
    codes = class_codes(labels, job.request.classes, job.request.ignore_label)
    given = out
    flip = _is_fortran(codes)
    if flip:
        # Fortran-ordered labels (nibabel) are C-ordered seen transposed: the kernel runs
        # on that view, so every pass walks memory in order and no float map moves.
        codes = codes.T
        job = _Job(job.request.reversed_axes(codes.ndim), job.distances)
        out = None if out is None else _transpose_spatial(out, job.request.layout)
    maps = _compute_c(job, np.ascontiguousarray(codes), dtype, out)
    if given is not None:
        return given
    return _transpose_spatial(maps, job.request.layout) if flip else maps


def _compute_c(job: _Job, codes: np.ndarray, dtype: np.dtype, out: np.ndarray | None) -> np.ndarray:
    """:func:`_compute` on C-contiguous channel codes."""
    request = job.request
    if request.layout == "compact":
        return _own_class_values(job, codes, dtype, out)
    if out is None:
        out = np.empty(request.map_shape(codes.shape), dtype=dtype)
    ones = np.ones(len(request.classes))
    if request.kind == "ac":
        _expand(out, codes, _Fill(ones), job.threads)
    elif request.kind == "rrw" and request.slice_axis is None:
        _full_rrw_field(job, codes, out)
    elif request.kind == "rrw":
        _expand(out, codes, _Fill(ones, _own_class_values(job, codes, np.float32, None)), job.threads)
    else:
        _boundary_maps(job, codes, out)
    return out


def _fields(job: _Job, codes: np.ndarray) -> Iterator[tuple[tuple, np.ndarray, tuple[float, ...] | None]]:
    """The fields the maps are computed on: ``(index, field codes, field spacing)``.

    The whole volume (index ``()``), or with a slice axis each slice along it, as a
    C-contiguous copy (``edt`` needs a contiguous array) with the in-plane spacing.
    """
    axis = job.request.slice_axis
    if axis is None:
        yield (), codes, job.request.spacing
        return
    in_plane = job.request.in_plane_spacing()
    for i in range(codes.shape[axis]):
        index = (slice(None),) * axis + (i,)
        yield index, np.ascontiguousarray(codes[index]), in_plane


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


def _own_class_values(job: _Job, codes: np.ndarray, dtype: np.dtype, out: np.ndarray | None) -> np.ndarray:
    """The compact rrw map of C-contiguous ``codes``: ``-EDT / max`` of each voxel's class.

    Written into ``out`` if given, else returned as a new ``dtype`` array.  With a slice
    axis every slice along it is its own field (its own distances and maxima).
    """
    direct = out if out is not None and out.flags.c_contiguous else None
    if job.request.slice_axis is None:
        values = _own_values_field(job, codes, job.request.spacing, direct)
    else:
        values = direct if direct is not None else np.empty(codes.shape, dtype=np.float32)
        for index, plane, in_plane in _fields(job, codes):
            values[index] = _own_values_field(job, plane, in_plane, None).reshape(values[index].shape)
    if out is not None:
        if values is not out:
            np.copyto(out, values, casting="same_kind")
        return out
    return values if values.dtype == dtype else values.astype(dtype)


def _own_values_field(job: _Job, codes: np.ndarray, spacing, out: np.ndarray | None) -> np.ndarray:
    """Compact rrw values of one field (a volume or a slice); ``out`` C-contiguous or None.

    Two chunked passes after the EDT: the per-class maxima, then the division
    (:func:`rwmaps_cli.contract.rrw_divisors`).
    """
    n_classes = job.codes.n_classes
    if codes.size == 0 or codes.min() == codes.max():
        values = out if out is not None else np.empty(codes.shape, dtype=np.float32)
        values.fill(uniform_field_value("rrw", int(codes.flat[0]), n_classes) if codes.size else 0.0)
        return values
    distance = job.distances.inside(codes, n_classes, spacing)
    runs = list(_chunk_runs(codes))  # found once, used by both passes
    # Both passes split the chunks over the case's threads: numpy's loops release the GIL,
    # so one large case uses the cores after the EDT too (each thread owns its chunks).
    shares = _shares(runs, job.threads)
    partial = _in_threads(lambda share: _class_maxima_and_boxes(codes, job.codes.count, values=distance,
                                                                runs=share)[0], shares)
    divisors = rrw_divisors(np.maximum.reduce(partial))
    values = distance if out is None else out
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


def _full_rrw_field(job: _Job, codes: np.ndarray, out: np.ndarray) -> None:
    """The full rrw map of a whole volume: each channel divides the distances in its box.

    The same float32 division as the compact layout (so ``expand_map`` of that equals
    this bit for bit), without writing the compact volume first.
    """
    ones = np.ones(job.codes.n_classes)
    if codes.size == 0 or codes.min() == codes.max():
        _expand(out, codes, _Fill(ones, _own_values_field(job, codes, job.request.spacing, None)))
        return
    distance = job.distances.inside(codes, job.codes.n_classes, job.request.spacing)
    maxima, boxes = _class_maxima_and_boxes(codes, job.codes.count, values=distance, boxes=True)
    _expand(out, codes, _Fill(ones, distance, rrw_divisors(maxima), boxes), job.threads)


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
    maxima, _ = _class_maxima_and_boxes(codes, Codes(n_classes).count, values=values, absolute=True, runs=runs)
    divisors = np.where(maxima > 0, maxima, 1)  # an all-zero class (or the ignore label) stays
    _divide_by_class(values.reshape(-1), divisors, values.reshape(-1), runs)
    return values


@dataclass(frozen=True)
class _Fill:
    """What :func:`_expand` writes into each class's voxels, and around them.

    Attributes
    ----------
    outside : (C,) float array
        Channel ``c``'s value outside class ``c``.
    values : float array of the codes' shape, or None
        A class's voxels get ``values`` (0 if None), divided by ``divisors[code]`` if given.
    divisors : (codes.count,) float array, or None
    boxes : list of per-code bounding boxes, or None to find them
    """

    outside: np.ndarray
    values: np.ndarray | None = None
    divisors: np.ndarray | None = None
    boxes: list | None = None


def _expand(out: np.ndarray, codes: np.ndarray, fill: _Fill, threads: int = 1) -> None:
    """Fill ``out`` (C, *codes.shape) from C-contiguous ``codes`` as ``fill`` says; the
    ignore label is 0 in every channel.

    Each channel is filled once (the output's own cost); then each class is written only
    inside its bounding box, and the ignore label set to 0 inside its own.
    """
    codes_of = Codes(out.shape[0])
    boxes = fill.boxes if fill.boxes is not None else _class_maxima_and_boxes(codes, codes_of.count, boxes=True)[1]
    ignore_box = boxes[codes_of.ignore]
    ignored = None if ignore_box is None else codes[ignore_box] == codes_of.ignore

    def fill_channels(channels: list[int]) -> None:  # disjoint channels: the threads share nothing they write
        for c in channels:
            _fill_channel(out[c], c, codes, fill, boxes[Codes.of_class(c)])
            if ignored is not None:
                np.copyto(out[c][ignore_box], 0, where=ignored)

    _in_threads(fill_channels, _shares(list(range(codes_of.n_classes)), threads))


def _fill_channel(channel: np.ndarray, c: int, codes: np.ndarray, fill: _Fill, box) -> None:
    """Channel ``c`` of :func:`_expand`, but for the ignore label."""
    channel.fill(fill.outside[c])
    code = Codes.of_class(c)
    for part_codes, part_values, part_out in _parts(box, codes, fill.values, channel):
        mask = part_codes == code
        if fill.values is None:
            np.copyto(part_out, 0, where=mask)
        elif fill.divisors is None:
            np.copyto(part_out, part_values, where=mask, casting="same_kind")
        else:
            np.divide(part_values, fill.divisors[code], out=part_out, where=mask, casting="same_kind")


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


def _boundary_maps(job: _Job, codes: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` (C, *codes.shape) with boundary, kervadec or sdf maps, field by field."""
    for index, field, spacing in _fields(job, codes):
        _boundary_field(job, field, spacing, out[(slice(None), *index)])


def _boundary_field(job: _Job, codes: np.ndarray, spacing, out: np.ndarray) -> None:
    """One field (a volume or a slice) of boundary, kervadec or sdf maps."""
    kind, codes_of = job.request.kind, job.codes
    if codes.size == 0 or codes.min() == codes.max():
        # every class is empty or fills the field; or all is ignored
        out.fill(uniform_field_value(kind, int(codes.flat[0]), codes_of.n_classes) if codes.size else 0.0)
        return
    inside = job.distances.inside(codes, codes_of.n_classes, spacing)
    # The inner boundary is exactly 0: always in sdf, in kervadec where the spacing makes
    # -(EDT - unit) miss it (anisotropic grids).
    inner_boundary = _label_change(codes) if kind == "sdf" or (kind == "kervadec" and spacing is not None) else None
    inside_maxima = _class_maxima_and_boxes(codes, codes_of.count, values=inside)[0] if kind == "sdf" else None
    ignored = codes == codes_of.ignore
    ignored = ignored if ignored.any() else None
    for c in range(codes_of.n_classes):
        channel = out[c]
        mask = codes == Codes.of_class(c)
        if not mask.any():
            channel.fill(0)
            continue
        if kind == "sdf":
            _sdf_channel(job, channel, inside, inside_maxima[Codes.of_class(c)], mask, spacing)
        else:
            _boundary_channel(job, channel, inside, mask, spacing)
        if inner_boundary is not None:
            np.copyto(channel, 0, where=mask & inner_boundary)
        if ignored is not None:
            np.copyto(channel, 0, where=ignored)


def _boundary_channel(job: _Job, channel: np.ndarray, inside: np.ndarray, mask: np.ndarray, spacing) -> None:
    """EDT(not M) outside ``mask``; -EDT(M), or -(EDT(M) - unit) for kervadec, inside."""
    np.copyto(channel, job.distances.of_mask(~mask, spacing), casting="unsafe")
    if job.request.kind == "boundary":
        np.negative(inside, out=channel, where=mask, casting="unsafe")
    else:
        unit = np.float32(MapRequest.kervadec_unit(spacing))
        np.subtract(unit, inside, out=channel, where=mask, casting="unsafe")


def _sdf_channel(job: _Job, channel: np.ndarray, inside: np.ndarray, inside_max: float, mask: np.ndarray,
                 spacing) -> None:
    """``EDT(not M) / max EDT(not M)`` outside ``mask``, ``-EDT(M) / max EDT(M)`` inside (the
    caller zeroes the inner boundary): DTC's normalised signed distance, per class."""
    outside = job.distances.of_mask(~mask, spacing)
    np.divide(outside, np.float32(outside.max()), out=channel, casting="unsafe")
    np.divide(inside, np.float32(-inside_max), out=channel, where=mask, casting="unsafe")


# ---------------------------------------------------------------------------------------
# Distances


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

    The codes are :class:`rwmaps_cli.contract.Codes`: class ``classes[c]`` becomes
    ``c + 1``, ``ignore_label`` becomes ``C + 1`` (the ``edt`` package treats 0 as
    background with no distance).

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
    known = known_labels(classes, ignore_label)  # the classes' rule (contract.check_classes) and code order
    class_values = known[:len(classes)]
    labels = _as_integer_labels(labels)
    code_dtype = Codes.code_dtype(len(known))
    if not labels.size:
        return np.zeros(labels.shape, dtype=code_dtype)
    low, top = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"negative label values: {_preview(np.unique(labels[labels < 0]))}")
    if known == list(range(known[0], known[0] + len(known))) and known[0] <= low and top <= known[-1]:
        # Consecutive values in order (0..C-1, ignore label C: the usual case): one
        # vectorised subtraction instead of a table lookup, and nothing left to check.
        if known[0] == 0:
            return np.add(labels, 1, dtype=code_dtype, casting="unsafe")
        return np.subtract(labels, known[0] - 1, dtype=code_dtype, casting="unsafe")
    table = code_table(known, top)
    if table is not None:
        codes = table[labels]
    else:
        values, value_codes = sorted_codes(known)
        pos = np.clip(np.searchsorted(values, labels), 0, len(known) - 1)
        codes = np.where(values[pos] == labels, value_codes[pos], 0).astype(code_dtype)
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
    if labels.size and (labels.dtype.itemsize <= 2 or int(labels.max()) < LOOKUP_TABLE_LIMIT):
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


def _check_outside(outside, n_classes: int) -> np.ndarray:
    values = np.asarray(outside, dtype=np.float64)
    if values.ndim == 0:
        return np.full(n_classes, float(values))
    if values.shape != (n_classes,):
        raise ValueError(f"outside has {values.size} values for {n_classes} classes; give one or one per class")
    return values
