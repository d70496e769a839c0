"""rwmaps_cli.torchio with real TorchIO transforms, on maps written by the real ``rwmaps compute``.

The truth is always ``compute_maps`` on the transformed label.  Flips, axis permutations and
90° rotations move voxels without interpolation, so a precomputed map (full, or compact and
expanded) pushed through them must equal the recomputed map exactly.  Labels are brain-like
(many thin classes, Fortran-ordered as nibabel returns them), odd-sized, anisotropic.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_rwmaps, write_nifti
from reference import seed_patch_map

torch = pytest.importorskip("torch")
tio = pytest.importorskip("torchio")

from rwmaps_cli import compute_maps, load_map  # noqa: E402
from rwmaps_cli.contract import KINDS  # noqa: E402
from rwmaps_cli.synthetic import brain_like_labels  # noqa: E402
from rwmaps_cli.torchio import (  # noqa: E402
    ExpandRegionWiseMap,
    RandomAffineWithMaps,
    RegionWiseMap,
    RegionWiseMapImage,
    read_map,
)

CLASSES = list(range(8))
ZOOMS = {"case_a": (0.9, 0.9, 2.5), "case_b": (0.8, 0.8, 3.0)}
SHAPES = {"case_a": (25, 25, 15), "case_b": (23, 29, 13)}  # case_a: square in-plane, for 90° rotations
FORMATS = ["nii.gz", "npy"]
LAYOUTS = ["full", "compact"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two brain-like label volumes and their maps, full and compact, nii.gz and npy, by the CLI."""
    root = tmp_path_factory.mktemp("torchio_maps")
    for seed, (case, shape) in enumerate(SHAPES.items()):
        labels = brain_like_labels(shape, len(CLASSES), spacing=ZOOMS[case], seed=seed + 3)
        assert labels.flags.f_contiguous and len(np.unique(labels)) == len(CLASSES)
        write_nifti(root / "labels" / f"{case}.nii.gz", labels, zooms=ZOOMS[case])
    for fmt in FORMATS:
        for layout in LAYOUTS:
            run_rwmaps("compute", "--input", root / "labels", "--output", root / f"{layout}_{fmt}", "--format", fmt,
                       "--layout", layout, "--num-classes", len(CLASSES), "--jobs", "1", "--quiet", check=0)
    run_rwmaps("compute", "--input", root / "labels", "--output", root / "physical", "--format", "npy",
               "--spacing", "physical", "--num-classes", len(CLASSES), "--jobs", "1", "--quiet", check=0)
    for fmt in FORMATS:  # sdf maps: full only (no compact form), voxel units
        run_rwmaps("compute", "--input", root / "labels", "--output", root / f"sdf_{fmt}", "--format", fmt, "--kind",
                   "sdf", "--num-classes", len(CLASSES), "--jobs", "1", "--quiet", check=0)
    run_rwmaps("compute", "--input", root / "labels", "--output", root / "sdf_physical", "--format", "npy", "--kind",
               "sdf", "--spacing", "physical", "--num-classes", len(CLASSES), "--jobs", "1", "--quiet", check=0)
    return root


def subject(data, case, fmt="nii.gz", image=True) -> tio.Subject:
    suffix = fmt
    items = {"label": tio.LabelMap(data / "labels" / f"{case}.nii.gz"),
             "full": RegionWiseMapImage(data / f"full_{fmt}" / f"{case}.{suffix}"),
             "compact": RegionWiseMapImage(data / f"compact_{fmt}" / f"{case}.{suffix}")}
    if image:  # an image from the labels: intensity transforms must change it, and not the maps
        rng = np.random.default_rng(0)
        label = items["label"].data.float()
        items["image"] = tio.ScalarImage(tensor=label + torch.from_numpy(rng.normal(0, 0.3, label.shape)).float(),
                                         affine=items["label"].affine)
    return tio.Subject(**items, case=case)  # a plain value: the queue's patches keep it


def truth(sub: tio.Subject, **kwargs) -> np.ndarray:
    """The paper's map of the subject's label as it is now."""
    return compute_maps(sub["label"].data[0].numpy(), CLASSES, **kwargs)


# ---------------------------------------------------------------------------------------
# Reading maps


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(SHAPES))
def test_a_map_file_becomes_an_image_on_the_label_grid(data, fmt, layout, case):
    sub = subject(data, case, fmt)
    image = sub[layout]
    stored, _ = load_map(data / f"{layout}_{fmt}" / f"{case}.{fmt}", expand=False)
    assert isinstance(image, tio.Image) and not isinstance(image, tio.ScalarImage)
    assert image.type == tio.INTENSITY and image.data.dtype == torch.float32
    assert image.shape == ((len(CLASSES),) if layout == "full" else (1,)) + SHAPES[case]
    np.testing.assert_array_equal(image.data.numpy().reshape(stored.shape), stored)
    # npy maps carry no affine: it comes from the label file the manifest records
    np.testing.assert_allclose(image.affine, sub["label"].affine, atol=1e-6)
    if layout == "full":
        np.testing.assert_array_equal(image.data.numpy(), truth(sub))


def test_read_map_refuses_a_file_that_is_not_a_map(data):
    from rwmaps_cli.errors import InputError

    with pytest.raises(InputError, match="case_a.nii.gz: is a 3D NIfTI; a map is 4D"):
        read_map(data / "labels" / "case_a.nii.gz")


# ---------------------------------------------------------------------------------------
# Exact under flips, permutations and 90° rotations


def exact_augmentations():
    return {
        "flip0": [tio.Flip(axes=(0,))],
        "flip12": [tio.Flip(axes=(1, 2))],
        "random_flips": [tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5)],
        "transpose": [tio.Transpose()],  # X Y Z -> Z Y X, with the affine: the anisotropic axis moves
        "reorient": [tio.ToOrientation("PSL")],
        "rot90": [RandomAffineWithMaps(maps=["full", "compact"], scales=0, degrees=(0, 0, 0, 0, 90, 90),
                                       default_pad_value=0)],
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(exact_augmentations()))
def test_flips_and_90_degree_rotations_keep_precomputed_maps_exact(data, fmt, name):
    torch.manual_seed(1)
    case = "case_a" if name == "rot90" else "case_b"
    augment = exact_augmentations()[name]
    pipeline = tio.Compose([*augment, RegionWiseMap(classes=CLASSES, output="recomputed"),
                            ExpandRegionWiseMap(map="compact", classes=CLASSES)])
    original = subject(data, case, fmt)
    out = pipeline(original)
    want = truth(out)
    if name not in ("random_flips",):  # the transform really moved the label (else the test proves nothing)
        assert not np.array_equal(out["label"].data.numpy(), original["label"].data.numpy())
    np.testing.assert_array_equal(out["recomputed"].data.numpy(), want)  # (a) the paper's way
    np.testing.assert_array_equal(out["full"].data.numpy(), want)  # (b) precomputed full
    np.testing.assert_array_equal(out["compact"].data.numpy(), want)  # (c) precomputed compact, expanded
    np.testing.assert_array_equal(out["full"].affine, out["label"].affine)


# The CLI's physical-unit maps of each kind, where the fixture wrote them.
PHYSICAL = {"rrw": "physical", "sdf": "sdf_physical"}


@pytest.mark.parametrize("kind", KINDS)
def test_on_the_fly_map_uses_the_transformed_spacing(data, kind):
    """spacing='physical' after a transpose uses the transposed voxel sizes, for every kind."""
    out = tio.Compose([tio.Transpose(), RegionWiseMap(classes=CLASSES, kind=kind, spacing="physical")])(
        subject(data, "case_b"))
    assert out["label"].spacing == pytest.approx(tuple(reversed(ZOOMS["case_b"])))
    want = truth(out, kind=kind, spacing=out["label"].spacing)
    np.testing.assert_array_equal(out["rwmap"].data.numpy(), want)
    if kind in PHYSICAL:  # the CLI's physical map, transposed like the label, agrees to float32 rounding
        physical = tio.Transpose()(tio.Subject(m=RegionWiseMapImage(data / PHYSICAL[kind] / "case_b.npy")))["m"]
        np.testing.assert_allclose(physical.data.numpy(), want, atol=1e-6)
    if kind != "ac":  # voxel units differ: the spacing mattered (an ac map has no distances)
        assert not np.allclose(truth(out, kind=kind), want, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_on_the_fly_map_other_kinds_and_ignore_label(data, kind):
    sub = subject(data, "case_b", image=False)
    label = sub["label"].data.clone()
    label[0, :3] = 9
    sub["label"].set_data(label)
    out = RegionWiseMap(classes=CLASSES, kind=kind, ignore_label=9)(sub)
    np.testing.assert_array_equal(out["rwmap"].data.numpy(), truth(out, kind=kind, ignore_label=9))
    assert (out["rwmap"].data[:, :3] == 0).all()
    assert isinstance(out["rwmap"], RegionWiseMapImage) and out["rwmap"].shape == (len(CLASSES), *SHAPES["case_b"])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["flip12", "transpose", "reorient", "rot90"])
def test_sdf_maps_precomputed_or_on_the_fly_equal_compute_maps_of_the_transformed_label(data, fmt, name):
    """``rwmaps compute --kind sdf`` maps read as RegionWiseMapImage and moved with the label, and
    RegionWiseMap(kind="sdf") after the transforms: both are compute_maps(kind="sdf") of the
    transformed label, exactly (the 90° rotation goes through SimpleITK's linear resampler,
    whose weights leave about 1e-16 on the exact zeros of the inner boundary)."""
    torch.manual_seed(3)
    case = "case_a" if name == "rot90" else "case_b"
    augment = exact_augmentations()[name]
    if name == "rot90":
        augment = [RandomAffineWithMaps(maps=["sdf"], map_pad_value=0, scales=0, degrees=(0, 0, 0, 0, 90, 90),
                                        default_pad_value=0)]
    sub = subject(data, case, fmt, image=False)
    sub["sdf"] = RegionWiseMapImage(data / f"sdf_{fmt}" / f"{case}.{fmt}")
    out = tio.Compose([*augment, RegionWiseMap(classes=CLASSES, kind="sdf", output="recomputed")])(sub)
    assert not np.array_equal(out["label"].data.numpy(), sub["label"].data.numpy())
    want = truth(out, kind="sdf")
    np.testing.assert_array_equal(out["recomputed"].data.numpy(), want)
    np.testing.assert_allclose(out["sdf"].data.numpy(), want, rtol=0, atol=1e-12 if name == "rot90" else 0)
    np.testing.assert_array_equal(out["sdf"].affine, out["label"].affine)
    assert want.min() == -1 and want.max() == 1


def test_random_affine_with_maps_fills_sdf_maps_with_zero(data):
    """The signed kinds are filled with 0 beyond the field (no information, no gradient), not
    with the rrw outside value; inside the field the interpolated sdf map stays in [-1, 1]."""
    sub = subject(data, "case_b", image=False)
    sub["sdf"] = RegionWiseMapImage(data / "sdf_npy" / "case_b.npy")
    sub["probe"] = tio.ScalarImage(tensor=torch.ones(1, *SHAPES["case_b"]), affine=sub["label"].affine)
    torch.manual_seed(0)
    out = RandomAffineWithMaps(maps=["sdf"], map_pad_value=0, scales=(1.0, 1.0), degrees=(0, 0, 0, 0, 40, 40),
                               default_pad_value=0)(sub)
    outside = out_of_field(out)
    assert 0.05 < outside.float().mean() < 0.6
    assert (out["sdf"].data[:, outside] == 0).all() and (out["label"].data[0][outside] == 0).all()
    assert out["sdf"].data.min() >= -1 and out["sdf"].data.max() <= 1
    # the loss term of those voxels is sum_c p_c * 0: nothing, and no gradient
    logits = torch.randn(1, len(CLASSES), *SHAPES["case_b"], requires_grad=True)
    (torch.softmax(logits, 1) * out["sdf"].data[None]).mean().backward()
    assert (logits.grad[0][:, outside] == 0).all() and (logits.grad[0][:, ~outside] != 0).any()


# ---------------------------------------------------------------------------------------
# Intensity transforms leave maps alone; padding fills them with the outside value


def test_intensity_transforms_never_touch_a_map(data):
    sub = subject(data, "case_a")
    intensity = tio.Compose([tio.RandomNoise(std=0.5), tio.RescaleIntensity(out_min_max=(0, 1)), tio.ZNormalization(),
                             tio.RandomBiasField(coefficients=0.5), tio.RandomGamma(), tio.RandomBlur(std=1)])
    # the same map as a ScalarImage: the transforms do change it, so the test can fail
    sub["as_scalar"] = tio.ScalarImage(tensor=sub["full"].data.clone(), affine=sub["full"].affine)
    out = intensity(sub)
    assert not torch.equal(out["image"].data, sub["image"].data)
    assert not torch.equal(out["as_scalar"].data, sub["full"].data)
    for name in ("full", "compact"):
        np.testing.assert_array_equal(out[name].data.numpy(), sub[name].data.numpy())


def test_pad_with_the_outside_value(data):
    padding = (2, 3, 1, 4, 2, 1)
    pipeline = tio.Compose([tio.Pad(padding, padding_mode=1.0, include=["full", "compact"]),
                            tio.Pad(padding, padding_mode="minimum", exclude=["full", "compact"])])
    sub = subject(data, "case_b")
    out = pipeline(sub)
    inner = (slice(None), slice(2, -3), slice(1, -4), slice(2, -1))
    for name in ("full", "compact"):
        padded = out[name].data.clone()
        np.testing.assert_array_equal(padded[inner].numpy(), sub[name].data.numpy())
        padded[inner] = 1
        assert (padded == 1).all()
    assert (out["label"].data[0][out["full"].data.amin(0) == 1] == 0).all()  # the label is padded with 0
    np.testing.assert_array_equal(out["full"].affine, out["label"].affine)


def out_of_field(out: tio.Subject) -> torch.Tensor:
    """Voxels the affine brought in from outside the field: the all-ones probe is 0 there."""
    return out["probe"].data[0] == 0


def test_random_affine_with_maps_fills_maps_with_one_and_the_rest_as_tio_random_affine(data):
    sub = subject(data, "case_b")
    sub["probe"] = tio.ScalarImage(tensor=torch.ones(1, *SHAPES["case_b"]), affine=sub["label"].affine)
    torch.manual_seed(0)
    out = RandomAffineWithMaps(maps=["full", "compact"], scales=(1.0, 1.0), degrees=(0, 0, 0, 0, 40, 40),
                               default_pad_value=0)(sub)
    outside = out_of_field(out)
    assert 0.05 < outside.float().mean() < 0.6
    for name in ("full", "compact"):
        assert (out[name].data[:, outside] == 1).all()
    assert (out["label"].data[0][outside] == 0).all() and (out["image"].data[0][outside] == 0).all()
    # the maps are resampled linearly (values between the stored ones), the label with nearest neighbour
    assert set(np.unique(out["label"].data.numpy())) <= set(CLASSES)
    stored = set(np.unique(sub["compact"].data.numpy()))
    assert len(set(np.unique(out["compact"].data[0][~outside].numpy())) - stored) > 100
    # exactly TorchIO's Affine with the same draw, linear, filled with 1
    affine = out.history[-1]
    assert affine.default_pad_value == 1.0
    again = tio.Affine(scales=affine.scales, degrees=affine.degrees, translation=affine.translation,
                       default_pad_value=1.0)(tio.Subject(m=tio.ScalarImage(tensor=sub["full"].data,
                                                                            affine=sub["full"].affine)))
    np.testing.assert_array_equal(out["full"].data.numpy(), again["m"].data.numpy())
    # plain tio.RandomAffine fills the maps with its default_pad_value: what RandomAffineWithMaps avoids
    torch.manual_seed(0)
    plain = tio.RandomAffine(scales=(1.0, 1.0), degrees=(0, 0, 0, 0, 40, 40), default_pad_value=0)(sub)
    assert (plain["full"].data[:, outside] == 0).all()


def test_compact_map_through_an_affine_expands_close_to_the_recomputed_map(data):
    """Under a rotation the map is interpolated: not exact, but inside the field it stays a
    valid map near the paper's, and out of the field it adds no gradient (all channels 1)."""
    torch.manual_seed(2)
    pipeline = tio.Compose([RandomAffineWithMaps(maps=["full", "compact"], scales=0.1, degrees=(0, 0, 0, 0, 10, 10)),
                            RegionWiseMap(classes=CLASSES, output="recomputed"),
                            ExpandRegionWiseMap(map="compact", classes=CLASSES)])
    out = pipeline(subject(data, "case_a"))
    compact, full, want = (out[n].data.numpy() for n in ("compact", "full", "recomputed"))
    assert compact.shape == want.shape == full.shape
    assert compact.min() >= -1 and compact.max() <= 1
    assert np.mean(np.abs(compact - want)) < 0.15 and np.mean(np.abs(full - want)) < 0.15


# ---------------------------------------------------------------------------------------
# Patches from tio.Queue


@pytest.mark.parametrize("fmt", FORMATS)
def test_queue_patches_of_precomputed_maps_are_the_volume_map_cropped_at_the_location(data, fmt):
    subjects = [subject(data, case, fmt) for case in SHAPES]
    volumes = {case: s["label"].data[0].numpy() for case, s in zip(SHAPES, subjects)}
    fulls = {case: s["full"].data.numpy() for case, s in zip(SHAPES, subjects)}
    patch_size = (11, 13, 7)
    queue = tio.Queue(tio.SubjectsDataset(subjects), max_length=8, samples_per_volume=4,
                      sampler=tio.UniformSampler(patch_size), num_workers=0, verbose=False)
    expand = ExpandRegionWiseMap(map="compact", classes=CLASSES, renormalize="patch")
    fly = RegionWiseMap(classes=CLASSES, output="recomputed")
    seen = 0
    for index in range(len(queue)):  # a Queue never raises IndexError: a bare for loop would not end
        patch = queue[index]
        i0, j0, k0, i1, j1, k1 = patch[tio.LOCATION].tolist()
        window = (slice(i0, i1), slice(j0, j1), slice(k0, k1))
        volume = volumes[patch["case"]]
        np.testing.assert_array_equal(patch["label"].data[0].numpy(), volume[window])
        np.testing.assert_array_equal(patch["full"].data.numpy(), fulls[patch["case"]][(slice(None), *window)])
        out = fly(expand(patch))
        # per-patch renormalisation gives the seed's per-patch map: volume distances, patch maxima
        np.testing.assert_allclose(out["compact"].data.numpy(), seed_patch_map(volume, window, CLASSES), atol=2e-6)
        # the paper's on-the-fly map of the patch measures distances inside the patch only
        np.testing.assert_array_equal(out["recomputed"].data.numpy(), compute_maps(volume[window], CLASSES))
        seen += 1
    assert seen == 8
    # renormalisation changes the patch's values (else the comparison above proves nothing)
    assert not np.allclose(expand(patch)["compact"].data.numpy(), fulls[patch["case"]][(slice(None), *window)])
    # and a loader batches the maps like any image
    loader = tio.SubjectsLoader(queue, batch_size=2)
    batch = next(iter(loader))
    assert batch["full"][tio.DATA].shape == (2, len(CLASSES), *patch_size)
    assert batch["compact"][tio.DATA].shape == (2, 1, *patch_size)


def test_per_patch_renormalisation_ignores_the_padded_outside_value(data):
    """A padded compact map holds 1 outside the field; it must not become a class's scale."""
    sub = tio.Crop((2, 2, 2, 2, 1, 1))(subject(data, "case_b", image=False))  # a patch without the corners
    background = sub["compact"].data[sub["label"].data == 0]
    assert 0 < background.abs().max() < 0.99  # so a padded 1 would change the background's scale
    pad = tio.Compose([tio.Pad(3, padding_mode=1.0, include=["compact"]), tio.Pad(3, exclude=["compact"])])
    padded = ExpandRegionWiseMap(map="compact", classes=CLASSES, renormalize="patch")(pad(sub))
    plain = ExpandRegionWiseMap(map="compact", classes=CLASSES, renormalize="patch")(sub)
    inner = (slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    np.testing.assert_array_equal(padded["compact"].data[inner].numpy(), plain["compact"].data.numpy())
    ring = padded["compact"].data.clone()
    ring[inner] = 1
    assert (ring == 1).all()


# ---------------------------------------------------------------------------------------
# User mistakes: one clear line


def test_a_subject_without_the_label_is_a_clear_error(data):
    sub = tio.Subject(seg=tio.LabelMap(data / "labels" / "case_a.nii.gz"))
    with pytest.raises(KeyError, match="no label image 'label' \\(its images: seg\\)"):
        RegionWiseMap(classes=CLASSES)(sub)
    with pytest.raises(KeyError, match="no compact map image 'rwmap'"):
        ExpandRegionWiseMap(classes=CLASSES, label="seg")(sub)


@pytest.mark.parametrize("kind", ["boundary", "kervadec", "sdf", "ac", "rwr"])
def test_expanding_refuses_kinds_without_a_compact_map_in_one_line(kind):
    with pytest.raises(ValueError) as raised:
        ExpandRegionWiseMap(map="rwmap", classes=CLASSES, kind=kind)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("ExpandRegionWiseMap: ")
    if kind in ("boundary", "kervadec", "sdf"):
        assert f"kind {kind!r} has no compact form" in message and f"RegionWiseMap(kind={kind!r})" in message
        assert "RegionWiseMapImage" in message  # the way to read its full map
    elif kind == "ac":
        assert "RegionWiseMap(classes=..., kind='ac')" in message
    else:
        assert "unknown kind 'rwr'" in message
    assert ExpandRegionWiseMap(classes=CLASSES, kind="rrw").kind == "rrw"


def test_expanding_a_full_map_or_an_interpolated_label_is_refused(data):
    sub = subject(data, "case_a", image=False)
    with pytest.raises(ValueError, match="has 8 channels: a compact map has one"):
        ExpandRegionWiseMap(map="full", classes=CLASSES)(sub)
    sub["sdf"] = RegionWiseMapImage(data / "sdf_npy" / "case_a.npy")
    with pytest.raises(ValueError, match=r"^sdf has 8 channels: a compact map has one \(a full map, as every "
                                         r"boundary, kervadec or sdf map, needs no expansion\)$"):
        ExpandRegionWiseMap(map="sdf", classes=CLASSES)(sub)
    sub["label"] = tio.ScalarImage(tensor=sub["label"].data.float() + 0.5, affine=sub["label"].affine)
    with pytest.raises(ValueError, match="not integers.*nearest"):
        ExpandRegionWiseMap(map="compact", classes=CLASSES)(sub)
    with pytest.raises(ValueError, match="not in the class list"):
        RegionWiseMap(classes=[0, 1])(subject(data, "case_a", image=False))
    with pytest.raises(ValueError, match="always tio.INTENSITY"):
        RegionWiseMapImage(tensor=torch.zeros(1, 2, 2, 2), type=tio.LABEL)
