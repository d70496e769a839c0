"""Compact maps as files: written by ``rwmaps compute --layout compact`` in every format,
loaded back expanded (with per-class outside values) or as one channel, verified, inspected."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from helpers import run_rwmaps
from map_fixtures import CASES, CLASSES, label_array, write_labels

from rwmaps_cli import compute_maps, expand_map, load_map
from rwmaps_cli.errors import InputError
from rwmaps_cli.inspect import describe

FORMATS = ["nii.gz", "nii", "npz", "npy"]


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    root = tmp_path_factory.mktemp("compact")
    labels = write_labels(root / "labels")
    for fmt in FORMATS:
        run_rwmaps("compute", "--input", labels, "--output", root / fmt, "--format", fmt, "--layout", "compact",
                   "--quiet", check=0)
    return root


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES)
def test_a_compact_file_loads_as_the_full_map(compact, fmt, case):
    labels = label_array(compact / "labels", case)
    path = compact / fmt / f"{case}.{fmt}"
    full, meta = load_map(path)
    np.testing.assert_array_equal(full, compute_maps(labels, CLASSES))
    assert meta.layout == "compact" and meta.classes == CLASSES and meta.kind == "rrw"
    channel, _ = load_map(path, expand=False)
    assert channel.shape == labels.shape  # a 2D map is (H, W), not (H, W, 1)
    np.testing.assert_array_equal(channel, compute_maps(labels, CLASSES, layout="compact"))


def test_what_a_compact_file_holds(compact):
    img = nib.load(compact / "nii.gz" / "case_000.nii.gz")
    assert img.shape == (20, 24, 12) and bytes(img.header["descrip"]).rstrip(b"\0") == b"rwmaps rrw compact 3d schema 2"
    assert nib.load(compact / "nii.gz" / "slice_2d.nii.gz").shape == (30, 26, 1)
    with np.load(compact / "npz" / "case_000.npz") as npz:
        assert str(npz["layout"]) == "compact" and npz["map"].shape == (20, 24, 12)
        assert npz["classes"].tolist() == CLASSES
    assert np.load(compact / "npy" / "case_000.npy", mmap_mode="r").shape == (20, 24, 12)
    manifest = json.loads((compact / "npy" / "rwmaps.json").read_text())
    assert manifest["parameters"]["layout"] == "compact"
    assert manifest["cases"]["case_000.nii.gz"]["shape"] == [20, 24, 12]


def test_per_class_outside_values_and_labels_given_by_the_caller(compact, tmp_path):
    labels = label_array(compact / "labels", "case_000")
    outside = [0.95, 0.05, 0.05, 0.05]  # the authors' class-imbalance variant
    full, _ = load_map(compact / "npy" / "case_000.npy", outside=outside)
    reference = compute_maps(labels, CLASSES)
    for c, value in enumerate(outside):
        inside = labels == CLASSES[c]
        np.testing.assert_array_equal(full[c][inside], reference[c][inside])
        assert np.all(full[c][~inside] == np.float32(value))
    alone = tmp_path / "alone.npz"  # away from its manifest and its label file
    shutil.copy(compact / "npz" / "case_000.npz", alone)
    np.testing.assert_array_equal(load_map(alone, labels=labels)[0], reference)
    with pytest.raises(InputError, match="pass labels= to expand it"):
        load_map(alone)
    np.testing.assert_array_equal(expand_map(load_map(alone, expand=False)[0], labels, CLASSES), reference)


def test_compact_maps_verify_and_a_changed_one_does_not(compact, tmp_path):
    run_rwmaps("verify", "--input", compact / "labels", "--output", compact / "npy", check=0)
    folder = shutil.copytree(compact / "npy", tmp_path / "npy")
    data = np.load(folder / "case_000.npy")
    data[3, 4, 5] = -0.5 if data[3, 4, 5] != -0.5 else -0.25
    np.save(folder / "case_000.npy", data)
    manifest = json.loads((folder / "rwmaps.json").read_text())
    manifest["cases"]["case_000.nii.gz"]["bytes"] = (folder / "case_000.npy").stat().st_size
    (folder / "rwmaps.json").write_text(json.dumps(manifest))
    result = run_rwmaps("verify", "--input", compact / "labels", "--output", folder, check=1)
    assert "values differ from a recomputation in 1 of 5,760 values" in result.stdout
    assert "the compact channel, at (3, 4, 5)" in result.stdout


def test_inspect_expands_a_compact_map(compact):
    info = describe(compact / "nii.gz" / "case_000.nii.gz")
    assert info["layout"] == "compact" and info["consistent"] is True, info["problems"]
    assert info["shape"] == [4, 20, 24, 12] and info["stored_shape"] == [20, 24, 12]


@pytest.mark.parametrize(("kind", "message"), [
    ("boundary", "--layout compact --kind boundary: kind 'boundary' has no compact layout"),
    ("kervadec", "--layout compact --kind kervadec: kind 'kervadec' has no compact layout"),
    ("ac", "rwmaps_cli.expand_map(None, labels, classes, kind='ac')"),
])
def test_compact_is_a_usage_error_for_other_kinds(compact, tmp_path, kind, message):
    result = run_rwmaps("compute", "--input", compact / "labels", "--output", tmp_path / "maps", "--kind", kind,
                        "--layout", "compact", check=2)
    assert message in result.stderr


def test_the_summary_suggests_compact_when_full_maps_are_large(compact, tmp_path, monkeypatch):
    import rwmaps_cli.hints

    monkeypatch.setattr(rwmaps_cli.hints, "COMPACT_HINT_BYTES", 20_000)  # the real threshold is 1 GB
    result = run_rwmaps("compute", "--input", compact / "labels", "--output", tmp_path / "maps", check=0)
    assert ("rwmaps: hint: the largest map is 0.0 GB; --layout compact stores one channel instead of 4, 4x smaller"
            in result.stderr)
    quiet = run_rwmaps("compute", "--input", compact / "labels", "--output", tmp_path / "compact", "--layout",
                       "compact", check=0)
    assert "hint" not in quiet.stderr


def test_expanded_channels_are_expand_maps_channels(compact):
    from rwmaps_cli.maps import expanded_channels

    labels = label_array(compact / "labels", "case_000").copy()
    labels[:3] = 9  # an ignore label
    channel = compute_maps(labels, CLASSES, layout="compact", ignore_label=9)
    outside = [0.95, 0.05, 0.5, 1.0]
    np.testing.assert_array_equal(np.stack(list(expanded_channels(channel, labels, CLASSES, outside, 9))),
                                  expand_map(channel, labels, CLASSES, outside, ignore_label=9))


def test_outside_is_refused_for_a_compact_map_left_compact(compact):
    with pytest.raises(ValueError, match="not to expand=False"):
        load_map(compact / "npy" / "case_000.npy", expand=False, outside=[0.95, 0.05, 0.05, 0.05])


def test_a_compact_map_finds_its_labels_from_any_working_directory(mixed_folder, tmp_path, monkeypatch):
    from rwmaps_cli import load_map

    monkeypatch.chdir(mixed_folder.parent)
    run_rwmaps("compute", "--input", mixed_folder.name, "--output", "maps", "--include", "*_seg.nii.gz",
               "--layout", "compact", "--format", "npy", check=0)  # relative paths, as typed
    monkeypatch.chdir("/")
    maps, meta = load_map(tmp_path / "maps" / "case0_seg.npy")
    assert maps.shape == (3, 16, 18, 10) and meta.input == str(mixed_folder / "case0_seg.nii.gz")
