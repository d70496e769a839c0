"""nnU-Net's data loader, with the region-wise map patch cropped from the same box.

``nnUNetDataLoaderRW.generate_train_batch`` mirrors ``nnUNetDataLoader.generate_train_batch``
of nnU-Net 2.8.1 (same ``get_bbox``, same ``crop_and_pad_nd``, same 2d slicing), and adds
the map patch: read from the memory-mapped ``<case>.npy`` of the maps folder with the box
of data and seg, then handed to the transforms as ``regression_target``.  The batch gets
a ``"rwmap"`` entry: a tensor ``(B, C, *patch)``, or a list of them, one per
deep-supervision scale.  With ``maps=None`` (on the fly) the transforms compute the map.
"""

from __future__ import annotations

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits

from ..results import DONE
from .store import MapsFolder, MapsFolderError
from .transforms import crop_map


class nnUNetDataLoaderRW(nnUNetDataLoader):
    """``nnUNetDataLoader`` plus the map patch (see the module docstring).

    Parameters
    ----------
    *args, **kwargs
        As for ``nnUNetDataLoader``.
    maps : MapsFolder or None
        The maps folder; None when the transforms compute the maps on the fly.
    return_boxes : bool
        Also return each sample's crop box (``"bbox"``), for checking alignment.
    """

    def __init__(self, *args, maps: MapsFolder | None = None, return_boxes: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.maps = maps
        self.return_boxes = return_boxes
        if maps is not None:
            missing = [case for case in self.indices
                       if not isinstance(maps.cases.get(case), dict) or maps.cases[case].get("status") != DONE]
            if missing:
                raise MapsFolderError(f"{maps.folder}: no finished map for {len(missing)} case(s), e.g. "
                                      f"{missing[0]!r}; run rwmaps compute on the preprocessed folder again")

    def _load_map(self, case: str, shape) -> np.ndarray:
        path = self.maps.path(case)
        rwmap = np.load(path, mmap_mode="r")
        spatial = rwmap.shape if self.maps.layout == "compact" else rwmap.shape[1:]
        if tuple(spatial) != tuple(shape):
            raise MapsFolderError(f"{path}: map has spatial shape {tuple(spatial)} but the preprocessed case has "
                                  f"{tuple(shape)}; the data was preprocessed again, recompute the maps")
        return rwmap

    def generate_train_batch(self):
        selected_keys = self.get_indices()
        data_all = seg_all = map_all = None
        boxes = []
        compact = self.maps is not None and self.maps.layout == "compact"

        with torch.no_grad():
            with threadpool_limits(limits=1, user_api=None):
                for j, i in enumerate(selected_keys):
                    force_fg = self.get_do_oversample(j)
                    data, seg, seg_prev, properties = self._data.load_case(i)
                    shape = data.shape[1:]
                    bbox_lbs, bbox_ubs = self.get_bbox(shape, force_fg, properties['class_locations'])
                    bbox = [[a, b] for a, b in zip(bbox_lbs, bbox_ubs)]
                    boxes.append(bbox)

                    data_cropped = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
                    seg_cropped = torch.from_numpy(
                        crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
                    if seg_prev is not None:
                        seg_prev_cropped = torch.from_numpy(
                            crop_and_pad_nd(seg_prev, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
                        seg_cropped = torch.cat((seg_cropped, seg_prev_cropped[None]), dim=0)
                    map_cropped = None
                    if self.maps is not None:
                        map_cropped = torch.from_numpy(crop_map(self._load_map(i, shape), bbox, compact))

                    if self.patch_size_was_2d:
                        data_cropped = data_cropped[:, 0]
                        seg_cropped = seg_cropped[:, 0]
                        if map_cropped is not None:
                            map_cropped = map_cropped[:, 0]

                    sample = {'image': data_cropped, 'segmentation': seg_cropped}
                    if map_cropped is not None:
                        sample['regression_target'] = map_cropped
                    if self.transforms is not None:
                        sample = self.transforms(**sample)
                    data_sample = sample['image']
                    seg_sample = sample['segmentation']
                    map_sample = sample.get('regression_target')

                    if data_all is None:
                        data_all = torch.empty((self.batch_size, *data_sample.shape), dtype=torch.float32)
                    data_all[j] = data_sample
                    seg_all = _collate_into(seg_all, seg_sample, j, self.batch_size)
                    if map_sample is not None:
                        map_all = _collate_into(map_all, map_sample, j, self.batch_size)

        batch = {'data': data_all, 'target': seg_all, 'keys': selected_keys}
        if map_all is not None:
            batch['rwmap'] = map_all
        if self.return_boxes:
            batch['bbox'] = boxes
        return batch


def _collate_into(store, sample, j: int, batch_size: int):
    """Put sample j (a tensor or a list of tensors, one per scale) into the batch tensors."""
    if isinstance(sample, list):
        if store is None:
            store = [torch.empty((batch_size, *s.shape), dtype=s.dtype) for s in sample]
        for k, s in enumerate(sample):
            store[k][j] = s
    else:
        if store is None:
            store = torch.empty((batch_size, *sample.shape), dtype=sample.dtype)
        store[j] = sample
    return store
