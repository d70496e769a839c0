"""``rwmaps inspect`` run for real on label files and on maps of every output format."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import blobs, run_rwmaps
from map_fixtures import CLASSES, copy_maps, label_array, map_file, write_labels

from rwmaps_cli import compute_maps
from rwmaps_cli.contract import KINDS
from rwmaps_cli.formats import LabelVolume, write_map
from rwmaps_cli.inspect import describe, figure_pixels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def inspect_json(path, *args):
    return json.loads(run_rwmaps("inspect", path, "--json", *args, check=0).stdout)


def test_label_file_table_and_json(computed):
    path = computed.labels / "case_000.nii.gz"
    labels = label_array(computed.labels, "case_000")
    counts = np.bincount(labels.ravel())
    table = run_rwmaps("inspect", path, check=0).stdout
    assert table.splitlines()[0] == f"{path}: label file, NIfTI (.nii.gz)"
    for line in ["shape        20 × 24 × 12", "dtype        uint8", "spacing      0.8 × 0.8 × 2.5",
                 "orientation  RAS", "values       4 distinct, 0 to 3"]:
        assert line in table
    rows = [line.split()[:2] for line in table.splitlines()[-4:]]
    assert rows == [[str(k), f"{n:,}"] for k, n in enumerate(counts)]  # label value, voxel count
    info = inspect_json(path)
    assert info["type"] == "labels" and info["shape"] == [20, 24, 12] and info["dtype"] == "uint8"
    assert info["spacing"] == [0.8, 0.8, 2.5] and info["orientation"] == "RAS"
    assert [c["label"] for c in info["classes"]] == [0, 1, 2, 3]
    assert [c["voxels"] for c in info["classes"]] == counts.tolist()
    assert info["problems"] == []


@pytest.mark.parametrize("name", ["nii.gz", "nii", "npz", "npy", "npy16"])
def test_map_of_every_format(computed, name):
    path = map_file(computed, name, "case_000")
    labels = label_array(computed.labels, "case_000")
    maps = compute_maps(labels, CLASSES)
    info = inspect_json(path)
    assert info["type"] == "map" and info["kind"] == "rrw"
    assert info["shape"] == [4, 20, 24, 12]
    assert info["stored_shape"] == ([20, 24, 12, 4] if name.startswith("nii") else [4, 20, 24, 12])
    assert info["dtype"] == ("float16" if name == "npy16" else "float32")
    assert info["spacing"] == [0.8, 0.8, 2.5]
    assert info["orientation"] == "RAS"  # npz / npy: from the input the manifest names
    assert info["manifest"] == str(computed.maps[name] / "rwmaps.json")
    assert [c["label"] for c in info["classes"]] == CLASSES
    assert [c["voxels"] for c in info["classes"]] == [int((labels == k).sum()) for k in CLASSES]
    for channel, stats in zip(maps, info["classes"]):
        assert stats["min"] == pytest.approx(float(channel.min()), abs=1e-3)
        assert stats["max"] == pytest.approx(float(channel.max()), abs=1e-3)
        assert stats["consistent"] is True and stats["problem"] is None
    assert info["consistent"] is True and info["problems"] == []


def test_map_table(computed):
    path = map_file(computed, "nii.gz", "case_000")
    table = run_rwmaps("inspect", path, check=0).stdout
    assert table.splitlines()[0].startswith(f"{path}: rwmaps map, kind rrw")
    for line in ["shape        4 × 20 × 24 × 12 (C × spatial; stored 20 × 24 × 12 × 4)", "dtype        float32",
                 "spacing      0.8 × 0.8 × 2.5", "orientation  RAS", "consistent with rrw: yes",
                 "channel  label  inside voxels  min  max  consistent"]:
        assert line in table
    labels = label_array(computed.labels, "case_000")
    rows = [line.split() for line in table.splitlines() if line.startswith("        ")]
    assert rows == [[str(c), str(c), f"{int((labels == c).sum()):,}", "-1", "1", "yes"] for c in CLASSES]


def test_map_input_is_shown_as_typed_not_absolute(tmp_path, monkeypatch):
    """The manifest records the input absolute; inspect shows it as the user typed it to
    compute from the current folder (docs/cli.md's example), and as recorded (absolute)
    from a folder it does not lie under."""
    monkeypatch.chdir(tmp_path)
    write_labels(tmp_path / "sample_data")
    run_rwmaps("compute", "--input", "sample_data", "--output", "maps", "--jobs", "1", "--quiet", check=0)
    typed = str(Path("sample_data", "sub", "case_001.nii.gz"))
    recorded = str(tmp_path / typed)
    table = run_rwmaps("inspect", Path("maps", "sub", "case_001.nii.gz"), check=0).stdout
    assert f"\n  input        {typed}\n" in table
    assert recorded not in table and f"(from {Path('maps', 'rwmaps.json')})" in table
    assert inspect_json(Path("maps", "sub", "case_001.nii.gz"))["input"] == typed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the input is not under it: no ../ path
    assert inspect_json(tmp_path / "maps" / "sub" / "case_001.nii.gz")["input"] == recorded


def test_2d_map_and_other_kinds(computed):
    info = inspect_json(map_file(computed, "nii.gz", "slice_2d"))
    assert info["shape"] == [4, 30, 26] and info["stored_shape"] == [30, 26, 1, 4]
    assert info["classes"][3]["voxels"] == 0 and info["classes"][3]["min"] == 1  # absent class: all 1
    assert info["consistent"] is True
    # kervadec, physical spacing, per-slice maps: the manifest gives the slice axis, so
    # the inner boundary (exactly 0) counts as inside.
    info = inspect_json(map_file(computed, "kervadec", "case_000"))
    labels = label_array(computed.labels, "case_000")
    assert info["kind"] == "kervadec" and info["consistent"] is True
    assert [c["voxels"] for c in info["classes"]] == [int((labels == k).sum()) for k in CLASSES]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["3d", "ignore", "spacing"])
def test_every_kind_is_consistent_with_itself(computed, tmp_path, kind, variant):
    """describe() on npz maps written by write_map: no false alarm for any kind."""
    labels = label_array(computed.labels, "sub/case_001").copy()
    ignore = None
    if variant == "ignore":
        labels[:4, :4, :] = 9
        ignore = 9
    spacing = (0.7, 0.7, 3.0) if variant == "spacing" else None
    maps = compute_maps(labels, CLASSES, kind=kind, spacing=spacing, ignore_label=ignore)
    volume = LabelVolume(labels, (0.7, 0.7, 3.0), np.diag([0.7, 0.7, 3.0, 1.0]))
    write_map(tmp_path / "m.npz", maps, volume, CLASSES, kind)
    info = describe(tmp_path / "m.npz")
    assert info["consistent"] is True, info["problems"]
    assert [c["voxels"] for c in info["classes"]] == [int((labels == k).sum()) for k in CLASSES]


def test_tampered_map_is_not_consistent(computed, tmp_path):
    folder = copy_maps(computed, "npy", tmp_path / "maps")
    path = folder / "case_000.npy"
    maps = np.load(path)
    maps[1] *= 0.5  # inside now reaches -0.5 only, outside is 0.5
    np.save(path, maps)
    info = inspect_json(path)  # still exit 0: the file was read
    assert info["consistent"] is False
    assert [c["consistent"] for c in info["classes"]] == [True, False, True, True]
    assert "neither in [-1, 0) nor 1" in info["classes"][1]["problem"]
    assert "consistent with rrw: NO" in run_rwmaps("inspect", path, check=0).stdout
    # Two classes at once at a voxel: each channel alone looks fine, together they do not.
    maps = np.load(tmp_path / "maps" / "sub" / "case_001.npy")
    inside = maps[1] < 0
    maps[2][inside] = -0.5
    np.save(tmp_path / "maps" / "sub" / "case_001.npy", maps)
    info = inspect_json(tmp_path / "maps" / "sub" / "case_001.npy")
    assert info["consistent"] is False
    assert any("inside no class or several" in problem for problem in info["problems"])


def test_unreadable_file_is_one_line_exit_1(computed, tmp_path):
    truncated = tmp_path / "case_000.nii.gz"
    truncated.write_bytes(map_file(computed, "nii.gz", "case_000").read_bytes()[:300])
    for path in [truncated, tmp_path / "missing.nii.gz", tmp_path]:
        result = run_rwmaps("inspect", path, check=1)
        assert result.stderr.startswith(f"rwmaps: {path}: ") and len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_png_of_a_map(computed, tmp_path):
    out = tmp_path / "figure.png"
    result = run_rwmaps("inspect", map_file(computed, "nii.gz", "case_000"), "--png", out, "--json", check=0)
    json.loads(result.stdout)  # --png leaves stdout to the description
    width, height = figure_pixels(1 + 4)
    assert png_size(out) == (width, height) == (1600, 340)
    assert f"({width} × {height} px; axis 2, slice " in result.stderr
    import matplotlib.image

    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.1  # not a blank canvas
    assert not list(tmp_path.glob(".*rwmaps-tmp*"))


def test_a_signed_map_is_drawn_on_a_scale_centred_on_zero(computed, tmp_path):
    """An sdf map (negative inside, positive outside): each panel's colour scale is centred on
    0 (matplotlib's RdBu_r, white at 0), whatever the channel's range."""
    import matplotlib

    from rwmaps_cli.inspect.figure import _map_range

    labels = label_array(computed.labels, "case_000")
    maps = compute_maps(labels, CLASSES, kind="sdf")
    volume = LabelVolume(labels, (1.0, 1.0, 1.0), np.eye(4))
    write_map(tmp_path / "sdf.npz", maps, volume, CLASSES, "sdf")
    out = tmp_path / "sdf.png"
    result = run_rwmaps("inspect", tmp_path / "sdf.npz", "--png", out, check=0)
    assert "consistent with sdf: yes" in result.stdout and png_size(out)[0] > 0
    for channel in maps:
        low, high = _map_range(channel)
        norm = matplotlib.colors.TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high)
        assert norm(0.0) == 0.5 and low < 0 < high  # 0 sits at the colour map's white middle


def test_png_of_a_label_file_and_chosen_slice(computed, tmp_path):
    out = tmp_path / "labels.png"
    result = run_rwmaps("inspect", computed.labels / "slice_2d.png", "--png", out, check=0)
    assert png_size(out) == figure_pixels(1 + 3)  # labels 0, 1, 2: three computed rrw maps
    assert "label file, PNG" in result.stdout
    result = run_rwmaps("inspect", map_file(computed, "npy", "sub/case_001"), "--png", out, "--axis", "1",
                        "--slice", "3", check=0)
    assert "axis 1, slice 3)" in result.stderr
    assert png_size(out) == figure_pixels(5)
    many = tmp_path / "many.npz"  # 6 channels: panels wrap onto rows of MAX_COLUMNS
    labels = np.arange(6, dtype=np.uint8).repeat(8).reshape(6, 8)
    write_map(many, compute_maps(labels, list(range(6))), LabelVolume(labels, (1.0, 1.0), np.eye(4)),
              list(range(6)), "rrw")
    run_rwmaps("inspect", many, "--png", out, check=0)
    assert png_size(out) == figure_pixels(7) == (1600, 2 * 300 + 40)


@pytest.mark.parametrize("args, message", [
    (["--axis", "3"], "--axis 3 is out of range"),
    (["--axis", "2", "--slice", "12"], "--slice 12 is out of range: axis 2 has 12 slices (0 to 11)"),
    (["--slice", "1"], "--slice needs --axis"),
])
def test_slice_out_of_range_is_a_usage_error(computed, tmp_path, args, message):
    result = run_rwmaps("inspect", computed.labels / "case_000.nii.gz", "--png", tmp_path / "x.png", *args, check=2)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and not (tmp_path / "x.png").exists()  # found before any output


def test_png_of_labels_that_are_not_integers(tmp_path):
    """The description is printed; the picture cannot be drawn: exit 1, one line."""
    path = tmp_path / "bad.npy"
    np.save(path, np.array([[0.0, 1.5], [2.0, np.nan]]))
    result = run_rwmaps("inspect", path, "--png", tmp_path / "x.png", "--json", check=1)
    info = json.loads(result.stdout, parse_constant=pytest.fail)  # strict JSON: no NaN
    assert info["problems"] == ["some values are not integers: not usable as labels"]
    assert [c["label"] for c in info["classes"]] == [0.0, 1.5, 2.0, "nan"]
    cause = "cannot compute maps from these labels: labels are not integers: 1.5, nan"
    assert result.stderr == f"rwmaps: {path}: {cause}\n"


def test_inspect_help():
    text = " ".join(run_rwmaps("inspect", "--help", check=0).stdout.split())
    for option in ["--json", "--png", "--axis", "--slice"]:
        assert option in text


def test_a_2d_file_has_no_orientation(tmp_path):
    path = tmp_path / "slice.tif"
    sitk.WriteImage(sitk.GetImageFromArray(blobs((30, 26), 3, seed=5)), str(path))
    info = json.loads(run_rwmaps("inspect", path, "--json", check=0).stdout)
    assert info["orientation"] is None


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """An 83-class brain-like parcellation (NIfTI, as nibabel reads it) and its full npy map."""
    import nibabel as nib

    from rwmaps_cli.synthetic import brain_like_labels

    root = tmp_path_factory.mktemp("brain")
    (root / "labels").mkdir()
    nib.save(nib.Nifti1Image(brain_like_labels((61, 73, 61), 83, seed=2).astype(np.int16), np.eye(4)),
             root / "labels" / "brain.nii.gz")
    run_rwmaps("compute", "--input", root / "labels", "--output", root / "maps", "--format", "npy", check=0)
    return root


def test_inspect_lists_all_83_labels_and_does_not_call_them_an_image(brain):
    info = json.loads(run_rwmaps("inspect", brain / "labels" / "brain.nii.gz", "--json", check=0).stdout)
    assert len(info["classes"]) == info["distinct_values"] == 83 and info["problems"] == []
    few = json.loads(run_rwmaps("inspect", brain / "labels" / "brain.nii.gz", "--json", "--max-classes", "50",
                                check=0).stdout)
    assert len(few["classes"]) == 50 and "more than --max-classes 50" in few["problems"][0]


def test_the_picture_of_an_83_class_map_is_an_overview_and_the_largest_classes(brain, tmp_path):
    from rwmaps_cli.inspect import figure_pixels

    for source in (brain / "maps" / "brain.npy", brain / "labels" / "brain.nii.gz"):
        result = run_rwmaps("inspect", source, "--png", tmp_path / "brain.png", check=0)
        width, height = figure_pixels(1 + 1 + 8)  # labels, overview, the 8 largest classes in the slice
        assert f"({width} × {height} px" in result.stderr
        assert (tmp_path / "brain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
