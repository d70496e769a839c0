"""What a first real dataset exposed (issue 10): selecting inputs, class-list typos, the
summary, one style of error line, inspect and verify on many classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import blobs, run_rwmaps, write_nifti

from rwmaps_cli.verify import verify


@pytest.fixture
def mixed_folder(tmp_path):
    """Images and labels in one folder, as many datasets ship them."""
    root = tmp_path / "data"
    for i in range(3):
        write_nifti(root / f"case{i}_seg.nii.gz", blobs((16, 18, 10), 3, seed=i))
        write_nifti(root / f"case{i}_img.nii.gz", np.random.default_rng(i).integers(0, 999, (16, 18, 10)).astype(np.int16))
    return root


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


def test_every_error_line_has_one_style(mixed_folder, tmp_path):
    usage = run_rwmaps("compute", "--input", tmp_path / "nowhere", "--output", tmp_path / "maps", check=2)
    case = run_rwmaps("compute", "--input", mixed_folder, "--output", tmp_path / "maps", "--classes", "0,1",
                      "--include", "*_seg.nii.gz", check=1)
    assert usage.stderr.startswith(f"rwmaps: {tmp_path / 'nowhere'}: ")
    assert all(line.startswith("rwmaps: ") for line in case.stderr.splitlines())


def test_a_2d_file_has_no_orientation(tmp_path):
    path = tmp_path / "slice.tif"
    sitk.WriteImage(sitk.GetImageFromArray(blobs((30, 26), 3, seed=5)), str(path))
    info = json.loads(run_rwmaps("inspect", path, "--json", check=0).stdout)
    assert info["orientation"] is None


def test_verify_reports_progress_with_a_total(mixed_folder, tmp_path):
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz", check=0)
    bars = []

    class Bar:
        def __init__(self, total, description):
            self.total, self.description, self.n = total, description, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def close(self):
            pass

    report = verify(mixed_folder, out, progress=Bar)
    assert report.problems == []  # the images were not cases: verify keeps compute's --include
    assert [(bar.total, bar.n, bar.description) for bar in bars] == [(3, 3, "recomputing maps")]


_VERIFY_PEAK = r"""
import json, sys
from rwmaps_cli.verify import verify
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current resident size
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
before = status("VmRSS:")
report = verify(sys.argv[1], sys.argv[2], jobs=1)
print(json.dumps({"peak": status("VmHWM:") - before, "problems": report.problems}))
"""


@pytest.mark.parametrize(("fmt", "bound"), [("npy", 1.5), ("nii.gz", 2.5)])
def test_verify_of_an_83_class_map_needs_about_one_maps_worth_of_memory(tmp_path, fmt, bound):
    """rwmaps 0.1 peaked at 5 maps' worth (the recomputed map, the stored one, a C-ordered
    copy, isclose and difference temporaries); now: the stored map (a memory map for npy;
    nibabel's decompression buffer for nii.gz) plus one channel at a time."""
    import subprocess
    import sys

    import nibabel as nib

    from rwmaps_cli.synthetic import brain_like_labels

    labels = brain_like_labels((91, 109, 91), 83, seed=3).astype(np.int16)
    (tmp_path / "labels").mkdir()
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "labels" / "brain.nii.gz")
    run_rwmaps("compute", "--input", tmp_path / "labels", "--output", tmp_path / "maps", "--format", fmt, check=0)
    out = subprocess.run([sys.executable, "-c", _VERIFY_PEAK, str(tmp_path / "labels"), str(tmp_path / "maps")],
                         capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout)
    assert result["problems"] == []
    full_map = 83 * labels.size * 4
    assert result["peak"] < bound * full_map, f"peak {result['peak'] / full_map:.2f} maps"


def test_a_stop_while_reading_the_labels_writes_no_manifest(mixed_folder, tmp_path):
    """Ctrl-C during the class scan: nothing written, so the rerun is not refused."""
    import os
    import signal

    from rwmaps_cli.compute import compute_dataset

    class InterruptingBar:
        def __init__(self, total, description):
            pass

        def update(self, n=1):
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the run's handler takes it

        def close(self):
            pass

    out = tmp_path / "maps"
    outcome = compute_dataset(mixed_folder, out, include=["*_seg.nii.gz"], jobs=1, progress=InterruptingBar)
    assert outcome.stopped == "SIGINT" and outcome.done == 0
    assert not (out / "rwmaps.json").exists()
    run_rwmaps("compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz", check=0)


def test_a_compact_map_finds_its_labels_from_any_working_directory(mixed_folder, tmp_path, monkeypatch):
    from rwmaps_cli import load_map

    monkeypatch.chdir(mixed_folder.parent)
    run_rwmaps("compute", "--input", mixed_folder.name, "--output", "maps", "--include", "*_seg.nii.gz",
               "--layout", "compact", "--format", "npy", check=0)  # relative paths, as typed
    monkeypatch.chdir("/")
    maps, meta = load_map(tmp_path / "maps" / "case0_seg.npy")
    assert maps.shape == (3, 16, 18, 10) and meta.input == str(mixed_folder / "case0_seg.nii.gz")


def test_parts_cannot_overwrite_a_folder_made_with_other_parameters(mixed_folder, tmp_path):
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz", check=0)
    refused = run_rwmaps("compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz",
                         "--kind", "boundary", "--overwrite", "--num-parts", "2", "--part-id", "0", check=2)
    assert "parts cannot --overwrite them" in refused.stderr
    run_rwmaps("verify", "--input", mixed_folder, "--output", out, check=0)  # still whole


def test_a_part_with_other_parameters_is_refused(mixed_folder, tmp_path):
    out = tmp_path / "maps"
    args = ["compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz", "--num-parts", "2"]
    run_rwmaps(*args, "--part-id", "0", check=0)
    refused = run_rwmaps(*args, "--part-id", "1", "--kind", "boundary", check=2)
    assert "holds maps made with other parameters (--kind 'rrw' -> 'boundary')" in refused.stderr


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
