"""The PyTorch engine: the maps of a batch of label tensors, on their device, in one exact pass.

The numpy engine (:mod:`rwmaps_cli.maps`) takes its distances from the ``edt`` package on the
CPU.  This engine computes them with tensor operations, so a batch's maps are made where its
labels are (a GPU in the training step), and implements the same contract
(:mod:`rwmaps_cli.contract`: kinds, codes, maxima, layouts, the value of a uniform field).

**One pass for every class.**  The inside distance of every class at once is each voxel's
distance to the nearest voxel with another code (another class, or the ignore label), the
multi-label EDT.  It is separable, as the binary one is (Felzenszwalb and Huttenlocher; Meijster
et al.): along axis ``k``, each voxel ``x`` takes::

    d_k(x) = min over y on x's line of  ((x - y) * spacing_k)^2 + h(y)
    h(y) = d_{k-1}(y) if code(y) == code(x) else 0      (d_{-1} = +inf)

A voxel of another code is itself outside ``x``'s class, so ``h`` is exactly the binary
transform's value of ``x``'s class at ``y``: the result is exact for every class at once, and
its cost does not depend on the number of classes.

**O(n log n) per line, in tensor operations.**  Only ``x``'s own run of one code and the two
voxels just outside it can be the minimiser: any voxel beyond them is farther than one of
them, whose ``h`` is 0.  Within a run the candidates are the same for every
voxel and ``(x - y)^2`` is a Monge array, so the minimiser never moves left as ``x`` moves
right: the rows are taken coarse to fine (``log2 n`` levels), each searching only between its
neighbours' minimisers.  Each level is a few gathers and a segmented minimum over all lines at
once (``_monotone_min``); lines are taken in blocks of at most :data:`BLOCK_VOXELS` voxels, so
memory does not grow with the volume.  The first pass has no values yet: each voxel's
nearest voxel of another code on its line is two running maxima (``_nearest_other``).

**Outside distances** (``boundary``, ``kervadec``, ``sdf``): each class's distance outside it is
its own information, so these kinds run the same pass on each class's mask (two codes), the
classes as a batch.  The ``rrw`` and ``ac`` kinds never do.

This module needs the optional extra ``rwmaps_cli[torch]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import warnings

import numpy as np
import torch

from .contract import (
    DEFAULT_DEVICE,
    DEFAULT_KIND,
    DEFAULT_LAYOUT,
    Codes,
    MapRequest,
    code_table,
    rrw_divisors,
    sorted_codes,
)

__all__ = ["BLOCK_VOXELS", "compute_maps", "device_problem", "inside_distance", "numpy_inside_distance",
           "resolve_device"]

#: How many voxels one step of the work holds at most: a pass's block of lines, or the masks of
#: a few classes for boundary, kervadec and sdf.  None chooses by device: ``2^22`` on the CPU;
#: on a GPU, what an eighth of its free memory holds (about 512 bytes a voxel at a pass's peak;
#: an eighth, so that the 4 workers of ``rwmaps compute --engine torch`` fit together), between
#: ``2^22`` and ``2^28``: a CT-sized volume is a few blocks of a few hundred launches each.
BLOCK_VOXELS: int | None = None


def _block_voxels(device: torch.device) -> int:
    if BLOCK_VOXELS is not None:
        return BLOCK_VOXELS
    if device.type != "cuda":
        return 1 << 22
    free, _ = torch.cuda.mem_get_info(device)
    return min(max(free // (8 * 512), 1 << 22), 1 << 28)


def compute_maps(
    labels: torch.Tensor,
    classes: Sequence[int],
    kind: str = DEFAULT_KIND,
    spacing: Sequence[float] | None = None,
    slice_axis: int | None = None,
    ignore_label: int | None = None,
    layout: str = DEFAULT_LAYOUT,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The maps of a batch of label tensors, each item on its own, on the labels' device.

    Each item equals :func:`rwmaps_cli.compute_maps` of it with the same arguments, within
    float32 rounding.

    Parameters
    ----------
    labels : (B, *spatial) integer tensor, 1D to 3D spatial
        Integer-valued float tensors are accepted.  Any device.
    classes : sequence of int, length C
        Ordered label values, one output channel each.
    kind : {"rrw", "boundary", "kervadec", "ac", "sdf"}
    spacing : sequence of float, one per spatial axis, optional
        Voxel sizes in array-axis order; None measures in voxels.
    slice_axis : int, optional
        A spatial axis (0-based, without the batch axis): every slice along it is its own field.
    ignore_label : int, optional
        0 in every channel; "not this class" for every distance.
    layout : {"full", "compact"}
        ``compact`` (``rrw`` only): one channel, each voxel's own-class value.
    dtype : torch.float32 or torch.float16 or torch.bfloat16
        Output dtype; computed in float32.

    Returns
    -------
    maps : (B, C, *spatial) tensor; (B, *spatial) compact
        On the labels' device.

    Raises
    ------
    ValueError
        Unknown label values, or an invalid argument (the contract's messages).
    """
    labels = integer_labels(labels)
    if labels.ndim < 2:
        raise ValueError(f"labels must be (B, *spatial), got shape {tuple(labels.shape)}")
    request = MapRequest.checked(classes, tuple(labels.shape[1:]), kind, layout, spacing, slice_axis, ignore_label)
    codes = channel_codes(labels, request)
    if codes.numel() == 0:  # an empty batch or axis: an empty map, as the numpy kernel gives
        return torch.zeros((labels.shape[0], *request.map_shape(labels.shape[1:])), dtype=dtype, device=labels.device)
    codes, fold = _fields(codes, request.slice_axis)
    spacing = request.spacing if request.slice_axis is None else request.in_plane_spacing()
    maps = _maps(codes, request, spacing)
    return fold(maps).to(dtype)


def channel_codes(labels: torch.Tensor, request: MapRequest) -> torch.Tensor:
    """The contract's channel codes of integer ``labels`` for ``request`` (int64, same shape and device)."""
    return label_codes(labels, request.known_labels, len(request.classes))


def label_codes(labels: torch.Tensor, known: Sequence[int], n_classes: int) -> torch.Tensor:
    """The contract's channel codes of integer ``labels`` (int64, same shape and device).

    Parameters
    ----------
    labels : integer tensor
    known : sequence of int
        :func:`rwmaps_cli.contract.known_labels`: the classes, then the ignore label.
    n_classes : int

    Raises
    ------
    ValueError
        A label value that is neither a class nor the ignore label, named.
    """
    low, high = (int(labels.min()), int(labels.max())) if labels.numel() else (0, 0)
    table = code_table(known, high) if low >= 0 else None
    if table is not None:
        codes = torch.as_tensor(table.astype("int64"), device=labels.device)[labels]
    else:  # large (or negative) values: a sorted search; a negative value is unknown
        values, value_codes = (torch.as_tensor(a, device=labels.device) for a in sorted_codes(known))
        pos = torch.searchsorted(values, labels).clamp_(max=len(known) - 1)
        codes = torch.where(values[pos] == labels, value_codes[pos], 0)
    if labels.numel() and not bool(codes.all()):
        unknown = torch.unique(labels[codes == 0])[:8].tolist()
        raise ValueError(f"label values not in the class list {list(known[:n_classes])}: {unknown}")
    return codes


def resolve_device(device: str | torch.device | None = DEFAULT_DEVICE) -> torch.device:
    """The device a name chooses.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"`` (or None): the first CUDA device when PyTorch sees one, else the CPU;
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        Another name, or a CUDA device PyTorch cannot see (:func:`device_problem`).
    """
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"device {device!r}: {problem}")
    if device is None or device == "auto":
        return torch.device("cuda" if _cuda_devices() else "cpu")
    return torch.device(device)


def device_problem(device: str | torch.device | None) -> str | None:
    """Why ``device`` cannot compute here, in a few words.

    Parameters
    ----------
    device : str, torch.device or None
        As :func:`resolve_device` takes it.

    Returns
    -------
    str or None
        None when it can compute here.
    """
    if device is None or device == "auto":
        return None
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        return "not a device rwmaps computes on (expected auto, cpu, cuda or cuda:N)"
    if chosen.type == "cuda" and (chosen.index or 0) >= _cuda_devices():
        return f"PyTorch sees {_cuda_devices()} CUDA device(s) here"
    return None


def _cuda_devices() -> int:
    """The CUDA devices PyTorch sees; 0 without a driver (its warning saying so is not printed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA initialization: ..." on machines without a GPU
        return torch.cuda.device_count() if torch.cuda.is_available() else 0


def numpy_inside_distance(codes: np.ndarray, spacing: Sequence[float] | None = None,
                          device: str | torch.device | None = DEFAULT_DEVICE, threads: int = 1) -> np.ndarray:
    """:func:`inside_distance` of one numpy field, computed on ``device``: what the numpy
    kernel's ``engine="torch"`` takes its distances from.

    Parameters
    ----------
    codes : (*spatial) integer or bool array
    spacing : sequence of float, optional
    device : str, torch.device or None
        See :func:`resolve_device`.
    threads : int
        PyTorch's threads while it computes on the CPU.

    Returns
    -------
    distance : (*spatial) float32 array
        ``inf`` everywhere for a field of one code (as the ``edt`` package).
    """
    chosen = resolve_device(device)
    array = np.ascontiguousarray(codes)
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:  # PyTorch has few operations on uint16 to uint64
        array = array.astype(np.int32 if array.dtype.itemsize == 2 else np.int64)
    field = torch.from_numpy(array)[None].to(chosen)
    if chosen.type != "cpu":
        return inside_distance(field, spacing)[0].cpu().numpy()
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return inside_distance(field, spacing)[0].numpy()
    finally:
        torch.set_num_threads(previous)


def inside_distance(codes: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Each voxel's distance to the nearest voxel of another code, per field.

    Parameters
    ----------
    codes : (F, *spatial) integer tensor
        F independent fields (batch items, slices, or classes' masks).
    spacing : sequence of float, optional

    Returns
    -------
    distance : (F, *spatial) float32 tensor
        ``inf`` in a field that holds one code only (no voxel of another code exists).
    """
    squared = torch.full(codes.shape, float("inf"), dtype=torch.float32, device=codes.device)
    if codes.numel() == 0:
        return squared
    if _fits_int32(codes):  # compared at every candidate: the narrower the faster
        codes = codes.to(torch.int32)
    spatial = codes.ndim - 1
    for axis in range(spatial):
        step = 1.0 if spacing is None else float(spacing[axis])
        squared = _pass(squared, codes, axis + 1, step, first=axis == 0)
    return squared.sqrt_()


def _fits_int32(codes: torch.Tensor) -> bool:
    if codes.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32):
        return True
    info = torch.iinfo(torch.int32)
    return info.min <= int(codes.min()) and int(codes.max()) <= info.max


def _pass(squared: torch.Tensor, codes: torch.Tensor, axis: int, step: float, first: bool) -> torch.Tensor:
    """One separable pass along ``axis``: ``min_y ((x - y) step)^2 + (squared(y) if same code else 0)``."""
    values = squared.movedim(axis, -1)
    shape = values.shape
    n = shape[-1]
    values = values.reshape(-1, n)
    line_codes = codes.movedim(axis, -1).reshape(-1, n)
    out = torch.empty_like(values)
    lines = max(1, _block_voxels(values.device) // n)
    for begin in range(0, values.shape[0], lines):
        block = slice(begin, begin + lines)
        start, end = _runs(line_codes[block])
        if first:  # no value yet: only the nearest voxel of another code counts
            out[block] = _nearest_other(start, end, step)
        else:
            out[block] = _monotone_min(values[block].contiguous(), line_codes[block].contiguous(), start, end, step)
    return out.reshape(shape).movedim(-1, axis)


def _runs(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and last position of each voxel's run of one code on its line ``(L, n)``, int64."""
    n = codes.shape[-1]
    position = torch.arange(n, device=codes.device).expand(codes.shape)
    change = torch.ones(codes.shape, dtype=torch.bool, device=codes.device)
    change[:, 1:] = codes[:, 1:] != codes[:, :-1]  # a run starts here
    start = torch.where(change, position, 0).cummax(dim=1).values
    ends_here = torch.ones_like(change)
    ends_here[:, :-1] = change[:, 1:]
    end = torch.where(ends_here, position, n - 1).flip(1).cummin(dim=1).values.flip(1)
    return start, end


def _nearest_other(start: torch.Tensor, end: torch.Tensor, step: float) -> torch.Tensor:
    """The first pass: the squared distance to the nearest voxel of another code on the line."""
    n = start.shape[-1]
    position = torch.arange(n, device=start.device)
    left = torch.where(start > 0, position - start + 1, n + 1)  # n + 1: none (inf below)
    right = torch.where(end < n - 1, end + 1 - position, n + 1)
    nearest = torch.minimum(left, right)
    squared = (nearest.to(torch.float32) * step).square_()
    return squared.masked_fill_(nearest > n, float("inf"))


def _monotone_min(values: torch.Tensor, codes: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                  step: float) -> torch.Tensor:
    """Every voxel's minimum over its run and the run's two neighbours ``(L, n)``, by divide and conquer.

    Within a run, the candidates are the same for every voxel (the run's values, and 0 at the
    voxels just outside it), and ``(x - y)^2`` is a Monge array, so the leftmost minimising
    ``y`` never decreases with ``x``.  The rows are taken coarse to fine, by the powers of two
    below ``n``: row 0; then the odd multiples of each smaller power (for ``n = 5``: 0, 4, 2,
    1 and 3).  Each row searches only between the minimisers of its two neighbours a stride
    away, done a level before, when they are in its run; its run's whole range otherwise.
    Each level costs O(n) per line; there are ``log2 n`` levels.
    """
    n_lines, n = values.shape
    device = values.device
    low, high = (start - 1).clamp_min(0), (end + 1).clamp_max(n - 1)
    minimiser = torch.empty((n_lines, n), dtype=torch.int64, device=device)
    out = torch.empty_like(values)
    coarsest = 1 << max(0, (n - 1).bit_length())  # a power of two >= n: row 0 alone
    stride, rows = coarsest, torch.zeros(1, dtype=torch.int64, device=device)
    while stride:
        lo, hi = low[:, rows], high[:, rows]
        if stride < coarsest:  # the rows stride away were done a level before
            left, right = rows - stride, (rows + stride).clamp_max(n - 1)
            own_run = start[:, rows]
            lo = torch.where(start[:, left] == own_run, minimiser[:, left], lo)
            hi = torch.where((rows + stride < n) & (start[:, right] == own_run), minimiser[:, right], hi)
        out[:, rows], minimiser[:, rows] = _ranged_min(values, codes, rows, lo, hi, step)
        stride //= 2
        rows = torch.arange(stride, n, 2 * stride, device=device) if stride else rows
    return out


def _ranged_min(values, codes, rows, lo, hi, step):
    """The minimum and leftmost minimiser over ``y`` in ``[lo, hi]`` of each line's ``rows``.

    The candidates of all (line, row) pairs lie end to end in one flat array; each is
    addressed by its flat index into ``values`` (line * n + y), so that a candidate needs
    three gathers of its row's quantities and two of its own.
    """
    n_lines, n = values.shape
    device = values.device
    base = (torch.arange(n_lines, device=device) * n)[:, None]  # each line's first flat index
    counts = (hi - lo + 1).reshape(-1)
    segment = torch.repeat_interleave(counts)  # the (line, row) each candidate belongs to
    begins = counts.cumsum(0) - counts  # where each row's candidates begin
    at_x = (base + rows).reshape(-1)
    at_y = torch.arange(segment.numel(), device=device) + (base + lo).reshape(-1).sub_(begins)[segment]
    flat_values, flat_codes = values.reshape(-1), codes.reshape(-1)
    same = flat_codes[at_y] == flat_codes[at_x][segment]
    offset = (at_x[segment] - at_y).to(torch.float32).mul_(step).square_()
    candidate = torch.where(same, flat_values[at_y], 0.0).add_(offset)
    best = torch.full(counts.shape, float("inf"), dtype=candidate.dtype, device=device)
    best.scatter_reduce_(0, segment, candidate, reduce="amin")
    leftmost = torch.full(counts.shape, n_lines * n, dtype=torch.int64, device=device)
    leftmost.scatter_reduce_(0, segment, torch.where(candidate == best[segment], at_y, n_lines * n), reduce="amin")
    return best.view(n_lines, -1), leftmost.view(n_lines, -1) - base  # an all-inf row: its lo


def _fields(codes: torch.Tensor, slice_axis: int | None):
    """The fields as a batch: ``(B, *spatial)`` itself, or with a slice axis each slice of
    each item a field; and the function that puts maps of the fields back."""
    if slice_axis is None:
        return codes, lambda maps: maps
    batch, n_slices = codes.shape[0], codes.shape[1 + slice_axis]
    fields = codes.movedim(1 + slice_axis, 1).reshape(batch * n_slices, *codes.shape[1:1 + slice_axis],
                                                      *codes.shape[2 + slice_axis:])

    def fold(maps: torch.Tensor) -> torch.Tensor:
        spatial_start = maps.ndim - (codes.ndim - 2)  # where a field's spatial axes begin
        unfolded = maps.reshape(batch, n_slices, *maps.shape[1:])
        return unfolded.movedim(1, spatial_start + slice_axis)

    return fields, fold


def _maps(codes: torch.Tensor, request: MapRequest, spacing) -> torch.Tensor:
    """The maps of F fields of codes ``(F, *field)``: ``(F, C, *field)``, or compact ``(F, *field)``."""
    n_classes = len(request.classes)
    if request.kind == "ac":
        return _expand(torch.zeros(codes.shape, dtype=torch.float32, device=codes.device), codes, n_classes)
    if request.kind == "rrw":
        values = _own_class_values(codes, n_classes, spacing)
        return values if request.layout == "compact" else _expand(values, codes, n_classes)
    return _distance_maps(codes, request, spacing)


def _own_class_values(codes: torch.Tensor, n_classes: int, spacing) -> torch.Tensor:
    """The compact rrw map of each field: ``-EDT / max`` of each voxel's class (contract)."""
    inside = inside_distance(codes, spacing)
    maxima = _field_maxima(inside, codes, Codes(n_classes).count)
    divisors = rrw_divisors(maxima.transpose(0, 1)).transpose(0, 1)  # per field: -max, the ignore code inf
    values = inside / torch.gather(divisors, 1, codes.reshape(codes.shape[0], -1)).reshape(codes.shape)
    # A field of one code: -1 for a class, 0 for the ignore label (contract.uniform_field_value).
    uniform = torch.isinf(inside)
    if bool(uniform.any()):
        values = torch.where(uniform, torch.where(codes == Codes(n_classes).ignore, 0.0, -1.0), values)
    return values


def _field_maxima(values: torch.Tensor, codes: torch.Tensor, count: int) -> torch.Tensor:
    """``(F, count)``: each field's largest finite value of each code (0 where it has none)."""
    flat_values = torch.where(torch.isinf(values), 0.0, values).reshape(values.shape[0], -1)
    maxima = torch.zeros((values.shape[0], count), dtype=values.dtype, device=values.device)
    return maxima.scatter_reduce(1, codes.reshape(codes.shape[0], -1), flat_values, reduce="amax", include_self=True)


def _expand(values: torch.Tensor, codes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The full map: channel ``c`` is ``values`` on class ``c``, 1 elsewhere, 0 on the ignore label."""
    full = torch.ones((codes.shape[0], n_classes, *codes.shape[1:]), dtype=values.dtype, device=codes.device)
    index = Codes.class_index(codes).clamp(0, n_classes - 1).unsqueeze(1)
    full.scatter_(1, index, values.unsqueeze(1))
    ignored = (codes == Codes(n_classes).ignore).unsqueeze(1)
    return full.masked_fill_(ignored, 0.0) if bool(ignored.any()) else full


def _distance_maps(codes: torch.Tensor, request: MapRequest, spacing) -> torch.Tensor:
    """boundary, kervadec or sdf maps of each field: one two-code pass per class, the classes
    taken a few at a time (as many as :data:`BLOCK_VOXELS` allows), written into the output."""
    n_classes = len(request.classes)
    out = torch.empty((codes.shape[0], n_classes, *codes.shape[1:]), dtype=torch.float32, device=codes.device)
    # sdf, and kervadec in physical units, set the inner boundary to exactly 0 (contract)
    zero_boundary = request.kind == "sdf" or (request.kind == "kervadec" and spacing is not None)
    boundary = _label_change(codes).unsqueeze(1) if zero_boundary else None
    ignored = (codes == Codes(n_classes).ignore).unsqueeze(1)
    per_chunk = max(1, _block_voxels(codes.device) // max(1, codes.numel()))
    for first_class in range(0, n_classes, per_chunk):
        chunk = range(first_class, min(n_classes, first_class + per_chunk))
        masks = torch.stack([codes == Codes.of_class(c) for c in chunk], dim=1)  # (F, chunk, *field)
        maps = _signed_distances(masks, request.kind, spacing, boundary)
        out[:, first_class:first_class + len(chunk)] = maps.masked_fill_(ignored, 0.0)
    return out


def _signed_distances(masks: torch.Tensor, kind: str, spacing, boundary: torch.Tensor | None) -> torch.Tensor:
    """The ``kind`` map of each mask ``(F, K, *field)``, from the distance to its other side;
    0 on ``boundary`` voxels inside a mask, when given."""
    distance = inside_distance(masks.reshape(-1, *masks.shape[2:]), spacing).reshape(masks.shape)
    uniform = torch.isinf(distance)  # the class is empty or fills the field: 0 (contract)
    distance = distance.masked_fill_(uniform, 0.0)
    inside, outside = torch.where(masks, distance, 0.0), torch.where(masks, 0.0, distance)
    if kind == "boundary":
        maps = outside - inside
    elif kind == "kervadec":
        maps = torch.where(masks, MapRequest.kervadec_unit(spacing) - inside, outside)
    else:  # sdf
        shape = (*masks.shape[:2], *([1] * (masks.ndim - 2)))
        largest_inside = inside.flatten(2).amax(dim=2).clamp_min(1e-30).reshape(shape)
        largest_outside = outside.flatten(2).amax(dim=2).clamp_min(1e-30).reshape(shape)
        maps = outside / largest_outside - inside / largest_inside
    if boundary is not None:
        maps = maps.masked_fill_(masks & boundary, 0.0)
    return maps.masked_fill_(uniform, 0.0)


def _label_change(codes: torch.Tensor) -> torch.Tensor:
    """True where a face neighbour (inside the field) has another code."""
    changed = torch.zeros(codes.shape, dtype=torch.bool, device=codes.device)
    for axis in range(1, codes.ndim):
        n = codes.shape[axis]
        if n < 2:
            continue
        low, high = codes.narrow(axis, 0, n - 1), codes.narrow(axis, 1, n - 1)
        differs = low != high
        changed.narrow(axis, 0, n - 1).logical_or_(differs)
        changed.narrow(axis, 1, n - 1).logical_or_(differs)
    return changed


def integer_labels(labels) -> torch.Tensor:
    """int64 labels; integer-valued floats (a MONAI label after nearest resampling) are fine."""
    labels = torch.as_tensor(labels)
    if hasattr(labels, "as_tensor"):  # a MONAI MetaTensor
        labels = labels.as_tensor()
    if labels.dtype == torch.bool:
        return labels.long()
    if torch.is_floating_point(labels):
        bad = ~torch.isfinite(labels) | (labels != torch.round(labels))
        if bool(bad.any()):
            raise ValueError(f"labels are not integers (interpolated?): {torch.unique(labels[bad])[:8].tolist()}")
    return labels.long()
