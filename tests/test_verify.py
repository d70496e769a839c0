"""``rwmaps verify`` run for real: silent and exit 0 on fresh maps, one line per problem otherwise."""

import json

import numpy as np
import pytest
from helpers import run_rwmaps
from map_fixtures import copy_maps

from rwmaps_cli import verify as verify_module
from rwmaps_cli.verify import sample_indices, verify


def problems(result):
    return result.stdout.splitlines()


@pytest.mark.parametrize("name", ["nii.gz", "npz", "npy16", "kervadec"])
def test_fresh_maps_verify(computed, name):
    """Every format, float16 with float16 tolerance, kervadec per slice in mm."""
    result = run_rwmaps("verify", "--input", computed.labels, "--output", computed.maps[name], check=0)
    assert result.stdout == ""
    assert "rwmaps verify: all is well; 3 label files, 3 maps checked, 3 recomputed and compared" in result.stderr


def test_every_problem_is_one_line(computed, tmp_path):
    maps = copy_maps(computed, "npy", tmp_path / "maps")
    (maps / "case_000.npy").unlink()  # deleted
    with open(maps / "sub" / "case_001.npy", "r+b") as f:  # truncated
        f.truncate(1000)
    tampered = np.load(maps / "slice_2d.npy")
    tampered[2, 10:12, 10:12] = 0.25  # other values, same size
    np.save(maps / "slice_2d.npy", tampered)
    manifest = json.loads((maps / "rwmaps.json").read_text())
    manifest["cases"]["gone.nii.gz"] = dict(manifest["cases"]["case_000.nii.gz"])  # an extra entry
    (maps / "rwmaps.json").write_text(json.dumps(manifest))
    result = run_rwmaps("verify", "--input", computed.labels, "--output", maps, check=1)
    assert problems(result) == [
        f"{maps / 'rwmaps.json'}: lists 'gone.nii.gz', which is not a label file under {computed.labels}",
        f"{maps / 'case_000.npy'}: map missing (the manifest says done)",
        f"{maps / 'sub' / 'case_001.npy'}: 1,000 bytes, the manifest recorded 63,488 (truncated or rewritten)",
        f"{maps / 'slice_2d.npy'}: values differ from a recomputation in 4 of 3,120 values (largest difference "
        "0.75, channel 2 = class 2, at (10, 10); stored 0.25, recomputed 1; tolerance rtol 1e-05, atol 1e-05)",
    ]
    assert "rwmaps verify: 4 problems; 3 label files, 1 maps checked, 1 recomputed" in result.stderr
    assert "Traceback" not in result.stderr


def test_manifest_that_disagrees_with_the_files(computed, tmp_path):
    maps = copy_maps(computed, "nii.gz", tmp_path / "maps")
    manifest = json.loads((maps / "rwmaps.json").read_text())
    manifest["cases"]["case_000.nii.gz"]["shape"] = [4, 20, 24, 13]
    manifest["cases"]["sub/case_001.nii.gz"]["status"] = "failed"
    manifest["cases"]["sub/case_001.nii.gz"]["error"] = "out of memory"
    (maps / "rwmaps.json").write_text(json.dumps(manifest))
    (maps / "stray.nii.gz").write_bytes((maps / "slice_2d.nii.gz").read_bytes())
    (maps / ".case_000.rwmaps-tmp-99-abcd.nii.gz").write_bytes(b"")
    result = run_rwmaps("verify", "--input", computed.labels, "--output", maps, check=1)
    assert problems(result) == [
        f"{maps / 'case_000.nii.gz'}: shape 4 × 20 × 24 × 12, the manifest recorded 4 × 20 × 24 × 13",
        f"{computed.labels / 'sub' / 'case_001.nii.gz'}: rwmaps compute failed on this case: out of memory",
        f"{maps / '.case_000.rwmaps-tmp-99-abcd.nii.gz'}: temporary file left by an interrupted run "
        "(rwmaps compute removes it)",
        f"{maps / 'stray.nii.gz'}: map file that no label file under --input produces",
    ]


def test_float16_maps_get_a_float16_tolerance(computed, tmp_path):
    maps = copy_maps(computed, "npy16", tmp_path / "maps")
    path = maps / "case_000.npy"
    stored = np.load(path)
    assert stored.dtype == np.float16
    outside = np.flatnonzero(stored[0] < -0.3)[:5]
    nudged = stored.copy()
    nudged[0].flat[outside] = np.nextafter(nudged[0].flat[outside], np.float16(0))  # one float16 ulp
    np.save(path, nudged)
    run_rwmaps("verify", "--input", computed.labels, "--output", maps, check=0)
    nudged[0].flat[outside] += np.float16(0.01)  # ten ulps: wrong
    np.save(path, nudged)
    result = run_rwmaps("verify", "--input", computed.labels, "--output", maps, check=1)
    assert problems(result)[0].startswith(f"{path}: values differ from a recomputation in 5 of ")
    assert "tolerance rtol 0.001, atol 0.001" in result.stdout


def test_sample_recomputes_evenly_spaced_cases(computed, tmp_path):
    """Cases sorted: case_000, slice_2d, sub/case_001; --sample 1 takes the first only."""
    maps = copy_maps(computed, "npy", tmp_path / "maps")
    tampered = np.load(maps / "sub" / "case_001.npy")
    tampered[0, 0, 0, 0] = 0.5
    np.save(maps / "sub" / "case_001.npy", tampered)
    result = run_rwmaps("verify", "--input", computed.labels, "--output", maps, "--sample", "1", check=0)
    assert "3 maps checked, 1 recomputed" in result.stderr
    result = run_rwmaps("verify", "--input", computed.labels, "--output", maps, "--sample", "2", check=1)
    assert len(problems(result)) == 1 and "sub/case_001.npy: values differ" in result.stdout


def test_without_a_manifest_presence_and_shapes_are_checked(computed, tmp_path):
    maps = copy_maps(computed, "npz", tmp_path / "maps")
    (maps / "rwmaps.json").unlink()
    (maps / "slice_2d.npz").unlink()
    result = run_rwmaps("verify", "--input", computed.labels, "--output", maps, check=1)
    assert problems(result) == [
        f"{maps / 'rwmaps.json'}: no manifest; without its parameters the maps cannot be recomputed "
        "(only their presence and shapes are checked)",
        f"{computed.labels / 'slice_2d.png'}: no map in {maps} (looked for slice_2d.nii.gz, slice_2d.nii, "
        "slice_2d.npz, slice_2d.npy)",
    ]
    assert "2 maps checked, 0 recomputed" in result.stderr


def test_usage_errors_exit_2(computed, tmp_path):
    result = run_rwmaps("verify", "--input", tmp_path / "nothing", "--output", computed.maps["npy"], check=2)
    assert "input does not exist" in result.stderr
    result = run_rwmaps("verify", "--input", computed.labels, "--output", tmp_path / "nothing", check=2)
    assert "output folder does not exist" in result.stderr
    result = run_rwmaps("verify", "--input", computed.labels, "--output", tmp_path, "--sample", "-1", check=2)
    assert "Traceback" not in result.stderr


def test_sample_indices_are_evenly_spaced_and_deterministic():
    assert sample_indices(10, None) == list(range(10))
    assert sample_indices(10, 99) == list(range(10))
    assert sample_indices(10, 0) == []
    assert sample_indices(10, 1) == [0]
    assert sample_indices(10, 2) == [0, 9]
    assert sample_indices(10, 4) == [0, 3, 6, 9]
    assert len(sample_indices(1000, 37)) == 37


def test_parallel_recomputation_finds_the_same_problems(computed, tmp_path, monkeypatch):
    """Worker processes (run_local), as on a large dataset."""
    maps = copy_maps(computed, "npy", tmp_path / "maps")
    tampered = np.load(maps / "case_000.npy")
    tampered[3, 1, 1, 1] = -2.0
    np.save(maps / "case_000.npy", tampered)
    monkeypatch.setattr(verify_module, "PARALLEL_MIN_VOXELS", 0)
    report = verify(computed.labels, maps, jobs=2)
    assert report.recomputed == 3
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{maps / 'case_000.npy'}: values differ from a recomputation in 1 of ")


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


def test_unchanged_maps_outside_the_sample_cost_two_stats_and_changed_ones_are_still_caught(tmp_path, monkeypatch):
    """verify costs a rerun plus its sample: the maps a rerun would trust (same size, mtime
    and inode as recorded, from the same input) are not opened; any other is checked."""
    from helpers import blobs, write_nifti

    labels, maps = tmp_path / "labels", tmp_path / "maps"
    for i in range(6):
        write_nifti(labels / f"case_{i}.nii.gz", blobs((10, 9, 5), 3, seed=i))
    run_rwmaps("compute", "--input", labels, "--output", maps, "--format", "npy", "--classes", "0,1,2", check=0)
    opened = []
    real_map_info, real_read_shape = verify_module.map_info, verify_module.read_shape
    monkeypatch.setattr(verify_module, "map_info", lambda path, *a: opened.append(path) or real_map_info(path, *a))
    monkeypatch.setattr(verify_module, "read_shape", lambda path, **k: opened.append(path) or real_read_shape(path, **k))
    assert verify(labels, maps, sample=1).problems == []
    assert opened == [maps / "case_0.npy", labels / "case_0.nii.gz"]  # the sampled case only

    with open(maps / "case_3.npy", "r+b") as f:  # truncated after the run, outside the sample
        f.truncate(1000)
    with open(maps / "case_4.npy", "r+b") as f:  # a header rewritten in place: same size, same inode
        header = f.read(128)
        f.seek(0)
        f.write(header.replace(b"'descr': '<f4'", b"'descr': '<i4'"))
    found = verify(labels, maps, sample=1).problems
    assert found[0].startswith(f"{maps / 'case_3.npy'}: 1,000 bytes, the manifest recorded")
    assert found[1].startswith(f"{maps / 'case_4.npy'}: cannot read the map header") and "int32" in found[1]
    assert len(found) == 2
