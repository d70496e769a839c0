"""Reading nnU-Net's preprocessed folders (every format 2.0-2.8 writes) and writing maps beside them,
on folders written here by hand, without nnU-Net."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import blobs

from rwmaps_cli.compute import compute_dataset
from rwmaps_cli.errors import InputError, UsageError
from rwmaps_cli.maps import compute_maps, expand_map
from rwmaps_cli.nnunet import (
    PreprocessedError,
    maps_folder_beside,
    is_preprocessed_folder,
    list_cases,
    open_preprocessed,
    plans_fingerprint,
    read_classes,
    read_maps_folder,
    read_seg,
)
from rwmaps_cli.regions import compute_region_maps


def compute_preprocessed_maps(folder, output=None, layout="full", kind="rrw") -> Path:
    """What ``rwmaps compute --input FOLDER [--output OUTPUT] --layout LAYOUT --kind KIND`` runs; the maps folder."""
    outcome = compute_dataset(folder, output, layout=layout, kind=kind, jobs=1)
    return outcome.manifest.parent


LABELS = {"background": 0, "a": 1, "b": 2, "c": 3}
REGION_LABELS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}


def make_preprocessed(root, fmt="npz", configuration="3d_fullres", labels=LABELS, n_cases=3, shape=(10, 12, 9),
                      regions_order=None, ignore=False):
    """A DatasetXXX folder as nnU-Net writes it: plans, dataset.json and one configuration folder."""
    dataset = root / "Dataset001_Fake"
    folder = dataset / f"nnUNetPlans_{configuration}"
    folder.mkdir(parents=True)
    patch = [12, 9] if configuration == "2d" else [8, 8, 8]
    plans = {"plans_name": "nnUNetPlans", "dataset_name": "Dataset001_Fake", "configurations": {
        configuration: {"data_identifier": folder.name, "patch_size": patch, "spacing": [2.0, 0.8, 0.8][-len(patch):]},
        "3d_cascade_fullres": {"inherits_from": configuration, "previous_stage": "3d_lowres"}}}
    (dataset / "nnUNetPlans.json").write_text(json.dumps(plans))
    ds = {"labels": dict(labels), "file_ending": ".nii.gz"}
    if ignore:
        ds["labels"]["ignore"] = 4
    if regions_order:
        ds["regions_class_order"] = regions_order
    (dataset / "dataset.json").write_text(json.dumps(ds))
    (dataset / "dataset_fingerprint.json").write_text("{}")
    segs = {}
    for i in range(n_cases):
        name = f"case_{i:03d}"
        labels_array = blobs(shape, 4, seed=i).astype(np.int16)
        if ignore:
            labels_array[:2] = 4
        seg = labels_array[None].copy()
        seg[0, :, :, 0] = -1  # outside the nonzero crop
        expected = labels_array.copy()
        expected[:, :, 0] = 0
        segs[name] = expected
        data = np.zeros((1, *shape), np.float32)
        if fmt == "b2nd":
            blosc2 = pytest.importorskip("blosc2")
            blosc2.asarray(data, urlpath=str(folder / f"{name}.b2nd"))
            blosc2.asarray(seg, urlpath=str(folder / f"{name}_seg.b2nd"))
        elif fmt in ("npz", "npz+npy"):
            np.savez_compressed(folder / f"{name}.npz", data=data, seg=seg)
            if fmt == "npz+npy":
                np.save(folder / f"{name}.npy", data)
                np.save(folder / f"{name}_seg.npy", seg)
        elif fmt == "npy":
            np.save(folder / f"{name}.npy", data)
            np.save(folder / f"{name}_seg.npy", seg)
        (folder / f"{name}.pkl").write_bytes(b"")
    return folder, segs


@pytest.mark.parametrize("fmt", ["b2nd", "npz", "npz+npy", "npy"])
def test_every_format_reads_the_same_seg(tmp_path, fmt):
    folder, segs = make_preprocessed(tmp_path, fmt)
    assert is_preprocessed_folder(folder)
    cases = list_cases(folder)
    assert [c.name for c in cases] == sorted(segs)
    for case in cases:
        labels = read_seg(case.seg)
        assert labels.shape == segs[case.name].shape and (labels >= 0).all()
        np.testing.assert_array_equal(labels, segs[case.name])
    if fmt == "npz+npy":  # the unpacked seg is preferred: it memory-maps
        assert all(c.seg.name.endswith("_seg.npy") for c in cases)


def test_folder_facts(tmp_path):
    folder, _ = make_preprocessed(tmp_path, "npz")
    pre = open_preprocessed(folder)
    assert pre.configuration == "3d_fullres" and pre.plans_name == "nnUNetPlans" and not pre.is_2d
    assert pre.slice_axis is None and pre.spacing == [2.0, 0.8, 0.8] and pre.file_format == "npz"
    assert maps_folder_beside(folder) == folder.parent / "nnUNetPlans_3d_fullres_rwmaps"
    spec = read_classes(pre)
    assert spec.classes == [0, 1, 2, 3] and spec.ignore_label is None and spec.regions is None
    fp = plans_fingerprint(pre.plans_file)
    assert set(fp) == {"sha256", "size", "mtime_ns"}


def test_2d_configuration_slices_along_the_first_axis(tmp_path):
    folder, segs = make_preprocessed(tmp_path, "npz", configuration="2d")
    pre = open_preprocessed(folder)
    assert pre.is_2d and pre.slice_axis == 0
    out = compute_preprocessed_maps(folder)
    manifest = read_maps_folder(out)
    assert manifest.parameters["slice_axis"] == 0  # nnU-Net's 2d loader slices along the first axis
    name = sorted(segs)[0]
    expected = compute_maps(segs[name], [0, 1, 2, 3], slice_axis=0)
    np.testing.assert_array_equal(np.load(out / f"{name}.npy"), expected)


@pytest.mark.parametrize("fmt", ["b2nd", "npz"])
def test_full_maps_match_compute_maps(tmp_path, fmt):
    folder, segs = make_preprocessed(tmp_path, fmt)
    out = compute_preprocessed_maps(folder)
    assert out == maps_folder_beside(folder)
    manifest = read_maps_folder(out)
    assert manifest.parameters == {"classes": [0, 1, 2, 3], "kind": "rrw", "layout": "full", "regions": None,
                                   "slice_axis": None, "ignore_label": None, "spacing": "voxel", "fmt": "npy",
                                   "dtype": "float32"}
    assert manifest.source["plans_fingerprint"] == plans_fingerprint(folder.parent / "nnUNetPlans.json")
    for name, labels in segs.items():
        assert manifest.cases[name]["status"] == "done" and Path(manifest.cases[name]["output"]).name == f"{name}.npy"
        stored = np.load(manifest.path(name), mmap_mode="r")
        assert stored.dtype == np.float32 and stored.flags.c_contiguous
        np.testing.assert_array_equal(stored, compute_maps(labels, [0, 1, 2, 3]))
    # nothing was written inside the data folder
    assert not [p for p in folder.iterdir() if "rwmaps" in p.name]


def test_compact_maps_expand_to_the_full_maps(tmp_path):
    folder, segs = make_preprocessed(tmp_path, "npz", ignore=True)
    out = compute_preprocessed_maps(folder, output=tmp_path / "compact", layout="compact")
    manifest = read_maps_folder(out)
    assert manifest.layout == "compact" and manifest.ignore_label == 4
    for name, labels in segs.items():
        compact = np.load(manifest.path(name))
        assert compact.shape == labels.shape
        assert (compact[labels == 4] == 0).all() and (compact >= -1).all() and (compact <= 0).all()
        full = compute_maps(labels, [0, 1, 2, 3], ignore_label=4)
        np.testing.assert_array_equal(expand_map(compact, labels, [0, 1, 2, 3], ignore_label=4), full)


def test_region_based_maps(tmp_path):
    folder, segs = make_preprocessed(tmp_path, "npz", labels=REGION_LABELS, regions_order=[1, 2, 3])
    out = compute_preprocessed_maps(folder)
    manifest = read_maps_folder(out)
    assert manifest.regions == [[1, 2, 3], [2, 3], [3]] and manifest.classes == [0, 1, 2, 3]
    for name, labels in segs.items():
        np.testing.assert_array_equal(np.load(manifest.path(name)),
                                      compute_region_maps(labels, [[1, 2, 3], [2, 3], [3]]))
    with pytest.raises(UsageError, match="regions overlap"):
        compute_preprocessed_maps(folder, output=tmp_path / "c", layout="compact")


@pytest.mark.parametrize("dataset", ["labels", "regions", "2d"])
def test_sdf_maps_of_preprocessed_data_are_full_maps_of_the_manifests_kind(tmp_path, dataset):
    """``rwmaps compute --input <preprocessed folder> --kind sdf``: what the trainers read (the kind
    from the manifest), equal to compute_maps / compute_region_maps with kind="sdf" (the ignore label
    0 in every channel, per slice for 2d); and no compact layout, in one line."""
    kwargs = dict(labels=REGION_LABELS, regions_order=[1, 2, 3]) if dataset == "regions" else dict(ignore=True)
    folder, segs = make_preprocessed(tmp_path, "npz", configuration="2d" if dataset == "2d" else "3d_fullres",
                                     **kwargs)
    manifest = read_maps_folder(compute_preprocessed_maps(folder, output=tmp_path / "sdf", kind="sdf"))
    assert manifest.kind == "sdf" and manifest.layout == "full"
    for name, labels in segs.items():
        stored = np.load(manifest.path(name), mmap_mode="r")
        if dataset == "regions":
            expected = compute_region_maps(labels, [[1, 2, 3], [2, 3], [3]], kind="sdf")
        else:
            expected = compute_maps(labels, [0, 1, 2, 3], kind="sdf", ignore_label=4,
                                    slice_axis=0 if dataset == "2d" else None)
        np.testing.assert_array_equal(stored, expected)
        assert stored.min() >= -1 and stored.max() <= 1
    with pytest.raises(UsageError, match="kind 'sdf' has no compact layout") as info:
        compute_preprocessed_maps(folder, output=tmp_path / "compact", layout="compact", kind="sdf")
    assert "\n" not in str(info.value)


def test_rerun_skips_done_cases_and_recomputes_after_preprocessing(tmp_path):
    folder, _ = make_preprocessed(tmp_path, "npz")
    assert compute_dataset(folder, jobs=1).done == 3
    again = compute_dataset(folder, jobs=1)
    assert (again.done, again.skipped) == (0, 3)
    plans = folder.parent / "nnUNetPlans.json"  # re-preprocessing rewrites the plans
    plans.write_text(plans.read_text() + " ")
    assert compute_dataset(folder, jobs=1).done == 3


def test_a_bad_seg_fails_alone(tmp_path):
    folder, segs = make_preprocessed(tmp_path, "npy")
    bad = folder / "case_001_seg.npy"
    np.save(bad, np.full((1, 4, 4, 4), 9, np.int16))  # a label value the dataset does not have
    out = compute_preprocessed_maps(folder)
    cases = read_maps_folder(out).cases
    assert cases["case_001"]["status"] == "failed" and "9" in cases["case_001"]["error"]
    assert cases["case_000"]["status"] == cases["case_002"]["status"] == "done"


@pytest.mark.parametrize("breakage, message", [
    ("no_dataset_json", "no dataset.json"),
    ("no_plans", "no plans file"),
    ("empty", "no preprocessed case"),
    ("not_a_folder", "not a folder"),
])
def test_bad_folders_raise_one_line_errors(tmp_path, breakage, message):
    folder, _ = make_preprocessed(tmp_path, "npz")
    if breakage == "no_dataset_json":
        (folder.parent / "dataset.json").unlink()
    elif breakage == "no_plans":
        (folder.parent / "nnUNetPlans.json").unlink()
    elif breakage == "empty":
        for p in folder.iterdir():
            p.unlink()
    else:
        folder = folder / "case_000.npz"
    with pytest.raises(PreprocessedError, match=message) as info:
        open_preprocessed(folder) if breakage != "empty" else list_cases(folder)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    assert is_preprocessed_folder(folder) == (breakage == "empty")  # an empty one is still recognised


def test_output_inside_the_data_folder_is_refused(tmp_path):
    folder, _ = make_preprocessed(tmp_path, "npz")
    for output in (folder, folder / "maps"):
        with pytest.raises(UsageError, match="must not go inside"):
            compute_preprocessed_maps(folder, output=output)


def test_bad_segs_raise(tmp_path):
    np.save(tmp_path / "x_seg.npy", np.zeros((2, 3, 3, 3), np.int16))
    with pytest.raises(PreprocessedError, match="expected \\(1, \\*spatial\\)"):
        read_seg(tmp_path / "x_seg.npy")
    np.savez(tmp_path / "y.npz", data=np.zeros(3))
    with pytest.raises(PreprocessedError, match="no 'seg' key"):
        read_seg(tmp_path / "y.npz")
    (tmp_path / "z_seg.b2nd").write_bytes(b"garbage")
    with pytest.raises(PreprocessedError, match="cannot read|needs blosc2"):
        read_seg(tmp_path / "z_seg.b2nd")


def test_a_bad_seg_is_named_once_in_its_error_line(tmp_path):
    """errors.InputError: the message holds no path, the caller prefixes it (it once held it twice)."""
    from helpers import run_rwmaps

    folder, _ = make_preprocessed(tmp_path, "npy")
    bad = folder / "case_001_seg.npy"
    np.save(bad, np.zeros((2, 4, 4, 4), np.int16))
    result = run_rwmaps("compute", "--input", folder, "--output", tmp_path / "maps", check=1)
    lines = [line for line in result.stderr.splitlines() if "case_001" in line]
    assert len(lines) == 1 and lines[0].count("case_001_seg.npy") == 1, lines
    assert "seg has shape (2, 4, 4, 4); expected (1, *spatial)" in lines[0]
    with pytest.raises(InputError) as info:
        read_seg(bad)
    assert str(bad.name) not in str(info.value) and isinstance(info.value, PreprocessedError)


def test_a_rerun_spelled_another_way_still_resumes(tmp_path, monkeypatch):
    folder, _ = make_preprocessed(tmp_path, "npz")
    monkeypatch.chdir(tmp_path)
    assert compute_dataset(folder.relative_to(tmp_path), jobs=1).done == 3
    again = compute_dataset(folder.resolve(), jobs=1)
    assert (again.done, again.skipped) == (0, 3)


@pytest.mark.parametrize("fmt", ["npz", "npy"])
def test_load_map_expands_a_compact_map_of_nnunet_2_0_to_2_5_data(tmp_path, fmt):
    from rwmaps_cli import load_map

    folder, segs = make_preprocessed(tmp_path, fmt, ignore=True)
    out = compute_preprocessed_maps(folder, output=tmp_path / "compact", layout="compact")
    name = sorted(segs)[0]
    full, meta = load_map(out / f"{name}.npy")  # the labels are read as nnU-Net's segs, -1 as background
    np.testing.assert_array_equal(full, compute_maps(segs[name], [0, 1, 2, 3], ignore_label=4))
