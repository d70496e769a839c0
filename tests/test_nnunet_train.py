"""The real thing on CPU: nnU-Net plans and preprocesses two tiny synthetic datasets, rwmaps writes
their maps (rrw, and sdf: ``--kind sdf``), and every RW trainer trains for one short epoch.  Skipped
when nnunetv2 is not installed.

Shared per session: the preprocessing (about a minute) and one trained model (for predicting).
Networks are narrowed with a small plans variant (``nnUNetPlansSmall``) so an epoch is seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
import torch  # noqa: E402
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd  # noqa: E402

from helpers import blobs, run_rwmaps  # noqa: E402

from rwmaps_cli.contract import KINDS  # noqa: E402
from rwmaps_cli.maps import compute_maps, expand_map  # noqa: E402
from rwmaps_cli.nnunet import list_cases, read_maps_folder, read_seg  # noqa: E402
from rwmaps_cli.nnunet.synthetic import make_dataset, write_small_plans  # noqa: E402
from rwmaps_cli.regions import compute_mask_maps, compute_region_maps, region_masks  # noqa: E402

CLASSES = [0, 1, 2, 3]
REGIONS = [[1, 2, 3], [2, 3], [3]]
PLANS = "nnUNetPlansSmall"
ENV_NAMES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_extTrainer")


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory):
    """nnUNet_raw/preprocessed/results in a temporary folder, two datasets planned and preprocessed
    by nnU-Net itself, and the maps of both written by rwmaps (full; compact too for 901; sdf maps
    of both in ``<dataset>/sdf``)."""
    root = tmp_path_factory.mktemp("nnunet")
    saved = {k: os.environ.get(k) for k in ENV_NAMES}
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                      nnUNet_results=str(root / "results"), nnUNet_n_proc_DA="0")
    make_dataset(root / "raw", 901, "Tiny", n_cases=6, shape=(48, 48, 48), n_classes=4, seed=0)
    make_dataset(root / "raw", 902, "TinyRegions", n_cases=6, shape=(48, 48, 48), regions=True, seed=1)
    result = subprocess.run([sys.executable, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints "
                             "import plan_and_preprocess_entry as m; m()", "-d", "901", "902", "-c", "3d_fullres", "2d",
                             "-np", "1", "-npfp", "1"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "nnUNet_n_proc_DA": "1"})  # 0 crashes nnU-Net 2.8.1's planner
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("Dataset901_Tiny", "Dataset902_TinyRegions"):  # the README's commands, as a user runs them
        write_small_plans(root / "preprocessed" / name, PLANS)
        run_rwmaps("compute", "--input", root / "preprocessed" / name / "nnUNetPlans_3d_fullres", check=0)
    run_rwmaps("compute", "--input", root / "preprocessed" / "Dataset901_Tiny" / "nnUNetPlans_2d", check=0)
    run_rwmaps("compute", "--input", root / "preprocessed" / "Dataset901_Tiny" / "nnUNetPlans_3d_fullres",
               "--output", root / "preprocessed" / "Dataset901_Tiny" / "compact", "--layout", "compact", check=0)
    for name in ("Dataset901_Tiny", "Dataset902_TinyRegions"):  # docs/nnunet.md's sdf commands
        run_rwmaps("compute", "--input", root / "preprocessed" / name / "nnUNetPlans_3d_fullres", "--kind", "sdf",
                   "--output", root / "preprocessed" / name / "sdf", check=0)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def data_folder(root, dataset, configuration="3d_fullres"):
    name = {901: "Dataset901_Tiny", 902: "Dataset902_TinyRegions"}[dataset]
    return root / "preprocessed" / name / f"nnUNetPlans_{configuration}"


VARIANTS = {  # name: (dataset, maps folder relative to the dataset folder or None for the default, configuration)
    "full": (901, None, "3d_fullres"),
    "compact": (901, "compact", "3d_fullres"),
    "regions": (902, None, "3d_fullres"),
    "2d": (901, None, "2d"),
    "sdf": (901, "sdf", "3d_fullres"),
    "sdf-regions": (902, "sdf", "3d_fullres"),
}


def kind_of(variant: str) -> str:
    return "sdf" if variant.startswith("sdf") else "rrw"


def maps_arg(root, variant):
    dataset, maps, _ = VARIANTS[variant]
    return None if maps is None else data_folder(root, dataset).parent / maps


def maps_folder(root, variant):
    dataset, maps, configuration = VARIANTS[variant]
    folder = data_folder(root, dataset, configuration)
    return folder.parent / (maps or f"{folder.name}_rwmaps")


def build(root, variant, trainer="nnUNetTrainerRW", **kwargs):
    from rwmaps_cli.nnunet.train import build_trainer

    dataset, _, configuration = VARIANTS[variant]
    return build_trainer(dataset, configuration, 0, trainer=trainer, plans=PLANS, device="cpu",
                         maps=maps_arg(root, variant), **kwargs)


def assert_consistent(seg: torch.Tensor, rwmap: torch.Tensor, regions: bool, kind: str = "rrw"):
    """The map agrees with the seg it comes with: in [-1, 0] inside each class (region); outside
    it, exactly the outside value 1 (rrw) or in [0, 1] (sdf: a signed map has no outside value)."""
    seg, rwmap = seg.numpy(), rwmap.numpy()
    assert np.isfinite(rwmap).all()
    for k in range(rwmap.shape[1]):
        mask = seg[:, k].astype(bool) if regions else seg[:, 0] == CLASSES[k]
        inside, outside = rwmap[:, k][mask], rwmap[:, k][~mask]
        assert inside.size == 0 or (inside.min() >= -1 and inside.max() <= 0), (k, inside.min(), inside.max())
        if kind == "sdf":
            assert outside.size == 0 or (outside.min() >= 0 and outside.max() <= 1), (k, outside.min(), outside.max())
        else:
            assert (outside == 1).all(), (k, np.unique(outside)[:5])


# ---------------------------------------------------------------------------------------------


def test_maps_of_the_preprocessed_data(nnunet_root):
    for dataset in (901, 902):
        folder = data_folder(nnunet_root, dataset)
        manifest = read_maps_folder(folder.parent / "nnUNetPlans_3d_fullres_rwmaps")
        cases = list_cases(folder)
        assert len(cases) == 6 and all(c.seg.name.endswith("_seg.b2nd") for c in cases)
        for case in cases[:2]:
            labels = read_seg(case.seg)
            expected = compute_region_maps(labels, REGIONS) if dataset == 902 else compute_maps(labels, CLASSES)
            np.testing.assert_array_equal(np.load(manifest.path(case.name)), expected)
        assert manifest.parameters["regions"] == (REGIONS if dataset == 902 else None)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_map_patches_line_up_with_seg_patches(nnunet_root, variant):
    """Validation batches (no augmentation): the map patch is exactly the stored map cropped with the
    data's box.  Training batches (nnU-Net's augmentation): consistent with the augmented seg.  Both at
    every deep-supervision scale."""
    trainer = build(nnunet_root, variant)
    trainer.rw_return_boxes = True
    trainer.initialize()
    dl_tr, dl_val = trainer.get_dataloaders()
    maps = read_maps_folder(maps_folder(nnunet_root, variant))
    regions = VARIANTS[variant][0] == 902
    two_d = variant == "2d"
    kind = kind_of(variant)
    assert maps.parameters["slice_axis"] == (0 if two_d else None) and maps.kind == kind
    for _ in range(2):
        batch = next(dl_val)
        assert len(batch["rwmap"]) == len(batch["target"]) > 1  # one map per output scale
        for seg, rwmap in zip(batch["target"], batch["rwmap"]):
            assert rwmap.shape[2:] == seg.shape[2:]
            assert_consistent(seg, rwmap, regions, kind)
        for j, (case, box) in enumerate(zip(batch["keys"], batch["bbox"])):
            stored = np.load(maps.path(case))
            if maps.layout == "compact":
                labels = read_seg(data_folder(nnunet_root, 901) / f"{case}_seg.b2nd")
                expected = expand_map(crop_and_pad_nd(stored, box, 0), crop_and_pad_nd(labels, box, 0), CLASSES)
            else:
                expected = crop_and_pad_nd(stored, box, 0)
                # nnU-Net's foreground boxes may reach past the image: there the seg is background (-1 -> 0),
                # so an rrw map is the background's inside value 0 (zero padding) and the outside value
                # elsewhere; an sdf map stays 0 in every channel (no distance is known there)
                outside_image = ~crop_and_pad_nd(np.ones(stored.shape[1:], bool), box, False)
                if kind == "rrw":
                    expected[:, outside_image] = 1
                    if not regions:
                        expected[0, outside_image] = 0
            if two_d:  # nnU-Net's 2d loader takes one slice along the first spatial axis
                assert expected.shape[1] == 1
                expected = expected[:, 0]
            np.testing.assert_array_equal(batch["rwmap"][0][j].numpy(), expected)
    for _ in range(3):
        batch = next(dl_tr)
        for seg, rwmap in zip(batch["target"], batch["rwmap"]):
            assert_consistent(seg, rwmap, regions, kind)


TRAINER_RUNS = [(name, "full") for name in ("nnUNetTrainerRW", "nnUNetTrainerCERW", "nnUNetTrainerDiceRW",
                                            "nnUNetTrainerCERWGradual", "nnUNetTrainerDiceRWGradual",
                                            "nnUNetTrainerRWOnTheFly")]
TRAINER_RUNS += [("nnUNetTrainerRW", "compact"), ("nnUNetTrainerRW", "2d"), ("nnUNetTrainerRWOnTheFly", "2d"), ("nnUNetTrainerRW", "regions"), ("nnUNetTrainerDiceRW", "regions"),
                 ("nnUNetTrainerRWOnTheFly", "regions")]
# sdf maps: the normalised Boundary loss alone, with the paper's gradual schedule, and per region
TRAINER_RUNS += [("nnUNetTrainerRW", "sdf"), ("nnUNetTrainerDiceRWGradual", "sdf"), ("nnUNetTrainerRW", "sdf-regions")]


def run_one_epoch(root, trainer_name, variant, fold_check=True):
    trainer = build(root, variant, trainer_name, epochs=1, iterations=2)
    trainer.rw_record = []
    trainer.run_training()
    losses = [trainer.logger.get_value("train_losses", step=-1), trainer.logger.get_value("val_losses", step=-1)]
    assert np.isfinite(losses).all(), losses
    assert len(trainer.rw_record) == 3  # two training and one validation batch reached the loss
    for seg, rwmap in trainer.rw_record:
        assert_consistent(seg, rwmap, VARIANTS[variant][0] == 902, kind_of(variant))
    assert (Path(trainer.output_folder) / "checkpoint_final.pth").is_file()
    return trainer


@pytest.fixture(scope="session")
def trained_rw(nnunet_root):
    """nnUNetTrainerRW trained for one short epoch on dataset 901 (fold 0), shared with the predict test."""
    return run_one_epoch(nnunet_root, "nnUNetTrainerRW", "full")


@pytest.mark.parametrize("trainer_name, variant", TRAINER_RUNS, ids=[f"{t}-{v}" for t, v in TRAINER_RUNS])
def test_each_trainer_trains(nnunet_root, trained_rw, trainer_name, variant):
    if (trainer_name, variant) == ("nnUNetTrainerRW", "full"):
        trainer = trained_rw  # already trained by the fixture
    else:
        trainer = run_one_epoch(nnunet_root, trainer_name, variant)
    if "Gradual" in trainer_name:
        assert trainer.loss.epoch == 0 and trainer.loss.loss.schedule == "gradual"
    if trainer_name != "nnUNetTrainerRWOnTheFly":
        assert trainer._rw_maps_cache.kind == kind_of(variant)  # the kind comes from the maps folder
    else:  # made in the train step on the training device: each item's map of its augmented target
        assert trainer.rw_engine == "torch"
        regions = VARIANTS[variant][0] == 902
        for seg, rwmap in trainer.rw_record:
            want = np.stack([compute_mask_maps(item.numpy().astype(bool)) if regions
                             else compute_maps(item[0].numpy(), CLASSES) for item in seg])
            np.testing.assert_allclose(rwmap.numpy(), want, rtol=1e-5, atol=1e-6)
    if variant.startswith("sdf") and trainer_name == "nnUNetTrainerRW":
        # the normalised Boundary loss alone: every scale's mean(p * sdf) is in [-1, 1], and so is their
        # weighted mean (nnU-Net's deep-supervision weights sum to 1)
        losses = [trainer.logger.get_value(key, step=-1) for key in ("train_losses", "val_losses")]
        assert all(-1 <= loss <= 1 for loss in losses), losses


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
def test_the_on_the_fly_map_target_is_compute_maps_of_the_patch_for_every_kind(kind, regions):
    """nnUNetTrainerRWOnTheFly's transform (``rw_kind``): the map of the augmented seg patch,
    computed per patch, for every kind (regions: one map per region mask)."""
    from rwmaps_cli.nnunet.transforms import MapTargetTransform

    labels = blobs((20, 18, 16), 4, seed=30)
    if regions:
        masks = region_masks(labels, REGIONS)
        seg = torch.from_numpy(masks.astype(np.int16))
        want = compute_mask_maps(masks, kind=kind)
    else:
        seg = torch.from_numpy(labels.astype(np.int16))[None]
        want = compute_maps(labels, CLASSES, kind=kind)
    transform = MapTargetTransform(CLASSES, REGIONS if regions else None, "onthefly", kind)
    got = transform(image=torch.zeros(1, 20, 18, 16), segmentation=seg)["regression_target"]
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
def test_maps_made_on_the_device_at_every_deep_supervision_scale(kind, regions):
    """``nnUNetTrainerRWOnTheFly``'s maps (``rw_engine="torch"``): nnU-Net's nearest
    downsampling of the seg to each deep-supervision scale, then each scale's map of each item,
    on the target's device, equal the numpy kernel's map of that scale's seg; the ignore label
    (a last mask channel for regions) is 0 in every channel."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    from rwmaps_cli.nnunet.device_maps import target_maps

    labels = np.stack([blobs((20, 18, 16), 4, seed=s) for s in (31, 32)])
    labels[0, :3] = 9  # the ignore label
    scales = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    downsample = DownsampleSegForDSTransform(ds_scales=scales)
    for device in ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]:
        targets = None
        for item in labels:
            seg = np.concatenate([region_masks(item, REGIONS), (item == 9)[None]]) if regions else item[None]
            per_scale = downsample(segmentation=torch.from_numpy(seg.astype(np.int16)))["segmentation"]
            targets = [t[None] for t in per_scale] if targets is None else [
                torch.cat([a, t[None]]) for a, t in zip(targets, per_scale)]
        for target in targets:
            got = target_maps(target.to(device), CLASSES, REGIONS if regions else None, kind, ignore_label=9)
            if regions:
                want = [compute_mask_maps(t[:3].numpy().astype(bool), kind=kind, ignored=t[3].numpy().astype(bool))
                        for t in target]
            else:
                want = [compute_maps(t[0].numpy(), CLASSES, kind=kind, ignore_label=9) for t in target]
            assert got.device.type == device
            np.testing.assert_allclose(got.cpu().numpy(), np.stack(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_nnunets_augmentation_pads_maps_by_kind_and_keeps_their_signs_at_every_scale(kind):
    """nnU-Net's own SpatialTransform (rotated and zoomed out, so it brings in voxels from beyond the
    image), its -1 -> 0 seg step, then the map target and deep-supervision transforms of the
    trainers.  Beyond the image the seg is background; the map is the rrw/ac rectification of it
    (background channel 0, the others 1), and 0 in every channel for the signed kinds (the padding
    decision of rwmaps_cli/nnunet/transforms.py).  At every scale a signed map is <= 0 inside each
    class and >= 0 outside, within its range; no signed value becomes the rrw outside value."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    from rwmaps_cli.nnunet.transforms import DownsampleMapForDSTransform, MapTargetTransform

    labels = blobs((40, 40, 40), 4, seed=31, sigma=4.0)
    rwmap = compute_maps(labels, CLASSES, kind=kind)
    scales = [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    pipeline = ComposeTransforms([
        SpatialTransform((32, 32, 32), patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                         p_rotation=1, rotation=(0.5, 0.5), p_scaling=1, scaling=(1.45, 1.45),
                         p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False, border_mode_seg="constant",
                         padding_value_seg=-1),  # nnU-Net's, made to rotate and zoom out every time
        RemoveLabelTansform(-1, 0),
        MapTargetTransform(CLASSES, None, "full", kind),
        DownsampleSegForDSTransform(ds_scales=scales),
        DownsampleMapForDSTransform(ds_scales=scales)])
    np.random.seed(0)
    out = pipeline(image=torch.ones(1, 40, 40, 40), segmentation=torch.from_numpy(labels.astype(np.int16))[None],
                   regression_target=torch.from_numpy(rwmap))
    beyond = out["image"][0] == 0  # the all-ones image is 0 only where every sample point is beyond the image
    assert 0.01 < beyond.float().mean() < 0.5
    seg, maps = out["segmentation"], out["regression_target"]
    assert (seg[0][0][beyond] == 0).all()
    padded = maps[0][:, beyond]
    if kind in ("rrw", "ac"):
        assert (padded[0] == 0).all() and (padded[1:] == 1).all()
    else:
        assert (padded == 0).all()
    for scale_seg, scale_map in zip(seg, maps):
        assert scale_map.shape[1:] == scale_seg.shape[1:]
        for c, k in enumerate(CLASSES):
            inside, outside = scale_map[c][scale_seg[0] == k], scale_map[c][scale_seg[0] != k]
            if kind in ("rrw", "ac"):
                assert (inside <= 0).all() and (outside == 1).all()
            else:
                assert (inside <= 0).all() and (outside >= 0).all()
        if kind == "sdf":
            assert scale_map.min() >= -1 and scale_map.max() <= 1


def test_predict_with_the_trained_model(nnunet_root, trained_rw, tmp_path):
    """nnU-Net's predictor finds the rwmaps trainer (through nnUNet_extTrainer) and writes segmentations."""
    images = tmp_path / "images"
    images.mkdir()
    source = nnunet_root / "raw" / "Dataset901_Tiny" / "imagesTr" / "case_000_0000.nii.gz"
    (images / source.name).write_bytes(source.read_bytes())
    out = tmp_path / "predicted"
    result = subprocess.run([sys.executable, "-c", "from rwmaps_cli.nnunet.command import nnunet; nnunet()",
                             "predict", "-i", str(images), "-o", str(out), "-d", "901", "-c", "3d_fullres", "-f", "0",
                             "-tr", "nnUNetTrainerRW", "-p", PLANS, "-device", "cpu", "-npp", "1", "-nps", "1",
                             "--disable_tta"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import nibabel as nib

    predicted = nib.load(out / "case_000.nii.gz").get_fdata()
    assert predicted.shape == (48, 48, 48) and set(np.unique(predicted)) <= {0, 1, 2, 3}


def test_cli_trains_with_augmentation_workers_and_continues(nnunet_root):
    """`rwmaps nnunet train` in a fresh process, with nnU-Net's spawned augmentation workers, then
    --continue for a second epoch."""
    env = {**os.environ, "nnUNet_n_proc_DA": "1"}
    command = [sys.executable, "-c", "from rwmaps_cli.nnunet.command import nnunet; nnunet()", "train", "902",
               "3d_fullres", "1", "--trainer", "nnUNetTrainerCERW", "--device", "cpu", "-p", PLANS, "--iterations",
               "2", "--no-validation"]
    first = subprocess.run([*command, "--epochs", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = Path(first.stdout.strip().splitlines()[-1].removeprefix("trained: "))
    assert (folder / "checkpoint_final.pth").is_file()
    second = subprocess.run([*command, "--epochs", "2", "--continue"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and checkpoint["trainer_name"] == "nnUNetTrainerCERW"


def test_missing_maps_are_a_one_line_error(nnunet_root, tmp_path):
    from click.testing import CliRunner

    from rwmaps_cli.nnunet.command import nnunet

    result = CliRunner().invoke(nnunet, ["train", "901", "3d_fullres", "0", "--device", "cpu", "-p", PLANS,
                                         "--maps", str(tmp_path / "nowhere"), "--epochs", "1", "--iterations", "1"])
    assert result.exit_code == 1
    assert "no rwmaps.json" in result.output and len(result.output.strip().splitlines()) == 1


def test_without_nnunet_the_command_names_the_extra(monkeypatch):
    from click.testing import CliRunner

    from rwmaps_cli.nnunet.command import nnunet

    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import nnunetv2 now raises ImportError
    result = CliRunner().invoke(nnunet, ["train", "901", "3d_fullres", "0"])
    assert result.exit_code == 1
    assert result.output.strip() == "rwmaps: nnU-Net training needs the nnunet extra: pip install -e '.[nnunet]' in the rwmaps clone"
