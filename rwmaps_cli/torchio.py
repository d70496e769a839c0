"""TorchIO transforms and images for Region-wise maps.

Two ways to give a network the map of the patch it sees:

- :class:`RegionWiseMap` computes the map from the subject's (augmented) ``LabelMap`` with
  :func:`rwmaps_cli.compute_maps`: the paper's way, exact under any augmentation.
- :class:`ExpandRegionWiseMap` turns a precomputed compact map, pushed through the same
  spatial transforms as the label, into the full ``(C, *spatial)`` map with the transformed
  label.  A precomputed *full* map needs no transform of ours: it is pushed through the
  spatial transforms channel by channel.  Only ``rrw`` has a compact map: ``boundary``,
  ``kervadec`` and ``sdf`` maps are precomputed full or computed by :class:`RegionWiseMap`,
  and :class:`ExpandRegionWiseMap` refuses them.

Maps written by ``rwmaps compute`` (full or compact; NIfTI, ``.npy``, ``.npz``) are opened as
:class:`RegionWiseMapImage` (``RegionWiseMapImage(path)``; lazily read, like every TorchIO
image).  How TorchIO treats such an image, read from TorchIO's source (1.2):

- **Intensity transforms skip it.** ``IntensityTransform.get_images`` keeps only
  ``isinstance(image, ScalarImage)``; a :class:`RegionWiseMapImage` is a ``tio.Image`` but not
  a ``ScalarImage``, so ``RandomNoise``, ``RescaleIntensity``, ``ZNormalization``,
  ``RandomBiasField``, ``RandomGamma``, ``RandomBlur`` ... never change a map, whatever their
  ``include``/``exclude``.  (``tio.Lambda(types_to_apply=[tio.INTENSITY])`` selects by type, and
  would: leave maps out of its ``types_to_apply`` or ``include``.)
- **Interpolation.** Its type is ``tio.INTENSITY``, so ``RandomAffine`` and ``Affine`` (which
  choose by type) resample it with their ``image_interpolation`` (linear by default), never
  with the label's nearest neighbour.  ``Resample``, ``Resize``, ``RandomAnisotropy`` and
  ``RandomElasticDeformation`` choose by class (``isinstance(image, ScalarImage)``) and would
  use ``label_interpolation`` (nearest) on a map: resample before ``rwmaps compute``, or give
  those transforms ``include=``/``exclude=`` and apply a copy with ``label_interpolation="linear"``
  to the maps.  Flips, crops, ``Pad`` and 90° rotations move voxels without interpolation.
- **Padding.** TorchIO pads per transform, not per image: ``RandomAffine`` fills every
  ``INTENSITY`` image with ``default_pad_value`` (``"minimum"`` by default: -1 in an rrw map,
  which makes out-of-field voxels look inside every class after interpolation) and every
  ``LabelMap`` with ``default_pad_label`` (0, the background).  The right fill for a map is
  the outside value 1: a voxel outside the field then weighs 1 in every channel, which adds a
  constant to the loss and no gradient (``sum_c p_c = 1``), and linear interpolation at the
  edge of the field only pulls the own-class value towards 1, keeping "outside" channels at 1.
  :class:`RandomAffineWithMaps` is ``tio.RandomAffine`` with one draw of parameters applied
  to the maps with that fill and to the other images with their own.  For ``Pad`` and
  ``CropOrPad`` use a second instance on the maps: ``tio.Pad(p, padding_mode=1.0,
  include=["rwmap"])``.  The signed kinds (``sdf``, ``boundary``, ``kervadec``) have no
  outside value: fill them with 0 (``map_pad_value=0``, ``padding_mode=0``).  Their distances
  beyond the field are unknown, and 0 in every channel is what the kernel gives voxels
  without information (the ignore label): it adds nothing to the loss and no gradient, under
  a softmax or a sigmoid, and linear interpolation at the edge of the field pulls the map
  towards 0 (a boundary), not towards 1 ("far outside every class").  The nnU-Net trainers
  decide the same (``rwmaps_cli/nnunet/transforms.py``).
- **Patches.** ``tio.Queue`` crops every image of a subject at the same location, maps
  included (the location is in ``patch[tio.LOCATION]``).

Needs the optional extra ``rwmaps_cli[torchio]``.  ``import rwmaps_cli`` never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchio as tio

from .errors import InputError
from .contract import DEFAULT_KIND, KINDS, RENORMALIZE, SPACINGS, check_classes, resolve_spacing
from .maps import compute_maps
from .torch import Outside, class_index, expand_map, renormalize_patch

__all__ = ["MAP_PAD_VALUE", "ExpandRegionWiseMap", "RandomAffineWithMaps", "RegionWiseMap", "RegionWiseMapImage",
           "read_map"]

# The outside value of an rrw map: the fill that keeps a padded map consistent (module docstring).
MAP_PAD_VALUE = 1.0


def read_map(path: str | os.PathLike) -> tuple[torch.Tensor, np.ndarray]:
    """Read a map written by ``rwmaps compute`` as TorchIO wants it: ``(tensor, affine)``.

    The reader of :class:`RegionWiseMapImage`, usable as any TorchIO image's ``reader=``.

    Parameters
    ----------
    path : a ``.nii.gz``, ``.nii``, ``.npz`` or ``.npy`` map (full or compact)

    Returns
    -------
    tensor : (C, X, Y, Z) float32 tensor
        Full map: one channel per class.  Compact map: one channel, each voxel's own-class
        value (not expanded: :class:`ExpandRegionWiseMap` does that after augmentation).  A 2D
        map gets a trailing singleton axis, as TorchIO stores 2D images.
    affine : (4, 4) float64 ndarray
        The map's own (NIfTI maps keep their label's affine); for ``.npy``/``.npz``, that of
        the label file the manifest records; else diagonal from the stored spacing.  A map
        and its label must share it, or TorchIO's spatial transforms (which act in world
        coordinates) would move them differently; ``tio.CopyAffine("label")`` fixes a map
        whose label file cannot be found.

    Raises
    ------
    InputError
        One line: not a map, or a map of labels that SimpleITK reads (their arrays are
        ``(Z, Y, X)``, TorchIO's ``(X, Y, Z)``; not supported yet).
    """
    from .formats import format_for, read_geometry
    from .formats.sitk import SitkFormat
    from . import mapfile

    try:
        data, meta = mapfile.read_map(path, expand=False)  # its errors without the path: named below
        source = meta["input"]
        if source is not None and meta["reader"] is None and isinstance(format_for(source), SitkFormat):
            raise InputError("is a map of labels read by SimpleITK, in (Z, Y, X) order; TorchIO reads them as "
                             "(X, Y, Z): load the labels with rwmaps' reader or convert them to NIfTI first")
        affine = meta["affine"]
        if affine is None and source is not None and Path(source).exists():
            affine = read_geometry(source, reader=meta["reader"])[1]
        if affine is None and meta["spacing"] is not None:
            affine = np.diag([*meta["spacing"], *[1.0] * (4 - len(meta["spacing"]))])
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    tensor = torch.from_numpy(np.asarray(data, dtype=np.float32))  # float16 maps: SimpleITK resamples float32
    if meta["layout"] == "compact":
        tensor = tensor[None]
    if tensor.ndim == 3:  # (C, H, W): TorchIO's 2D images are (C, W, H, 1)
        tensor = tensor[..., None]
    return tensor, np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)


class RegionWiseMapImage(tio.Image):
    """A Region-wise map (full or compact) in a ``tio.Subject``.

    A ``tio.Image`` of type ``tio.INTENSITY`` that is not a ``tio.ScalarImage``: intensity
    transforms never touch it, and type-driven spatial transforms (``RandomAffine``) resample it
    linearly.  See the module docstring for the transforms that choose otherwise, and for
    padding (use :class:`RandomAffineWithMaps`, or fill with :data:`MAP_PAD_VALUE`;
    0 for ``sdf``, ``boundary`` and ``kervadec`` maps).

    Parameters
    ----------
    path : path of a map written by ``rwmaps compute``, optional
        Read lazily with :func:`read_map` (the default ``reader``).
    tensor : (C, X, Y, Z) float tensor or ndarray, optional
        Instead of a path.
    affine : (4, 4) ndarray, optional
        With ``tensor``: the label's affine.
    **kwargs
        As ``tio.Image`` (``type`` must be ``tio.INTENSITY`` if given).
    """

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("type", tio.INTENSITY) != tio.INTENSITY:
            raise ValueError("the type of a RegionWiseMapImage is always tio.INTENSITY (linear interpolation)")
        kwargs["type"] = tio.INTENSITY
        kwargs.setdefault("reader", read_map)
        super().__init__(*args, **kwargs)


class RegionWiseMap(tio.Transform):
    """Compute the Region-wise map of the subject's (transformed) label, on the fly.

    Put it after the spatial transforms (and after ``tio.Queue`` cropped the patch, for
    per-patch maps): the map then describes exactly what the network sees, normalised by the
    patch's own maxima, as in the paper.

    Parameters
    ----------
    label : str
        Name of the ``(1, X, Y, Z)`` integer ``LabelMap``.
    output : str
        Name of the map added to the subject: a :class:`RegionWiseMapImage` ``(C, X, Y, Z)``
        float32 with the label's affine.
    classes : sequence of C ints
        The label value of each channel (the dataset's class list).
    kind : {"rrw", "boundary", "kervadec", "ac", "sdf"}
    spacing : {"voxel", "physical"} or None
        ``"voxel"`` (or None): distances in voxels (the paper).  ``"physical"``: the label's
        voxel sizes as they are now (``LabelMap.spacing``; a resampled label has its new
        spacing).  See :data:`rwmaps_cli.contract.SPACINGS`.
    ignore_label : int, optional
    **kwargs
        ``tio.Transform``'s (``p``, ...).

    Raises (when called)
    --------------------
    KeyError
        No image named ``label`` in the subject.
    ValueError
        Label values that are not integers (an interpolated label) or not in ``classes``.
    """

    def __init__(self, label: str = "label", output: str = "rwmap", classes: Sequence[int] = (), kind: str = DEFAULT_KIND,
                 spacing: str | None = None, ignore_label: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if spacing not in (None, *SPACINGS):
            raise ValueError(f"spacing must be 'voxel' or 'physical', got {spacing!r}")
        self.label, self.output = label, output
        self.classes = check_classes(classes, ignore_label)  # the one rule (contract.check_classes)
        self.kind, self.spacing, self.ignore_label = kind, spacing, ignore_label
        self.args_names = ["label", "output", "classes", "kind", "spacing", "ignore_label"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        label = _image(subject, self.label, "label")
        array = _label_array(label)
        spacing = resolve_spacing(self.spacing, label.spacing[: array.ndim])
        try:
            maps = compute_maps(array, self.classes, kind=self.kind, spacing=spacing, ignore_label=self.ignore_label)
        except ValueError as error:
            raise ValueError(f"{self.label}: {error} (resample labels with nearest neighbour)") from None
        tensor = torch.from_numpy(maps)
        subject.add_image(RegionWiseMapImage(tensor=tensor.reshape(len(self.classes), *label.spatial_shape),
                                             affine=label.affine.copy()), self.output)
        return subject


class ExpandRegionWiseMap(tio.Transform):
    """Expand a compact map, transformed like the label, into the full ``(C, *spatial)`` map.

    Channel ``c`` is the compact value where the (transformed) label is ``classes[c]``,
    ``outside[c]`` elsewhere, and 0 in every channel on the ignore label: the semantics of
    :func:`rwmaps_cli.torch.expand_map` and of ``rwmaps_cli.monai.ExpandRegionWiseMapd``.

    Parameters
    ----------
    map : str
        Name of the ``(1, X, Y, Z)`` compact map (a :class:`RegionWiseMapImage`); replaced by
        its ``(C, X, Y, Z)`` float32 expansion, same affine.
    label : str
        Name of the ``(1, X, Y, Z)`` ``LabelMap``, transformed like the map (nearest neighbour).
    classes : sequence of C ints
    outside : float or C floats
        The value outside each class (1 for the paper's map; the authors' class-imbalance
        variant uses one value per class).
    renormalize : {None, "patch"}
        ``"patch"``: divide each class's values by their largest magnitude in this patch, the
        seed's per-patch map ``-EDT_volume / max_patch(EDT_volume)``.  Only the negative part
        (the inside values) is renormalised: positive values come from padding with the
        outside value (:data:`MAP_PAD_VALUE`) and are kept, so padding never sets a class's scale.
    ignore_label : int, optional
    kind : {"rrw"}
        The kind of the compact map: ``rrw``, the only kind with a compact form.  Any other
        is refused at construction, in one line naming the way: a ``boundary``,
        ``kervadec`` or ``sdf`` map is read full (:class:`RegionWiseMapImage`) or computed by
        :class:`RegionWiseMap`, and an ``ac`` map by ``RegionWiseMap(kind="ac")``.
    **kwargs
        ``tio.Transform``'s (``p``, ...).

    Raises
    ------
    ValueError
        At construction: a ``kind`` other than ``rrw``.
    KeyError
        When called: no image named ``map`` or ``label`` in the subject.
    ValueError
        When called: a map with more than one channel (a full map, which needs no
        expansion), a map and label of different shapes, label values that are not integers
        (an interpolated label) or not in ``classes``.
    """

    def __init__(self, map: str = "rwmap", label: str = "label", classes: Sequence[int] = (),  # noqa: A002
                 outside: Outside = 1.0, renormalize: str | None = None, ignore_label: int | None = None,
                 kind: str = DEFAULT_KIND, **kwargs) -> None:
        _check_compact_kind(kind)
        super().__init__(**kwargs)
        if renormalize not in RENORMALIZE:
            raise ValueError(f"renormalize must be None or 'patch', got {renormalize!r}")
        self.map, self.label = map, label
        self.classes = check_classes(classes, ignore_label)  # the one rule (contract.check_classes)
        self.outside, self.renormalize, self.ignore_label, self.kind = outside, renormalize, ignore_label, kind
        self.args_names = ["map", "label", "classes", "outside", "renormalize", "ignore_label", "kind"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        compact = _image(subject, self.map, "compact map")
        label = _image(subject, self.label, "label")
        if compact.num_channels != 1:
            raise ValueError(f"{self.map} has {compact.num_channels} channels: a compact map has one "
                             "(a full map, as every boundary, kervadec or sdf map, needs no expansion)")
        if compact.spatial_shape != label.spatial_shape:
            raise ValueError(f"{self.map} {compact.spatial_shape} and {self.label} {label.spatial_shape} "
                             "differ in shape: transform them together")
        values = compact.data[:1].float()
        labels = label.data[:1]
        try:
            if self.renormalize == "patch":
                index, valid = class_index(labels, self.classes, self.ignore_label)
                inside = values.clamp(max=0)
                values = renormalize_patch(inside, index, valid, len(self.classes)) + (values - inside)
            full = expand_map(values, labels, self.classes, outside=self.outside, ignore_label=self.ignore_label)[0]
        except ValueError as error:
            raise ValueError(f"{self.label}: {error} (resample labels with nearest neighbour)") from None
        compact.set_data(full)
        return subject


class RandomAffineWithMaps(tio.RandomAffine):
    """``tio.RandomAffine`` that fills Region-wise maps with the outside value, not the image's.

    One draw of scales, rotation and translation is applied to every image of the subject, as
    ``tio.RandomAffine`` does; the images named in ``maps`` are resampled linearly and filled
    with ``map_pad_value`` (1, the rrw outside value), the others with ``default_pad_value``
    (``"minimum"``: the image's background) and labels with ``default_pad_label``.

    Parameters
    ----------
    maps : sequence of str
        Names of the map images (full or compact).  Names not in a subject are skipped.
    map_pad_value : float
        Fill of the maps outside the field of view: 1 (the outside value) for ``rrw`` and
        ``ac`` maps; 0 for ``sdf``, ``boundary`` and ``kervadec`` maps, whose distances
        beyond the field are unknown (module docstring, "Padding").
    **kwargs
        ``tio.RandomAffine``'s (``scales``, ``degrees``, ``translation``, ``p``, ...).
    """

    def __init__(self, maps: Sequence[str] = ("rwmap",), map_pad_value: float = MAP_PAD_VALUE, **kwargs) -> None:
        if isinstance(maps, str):
            maps = [maps]
        super().__init__(**kwargs)
        self.maps, self.map_pad_value = list(maps), float(map_pad_value)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        scaling, rotation, translation = (tuple(float(v) for v in p.tolist()) for p in self.get_params(
            self.scales, self.degrees, self.translation, self.isotropic))
        names = set(subject.get_images_names())
        selected = [n for n in names if (self.include is None or n in self.include)
                    and (self.exclude is None or n not in self.exclude)]
        maps = [n for n in selected if n in self.maps]
        others = [n for n in selected if n not in self.maps]
        common = dict(scales=scaling, degrees=rotation, translation=translation, center=self.center,
                      default_pad_label=self.default_pad_label, label_interpolation=self.label_interpolation,
                      check_shape=self.check_shape, copy=False)
        if others:
            subject = tio.Affine(default_pad_value=self.default_pad_value, image_interpolation=self.image_interpolation,
                                 include=others, **common)(subject)
        if maps:
            for name in maps:
                if subject[name].type != tio.INTENSITY:
                    raise ValueError(f"{name} is a {type(subject[name]).__name__} of type {subject[name].type!r}: "
                                     "a map must be a RegionWiseMapImage (linear interpolation)")
            subject = tio.Affine(default_pad_value=self.map_pad_value, image_interpolation="linear", include=maps,
                                 **common)(subject)
        return subject


def _check_compact_kind(kind: str) -> None:
    """ValueError, one line naming the way, unless ``kind`` is ``rrw`` (the only compact kind)."""
    if kind == "rrw":
        return
    if kind == "ac":
        raise ValueError("ExpandRegionWiseMap: an ac map has no compact file: compute it from the transformed label "
                         "with RegionWiseMap(classes=..., kind='ac')")
    if kind in KINDS:
        raise ValueError(f"ExpandRegionWiseMap: kind {kind!r} has no compact form, so nothing to expand: read its "
                         "full map as a RegionWiseMapImage and transform it with the label, or compute it after the "
                         f"transforms with RegionWiseMap(kind={kind!r})")
    raise ValueError(f"ExpandRegionWiseMap: unknown kind {kind!r}; compact maps are 'rrw'")


def _image(subject: tio.Subject, name: str, what: str) -> tio.Image:
    if name not in subject or not isinstance(subject[name], tio.Image):
        images = ", ".join(subject.get_images_names()) or "none"
        raise KeyError(f"the subject has no {what} image {name!r} (its images: {images})")
    return subject[name]


def _label_array(label: tio.Image) -> np.ndarray:
    """The label's spatial array ``(X, Y, Z)``, or ``(X, Y)`` for a 2D TorchIO image."""
    if label.num_channels != 1:
        raise ValueError(f"the label has {label.num_channels} channels; expected one (a LabelMap of class values)")
    array = label.data[0].numpy()
    return array[..., 0] if label.is_2d() else array
