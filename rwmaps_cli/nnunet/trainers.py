"""nnU-Net v2 trainers with region-wise (RW) loss.

``nnUNetTrainerRW``, ``nnUNetTrainerCERW``, ``nnUNetTrainerDiceRW``, their ``...Gradual``
variants and ``nnUNetTrainerRWOnTheFly``: what each one's loss is, is the trainers table of
``docs/nnunet.md`` ("The trainers"); the losses themselves are ``rwmaps_cli/nnunet/losses.py``.

The maps folder is, in this order: the trainer's ``rw_maps_folder`` attribute (set by
:func:`rwmaps_cli.nnunet.train.train`), the ``RWMAPS_MAPS`` environment variable, or the
sibling ``<preprocessed folder>_rwmaps`` that ``rwmaps compute`` writes by default.

The kind of the maps is the maps folder's (its manifest's ``kind``), whatever the trainer:
with ``rwmaps compute --kind sdf`` maps the RW loss ``mean(softmax(logits) * map)`` is the
normalised Boundary loss, and ``nnUNetTrainerCERWGradual`` / ``nnUNetTrainerDiceRWGradual``
give it the paper's gradual schedule.  The on-the-fly trainer computes ``rw_kind`` maps.

These classes keep nnUNetTrainer's constructor, so checkpoints load with nnU-Net's own
predictor once nnU-Net can find the class by name (see ``rwmaps_cli/nnunet/ext``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from ..contract import DEFAULT_KIND
from .device_maps import target_maps
from .loader import nnUNetDataLoaderRW
from .losses import RWCompoundLoss, RWDeepSupervisionLoss
from ..inputs.nnunet_preprocessed import maps_folder_beside
from .store import MapsFolder, MapsFolderError, read_maps_folder
from .transforms import DownsampleMapForDSTransform, MapTargetTransform

MAPS_ENV = "RWMAPS_MAPS"


class nnUNetTrainerRW(nnUNetTrainer):
    """nnU-Net's trainer with RW loss from precomputed maps (see the module docstring)."""

    #: None for RW alone, "ce" or "dice" for a compound loss.
    rw_base: str | None = None
    #: "equal" (base + RW) or "gradual" (alpha * base + (1 - alpha) * RW).
    rw_schedule: str = "equal"
    #: Compute the maps in the loader from each augmented patch instead of reading them.
    rw_on_the_fly: bool = False
    #: The maps folder; None: $RWMAPS_MAPS, else the sibling ``<preprocessed>_rwmaps``.
    rw_maps_folder: str | None = None
    #: On the fly only: "torch" computes each scale's maps in the train step on the training device
    #: (``device_maps.target_maps``); "edt" (rwmaps' multi-label EDT) or "scipy" (one EDT per class, as
    #: the paper's code) compute them in the loader's CPU workers, then downsample them as the seg.
    rw_engine: str = "torch"
    #: On the fly only: the kind of map computed from each patch (precomputed maps carry their own).
    rw_kind: str = DEFAULT_KIND
    #: Set to a list to record each loss call's full-resolution (target, map) (tests).
    rw_record: list | None = None
    #: Return each sample's crop box in the batch (tests).
    rw_return_boxes: bool = False

    # ---- the maps ------------------------------------------------------------------

    def rw_maps(self) -> MapsFolder | None:
        """The maps folder this trainer reads, checked against the dataset's labels."""
        if self.rw_on_the_fly:
            return None
        folder = self.rw_maps_folder or os.environ.get(MAPS_ENV) or maps_folder_beside(self.preprocessed_dataset_folder)
        maps = read_maps_folder(folder)
        lm = self.label_manager
        if lm.has_regions:
            expected = [sorted(int(v) for v in np.atleast_1d(r)) for r in lm.foreground_regions]
            got = [sorted(int(v) for v in r) for r in (maps.regions or [])]
            if got != expected:
                raise MapsFolderError(f"{folder}: maps are for regions {maps.regions}, the dataset has {expected}")
        else:
            if maps.regions is not None or maps.classes != [int(c) for c in lm.all_labels]:
                raise MapsFolderError(f"{folder}: maps are for classes {maps.classes}, the network outputs "
                                      f"{list(lm.all_labels)}")
        expected_axis = 0 if len(self.configuration_manager.patch_size) == 2 else None
        if maps.parameters.get("slice_axis") != expected_axis:
            self.print_to_log_file(f"WARNING: maps in {folder} have slice_axis {maps.parameters.get('slice_axis')}; "
                                   f"configuration {self.configuration_name} would use {expected_axis}")
        self.print_to_log_file(f"region-wise maps: {folder} (kind {maps.kind}, layout {maps.layout})")
        return maps

    def _map_transform(self, maps: MapsFolder | None) -> MapTargetTransform:
        lm = self.label_manager
        regions = [list(np.atleast_1d(r)) for r in lm.foreground_regions] if lm.has_regions else None
        if maps is None:
            return MapTargetTransform(lm.all_labels, regions, "onthefly", self.rw_kind, lm.ignore_label,
                                      engine=self.rw_engine)
        return MapTargetTransform(maps.classes, regions, maps.layout, maps.kind, lm.ignore_label)

    # ---- transforms: nnU-Net's, then the map made consistent, then deep supervision ----

    def _maps_on_device(self) -> bool:
        """The maps are made in the train step, on the training device, from the targets."""
        return self.rw_on_the_fly and self.rw_engine == "torch"

    def _with_maps(self, transforms: ComposeTransforms, deep_supervision_scales) -> ComposeTransforms:
        steps = list(transforms.transforms)
        if self._maps_on_device():  # nnU-Net's own transforms; the maps come in the train step
            if deep_supervision_scales is not None:
                steps.append(DownsampleSegForDSTransform(ds_scales=deep_supervision_scales))
            return ComposeTransforms(steps)
        steps.append(self._map_transform(self._rw_maps_cache))
        if deep_supervision_scales is not None:
            steps.append(DownsampleSegForDSTransform(ds_scales=deep_supervision_scales))
            steps.append(DownsampleMapForDSTransform(ds_scales=deep_supervision_scales))
        return ComposeTransforms(steps)

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        base = nnUNetTrainer.get_training_transforms(patch_size, rotation_for_DA, None, mirror_axes,
                                                     do_dummy_2d_data_aug, use_mask_for_norm, is_cascaded,
                                                     foreground_labels, regions, ignore_label)
        return self._with_maps(base, deep_supervision_scales)

    def get_validation_transforms(self, deep_supervision_scales, is_cascaded=False, foreground_labels=None,
                                  regions=None, ignore_label=None):
        base = nnUNetTrainer.get_validation_transforms(None, is_cascaded, foreground_labels, regions, ignore_label)
        return self._with_maps(base, deep_supervision_scales)

    # ---- data loaders: nnU-Net 2.8.1's get_dataloaders with the map-aware loader ----

    def get_dataloaders(self):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self._rw_maps_cache = self.rw_maps()
        patch_size = self.configuration_manager.patch_size
        deep_supervision_scales = self._get_deep_supervision_scales()
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        tr_transforms = self.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
            ignore_label=lm.ignore_label)
        val_transforms = self.get_validation_transforms(
            deep_supervision_scales, is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels,
            regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        common = dict(oversample_foreground_percent=self.oversample_foreground_percent, sampling_probabilities=None,
                      pad_sides=None, probabilistic_oversampling=self.probabilistic_oversampling,
                      maps=self._rw_maps_cache, return_boxes=self.rw_return_boxes)
        dl_tr = nnUNetDataLoaderRW(dataset_tr, self.batch_size, initial_patch_size, patch_size, lm,
                                   transforms=tr_transforms, **common)
        dl_val = nnUNetDataLoaderRW(dataset_val, self.batch_size, patch_size, patch_size, lm,
                                    transforms=val_transforms, **common)
        allowed_num_processes = get_allowed_n_proc_DA()
        if allowed_num_processes == 0:
            mt_gen_train = SingleThreadedAugmenter(dl_tr, None)
            mt_gen_val = SingleThreadedAugmenter(dl_val, None)
        else:
            mt_gen_train = NonDetMultiThreadedAugmenter(
                data_loader=dl_tr, transform=None, num_processes=allowed_num_processes,
                num_cached=max(6, allowed_num_processes // 2), seeds=None,
                pin_memory=self.device.type == 'cuda', wait_time=0.002)
            mt_gen_val = NonDetMultiThreadedAugmenter(
                data_loader=dl_val, transform=None, num_processes=max(1, allowed_num_processes // 2),
                num_cached=max(3, allowed_num_processes // 4), seeds=None,
                pin_memory=self.device.type == 'cuda', wait_time=0.002)
        _ = next(mt_gen_train)
        _ = next(mt_gen_val)
        return mt_gen_train, mt_gen_val

    _rw_maps_cache: MapsFolder | None = None

    # ---- the loss ---------------------------------------------------------------------

    def _rw_base_loss(self):
        lm = self.label_manager
        weight_ce, weight_dice = (1, 0) if self.rw_base == "ce" else (0, 1)
        if lm.has_regions:
            return DC_and_BCE_loss({}, {'batch_dice': self.configuration_manager.batch_dice, 'do_bg': True,
                                        'smooth': 1e-5, 'ddp': self.is_ddp},
                                   weight_ce=weight_ce, weight_dice=weight_dice,
                                   use_ignore_label=lm.ignore_label is not None,
                                   dice_class=MemoryEfficientSoftDiceLoss)
        return DC_and_CE_loss({'batch_dice': self.configuration_manager.batch_dice, 'smooth': 1e-5, 'do_bg': False,
                               'ddp': self.is_ddp}, {}, weight_ce=weight_ce, weight_dice=weight_dice,
                              ignore_label=lm.ignore_label, dice_class=MemoryEfficientSoftDiceLoss)

    def _build_loss(self):
        if self.rw_base not in (None, "ce", "dice"):
            raise ValueError(f"unknown base loss {self.rw_base!r}")
        base = None if self.rw_base is None else self._rw_base_loss()
        per_scale = RWCompoundLoss(base, self.rw_schedule, sigmoid=self.label_manager.has_regions)
        weights = None
        if self.enable_deep_supervision:
            scales = self._get_deep_supervision_scales()
            weights = np.array([1 / (2 ** i) for i in range(len(scales))])
            weights[-1] = 1e-6 if self.is_ddp and not self._do_i_compile() else 0
            weights = weights / weights.sum()
        loss = RWDeepSupervisionLoss(per_scale, weights)
        loss.record = self.rw_record
        return loss

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.loss.epoch = self.current_epoch

    def train_step(self, batch: dict) -> dict:
        self.loss.set_maps(self._batch_maps(batch), self.device)
        return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        self.loss.set_maps(self._batch_maps(batch), self.device)
        return super().validation_step(batch)

    def _batch_maps(self, batch: dict):
        """The batch's maps: the loader's, or (on the device) those of each scale's target."""
        if not self._maps_on_device():
            return batch.pop('rwmap')
        targets = batch['target'] if isinstance(batch['target'], list) else [batch['target']]
        targets = [t.to(self.device, non_blocking=True) for t in targets]  # nnU-Net's step reuses them
        batch['target'] = targets if isinstance(batch['target'], list) else targets[0]
        lm = self.label_manager
        regions = [list(np.atleast_1d(r)) for r in lm.foreground_regions] if lm.has_regions else None
        weights = self.loss.weights if self.loss.weights is not None and len(targets) > 1 else (1.0,) * len(targets)
        # a scale of weight 0 (nnU-Net's lowest) is not in the loss: no map for it
        return [target_maps(t, lm.all_labels, regions, self.rw_kind, lm.ignore_label) if w != 0
                else torch.empty(0, device=self.device) for t, w in zip(targets, weights)]


class nnUNetTrainerCERW(nnUNetTrainerRW):
    """CE + RW, equal weights (BCE + RW for region-based datasets)."""

    rw_base = "ce"


class nnUNetTrainerDiceRW(nnUNetTrainerRW):
    """Soft Dice + RW, equal weights."""

    rw_base = "dice"


class nnUNetTrainerCERWGradual(nnUNetTrainerRW):
    """``alpha * CE + (1 - alpha) * RW``, ``alpha = max((100 - epoch) / 100, 0.01)``."""

    rw_base = "ce"
    rw_schedule = "gradual"


class nnUNetTrainerDiceRWGradual(nnUNetTrainerRW):
    """``alpha * Dice + (1 - alpha) * RW``, ``alpha = max((100 - epoch) / 100, 0.01)``."""

    rw_base = "dice"
    rw_schedule = "gradual"


class nnUNetTrainerRWOnTheFly(nnUNetTrainerRW):
    """RW alone, maps computed from each augmented patch (normalised per patch, as the paper's
    training code did): in the train step on the training device, at every deep-supervision
    scale from that scale's target (``rw_engine = "torch"``, the default), or in the loader's
    CPU workers (``"edt"``, ``"scipy"``: the paper's way)."""

    rw_on_the_fly = True


TRAINERS = {cls.__name__: cls for cls in (nnUNetTrainerRW, nnUNetTrainerCERW, nnUNetTrainerDiceRW,
                                          nnUNetTrainerCERWGradual, nnUNetTrainerDiceRWGradual,
                                          nnUNetTrainerRWOnTheFly)}


def trainer_class(name: str) -> type[nnUNetTrainer]:
    """A trainer class by name: one of ours, or any nnU-Net finds (``nnUNetTrainer``, ...)."""
    if name in TRAINERS:
        return TRAINERS[name]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)


def ext_trainer_path() -> str:
    """Folder to put in ``nnUNet_extTrainer`` so that nnU-Net's own commands find these trainers."""
    return str(Path(__file__).resolve().parent / "ext")
