"""What a map is, whichever engine computes it: the contract every kernel shares.

An engine (the numpy kernel of :mod:`rwmaps_cli.maps`; the PyTorch one of
:mod:`rwmaps_cli.torch_engine`) supplies
what differs between engines: the distance transform, and where the arrays live.  Everything
else is stated here once, in plain Python on small values, so that every engine uses the
same definitions:

- the kinds, layouts, map dtypes and per-patch renormalisations, with their defaults;
- the channel codes: every label value becomes a small code before any distance is taken
  (:class:`Codes`), and the tables that map a label value to its code (:func:`code_table`);
- the per-class maxima and what the rrw division does with them (:func:`rrw_divisors`);
- a field whose voxels all have one code (:func:`uniform_field_value`), and the kervadec
  offset (:meth:`MapRequest.kervadec_unit`);
- one checked record of a request (:class:`MapRequest`), checked once, that the engines
  pass around instead of long positional chains.

The definitions of the kinds are the table of ``README.md`` ("The maps") and
``docs/design.md`` ("The maps, exactly").  This module imports numpy and nothing of rwmaps
but its errors: the formats, the services and every engine build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("rrw", "boundary", "kervadec", "ac", "sdf")
LAYOUTS = ("full", "compact")
#: The distance transforms of the numpy kernel: ``edt`` (one multi-label pass), ``scipy``
#: (one pass per class: the reference), ``torch`` (the PyTorch engine's multi-label pass,
#: on a GPU where there is one: :mod:`rwmaps_cli.torch_engine`).
ENGINES = ("edt", "scipy", "torch")
#: Where the ``torch`` engine computes: ``"auto"`` is the first CUDA device when PyTorch sees
#: one, else the CPU; any PyTorch device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``) chooses.
DEFAULT_DEVICE = "auto"
#: What :func:`rwmaps_cli.expand_map` and the loss may do to a compact map's values:
#: nothing, or divide each class by its largest ``|value|`` within the patch.
RENORMALIZE = (None, "patch")
# The defaults of every API and option that takes these (the kernels, the services, the
# command line): defined here once.
DEFAULT_KIND, DEFAULT_ENGINE, DEFAULT_LAYOUT = "rrw", "edt", "full"
# More distinct values than this in one file (or a whole dataset, for an automatic class
# list) is an image mistaken for labels: max_classes.
DEFAULT_MAX_CLASSES = 256
#: The dtypes a map is made and stored in: the kernels compute in float32, and float16
#: halves a map in memory and on disk.  The formats store these (NIfTI float32 only).
MAP_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
#: The same dtypes by name, as the manifest and the command line spell them.
DTYPE_NAMES = tuple(dtype.name for dtype in MAP_DTYPES)
DEFAULT_DTYPE = DTYPE_NAMES[0]

#: How distances are measured, named: ``"voxel"`` (each voxel is 1 along every axis, as the
#: paper) or ``"physical"`` (the voxel sizes of the file or tensor the labels come from).
#: ``spacing`` means one thing everywhere, the voxel sizes distances are measured with: the
#: kernels take the sizes themselves (a tuple, or None for voxels), and what reads the labels
#: (the services, the MONAI and TorchIO transforms) also takes these names, because it has the
#: sizes (:func:`resolve_spacing`).
SPACINGS = ("voxel", "physical")
DEFAULT_SPACING = SPACINGS[0]

# Label values up to this bound are mapped to codes with a lookup table (one gather);
# larger values go through a sorted search.
LOOKUP_TABLE_LIMIT = 1 << 16


@dataclass(frozen=True)
class Codes:
    """The channel codes of a class list of ``n_classes`` classes.

    Class ``classes[c]`` is code ``c + 1`` (:meth:`of_class`), the ignore label is code
    ``n_classes + 1`` (:attr:`ignore`), and code 0 is never a label: the ``edt`` package
    treats 0 as background with no distance, and a lookup table's unfilled entries say
    "unknown label".  A per-code array (maxima, boxes, divisors) has :attr:`count` entries.
    """

    n_classes: int

    @property
    def ignore(self) -> int:
        """The ignore label's code, ``n_classes + 1``."""
        return self.n_classes + 1

    @property
    def count(self) -> int:
        """Entries of a per-code array: unknown (0), the classes, the ignore label."""
        return self.n_classes + 2

    @staticmethod
    def of_class(index):
        """Code of the class at ``index`` in the class list (an int, or an array of them)."""
        return index + 1

    @staticmethod
    def class_index(code):
        """Index in the class list of a class ``code`` (an int, or an array of them)."""
        return code - 1

    @staticmethod
    def code_dtype(n_classes: int) -> np.dtype:
        """The smallest unsigned dtype that holds every code of ``n_classes`` classes."""
        return np.min_scalar_type(n_classes + 1)


def check_classes(classes: Sequence[int], ignore_label: int | None = None) -> list[int]:
    """The one rule for a class list, everywhere (kernels, torch, the services).

    Parameters
    ----------
    classes : sequence of int
        At least one value; integers, distinct, non-negative.
    ignore_label : int, optional
        Must not be in ``classes``.

    Returns
    -------
    values : list of int

    Raises
    ------
    ValueError
        Saying which rule fails.
    """
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


def known_labels(classes: Sequence[int], ignore_label: int | None = None) -> list[int]:
    """Every label value that has a code, in code order: the classes, then the ignore label."""
    values = check_classes(classes, ignore_label)
    return values if ignore_label is None else [*values, int(ignore_label)]


def code_table(known: Sequence[int], top: int) -> np.ndarray | None:
    """Lookup table from label value to code, for labels up to ``top``.

    Parameters
    ----------
    known : sequence of int
        :func:`known_labels`: value ``known[i]`` gets code ``i + 1``.
    top : int
        The largest label value to look up.

    Returns
    -------
    table : (max(top, max(known)) + 1,) array of :meth:`Codes.code_dtype`, or None
        ``table[value]`` is the value's code, 0 for a value that has none.  None when the
        values are too large for a table (:data:`LOOKUP_TABLE_LIMIT`): use
        :func:`sorted_codes` instead.
    """
    size = max(top, max(known, default=0)) + 1
    if size > LOOKUP_TABLE_LIMIT:
        return None
    table = np.zeros(size, dtype=Codes.code_dtype(len(known)))
    table[list(known)] = np.arange(1, len(known) + 1)
    return table


def sorted_codes(known: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The known values sorted, and each one's code: for a sorted search of large values.

    Returns
    -------
    values : (K,) int64 array, ascending
    codes : (K,) int64 array, the code of each of ``values``
    """
    order = np.argsort(np.asarray(known, dtype=np.int64), kind="stable")
    return np.asarray(known, dtype=np.int64)[order], order.astype(np.int64) + 1


def resolve_spacing(spacing, sizes: Sequence[float] | None) -> tuple[float, ...] | None:
    """The voxel sizes a kernel takes, from a spacing given by name or by value.

    Parameters
    ----------
    spacing : {"voxel", "physical"}, sequence of float, or None
        None is ``"voxel"``.
    sizes : sequence of float, or None
        The voxel sizes of the labels' file or tensor, used for ``"physical"``.

    Returns
    -------
    tuple of float, or None for distances in voxels

    Raises
    ------
    ValueError
        An unknown name, or ``"physical"`` without sizes.
    """
    if spacing is None or (isinstance(spacing, str) and spacing == "voxel"):
        return None
    if isinstance(spacing, str):
        if spacing != "physical":
            raise ValueError(f"spacing must be {' or '.join(map(repr, SPACINGS))} or voxel sizes, got {spacing!r}")
        if sizes is None:
            raise ValueError("spacing='physical' needs the labels' voxel sizes")
        return tuple(float(s) for s in sizes)
    return tuple(float(s) for s in spacing)


def rrw_divisors(maxima):
    """What each code's distances are divided by in an rrw map: ``-max``.

    ``maxima`` is a per-code array (:attr:`Codes.count` entries, numpy or any array with
    negation and item assignment) of each code's largest inside distance in the field.  The
    ignore code (last) divides by infinity, which gives its voxels 0.  The division (not a
    multiplication by a reciprocal) makes every value the float32 rounding of ``-EDT / max``
    and the largest exactly -1.
    """
    divisors = -maxima
    divisors[-1] = float("inf")
    return divisors


def uniform_field_value(kind: str, code: int, n_classes: int) -> float:
    """The own-class value of every voxel of a field that holds one code.

    There the distance transform has no finite answer (no voxel of another label exists),
    so the table defines it: an rrw class filling the field is -1 in its own channel (the
    outside value elsewhere), a boundary, kervadec or sdf map is 0 in every channel, and the
    ignore label is 0.
    """
    if kind == "rrw" and code != Codes(n_classes).ignore:
        return -1.0
    return 0.0


def check_layout(kind: str, layout: str) -> None:
    """ValueError, naming the way out, when ``kind`` has no map in ``layout``.

    Only ``rrw`` has a compact form: ``boundary``, ``kervadec`` and ``sdf`` need every
    class's outside distance, and ``ac`` needs no file at all.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if layout == "compact" and kind == "ac":
        raise ValueError("an ac map needs no compact file: it is 1 - one-hot of the labels, which a loader "
                         "computes with rwmaps_cli.expand_map(None, labels, classes, kind='ac')")
    if layout == "compact" and kind != "rrw":
        raise ValueError(f"kind {kind!r} has no compact layout: each class's outside distance is "
                         "different information; use `layout=full`")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")


def check_dtype(dtype) -> np.dtype:
    """The map dtype ``dtype`` names; ValueError unless it is one of :data:`MAP_DTYPES`."""
    dtype = np.dtype(dtype)
    if dtype not in MAP_DTYPES:
        raise ValueError(f"dtype must be {' or '.join(map(str, MAP_DTYPES))}, got {dtype}")
    return dtype


def check_expansion(kind: str, has_compact: bool, renormalize: str | None) -> None:
    """ValueError unless a full map of ``kind`` can be made from a compact one (or from the
    labels alone, for ``ac``) with ``renormalize``."""
    if kind not in ("rrw", "ac"):
        raise ValueError(f"kind {kind!r} has no compact form; expanding takes 'rrw' or 'ac'")
    if kind == "ac" and has_compact:
        raise ValueError("an ac map needs no compact channel: pass None as the compact map, kind='ac'")
    if kind == "rrw" and not has_compact:
        raise ValueError("the compact map is None: only kind='ac' is made from the labels alone")
    if renormalize not in RENORMALIZE:
        raise ValueError(f"unknown renormalize {renormalize!r}; expected None or 'patch'")
    if renormalize is not None and kind == "ac":
        raise ValueError("renormalize applies to rrw maps, not ac")


@dataclass(frozen=True)
class MapRequest:
    """One map's definition, checked once: what every engine computes, whatever the arrays.

    Build it with :meth:`checked`.  An engine adds only its own choices (the distance
    transform, threads, where the arrays live, the output dtype).

    Attributes
    ----------
    classes : tuple of int
        The ordered class list: one channel each (full layout).
    kind : {"rrw", "boundary", "kervadec", "ac", "sdf"}
    layout : {"full", "compact"}
    spacing : tuple of float (one per axis), or None for distances in voxels
    slice_axis : int or None
        Non-negative: every slice along it is its own field.
    ignore_label : int or None
    """

    classes: tuple[int, ...]
    kind: str = DEFAULT_KIND
    layout: str = DEFAULT_LAYOUT
    spacing: tuple[float, ...] | None = None
    slice_axis: int | None = None
    ignore_label: int | None = None

    @classmethod
    def checked(cls, classes: Sequence[int], shape: tuple[int, ...], kind: str = DEFAULT_KIND, layout: str = DEFAULT_LAYOUT,
                spacing: Sequence[float] | None = None, slice_axis: int | None = None,
                ignore_label: int | None = None) -> MapRequest:
        """The request for labels of ``shape``; ValueError naming the first bad argument."""
        check_kind(kind)
        check_layout(kind, layout)
        ndim = len(shape)
        if not 1 <= ndim <= 3:
            raise ValueError(f"labels must be 1D, 2D or 3D, got shape {tuple(shape)}")
        return cls(tuple(check_classes(classes, ignore_label)), kind, layout, _checked_spacing(spacing, ndim),
                   None if slice_axis is None else _checked_axis(slice_axis, ndim),
                   None if ignore_label is None else int(ignore_label))

    @property
    def codes(self) -> Codes:
        return Codes(len(self.classes))

    @property
    def known_labels(self) -> list[int]:
        """Every label value with a code, in code order (the ignore label last)."""
        return known_labels(self.classes, self.ignore_label)

    def map_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, *spatial)`` full, ``spatial`` compact."""
        return tuple(spatial) if self.layout == "compact" else (len(self.classes), *spatial)

    def reversed_axes(self, ndim: int) -> MapRequest:
        """The same request on the transposed ``ndim``-D labels (a Fortran-ordered array
        seen C-ordered)."""
        return MapRequest(self.classes, self.kind, self.layout, None if self.spacing is None else self.spacing[::-1],
                          None if self.slice_axis is None else ndim - 1 - self.slice_axis, self.ignore_label)

    def in_plane_spacing(self) -> tuple[float, ...] | None:
        """The spacing of one slice along :attr:`slice_axis` (the others' axes)."""
        if self.spacing is None:
            return None
        return tuple(s for axis, s in enumerate(self.spacing) if axis != self.slice_axis)

    @staticmethod
    def kervadec_unit(spacing: Sequence[float] | None) -> float:
        """What kervadec subtracts from the inside distance: one voxel, or its smallest side."""
        return 1.0 if spacing is None else float(min(spacing))


def _checked_spacing(spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for {ndim}D labels")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return spacing


def _checked_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"slice_axis {axis} is out of range for {ndim}D labels")
    return axis % ndim
