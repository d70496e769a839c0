"""``rwmaps compute`` run for real on real files: the file contract of docs/design.md."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import SAMPLE_DATA, blobs, run_rwmaps, write_nifti

from rwmaps_cli import __version__, compute_maps


def nifti_map(path):
    """A NIfTI map file as (C, *spatial), and its image."""
    image = nib.load(path)
    return np.moveaxis(np.asarray(image.dataobj), -1, 0), image


def test_sample_data_runs_end_to_end(tmp_path):
    """The README's first command."""
    out = tmp_path / "maps"
    result = run_rwmaps("compute", "--input", SAMPLE_DATA, "--output", out, check=0)
    assert "0 failed" in result.stderr
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    assert produced == [
        "Dataset001_Toy/labelsTr/toy_000.nii.gz",
        "Dataset001_Toy/labelsTr/toy_001.nii.gz",
        "Dataset001_Toy/labelsTr/toy_002.nii.gz",
        "abdomen_ct_like.nii.gz",
        "slice_2d.nii.gz",
    ]
    manifest = json.loads((out / "rwmaps.json").read_text())
    assert manifest["classes"] == [0, 1, 2, 3]  # the union over all inputs
    source = nib.load(SAMPLE_DATA / "abdomen_ct_like.nii.gz")
    maps, image = nifti_map(out / "abdomen_ct_like.nii.gz")
    assert image.shape == (*source.shape, 4) and image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(image.affine, source.affine)
    np.testing.assert_array_equal(maps, compute_maps(np.asarray(source.dataobj), [0, 1, 2, 3]))
    png_map, png_image = nifti_map(out / "slice_2d.nii.gz")
    assert png_image.shape == (128, 128, 1, 4)


def test_nnunet_dataset_uses_dataset_json_classes(tmp_path):
    dataset = shutil.copytree(SAMPLE_DATA / "Dataset001_Toy", tmp_path / "Dataset001_Toy")
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", dataset, "--output", out, "--format", "npz", check=0)
    assert sorted(p.name for p in out.glob("*.npz")) == ["toy_000.npz", "toy_001.npz", "toy_002.npz"]
    without_lesion = np.load(out / "toy_001.npz")
    labels = np.asarray(nib.load(dataset / "labelsTr" / "toy_001.nii.gz").dataobj)
    assert 2 not in labels
    assert without_lesion["map"].shape == (3, *labels.shape)
    assert (without_lesion["map"][2] == 1).all()  # the absent lesion still has its channel
    np.testing.assert_array_equal(without_lesion["classes"], [0, 1, 2])
    assert without_lesion["classes"].dtype == np.int64
    assert without_lesion["spacing"].dtype == np.float64
    np.testing.assert_allclose(without_lesion["spacing"], nib.load(dataset / "labelsTr" / "toy_001.nii.gz").header.get_zooms())
    assert str(without_lesion["kind"]) == "rrw"
    # The labelsTr folder itself is recognised too.
    run_rwmaps("compute", "--input", dataset / "labelsTr", "--output", tmp_path / "maps2", "--format", "npy", check=0)
    assert json.loads((tmp_path / "maps2" / "rwmaps.json").read_text())["classes"] == [0, 1, 2]


@pytest.mark.parametrize("fmt", ["nii.gz", "nii", "npz", "npy"])
def test_every_format_holds_the_same_maps(labels_dir, tmp_path, fmt):
    out = tmp_path / fmt
    run_rwmaps("compute", "--input", labels_dir, "--output", out, "--format", fmt, "--kind", "boundary", check=0)
    source = labels_dir / "sub" / "case_001.nii.gz"
    expected = compute_maps(np.asarray(nib.load(source).dataobj), [0, 1, 2, 3], kind="boundary")
    written = out / "sub" / f"case_001.{fmt}"
    if fmt.startswith("nii"):
        maps, image = nifti_map(written)
        np.testing.assert_array_equal(image.affine, nib.load(source).affine)
    elif fmt == "npz":
        maps = np.load(written)["map"]
    else:
        maps = np.load(written, mmap_mode="r")
        assert isinstance(maps, np.memmap)
    np.testing.assert_array_equal(maps, expected)


def test_physical_spacing_follows_array_axes_for_nibabel_and_simpleitk(tmp_path):
    labels = blobs((14, 18, 10), 3, seed=4)
    root = tmp_path / "labels"
    write_nifti(root / "a.nii.gz", labels, zooms=(0.7, 0.8, 3.0))
    image = sitk.GetImageFromArray(labels)  # array axes (z, y, x) -> ITK (x, y, z)
    image.SetSpacing((0.7, 0.8, 3.0))  # ITK order: x, y, z
    sitk.WriteImage(image, str(root / "b.mha"))
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", root, "--output", out, "--format", "npy", "--spacing", "physical",
               "--kind", "boundary", "--classes", "0,1,2", check=0)
    np.testing.assert_allclose(np.load(out / "a.npy"), compute_maps(labels, [0, 1, 2], kind="boundary",
                                                                    spacing=(0.7, 0.8, 3.0)), rtol=1e-6)
    np.testing.assert_allclose(np.load(out / "b.npy"), compute_maps(labels, [0, 1, 2], kind="boundary",
                                                                    spacing=(3.0, 0.8, 0.7)), rtol=1e-6)


def test_explicit_class_order_slice_axis_and_float16(labels_dir, tmp_path):
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", labels_dir, "--output", out, "--format", "npy", "--classes", "3,1,0,2",
               "--slice-axis", "2", "--dtype", "float16", "--kind", "kervadec", "--jobs", "1", check=0)
    labels = np.asarray(nib.load(labels_dir / "case_000.nii.gz").dataobj)
    maps = np.load(out / "case_000.npy")
    assert maps.dtype == np.float16
    expected = compute_maps(labels, [3, 1, 0, 2], kind="kervadec", slice_axis=2, dtype=np.float16)
    np.testing.assert_array_equal(maps, expected)


def test_bad_case_is_reported_in_one_line_and_the_others_complete(labels_dir, tmp_path):
    bad = labels_dir / "bad.npy"
    np.save(bad, np.array([[0.0, 1.5], [2.0, np.nan]]))
    out = tmp_path / "maps"
    result = run_rwmaps("compute", "--input", labels_dir, "--output", out, "--classes", "0,1,2,3", check=1)
    error_lines = [line for line in result.stderr.splitlines() if str(bad) in line]
    assert error_lines == [f"rwmaps: {bad}: labels are not integers: 1.5, nan"]
    assert "Traceback" not in result.stderr
    assert len(list(out.rglob("case_*.nii.gz"))) == 3
    assert "3 done" in result.stderr and "1 failed" in result.stderr
    record = json.loads((out / "rwmaps.json").read_text())["cases"]["bad.npy"]
    assert record["status"] == "failed" and "not integers" in record["error"]


def test_labels_outside_the_class_list_fail_that_case(labels_dir, tmp_path):
    result = run_rwmaps("compute", "--input", labels_dir, "--output", tmp_path / "maps", "--classes", "0,1,2", check=1)
    assert "label values not in the class list [0, 1, 2]: 3" in result.stderr
    assert len(list((tmp_path / "maps").rglob("*.nii.gz"))) == 1  # case_002 has no class 3


def test_rerun_skips_done_cases_unless_overwrite(labels_dir, tmp_path):
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", labels_dir, "--output", out, check=0)
    first = (out / "case_000.nii.gz").stat().st_mtime_ns
    again = run_rwmaps("compute", "--input", labels_dir, "--output", out, check=0)
    assert "0 done, 3 skipped" in again.stderr
    assert (out / "case_000.nii.gz").stat().st_mtime_ns == first
    forced = run_rwmaps("compute", "--input", labels_dir, "--output", out, "--overwrite", check=0)
    assert "3 done, 0 skipped" in forced.stderr


def test_help_and_version():
    help_text = " ".join(run_rwmaps("compute", "--help", check=0).stdout.split())  # unwrapped
    for option in ["--input", "--output", "--kind", "--format", "--classes", "--num-classes", "--spacing",
                   "--slice-axis", "--engine", "--dtype", "--jobs", "--overwrite", "--quiet", "--ignore-label",
                   "--max-classes", "--debug"]:
        assert option in help_text
    assert "[default: rrw]" in help_text and "[default: nii.gz; npy for" in help_text
    assert __version__ in run_rwmaps("--version", check=0).stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "0,one"], "expected comma-separated integers"),
        (["--classes", "0,1", "--num-classes", "2"], "not both"),
        (["--classes", "0,1,1"], "the class list [0, 1, 1]: classes must be distinct"),  # the one rule (maps.check_classes)
        (["--classes", "0,-2"], "classes must be non-negative"),
        (["--classes", "0,1", "--ignore-label", "1"], "ignore label 1 is also in the class list"),
        (["--kind", "dice"], "Invalid value for '--kind'"),
    ],
)
def test_usage_errors_exit_2(labels_dir, tmp_path, args, message):
    result = run_rwmaps("compute", "--input", labels_dir, "--output", tmp_path / "maps", *args, check=2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_ignore_label_from_dataset_json_and_from_the_option(tmp_path):
    labels = blobs((16, 18, 8), 3, seed=5)
    labels[4:8, :, 2:5] = 255
    root = tmp_path / "Dataset002_Ignore"
    write_nifti(root / "labelsTr" / "case.nii.gz", labels)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "ignore": 255}}))
    run_rwmaps("compute", "--input", root, "--output", tmp_path / "maps", "--format", "npy", "--kind", "boundary",
               check=0)
    maps = np.load(tmp_path / "maps" / "case.npy")
    assert maps.shape == (3, 16, 18, 8)  # the ignore label has no channel
    assert (maps[:, labels == 255] == 0).all()
    np.testing.assert_array_equal(maps, compute_maps(labels, [0, 1, 2], kind="boundary", ignore_label=255))
    plain = tmp_path / "plain"
    write_nifti(plain / "case.nii.gz", labels)
    run_rwmaps("compute", "--input", plain, "--output", tmp_path / "maps2", "--format", "npy", "--kind", "boundary",
               "--ignore-label", "255", check=0)
    np.testing.assert_array_equal(np.load(tmp_path / "maps2" / "case.npy"), maps)


def test_include_and_exclude_select_the_label_files(mixed_folder, tmp_path):
    out = tmp_path / "maps"
    result = run_rwmaps("compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz",
                        "--exclude", "case2_*", check=0)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case0_seg.nii.gz", "case1_seg.nii.gz"]
    assert "2 done" in result.stderr and "4 other files ignored" in result.stderr
    assert "3 channels (0, 1, 2)" in result.stderr  # the images' values never made it into the class list


def test_a_pattern_that_matches_nothing_is_a_usage_error(mixed_folder, tmp_path):
    result = run_rwmaps("compute", "--input", mixed_folder, "--output", tmp_path / "maps", "--include", "*_lbl.nii",
                        check=2)
    assert result.stderr.startswith("rwmaps: ") and "--include *_lbl.nii" in result.stderr


def test_one_label_file_as_input(mixed_folder, tmp_path):
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", mixed_folder / "case1_seg.nii.gz", "--output", out, check=0)
    assert [p.name for p in out.iterdir() if not p.name.startswith("rwmaps.")] == ["case1_seg.nii.gz"]
    run_rwmaps("verify", "--input", mixed_folder / "case1_seg.nii.gz", "--output", out, check=0)


def test_a_class_in_no_case_is_named_and_strict_refuses_it(mixed_folder, tmp_path):
    args = ["compute", "--input", mixed_folder, "--include", "*_seg.nii.gz", "--classes", "0,1,2,7"]
    warned = run_rwmaps(*args, "--output", tmp_path / "warned", check=0)
    assert ("rwmaps: hint: class values 7 occur in no case: their channels are constant (a typo in --classes or "
            "dataset.json?); --strict refuses this") in warned.stderr
    refused = run_rwmaps(*args, "--output", tmp_path / "refused", "--strict", check=2)
    assert refused.stderr.startswith("rwmaps: --strict: class values 7 occur in no case under ")
    assert not (tmp_path / "refused" / "case0_seg.nii.gz").exists()
    quiet = run_rwmaps("compute", "--input", mixed_folder, "--include", "*_seg.nii.gz", "--classes", "0,1,2",
                       "--output", tmp_path / "fine", "--strict", check=0)
    assert "hint" not in quiet.stderr


def test_the_summary_counts_many_classes_instead_of_listing_them(tmp_path):
    labels = np.arange(40 * 30 * 20, dtype=np.int32).reshape(40, 30, 20) % 83
    write_nifti(tmp_path / "labels" / "many.nii.gz", labels)
    result = run_rwmaps("compute", "--input", tmp_path / "labels", "--output", tmp_path / "maps", "--format", "npy",
                        "--layout", "compact", check=0)
    assert "83 channels (label values 0 to 82; all in the manifest)" in result.stderr


# ---------------------------------------------------------------------------------------
# Messages in the caller's language: the services name Python options, the command its flags


def test_in_flags_turns_each_service_option_into_its_flag():
    from rwmaps_cli.cli import in_flags

    assert in_flags("pass `space_check=False`") == "pass --no-space-check"
    assert in_flags("`strict=True` refuses this") == "--strict refuses this"
    assert in_flags("use `layout=compact` or `fmt=npz`; pass `classes`") == "use --layout compact or --format npz; pass --classes"
    assert in_flags("another `output_dir`, `max_classes=256`") == "another --output, --max-classes 256"
    assert in_flags("a `tick` mark in a path: case`1.nii.gz") == "a --tick mark in a path: case`1.nii.gz"


def test_a_python_caller_is_told_the_python_option_and_a_shell_user_the_flag(tmp_path):
    from rwmaps_cli.compute import compute_dataset
    from rwmaps_cli.errors import UsageError

    labels = tmp_path / "labels"
    write_nifti(labels / "a.nii.gz", blobs((8, 8, 8), 3))
    with pytest.raises(UsageError) as python_error:
        compute_dataset(labels, tmp_path / "maps", kind="boundary", layout="compact")
    assert "`layout=compact` `kind=boundary`" in str(python_error.value) and "--" not in str(python_error.value)
    shell = run_rwmaps("compute", "--input", labels, "--output", tmp_path / "maps", "--kind", "boundary",
                       "--layout", "compact")
    assert shell.returncode == 2 and "--layout compact --kind boundary" in shell.stderr and "`" not in shell.stderr


# ---------------------------------------------------------------------------------------
# The signed distance map from files, against the slow reference


def test_sdf_of_a_real_like_parcellation_and_an_anisotropic_volume_equals_the_reference(tmp_path):
    """``rwmaps compute --kind sdf`` on a brain-like parcellation (many thin classes, as
    nibabel writes and reads it) and on an anisotropic MetaImage read as SimpleITK gives it
    ((Z, Y, X), 0.8 x 0.8 x 3 mm), with ``--spacing physical``: the maps the loaders read
    equal the formula within float32 rounding."""
    from reference import reference_maps

    from rwmaps_cli import load_map
    from rwmaps_cli.synthetic import brain_like_labels

    root = tmp_path / "labels"
    brain = brain_like_labels((45, 52, 39), n_classes=20, spacing=(1.0, 1.0, 1.5), seed=2)
    write_nifti(root / "brain.nii.gz", brain, zooms=(1.0, 1.0, 1.5))
    ct = blobs((13, 40, 36), 4, seed=7)  # (Z, Y, X)
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((0.8, 0.8, 3.0))  # ITK's x, y, z
    sitk.WriteImage(image, str(root / "ct.mha"))
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", root, "--output", out, "--kind", "sdf", "--spacing", "physical",
               "--classes", ",".join(map(str, range(20))), check=0)
    brain_map, meta = load_map(out / "brain.nii.gz")
    assert meta.kind == "sdf"
    np.testing.assert_allclose(brain_map, reference_maps(brain, range(20), "sdf", (1.0, 1.0, 1.5)),
                               rtol=1e-5, atol=1e-6)
    ct_map, _ = load_map(out / "ct.nii.gz")
    np.testing.assert_allclose(ct_map, reference_maps(ct, range(20), "sdf", (3.0, 0.8, 0.8)), rtol=1e-5, atol=1e-6)
    assert run_rwmaps("verify", "--input", root, "--output", out, check=0).returncode == 0
