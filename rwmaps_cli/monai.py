"""MONAI dictionary transforms for Region-wise maps.

Two ways to give a network the map of the patch it sees:

- :class:`RegionWiseMapd` computes the map from the (augmented) label with
  :func:`rwmaps_cli.compute_maps`: the paper's way, exact for any augmentation.  A label on
  a GPU (after ``EnsureTyped(device="cuda")``, or MONAI's GPU transforms) gets its map
  there, from the PyTorch engine.
- :class:`ExpandRegionWiseMapd` turns a precomputed compact map, pushed through the same
  spatial transforms as the label, into the full ``(C, *spatial)`` map, using the
  transformed label, on the compact map's device (a GPU included).

A precomputed *full* map needs no transform of ours: MONAI's ``LoadImaged`` reads the 4D
``X × Y × Z × C`` NIfTI that ``rwmaps compute`` writes with its affine, and
``EnsureChannelFirstd(keys="rwmap", channel_dim=-1)`` moves the channels first, so MONAI's
spatial transforms line the map up with the label::

    LoadImaged(keys=["image", "label", "rwmap"]),
    EnsureChannelFirstd(keys=["image", "label"]),
    EnsureChannelFirstd(keys="rwmap", channel_dim=-1),

(``.npy`` maps have no affine: use them only with array-space transforms such as flips,
90° rotations, crops and ``RandAffined``, not ``Orientationd`` or ``Spacingd``.)

Which one is faithful to the paper's maps under which augmentation: see
``docs/training.md`` ("Fidelity") and ``benchmarks/fidelity.py``.

Needs the optional extra ``rwmaps_cli[monai]``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .contract import DEFAULT_KIND, KINDS, resolve_spacing
from .maps import compute_maps
from .torch import Outside, expand_map
from .torch import compute_maps as torch_compute_maps  # a label on a GPU gets its map there

__all__ = ["ExpandRegionWiseMapd", "RegionWiseMapd"]


class RegionWiseMapd(MapTransform):
    """Compute the Region-wise map of each (transformed) label, on the fly.

    Put it after the spatial transforms: the map then describes the patch the network
    sees, normalised by that patch's own maxima, as in the paper.

    Parameters
    ----------
    keys : label key(s)
        Each value is a ``(1, *spatial)`` label (MetaTensor, tensor or array) with
        integer values; resample labels with ``mode="nearest"``.
    classes : sequence of C ints
        Label value of each output channel (the dataset's class list).
    map_keys : key(s), optional
        Where to store each map; default ``"<key>_rwmap"``.
    kind : {"rrw", "boundary", "kervadec", "ac", "sdf"}
    spacing : {"voxel", "physical"}, sequence of float, or None
        ``"voxel"`` (or None): distances in voxels.  ``"physical"``: the voxel sizes of the
        label as it is now (``MetaTensor.pixdim``, so a resampled patch uses its new
        spacing).  Voxel sizes: those (:data:`rwmaps_cli.contract.SPACINGS`).
    slice_axis : int, optional
        Spatial axis (of the label without its channel) for per-slice maps.
    ignore_label : int, optional
    dtype : numpy float dtype
        float32 by default.

    Returns (from ``__call__``)
    ---------------------------
    The dict with ``(C, *spatial)`` maps added, MetaTensors carrying the label's meta.
    """

    def __init__(self, keys: KeysCollection, classes: Sequence[int], map_keys: KeysCollection | None = None,
                 kind: str = DEFAULT_KIND, spacing: str | Sequence[float] | None = None, slice_axis: int | None = None,
                 ignore_label: int | None = None, dtype=np.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.classes = [int(k) for k in classes]
        self.map_keys = _output_keys(self.keys, map_keys)
        if isinstance(spacing, str):
            resolve_spacing(spacing, ())  # an unknown name fails now, not at the first sample
        self.kind, self.spacing, self.slice_axis = kind, spacing, slice_axis
        self.ignore_label, self.dtype = ignore_label, dtype

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, map_key in self.key_iterator(d, self.map_keys):
            d[map_key] = self.compute(d[key])
        return d

    def compute(self, label) -> MetaTensor | torch.Tensor:
        """``(1, *spatial)`` label -> ``(C, *spatial)`` map (a MetaTensor when the label is one).

        A label on a GPU gets its map there, from the PyTorch engine (the same maps within
        float32 rounding); a label on the CPU, from the numpy kernel (the faster one there).
        """
        plain = _plain(label)
        on_gpu = torch.is_tensor(plain) and plain.device.type != "cpu"
        ndim = _check_single_channel(plain, "label")
        spacing = resolve_spacing(self.spacing, _pixdim(label, ndim) if self.spacing == "physical" else None)
        options = dict(kind=self.kind, spacing=spacing, slice_axis=self.slice_axis, ignore_label=self.ignore_label)
        try:
            if on_gpu:  # the label is a batch of one item for the PyTorch engine
                dtype = torch.from_numpy(np.empty(0, self.dtype)).dtype
                return _like(label, torch_compute_maps(plain, self.classes, dtype=dtype, **options)[0])
            maps = compute_maps(_single_channel(label, "label"), self.classes, dtype=self.dtype, **options)
        except ValueError as error:
            raise ValueError(f"{error} (resample labels with mode='nearest')") from error
        return _like(label, torch.from_numpy(maps))


class ExpandRegionWiseMapd(MapTransform):
    """Expand compact maps into full ``(C, *spatial)`` maps with the transformed label.

    Load the compact map like an image (``LoadImaged`` + ``EnsureChannelFirstd``), put it
    through the same spatial transforms as the label (the label with ``mode="nearest"``),
    then this transform: channel ``c`` is the compact value where the label is
    ``classes[c]``, ``outside[c]`` elsewhere, 0 on the ignore label.

    Parameters
    ----------
    keys : compact map key(s)
        Each value ``(1, *spatial)`` float; replaced by its ``(C, *spatial)`` expansion
        (or stored under ``map_keys``).
    label_key : key
        The ``(1, *spatial)`` label, transformed like the maps.
    classes : sequence of C ints
    outside : float or C floats
        Value outside each class (1 for the paper's map; the authors' class-imbalance
        variant uses one value per class).
    ignore_label : int, optional
    renormalize : {None, "patch"}
        ``"patch"``: divide by the patch's largest ``|v|`` per class, the seed's per-patch
        normalisation (with the whole volume's distances).
    map_keys : key(s), optional
        Where to store the full maps; default: replace the compact ones.
    kind : {"rrw"}
        The kind of the compact maps: ``rrw``, the only kind with a compact form.  Any other
        is refused at construction, in one line naming the way: a ``boundary``,
        ``kervadec`` or ``sdf`` map is loaded full (``EnsureChannelFirstd(channel_dim=-1)``)
        or computed by :class:`RegionWiseMapd`, and an ``ac`` map by
        ``RegionWiseMapd(kind="ac")``.

    Raises
    ------
    ValueError
        At construction: a ``kind`` other than ``rrw``.  From ``__call__``: label values that
        are not integers (a linearly interpolated label) or not in ``classes``; a map with
        more than one channel (a full map, which needs no expansion); a label and map of
        different shapes.
    """

    def __init__(self, keys: KeysCollection, label_key: Hashable, classes: Sequence[int], outside: Outside = 1.0,
                 ignore_label: int | None = None, renormalize: str | None = None,
                 map_keys: KeysCollection | None = None, allow_missing_keys: bool = False,
                 kind: str = DEFAULT_KIND) -> None:
        _check_compact_kind(kind)
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.classes = [int(k) for k in classes]
        self.outside, self.ignore_label, self.renormalize, self.kind = outside, ignore_label, renormalize, kind
        self.map_keys = self.keys if map_keys is None else _output_keys(self.keys, map_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        label = d[self.label_key]
        for key, map_key in self.key_iterator(d, self.map_keys):
            d[map_key] = self.expand(d[key], label)
        return d

    def expand(self, compact, label) -> MetaTensor | torch.Tensor:
        """``(1, *spatial)`` compact map and label -> ``(C, *spatial)`` full map."""
        values = torch.as_tensor(_plain(compact))
        labels = torch.as_tensor(_plain(label))
        if values.ndim == labels.ndim >= 2 and values.shape[0] > 1:  # channels first, as the label
            raise ValueError(f"the compact map has {values.shape[0]} channels: a compact map has one, and a full map "
                             "(every boundary, kervadec or sdf map) needs no expansion")
        _check_single_channel(values, "compact map")
        _check_single_channel(labels, "label")
        try:
            full = expand_map(values, labels, self.classes, outside=self.outside, ignore_label=self.ignore_label,
                              renormalize=self.renormalize)[0]
        except ValueError as error:
            raise ValueError(f"{error} (resample labels with mode='nearest')") from error
        return _like(compact, full)


def _check_compact_kind(kind: str) -> None:
    """ValueError, one line naming the way, unless ``kind`` is ``rrw`` (the only compact kind)."""
    if kind == "rrw":
        return
    if kind == "ac":
        raise ValueError("ExpandRegionWiseMapd: an ac map has no compact file: compute it from the transformed label "
                         "with RegionWiseMapd(keys=<label key>, classes=..., kind='ac')")
    if kind in KINDS:
        raise ValueError(f"ExpandRegionWiseMapd: kind {kind!r} has no compact form, so nothing to expand: load its "
                         "full map (EnsureChannelFirstd(keys=..., channel_dim=-1)) and transform it with the label, "
                         f"or compute it after the transforms with RegionWiseMapd(kind={kind!r})")
    raise ValueError(f"ExpandRegionWiseMapd: unknown kind {kind!r}; compact maps are 'rrw'")


def _output_keys(keys: tuple, map_keys: KeysCollection | None) -> tuple:
    if map_keys is None:
        return tuple(f"{key}_rwmap" for key in keys)
    map_keys = (map_keys,) if isinstance(map_keys, (str, int)) else tuple(map_keys)
    if len(map_keys) != len(keys):
        raise ValueError(f"{len(map_keys)} map keys for {len(keys)} keys")
    return map_keys


def _plain(value):
    """A MetaTensor as a plain tensor (cheaper ops, no meta tracking), anything else as is."""
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def _single_channel(value, what: str) -> np.ndarray:
    """The spatial array of a ``(1, *spatial)`` channel-first value (on the CPU)."""
    _check_single_channel(value, what)
    return np.asarray(_plain(value).detach().cpu() if torch.is_tensor(value) else value)[0]


def _check_single_channel(value, what: str) -> int:
    """The spatial dimensions of a ``(1, *spatial)`` channel-first value, wherever it is;
    ValueError for another shape."""
    shape = tuple(np.shape(value) if not torch.is_tensor(value) else value.shape)
    if len(shape) < 2 or shape[0] != 1:
        raise ValueError(f"{what} has shape {shape}; expected (1, *spatial): use EnsureChannelFirstd first")
    return len(shape) - 1


def _pixdim(label, ndim: int) -> tuple[float, ...]:
    """Voxel sizes of a MetaTensor label, from its (possibly transformed) affine."""
    if not isinstance(label, MetaTensor):
        raise ValueError("spacing='physical' needs a MetaTensor label (LoadImaged gives one)")
    return tuple(float(s) for s in label.pixdim[:ndim])


def _like(reference, tensor: torch.Tensor) -> MetaTensor | torch.Tensor:
    """``tensor`` with the meta (affine, file name) of ``reference`` when that is a MetaTensor."""
    if isinstance(reference, MetaTensor):
        meta = dict(reference.meta)
        meta["affine"] = reference.affine.clone()  # its own copy: later transforms change it in place
        return MetaTensor(tensor, meta=meta)
    return tensor
