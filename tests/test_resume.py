"""Dataset-scale robustness: the manifest, resume, atomic writes, a killed run, a dying worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import blobs, dead_pid, run_rwmaps, write_nifti

from rwmaps_cli import __version__
from rwmaps_cli.inputs.dataset import Case
from rwmaps_cli.formats import TMP_MARKER
from rwmaps_cli.manifest import CaseResult, read_folder_manifest
from rwmaps_cli.run import WORKER_DIED, run_local


def compute(labels_dir, out, *args, check=0):
    return run_rwmaps("compute", "--input", labels_dir, "--output", out, "--format", "npy", *args, check=check)


def manifest(out) -> dict:
    return json.loads((out / "rwmaps.json").read_text())


def test_manifest_records_parameters_and_every_case(labels_dir, tmp_path):
    out = tmp_path / "maps"
    compute(labels_dir, out, "--kind", "boundary")
    data = manifest(out)
    assert data["tool"] == "rwmaps" and data["version"] == __version__
    assert data["classes"] == [0, 1, 2, 3]
    assert data["parameters"] == {"classes": [0, 1, 2, 3], "kind": "boundary", "spacing": "voxel", "slice_axis": None,
                                  "dtype": "float32", "fmt": "npy", "ignore_label": None, "layout": "full",
                                  "regions": None}
    assert sorted(data["cases"]) == ["case_000.nii.gz", "sub/case_001.nii.gz", "sub/case_002.nii.gz"]
    entry = data["cases"]["sub/case_001.nii.gz"]
    assert entry["status"] == "done" and entry["error"] is None
    assert entry["input"] == str(labels_dir / "sub" / "case_001.nii.gz")
    assert entry["output"] == str(out / "sub" / "case_001.npy")
    assert entry["shape"] == [4, 18, 22, 10]
    assert entry["fingerprint"]["size"] == (labels_dir / "sub" / "case_001.nii.gz").stat().st_size
    assert entry["bytes"] == (out / "sub" / "case_001.npy").stat().st_size
    assert entry["seconds"] >= 0


def test_rerun_redoes_only_changed_missing_failed_or_corrupted_cases(labels_dir, tmp_path):
    out = tmp_path / "maps"
    bad = labels_dir / "bad.npy"
    np.save(bad, np.array([[0.5, 1.0]]))
    compute(labels_dir, out, "--classes", "0,1,2,3", check=1)
    np.save(bad, np.array([[0, 1]], dtype=np.uint8))  # fixed: the failed case is redone
    write_nifti(labels_dir / "case_000.nii.gz", blobs((20, 24, 12), 4, seed=9))  # changed input
    (out / "sub" / "case_001.npy").unlink()  # missing output
    corrupted = out / "sub" / "case_002.npy"
    corrupted.write_bytes(corrupted.read_bytes()[:-100])  # truncated output
    result = compute(labels_dir, out, "--classes", "0,1,2,3")
    assert "4 done, 0 skipped" in result.stderr
    result = compute(labels_dir, out, "--classes", "0,1,2,3")
    assert "0 done, 4 skipped" in result.stderr
    assert all(case["status"] == "done" for case in manifest(out)["cases"].values())


def test_rerun_with_other_parameters_is_refused_unless_overwrite(labels_dir, tmp_path):
    out = tmp_path / "maps"
    compute(labels_dir, out)
    refused = compute(labels_dir, out, "--kind", "ac", check=2)
    assert "holds maps made with other parameters (--kind 'rrw' -> 'ac')" in refused.stderr
    assert "--overwrite" in refused.stderr
    compute(labels_dir, out, "--kind", "ac", "--overwrite")
    assert manifest(out)["parameters"]["kind"] == "ac"
    assert np.load(out / "case_000.npy").min() == 0  # ac maps now


def test_temporaries_of_a_killed_run_are_removed(labels_dir, tmp_path):
    out = tmp_path / "maps"
    compute(labels_dir, out)
    stale = out / "sub" / f".case_001{TMP_MARKER}{dead_pid()}-deadbeef.npy"  # its writer was killed
    stale.write_bytes(b"half a map")
    result = compute(labels_dir, out)
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
    assert all(case["status"] == "done" for case in manifest(out)["cases"].values())


def test_a_torn_journal_line_is_ignored(tmp_path):
    labels_dir = tmp_path / "labels"
    for i in range(3):
        write_nifti(labels_dir / f"case_{i}.nii.gz", blobs((12, 10, 8), 3, seed=i))
    out = tmp_path / "maps"
    args = ["compute", "--input", labels_dir, "--output", out, "--format", "npy"]
    run_rwmaps(*args, check=0)
    parsed = read_folder_manifest(out)
    # As a kill mid-run leaves it: the manifest with two cases, the journal with the third
    # and a torn line (a write cut short).
    third = "case_2.nii.gz"
    header = {k: v for k, v in parsed.header.items()}
    cases = {name: entry for name, entry in parsed.cases.items() if name != third}
    (out / "rwmaps.json").write_text(json.dumps({**header, "cases": cases}))
    journal = out / "rwmaps.journal"
    journal.write_text(json.dumps({"journal_id": header["journal_id"]}) + "\n"
                       + json.dumps({"name": third, "entry": parsed.cases[third]}) + "\n"
                       + '{"name": "case_9.nii.gz", "entry": {"status": "do')
    again = read_folder_manifest(out)
    assert set(again.cases) == {"case_0.nii.gz", "case_1.nii.gz", third} and again.journaled == 1
    assert "3 skipped" in run_rwmaps(*args, check=0).stderr  # the journal's case counts as done
    assert not journal.exists() and set(json.loads((out / "rwmaps.json").read_text())["cases"]) == set(again.cases)
    # A journal that names another manifest (left by a crash before a rewrite) is not applied.
    journal.write_text(json.dumps({"journal_id": "another"}) + "\n"
                       + json.dumps({"name": "case_9.nii.gz", "entry": {"status": "done"}}) + "\n")
    assert "case_9.nii.gz" not in read_folder_manifest(out).cases


# A work function for run_local that really kills its worker process for some cases.

def _work(case: Case, marker_dir: str) -> CaseResult:
    if case.name.startswith("kill_always") or (
        case.name.startswith("kill_once") and not (Path(marker_dir) / case.name).exists()
    ):
        (Path(marker_dir) / case.name).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return CaseResult(case.name, "done", seconds=0.2)


@pytest.mark.parametrize("forked", [False, True], ids=["loky-spawn", "forkserver"])
def test_a_dying_worker_fails_only_its_case(tmp_path, monkeypatch, forked):
    # Both ways workers start (rwmaps_cli.workers): forked from the server, as `rwmaps
    # compute` does, and loky's own, as a script calling compute_dataset gets.
    monkeypatch.setattr("rwmaps_cli.workers._main_is_safe", lambda: forked)
    names = ["a", "b", "kill_always", "c", "kill_once", "d", "e"]
    cases = [Case(tmp_path / n, tmp_path / n, n) for n in names]
    records = {r.name: r for r in run_local(cases, _work, jobs=2, marker_dir=str(tmp_path))}
    assert set(records) == set(names)
    assert records["kill_always"] == CaseResult("kill_always", "failed", error=WORKER_DIED, seconds=None)
    assert all(records[n].status == "done" for n in names if n != "kill_always")


def _timed_work(case: Case) -> dict:
    start = time.time()
    time.sleep(0.3)
    return {"name": case.name, "status": "done", "error": None, "seconds": 0.3, "span": (start, time.time())}


def test_cases_that_would_not_fit_in_memory_together_run_one_at_a_time(tmp_path):
    from rwmaps_cli.run import available_memory

    cases = [Case(tmp_path / n, tmp_path / n, n) for n in "abcd"]
    huge = available_memory() * 0.6  # two at once would not fit
    spans = [r["span"] for r in run_local(cases, _timed_work, jobs=2, memory_need=lambda case: huge)]
    spans.sort()
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    small = [r["span"] for r in run_local(cases, _timed_work, jobs=2, memory_need=lambda case: 1)]
    small.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(small, small[1:])), small  # control: overlap


_PEAK_PROBE = r"""
import json, sys, numpy as np
sys.path.insert(0, sys.argv[1])
from bench_maps import brain_like_labels
from rwmaps_cli import compute_maps
labels = brain_like_labels((180, 180, 200), 83)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current resident size
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
before = status("VmRSS:")
maps = compute_maps(labels, list(range(83)))
ok = bool((maps.min(axis=(1, 2, 3)) >= -1).all() and (maps.max(axis=(1, 2, 3)) == 1).all())
print(json.dumps({"peak": status("VmHWM:") - before, "shape": maps.shape, "ok": ok}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure the peak")
def test_83_class_whole_brain_volume_stays_within_output_plus_three_volumes():
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(bench)], capture_output=True, text=True,
                         check=True, timeout=300)
    result = json.loads(out.stdout)
    assert result["shape"] == [83, 180, 180, 200] and result["ok"]
    volume = 180 * 180 * 200 * 4
    assert result["peak"] <= 83 * volume + 3 * volume, result["peak"] / volume - 83


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


def test_the_manifest_and_every_map_say_their_schema_and_a_newer_one_is_refused(tmp_path):
    from rwmaps_cli.formats import SCHEMA

    labels_dir = tmp_path / "labels"
    write_nifti(labels_dir / "case.nii.gz", blobs((12, 10, 8), 3))
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", labels_dir, "--output", out, check=0)
    run_rwmaps("compute", "--input", labels_dir, "--output", tmp_path / "npz", "--format", "npz", check=0)
    assert manifest(out)["schema"] == SCHEMA == 2
    import nibabel as nib

    assert bytes(nib.load(out / "case.nii.gz").header["descrip"]).rstrip(b"\0") == b"rwmaps rrw full 3d schema 2"
    assert int(np.load(tmp_path / "npz" / "case.npz")["schema"]) == SCHEMA
    data = manifest(out)
    data["schema"] = SCHEMA + 1  # what a newer rwmaps would write: not to be overwritten
    (out / "rwmaps.json").write_text(json.dumps(data))
    refused = run_rwmaps("compute", "--input", labels_dir, "--output", out, check=2)
    assert f"written by a newer rwmaps (schema {SCHEMA + 1}; this one reads up to schema {SCHEMA})" in refused.stderr


def test_a_plain_run_after_the_parts_of_a_job_array_keeps_every_record(tmp_path):
    labels_dir = tmp_path / "labels"
    for i in range(4):
        write_nifti(labels_dir / f"case_{i}.nii.gz", blobs((12, 10, 8), 3, seed=i))
    out = tmp_path / "maps"
    args = ["compute", "--input", labels_dir, "--output", out, "--format", "npy", "--classes", "0,1,2"]
    for part in ("0", "1"):
        run_rwmaps(*args, "--num-parts", "2", "--part-id", part, check=0)
    assert "0 done, 4 skipped" in run_rwmaps(*args, check=0).stderr  # takes the parts' records over
    assert sorted(p.name for p in out.glob("rwmaps*")) == ["rwmaps.json", "rwmaps.lock", "rwmaps.parts"]
    assert sorted(p.name for p in (out / "rwmaps.parts").iterdir()) == ["rwmaps.part-0-of-2.lock",
                                                                       "rwmaps.part-1-of-2.lock"]
    assert len(manifest(out)["cases"]) == 4
    assert "0 done, 4 skipped" in run_rwmaps(*args, check=0).stderr  # and the next run still finds them


def test_a_map_of_a_newer_schema_is_refused_in_one_line(tmp_path):
    from rwmaps_cli import load_map
    from rwmaps_cli.formats import SCHEMA

    labels_dir = tmp_path / "labels"
    write_nifti(labels_dir / "case.nii.gz", blobs((12, 10, 8), 3))
    run_rwmaps("compute", "--input", labels_dir, "--output", tmp_path / "maps", check=0)
    import nibabel as nib

    path = tmp_path / "maps" / "case.nii.gz"
    image = nib.load(path)
    image.header["descrip"] = f"rwmaps rrw full 3d schema {SCHEMA + 1}".encode()
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header), tmp_path / "newer.nii.gz")
    with pytest.raises(Exception, match=f"written by a newer rwmaps \\(schema {SCHEMA + 1}"):
        load_map(tmp_path / "newer.nii.gz")


def test_a_batch_takes_only_the_cases_that_fit_beside_the_running_ones(tmp_path):
    from collections import deque

    from rwmaps_cli.run import _next_batch

    need = {"a": 1, "b": 1, "big": 10, "c": 1, "huge": 99}
    cases = deque(Case(tmp_path / n, tmp_path / n, n) for n in ["a", "b", "big", "c"])
    batch, refused = _next_batch(cases, 8, lambda case: need[case.name], budget=12, free=5)
    assert [c.name for c in batch] == ["a", "b"] and not refused
    assert [c.name for c in cases] == ["big", "c"]  # big waits: it does not fit beside what runs
    batch, _ = _next_batch(cases, 8, lambda case: need[case.name], budget=12, free=12)  # nothing running
    assert [c.name for c in batch] == ["big", "c"]
    cases = deque([Case(tmp_path / "huge", tmp_path / "huge", "huge")])
    batch, refused = _next_batch(cases, 8, lambda case: need[case.name], budget=12, free=12)
    assert not batch and refused[0].status == "failed" and "more than the" in refused[0].error
