"""What a rerun does: it skips what is done, redoes what changed, went missing, failed or was
corrupted, refuses other parameters, removes a killed run's temporaries, and after a SIGKILL
gives a clean run's maps."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
from helpers import blobs, compute_npy, dead_pid, manifest_json, run_rwmaps, write_nifti

from rwmaps_cli.formats import TMP_MARKER
from rwmaps_cli.manifest import read_folder_manifest


def test_rerun_redoes_only_changed_missing_failed_or_corrupted_cases(labels_dir, tmp_path):
    out = tmp_path / "maps"
    bad = labels_dir / "bad.npy"
    np.save(bad, np.array([[0.5, 1.0]]))
    compute_npy(labels_dir, out, "--classes", "0,1,2,3", check=1)
    np.save(bad, np.array([[0, 1]], dtype=np.uint8))  # fixed: the failed case is redone
    write_nifti(labels_dir / "case_000.nii.gz", blobs((20, 24, 12), 4, seed=9))  # changed input
    (out / "sub" / "case_001.npy").unlink()  # missing output
    corrupted = out / "sub" / "case_002.npy"
    corrupted.write_bytes(corrupted.read_bytes()[:-100])  # truncated output
    result = compute_npy(labels_dir, out, "--classes", "0,1,2,3")
    assert "4 done, 0 skipped" in result.stderr
    result = compute_npy(labels_dir, out, "--classes", "0,1,2,3")
    assert "0 done, 4 skipped" in result.stderr
    assert all(case["status"] == "done" for case in manifest_json(out)["cases"].values())


def test_rerun_with_other_parameters_is_refused_unless_overwrite(labels_dir, tmp_path):
    out = tmp_path / "maps"
    compute_npy(labels_dir, out)
    refused = compute_npy(labels_dir, out, "--kind", "ac", check=2)
    assert "holds maps made with other parameters (--kind 'rrw' -> 'ac')" in refused.stderr
    assert "--overwrite" in refused.stderr
    compute_npy(labels_dir, out, "--kind", "ac", "--overwrite")
    assert manifest_json(out)["parameters"]["kind"] == "ac"
    assert np.load(out / "case_000.npy").min() == 0  # ac maps now


def test_temporaries_of_a_killed_run_are_removed(labels_dir, tmp_path):
    out = tmp_path / "maps"
    compute_npy(labels_dir, out)
    stale = out / "sub" / f".case_001{TMP_MARKER}{dead_pid()}-deadbeef.npy"  # its writer was killed
    stale.write_bytes(b"half a map")
    result = compute_npy(labels_dir, out)
    assert not stale.exists()
    assert "1 stale temporary file removed" in result.stderr


def test_sigkill_mid_run_then_rerun_gives_a_clean_runs_maps(tmp_path):
    labels_dir = tmp_path / "labels"
    for i in range(16):
        write_nifti(labels_dir / f"case_{i:02d}.nii.gz", blobs((64, 64, 48), 4, seed=i, sigma=3))
    out, clean = tmp_path / "maps", tmp_path / "clean"
    args = ["compute", "--input", labels_dir, "--format", "npy", "--kind", "boundary", "--jobs", "2",
            "--engine", "scipy"]  # the slow engine: the run lasts long enough to be killed
    process = subprocess.Popen([sys.executable, "-m", "rwmaps_cli", *map(str, args), "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, done = time.monotonic() + 120, set()
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "rwmaps.json").exists():
                cases = read_folder_manifest(out).cases  # the manifest and its journal: readable at every moment
                done = {name for name, case in cases.items() if case["status"] == "done"}
                if len(done) >= 2:
                    break
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the run and its workers, while they record, as a crash would
        process.wait()
    assert 2 <= len(done) < 16, "the run should be killed mid-way"
    recorded = {name for name, case in read_folder_manifest(out).cases.items() if case["status"] == "done"}
    assert done <= recorded  # nothing recorded before the kill is lost
    for path in out.glob("*.npy"):  # whatever has a final name is complete
        assert np.load(path).shape == (4, 64, 64, 48)
    rerun = run_rwmaps(*args, "--output", out, check=0)
    assert f"{16 - len(recorded)} done, {len(recorded)} skipped" in rerun.stderr  # recorded cases are not redone
    run_rwmaps(*args, "--output", clean, check=0)
    assert not [p for p in out.rglob("*") if TMP_MARKER in p.name]
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(p.name for p in clean.glob("*.npy"))
    for path in clean.glob("*.npy"):
        np.testing.assert_array_equal(np.load(out / path.name), np.load(path))
    assert all(case["status"] == "done" for case in manifest_json(out)["cases"].values())


def test_parts_cannot_overwrite_a_folder_made_with_other_parameters(mixed_folder, tmp_path):
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz", check=0)
    refused = run_rwmaps("compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz",
                         "--kind", "boundary", "--overwrite", "--num-parts", "2", "--part-id", "0", check=2)
    assert "parts cannot --overwrite them; run once without --num-parts (with --overwrite)" in refused.stderr
    run_rwmaps("verify", "--input", mixed_folder, "--output", out, check=0)  # still whole


def test_a_part_with_other_parameters_is_refused(mixed_folder, tmp_path):
    out = tmp_path / "maps"
    args = ["compute", "--input", mixed_folder, "--output", out, "--include", "*_seg.nii.gz", "--num-parts", "2"]
    run_rwmaps(*args, "--part-id", "0", check=0)
    refused = run_rwmaps(*args, "--part-id", "1", "--kind", "boundary", check=2)
    assert "holds maps made with other parameters (--kind 'rrw' -> 'boundary')" in refused.stderr
