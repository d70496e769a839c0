"""``load_map``: every output format of ``rwmaps compute`` read back channels first, with its meta."""

import shutil

import numpy as np
import pytest
from map_fixtures import CASES, CLASSES, label_array, map_file

from rwmaps_cli import compute_maps, load_map
from rwmaps_cli.errors import InputError

SPACING = {"case_000": (0.8, 0.8, 2.5), "sub/case_001": (0.7, 0.7, 3.0), "slice_2d": (1.0, 1.0)}


@pytest.mark.parametrize("name", ["nii.gz", "nii", "npz", "npy", "npy16"])
@pytest.mark.parametrize("case", CASES)
def test_every_format_loads_as_float32_channels_first(computed, name, case):
    maps, meta = load_map(map_file(computed, name, case))
    labels = label_array(computed.labels, case)
    dtype = np.float16 if name == "npy16" else np.float32
    expected = compute_maps(labels, CLASSES, dtype=dtype).astype(np.float32)
    assert maps.dtype == np.float32
    assert maps.shape == (len(CLASSES), *labels.shape)  # a 2D map is (C, H, W), not (C, H, W, 1)
    np.testing.assert_array_equal(maps, expected)
    assert meta.classes == CLASSES
    assert meta.kind == "rrw"
    assert meta.dtype == ("float16" if name == "npy16" else "float32")
    np.testing.assert_allclose(meta.spacing, SPACING[case], rtol=1e-6)
    assert meta.parameters["fmt"] == ("npy" if name == "npy16" else name)
    assert meta.manifest == str(computed.maps[name] / "rwmaps.json")
    assert (meta.affine is not None) == name.startswith("nii")


def test_other_kinds_and_parameters_come_back_in_the_meta(computed):
    maps, meta = load_map(map_file(computed, "kervadec", "case_000"))
    labels = label_array(computed.labels, "case_000")
    expected = compute_maps(labels, CLASSES, kind="kervadec", spacing=SPACING["case_000"], slice_axis=0)
    np.testing.assert_allclose(maps, expected, rtol=1e-6)
    assert meta.kind == "kervadec"
    assert meta.parameters["spacing"] == "physical" and meta.parameters["slice_axis"] == 0


def test_mmap_returns_a_memory_map_of_the_stored_dtype(computed):
    maps, meta = load_map(map_file(computed, "npy", "case_000"), mmap=True)
    assert isinstance(maps, np.memmap) and maps.dtype == np.float32 and not maps.flags.writeable
    assert maps.shape == (4, 20, 24, 12)
    half, meta = load_map(map_file(computed, "npy16", "case_000"), mmap=True)
    assert isinstance(half, np.memmap) and half.dtype == np.float16  # not converted: that would read it all
    assert meta.classes == CLASSES
    with pytest.raises(ValueError, match="needs a .npy map"):
        load_map(map_file(computed, "npz", "case_000"), mmap=True)


def test_a_map_without_its_manifest(computed, tmp_path):
    """NIfTI: kind from the header's descrip, spacing from its zooms, classes unknown.
    .npz carries everything; a lone .npy has only the array."""
    for name in ["nii.gz", "npz", "npy"]:
        shutil.copy(map_file(computed, name, "case_000"), tmp_path)
    maps, meta = load_map(tmp_path / "case_000.nii.gz")
    assert maps.shape == (4, 20, 24, 12) and meta.kind == "rrw" and meta.classes is None
    np.testing.assert_allclose(meta.spacing, SPACING["case_000"], rtol=1e-6)
    assert meta.manifest is None and meta.parameters is None
    _, meta = load_map(tmp_path / "case_000.npz")
    assert meta.classes == CLASSES and meta.kind == "rrw"
    maps, meta = load_map(tmp_path / "case_000.npy")
    assert maps.shape == (4, 20, 24, 12)
    assert meta.classes is None and meta.kind is None and meta.spacing is None


def test_a_label_file_is_not_a_map(computed):
    with pytest.raises(InputError, match="a map is 4D"):
        load_map(computed.labels / "case_000.nii.gz")
    with pytest.raises(ValueError, match="output name must end with"):
        load_map(computed.labels / "slice_2d.png")
    with pytest.raises(InputError, match="file not found"):
        load_map(computed.labels / "missing.npy")


def test_meta_is_a_frozen_record_that_still_reads_like_rwmaps_0_1s_dict(computed):
    import dataclasses

    from rwmaps_cli import MapMeta

    _, meta = load_map(map_file(computed, "npz", "case_000"))
    assert isinstance(meta, MapMeta) and meta["classes"] == meta.classes == CLASSES
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.kind = "ac"
    with pytest.raises(KeyError):
        meta["no_such_key"]


@pytest.mark.parametrize("outside", [0.5, [0.95, 0.05, 0.05, 0.05]])
def test_outside_is_refused_where_it_would_be_ignored(computed, outside):
    """A full map holds its outside values: ``outside=`` used to be dropped without a word."""
    with pytest.raises(ValueError, match="outside= applies when a compact map is expanded"):
        load_map(map_file(computed, "nii.gz", "case_000"), outside=outside)
    load_map(map_file(computed, "nii.gz", "case_000"), outside=1.0)  # the default stays fine


def test_load_map_names_the_file_as_the_command_line_does(tmp_path):
    from rwmaps_cli import load_map
    from rwmaps_cli.errors import InputError

    missing = tmp_path / "maps" / "case.nii.gz"
    with pytest.raises(InputError, match=f"^{missing}: file not found$"):
        load_map(missing)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not a map")
    with pytest.raises(InputError, match=f"^{garbage}: cannot read"):
        load_map(garbage)
