"""Tiny synthetic nnU-Net raw datasets, for tests and timing (no download needed).

``make_dataset(nnunet_raw, 901, "Tiny", n_cases=6, shape=(48, 48, 48), n_classes=4)`` writes
``nnunet_raw/Dataset901_Tiny/{imagesTr,labelsTr,dataset.json}``: smooth random blobs as
labels, and an image whose intensity depends on the label plus noise, so that a network
can learn something.  ``regions=True`` nests the labels (1 inside whole, 2 core, 3
enhancing) and declares BraTS-style regions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..formats import DEFAULT_FORMAT
from ..synthetic import blob_labels

#: The raw dataset's file ending: the default output format, a NIfTI that nnU-Net reads.
FILE_ENDING = f".{DEFAULT_FORMAT}"


def nested_labels(shape, rng: np.random.Generator) -> np.ndarray:
    """Three nested blobs (0 outside, 1 ⊃ 2 ⊃ 3), like tumour sub-regions."""
    field = ndi.gaussian_filter(rng.normal(size=shape), 4.0)
    field = (field - field.mean()) / (field.std() + 1e-8)
    labels = np.zeros(shape, dtype=np.uint8)
    for value, threshold in ((1, 0.0), (2, 0.8), (3, 1.5)):
        labels[field > threshold] = value
    return labels


def make_dataset(nnunet_raw: str | Path, dataset_id: int, name: str, n_cases: int = 6, shape=(48, 48, 48),
                 n_classes: int = 4, regions: bool = False, spacing=(1.0, 1.0, 1.0), seed: int = 0) -> Path:
    """Write a synthetic raw dataset; returns its folder ``Dataset{id:03d}_{name}``."""
    import nibabel as nib

    folder = Path(nnunet_raw) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    for i in range(n_cases):
        labels = nested_labels(shape, rng) if regions else blob_labels(shape, n_classes, rng)
        image = labels.astype(np.float32) * 100.0 + rng.normal(0.0, 20.0, shape).astype(np.float32) + 50.0
        case = f"case_{i:03d}"
        nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"{case}_0000{FILE_ENDING}")
        nib.save(nib.Nifti1Image(labels, affine), folder / "labelsTr" / f"{case}{FILE_ENDING}")
    if regions:
        labels_json: dict = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    else:
        labels_json = {"background": 0, **{f"class{c}": c for c in range(1, n_classes)}}
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels_json, "numTraining": n_cases,
               "file_ending": FILE_ENDING, "name": name}
    if regions:
        dataset["regions_class_order"] = [1, 2, 3]
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder


def write_small_plans(preprocessed_dataset: str | Path, name: str = "nnUNetPlansSmall", source: str = "nnUNetPlans",
                      features=(8, 16, 32, 64), patch_size=(32, 32, 32), batch_size: int = 2) -> Path:
    """A copy of a plans file with a narrower network and a smaller patch, for CPU tests.

    The configurations keep their ``data_identifier``, so they train on the data that
    ``source`` preprocessed (``nnUNetPlans_3d_fullres``); train with ``-p name``.
    """
    folder = Path(preprocessed_dataset)
    plans = json.loads((folder / f"{source}.json").read_text())
    plans["plans_name"] = name
    for config in plans["configurations"].values():
        arch = config.get("architecture", {}).get("arch_kwargs")
        if arch is not None:
            widths = list(features)
            while len(widths) < arch["n_stages"]:  # deeper plans: keep doubling, as nnU-Net does
                widths.append(min(2 * widths[-1], 320))
            arch["features_per_stage"] = widths[: arch["n_stages"]]
        if "patch_size" in config:
            config["patch_size"] = list(patch_size)[-len(config["patch_size"]):]
        if "batch_size" in config:
            config["batch_size"] = batch_size
    path = folder / f"{name}.json"
    path.write_text(json.dumps(plans, indent=1))
    return path
