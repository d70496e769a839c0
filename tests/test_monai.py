"""rwmaps_cli.monai, and MONAI's own loaders, on maps written by the real ``rwmaps compute``.

The truth is always ``compute_maps`` on the transformed label.  Flips and 90° rotations
move voxels without interpolation, so a precomputed map pushed through them must equal
the map recomputed from the transformed label exactly (fidelity cases (b) and (c) of
issue 12).
"""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import REPO, SAMPLE_DATA, run_rwmaps

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from monai.data import MetaTensor  # noqa: E402
from monai.transforms import (  # noqa: E402
    Compose,
    EnsureChannelFirstd,
    Flipd,
    LoadImaged,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    Rotate90d,
    Spacingd,
)

from rwmaps_cli import compute_maps, load_map  # noqa: E402
from rwmaps_cli.contract import KINDS  # noqa: E402
from rwmaps_cli.monai import ExpandRegionWiseMapd, RegionWiseMapd  # noqa: E402

DATASET = SAMPLE_DATA / "Dataset001_Toy"
CLASSES = [0, 1, 2]
CASES = ["toy_000", "toy_001", "toy_002"]


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """Full nii.gz maps (voxel and physical units; rrw, and sdf in ``sdf_voxel``, ``sdf_physical``)
    by the real CLI, and compact NIfTI maps cut from the rrw ones (each voxel's own-class
    channel, with the label's affine)."""
    root = tmp_path_factory.mktemp("monai_maps")
    for name, extra in (("voxel", []), ("physical", ["--spacing", "physical"]), ("sdf_voxel", ["--kind", "sdf"]),
                        ("sdf_physical", ["--kind", "sdf", "--spacing", "physical"])):
        run_rwmaps("compute", "--input", DATASET, "--output", root / name, "--format", "nii.gz", "--quiet",
                   "--jobs", "1", *extra, check=0)
    (root / "compact").mkdir()
    for case in CASES:
        label = nib.load(DATASET / "labelsTr" / f"{case}.nii.gz")
        codes = np.searchsorted(CLASSES, np.asarray(label.dataobj))
        full = nib.load(root / "voxel" / f"{case}.nii.gz").get_fdata(dtype=np.float32)  # X Y Z C
        compact = np.take_along_axis(full, codes[..., None], axis=-1)[..., 0]
        header = label.header.copy()
        header.set_data_dtype(np.float32)  # the label's header says uint8: nibabel would quantise
        nib.save(nib.Nifti1Image(compact, label.affine, header), root / "compact" / f"{case}.nii.gz")
    return root


def item(maps, case, *extra_keys):
    data = {"label": str(DATASET / "labelsTr" / f"{case}.nii.gz"), "full": str(maps / "voxel" / f"{case}.nii.gz"),
            "compact": str(maps / "compact" / f"{case}.nii.gz")}
    return {k: data[k] for k in ("label", *extra_keys)}


LOAD = [
    LoadImaged(keys=["label", "full", "compact"], allow_missing_keys=True),
    EnsureChannelFirstd(keys=["label", "compact"], allow_missing_keys=True),
    EnsureChannelFirstd(keys="full", channel_dim=-1, allow_missing_keys=True),
]


@pytest.mark.parametrize("case", CASES)
def test_load_imaged_keeps_the_map_aligned_with_its_label(maps, case):
    data = Compose(LOAD)(item(maps, case, "full"))
    full, meta = load_map(maps / "voxel" / f"{case}.nii.gz")
    assert isinstance(data["full"], MetaTensor)
    np.testing.assert_array_equal(data["full"].numpy(), full)  # channels first, values untouched
    np.testing.assert_array_equal(data["full"].affine.numpy(), data["label"].affine.numpy())
    np.testing.assert_array_equal(data["full"].affine.numpy(), meta.affine)
    # physical-space transforms keep them on the same grid
    data = Compose([Orientationd(keys=["label", "full"], axcodes="LPS"),
                    Spacingd(keys=["label", "full"], pixdim=(1.5, 1.5, 2.0), mode=("nearest", "bilinear"))])(data)
    assert data["full"].shape[1:] == data["label"].shape[1:]
    np.testing.assert_allclose(data["full"].affine.numpy(), data["label"].affine.numpy())


FLIPS_AND_ROTATIONS = [
    [Flipd(keys=["label", "full", "compact"], spatial_axis=0)],
    [Flipd(keys=["label", "full", "compact"], spatial_axis=(1, 2))],
    [Rotate90d(keys=["label", "full", "compact"], k=1, spatial_axes=(0, 1))],
    [Rotate90d(keys=["label", "full", "compact"], k=3, spatial_axes=(0, 2))],
    [RandFlipd(keys=["label", "full", "compact"], prob=0.5, spatial_axis=a) for a in range(3)]
    + [RandRotate90d(keys=["label", "full", "compact"], prob=1.0, max_k=3, spatial_axes=(1, 2))],
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("augment", FLIPS_AND_ROTATIONS, ids=["flip0", "flip12", "rot01", "rot02", "random"])
def test_flips_and_90_degree_rotations_keep_precomputed_maps_exact(maps, case, augment):
    pipeline = Compose([*LOAD, *augment,
                        RegionWiseMapd(keys="label", classes=CLASSES, map_keys="recomputed"),
                        ExpandRegionWiseMapd(keys="compact", label_key="label", classes=CLASSES)])
    pipeline.set_random_state(seed=CASES.index(case))
    data = pipeline(item(maps, case, "full", "compact"))
    truth = compute_maps(data["label"][0].numpy(), CLASSES)  # (a): the paper's way
    np.testing.assert_array_equal(data["recomputed"].numpy(), truth)
    np.testing.assert_array_equal(data["full"].numpy(), truth)  # (b)
    np.testing.assert_array_equal(data["compact"].numpy(), truth)  # (c)


# The CLI's physical-unit maps of each kind, where the fixture wrote them.
PHYSICAL = {"rrw": "physical", "sdf": "sdf_physical"}


@pytest.mark.parametrize("kind", KINDS)
def test_region_wise_mapd_uses_the_transformed_spacing(maps, kind):
    """With spacing='physical' the map of a rotated patch uses the rotated voxel sizes, for every kind."""
    pipeline = Compose([*LOAD, Rotate90d(keys=["label", "full"], k=1, spatial_axes=(0, 2)),
                        RegionWiseMapd(keys="label", classes=CLASSES, kind=kind, spacing="physical")])
    data = pipeline(item(maps, "toy_001", "full"))
    label = data["label"][0].numpy()
    np.testing.assert_allclose(data["label"].pixdim.numpy(), [3.0, 1.0, 1.0])
    want = compute_maps(label, CLASSES, kind=kind, spacing=(3.0, 1.0, 1.0))
    np.testing.assert_array_equal(data["label_rwmap"].numpy(), want)
    assert isinstance(data["label_rwmap"], MetaTensor)
    np.testing.assert_array_equal(data["label_rwmap"].affine.numpy(), data["label"].affine.numpy())
    if kind != "ac":  # the spacing mattered (an ac map has no distances)
        assert not np.allclose(compute_maps(label, CLASSES, kind=kind), want, atol=1e-3)
    if kind in PHYSICAL:  # the CLI's physical-unit map pushed through the same rotation, to float32 rounding
        physical = Compose([*LOAD, Rotate90d(keys="full", k=1, spatial_axes=(0, 2))])(
            {"full": str(maps / PHYSICAL[kind] / "toy_001.nii.gz")})
        np.testing.assert_allclose(physical["full"].numpy(), want, rtol=0, atol=1e-6)


OPTIONS = [dict(kind=kind) for kind in KINDS] + [dict(slice_axis=2), dict(ignore_label=9),
                                                 dict(kind="sdf", slice_axis=2), dict(kind="sdf", ignore_label=9)]


@pytest.mark.parametrize("kwargs", OPTIONS, ids=lambda kwargs: "-".join(f"{k}={v}" for k, v in kwargs.items()))
def test_region_wise_mapd_other_kinds_and_options(kwargs):
    label = MetaTensor(torch.from_numpy(np.asarray(nib.load(DATASET / "labelsTr" / "toy_000.nii.gz").dataobj))[None])
    label[0, :2] = 9
    data = {"label": label.clone()}
    if "ignore_label" not in kwargs:
        data["label"][data["label"] == 9] = 0
    out = RegionWiseMapd(keys="label", classes=CLASSES, map_keys="m", **kwargs)(data)["m"]
    want = compute_maps(data["label"][0].numpy(), CLASSES, **kwargs)
    np.testing.assert_array_equal(out.numpy(), want)
    if kwargs.get("kind") == "sdf":
        assert out.min() == -1 and out.max() == 1  # DTC's normalised signed distance, negative inside


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU path is tested above)")
@pytest.mark.parametrize("kwargs", OPTIONS, ids=lambda kwargs: "-".join(f"{k}={v}" for k, v in kwargs.items()))
def test_a_label_on_the_gpu_gets_its_map_there(kwargs):
    """RegionWiseMapd on a label moved to CUDA (EnsureTyped(device="cuda")): the PyTorch engine's
    map, on that device, a MetaTensor with the label's meta, equal to the CPU map; and
    ExpandRegionWiseMapd expands a compact map there."""
    label = MetaTensor(torch.from_numpy(np.asarray(nib.load(DATASET / "labelsTr" / "toy_000.nii.gz").dataobj))[None])
    label[0, :2] = 9 if "ignore_label" in kwargs else 0
    want = RegionWiseMapd(keys="label", classes=CLASSES, map_keys="m", **kwargs)({"label": label})["m"]
    got = RegionWiseMapd(keys="label", classes=CLASSES, map_keys="m", **kwargs)({"label": label.to("cuda")})["m"]
    assert isinstance(got, MetaTensor) and got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    if kwargs.get("kind", "rrw") == "rrw" and "slice_axis" not in kwargs:
        compact = torch.from_numpy(compute_maps(label[0].numpy(), CLASSES, layout="compact", **kwargs))[None]
        full = ExpandRegionWiseMapd(keys="c", label_key="label", classes=CLASSES, **{
            k: v for k, v in kwargs.items() if k == "ignore_label"})({"c": compact.cuda(), "label": label.cuda()})["c"]
        assert full.device.type == "cuda"
        np.testing.assert_allclose(full.cpu().numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


SDF_FLIPS_AND_ROTATIONS = {
    "flip0": [Flipd(keys=["label", "full"], spatial_axis=0)],
    "rot02": [Rotate90d(keys=["label", "full"], k=3, spatial_axes=(0, 2))],
    "random": [RandFlipd(keys=["label", "full"], prob=0.5, spatial_axis=a) for a in range(3)]
    + [RandRotate90d(keys=["label", "full"], prob=1.0, max_k=3, spatial_axes=(1, 2))],
}


@pytest.mark.parametrize("spacing", ["voxel", "physical"])
@pytest.mark.parametrize("augment", list(SDF_FLIPS_AND_ROTATIONS))
def test_sdf_maps_precomputed_or_on_the_fly_equal_compute_maps_of_the_transformed_label(maps, augment, spacing):
    """``rwmaps compute --kind sdf`` maps loaded with LoadImaged and flipped or rotated with the
    label, and RegionWiseMapd(kind="sdf") after the transforms: both are compute_maps(kind="sdf")
    of the transformed label (physical spacing: the rotated voxel sizes, to float32 rounding)."""
    pipeline = Compose([*LOAD, *SDF_FLIPS_AND_ROTATIONS[augment],
                        RegionWiseMapd(keys="label", classes=CLASSES, kind="sdf", spacing=spacing, map_keys="sdf")])
    pipeline.set_random_state(seed=5)
    data = pipeline({"label": str(DATASET / "labelsTr" / "toy_002.nii.gz"),
                     "full": str(maps / f"sdf_{spacing}" / "toy_002.nii.gz")})
    label = data["label"][0].numpy()
    sizes = tuple(float(s) for s in data["label"].pixdim[:3]) if spacing == "physical" else None
    truth = compute_maps(label, CLASSES, kind="sdf", spacing=sizes)
    np.testing.assert_array_equal(data["sdf"].numpy(), truth)  # on the fly: exact
    np.testing.assert_allclose(data["full"].numpy(), truth, rtol=0, atol=1e-6 if sizes else 0)  # precomputed
    assert truth.min() == -1 and truth.max() == 1
    for c, k in enumerate(CLASSES):  # negative inside each class, positive outside
        assert (truth[c][label == k] <= 0).all() and (truth[c][label != k] > 0).all()


def test_expand_with_per_class_outside_and_a_crop(maps):
    outside = [0.95, 0.05, 0.05]
    pipeline = Compose([*LOAD, RandSpatialCropd(keys=["label", "full", "compact"], roi_size=(24, 20, 12),
                                                random_size=False),
                        ExpandRegionWiseMapd(keys="compact", label_key="label", classes=CLASSES, outside=outside)])
    pipeline.set_random_state(seed=3)
    data = pipeline(item(maps, "toy_002", "full", "compact"))
    label = data["label"][0].numpy()
    want = data["full"].numpy().copy()
    for c, k in enumerate(CLASSES):
        want[c][label != k] = outside[c]
    np.testing.assert_array_equal(data["compact"].numpy(), want)
    assert data["compact"].shape == (3, 24, 20, 12)


@pytest.mark.parametrize("kind", ["boundary", "kervadec", "sdf", "ac", "rwr"])
def test_expanding_refuses_kinds_without_a_compact_map_in_one_line(kind):
    with pytest.raises(ValueError) as raised:
        ExpandRegionWiseMapd(keys="compact", label_key="label", classes=CLASSES, kind=kind)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("ExpandRegionWiseMapd: ")
    if kind in ("boundary", "kervadec", "sdf"):
        assert f"kind {kind!r} has no compact form" in message and f"RegionWiseMapd(kind={kind!r})" in message
        assert "channel_dim=-1" in message  # the way to load its full map
    elif kind == "ac":
        assert "RegionWiseMapd(keys=<label key>, classes=..., kind='ac')" in message
    else:
        assert "unknown kind 'rwr'" in message
    assert ExpandRegionWiseMapd(keys="compact", label_key="label", classes=CLASSES, kind="rrw").kind == "rrw"


def test_a_full_sdf_map_given_as_a_compact_one_is_refused_in_one_line(maps):
    pipeline = Compose([*LOAD, ExpandRegionWiseMapd(keys="full", label_key="label", classes=CLASSES)])
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps errors raised inside Compose
        pipeline({"label": str(DATASET / "labelsTr" / "toy_000.nii.gz"),
                  "full": str(maps / "sdf_voxel" / "toy_000.nii.gz")})
    cause = str(raised.value.__cause__)
    assert isinstance(raised.value.__cause__, ValueError) and "\n" not in cause
    assert cause == ("the compact map has 3 channels: a compact map has one, and a full map (every boundary, kervadec "
                     "or sdf map) needs no expansion")


def test_linear_interpolated_labels_are_refused(maps):
    pipeline = Compose([*LOAD, RandAffined(keys=["label", "compact"], prob=1.0, rotate_range=(0.3, 0.3, 0.3),
                                           mode="bilinear"),
                        ExpandRegionWiseMapd(keys="compact", label_key="label", classes=CLASSES)])
    pipeline.set_random_state(seed=0)
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps errors raised inside Compose
        pipeline(item(maps, "toy_000", "compact"))
    assert isinstance(raised.value.__cause__, ValueError)
    assert "not integers" in str(raised.value.__cause__) and "nearest" in str(raised.value.__cause__)


def test_affine_augmentation_with_nearest_labels_expands(maps):
    """Under a rotation the compact map is interpolated: not exact, but it expands and
    stays in the map's range; the fidelity benchmark measures how far it is."""
    keys = ["label", "full", "compact"]
    pipeline = Compose([*LOAD, RandAffined(keys=keys, prob=1.0, rotate_range=(0.2, 0.2, 0.2), scale_range=0.1,
                                           mode=("nearest", "bilinear", "bilinear"), padding_mode="border"),
                        RegionWiseMapd(keys="label", classes=CLASSES, map_keys="recomputed"),
                        ExpandRegionWiseMapd(keys="compact", label_key="label", classes=CLASSES)])
    pipeline.set_random_state(seed=1)
    data = pipeline(item(maps, "toy_001", "full", "compact"))
    compact, truth = data["compact"].numpy(), data["recomputed"].numpy()
    assert compact.shape == truth.shape == data["full"].shape
    assert compact.min() >= -1 and compact.max() <= 1
    assert np.mean(np.abs(compact - truth)) < 0.05


def fidelity_table(stdout: str) -> dict[tuple[str, str], list[str]]:
    """The rows of benchmarks/fidelity.py's table: (augmentation, map) -> the five cells as printed."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] != "augmentation" and not cells[0].startswith("---"):
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_fidelity_benchmark_finds_flips_and_rotations_exact_and_affine_not():
    """The published table's exact rows are exact, and its comparison can tell a difference:
    ``benchmarks/fidelity.py --quick`` run as a user runs it."""
    script = REPO / "benchmarks" / "fidelity.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--part", "fidelity"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = fidelity_table(result.stdout)
    flip, affine = "flip + 90° rotation", "affine: rotation 15°/5°/5°, scale 1.15 (linear)"
    for method in ("(b) full, transformed", "(c) compact, transformed + expanded"):
        # max, mean, voxels off, loss and gradient differences: a non-zero would print as e.g. 1e-07
        assert rows[flip, method] == ["0", "0", "0.00%", "0%", "0%"], result.stdout
        assert float(rows[affine, method][0]) > 0.05, result.stdout
