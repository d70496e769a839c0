"""Map files as training code sees them: :func:`load_map` and what a map file is.

This sits above the formats (which read one file) and the manifest (which knows the
parameters a map was made with): a bare ``.npy`` holds only its array, so its layout,
classes and kind come from the ``rwmaps.json`` that lists it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from .errors import InputError
from .formats import MapHeader, can_mmap, header_says_map, output_format, load_map_array, read_geometry, read_labels, read_map_header
from .manifest_lookup import MapRecord, manifest_for_map


@dataclass(frozen=True)
class MapMeta:
    """What :func:`load_map` knows about a map besides its array.

    Attributes
    ----------
    classes : list of int or None
        The class list: the label value of each channel of a full map, the values a
        compact map's own-class values stand for.  None when unknown, and for a
        region-based map, whose channels are ``regions`` (its file stores their indices
        under ``classes``).
    spacing : tuple of float or None
        Voxel sizes in array-axis order.
    kind : str or None
        ``"rrw"``, ``"boundary"``, ``"kervadec"``, ``"ac"`` or ``"sdf"``.
    layout : {"full", "compact"}
    format : str
        The output format (``"nii.gz"``, ``"nii"``, ``"npz"``, ``"npy"``).
    dtype : str
        The dtype as stored (``"float32"``, ``"float16"``).
    affine : (4, 4) float64 ndarray or None
        NIfTI maps only.
    stored_shape : tuple of int
        The array exactly as stored (NIfTI: channels last).
    manifest : str or None
        The manifest that lists this map: ``rwmaps.json``, or a job-array part's in
        ``rwmaps.parts/``.
    parameters : dict or None
        That manifest's parameters (a copy).
    input : str or None
        The label file the manifest records for this map.
    reader : str or None
        The reader that file is read with, when its suffix does not say (``"nnunet"``).
    ignore_label : int or None
    regions : list of list of int or None
        The labels of each channel of a region-based map (nnU-Net regions).
    """

    classes: list[int] | None
    spacing: tuple[float, ...] | None
    kind: str | None
    layout: str
    format: str
    dtype: str
    affine: np.ndarray | None
    stored_shape: tuple[int, ...]
    manifest: str | None = None
    parameters: dict | None = None
    input: str | None = None
    reader: str | None = None
    ignore_label: int | None = None
    regions: list[list[int]] | None = None

    def __getitem__(self, key: str):
        """``meta["classes"]``, as rwmaps 0.1's dict was read; prefer ``meta.classes``."""
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


def map_info(path: str | os.PathLike, record: MapRecord | None = None) -> MapHeader:
    """What a map file holds: shape, spatial rank, layout, kind, dtype, classes.

    The file's own header first; what it cannot tell (a ``.npy``'s layout, classes and
    kind; a NIfTI's classes) from the manifest that lists it.  This is the one place a
    map's spatial rank is settled.

    Raises
    ------
    InputError
        The file cannot be read as a map (one line, without the path).
    """
    record = manifest_for_map(path) if record is None else record
    return _settled(read_map_header(path), record)


def _settled(info: MapHeader, record: MapRecord | None) -> MapHeader:
    listed = record is not None and record.entry is not None
    settings = record.settings if listed else None
    layout = info.layout or (settings.layout if settings else "full")
    spatial_ndim = info.spatial_ndim or len(info.shape) - (1 if layout == "full" else 0)
    if spatial_ndim not in (2, 3):
        raise InputError(f"holds an array of shape {info.shape}, not a {layout} map of 2D or 3D labels")
    classes = info.classes
    if classes is None and settings is not None:
        classes = list(settings.classes) if settings.regions is None else None  # regions: see MapMeta.regions
        if classes is not None and layout == "full" and len(classes) != info.shape[0]:
            classes = None  # the manifest describes another map
    return replace(info, layout=layout, spatial_ndim=spatial_ndim, classes=classes,
                   kind=info.kind or (settings.kind if settings else None))


def is_map_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a map written by ``rwmaps compute``.

    A NIfTI whose ``descrip`` starts with ``rwmaps`` or an ``.npz`` with a ``map`` array
    say so themselves; a 4D float ``.npy`` cannot be labels (2D or 3D); a 4D NIfTI or a
    2D/3D float ``.npy`` is a map when an ``rwmaps.json`` above it lists it.
    """
    said = header_says_map(path)
    if said is None:
        record = manifest_for_map(path)
        return record is not None and record.entry is not None
    return said


def map_is_complete(path: str | os.PathLike, shape: Sequence[int] | None, nbytes: int | None) -> bool:
    """True when ``path`` holds a map of logical ``shape`` and exactly ``nbytes`` bytes.

    Cheap (file size and header only) and never raises.  Enough because maps are written
    atomically: a map file with the recorded size and header is the one that was written.
    """
    if shape is None or nbytes is None:
        return False
    try:
        if Path(path).stat().st_size != nbytes:
            return False
        return map_info(path).shape == tuple(int(n) for n in shape)
    except Exception:  # missing, unreadable, not a map: it has to be computed again
        return False


def load_map(
    path: str | os.PathLike,
    mmap: bool | None = False,
    expand: bool = True,
    labels: np.ndarray | None = None,
    outside: float | Sequence[float] = 1.0,
) -> tuple[np.ndarray, MapMeta]:
    """Read a map written by ``rwmaps compute``, in any output format, channels first.

    The public face of :func:`read_map`: the same, with the file named in its InputError
    (``InputError: maps/case.nii.gz: file not found``), as the command line names it.
    """
    try:
        return read_map(path, mmap=mmap, expand=expand, labels=labels, outside=outside)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None


def read_map(
    path: str | os.PathLike,
    mmap: bool | None = False,
    expand: bool = True,
    labels: np.ndarray | None = None,
    outside: float | Sequence[float] = 1.0,
) -> tuple[np.ndarray, MapMeta]:
    """Read a map written by ``rwmaps compute``, in any output format, channels first.

    Parameters
    ----------
    path : path of a ``.nii.gz``, ``.nii``, ``.npz`` or ``.npy`` map
    mmap : bool or None
        ``.npy`` only: return ``np.load(path, mmap_mode="r")``, a read-only memory map in
        the stored dtype (a float16 map stays float16: converting it would read the whole
        file).  With a compact map it applies when ``expand=False``.  None: a memory map
        when the format allows one, else an array.
    expand : bool
        For a compact map: return the full ``(C, *spatial)`` map (default), built with
        :func:`rwmaps_cli.expand_map` from the labels; ``False`` returns the one channel.
    labels : (*spatial) integer ndarray, optional
        The labels to expand a compact map with; default: the input file the manifest
        records, read with the same reader that computed the map.
    outside : float or sequence of C floats
        The value outside each class in the expanded map (1 for the paper's rrw map; the
        authors' class-imbalance variant uses one value per class).

    Returns
    -------
    maps : ndarray
        ``(C, *spatial)`` float32 (full, or compact expanded), or ``(*spatial)`` (compact,
        ``expand=False``).  NIfTI's ``X × Y × Z × C`` is moved to channels first.
    meta : MapMeta
        ``meta.classes`` (label value of each channel, or None when unknown),
        ``spacing``, ``kind``, ``layout``, ``format``, ``dtype`` (as stored), ``affine``
        ((4, 4) for NIfTI, else None), ``manifest`` (the ``rwmaps.json`` that lists this
        map, or None), ``parameters`` (its parameters), ``input`` (the label file it
        records) and the rest of :class:`MapMeta`.

    Raises
    ------
    InputError
        One line, without the path (the caller names the file; :func:`load_map` does), when
        the file cannot be read as a map, or a compact map cannot be expanded (no labels).
    ValueError
        An unsupported suffix, ``mmap`` for a format other than ``.npy``, or ``outside``
        other than 1 for a full map (its outside values are in the file: use a compact
        map, or :func:`rwmaps_cli.expand_map`, for the class-imbalance variant).
    """
    path = Path(path)
    output_format(path)  # ValueError for a name no map has
    if mmap is None:
        mmap = can_mmap(path)
    elif mmap and not can_mmap(path):
        raise ValueError(f"mmap=True needs a .npy map, not .{output_format(path)}")
    record = manifest_for_map(path)
    listed = record is not None and record.entry is not None
    if header_says_map(path) is None and not listed:
        raise InputError("is not an rwmaps map (its header does not say so, and no rwmaps.json lists it)")
    data, info = load_map_array(path, mmap=mmap)
    info = _settled(info, record)
    data = data.reshape(info.shape) if not mmap else data
    meta = _meta(path, info, record if listed else None)
    _check_outside_applies(info.layout, expand, outside)
    if info.layout == "compact" and expand:
        data = _expand(data, info, meta, labels, outside)
    return data, meta


def _check_outside_applies(layout: str, expand: bool, outside) -> None:
    """``outside`` is used only when a compact map is expanded; anywhere else it would be
    silently ignored, so a value other than the default 1 is refused."""
    if layout == "compact" and expand:
        return
    if np.any(np.asarray(outside, dtype=np.float64) != 1.0):
        what = "a full map, whose outside values are in the file" if layout == "full" else "expand=False"
        raise ValueError(f"outside= applies when a compact map is expanded, not to {what}; compute a compact map "
                         "(layout='compact') or call rwmaps_cli.expand_map on the labels")


def _meta(path: Path, info: MapHeader, record: MapRecord | None) -> MapMeta:
    settings = record.settings if record else None
    parameters = record.header.get("parameters") if record else None
    input_path = record.entry.get("input") if record else None
    spacing = info.spacing
    if spacing is None and input_path is not None:
        try:
            spacing = read_geometry(input_path, reader=record.entry.get("reader"))[0]
        except InputError:
            spacing = None  # the input is not where the manifest says
        if spacing is not None and len(spacing) != info.spatial_ndim:
            spacing = None
    return MapMeta(
        classes=None if settings and settings.regions else info.classes, spacing=spacing, kind=info.kind, layout=info.layout, format=output_format(path),
        dtype=info.dtype, affine=info.affine, stored_shape=info.stored_shape,
        manifest=str(record.manifest) if record else None,
        parameters=deepcopy(parameters) if isinstance(parameters, dict) else None,  # cached: a copy
        input=input_path, reader=record.entry.get("reader") if record else None,
        ignore_label=settings.ignore_label if settings else None,
        regions=[list(r) for r in settings.regions] if settings and settings.regions else None,
    )


def _expand(compact: np.ndarray, info: MapHeader, meta: MapMeta, labels, outside) -> np.ndarray:
    from .maps import expand_map

    if info.classes is None:
        raise InputError("is a compact map, and its class list is unknown (no rwmaps.json lists it); "
                         "load it with expand=False")
    if labels is None:
        if meta.input is None:
            raise InputError("is a compact map: pass labels= to expand it, or expand=False")
        labels = read_labels(meta.input, reader=meta.reader).array
    labels = np.asarray(labels)
    if labels.shape != compact.shape:
        raise InputError(f"compact map of shape {compact.shape} cannot be expanded with labels of shape {labels.shape}")
    return expand_map(np.asarray(compact, dtype=np.float32), labels, info.classes, outside=outside,
                      ignore_label=meta.ignore_label)
