"""Stopping a run: Ctrl-C and SIGTERM sent to a real run, and a disk that fills up mid-run.

Every test starts a real ``rwmaps compute`` process (signals are the point); each is bounded
in time.  Checked every time: the exit code, one line saying how to resume, every map on disk
recorded in the manifest, no temporary left, no worker process left, and a rerun that
finishes the job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import blobs, run_rwmaps, write_nifti

from rwmaps_cli.formats import TMP_MARKER
from rwmaps_cli.manifest import read_folder_manifest

N_CASES = 16


def _cases(root: Path, shape) -> Path:
    for i in range(N_CASES):
        write_nifti(root / f"case_{i:02d}.nii.gz", blobs(shape, 6, seed=i, sigma=3.0))
    return root


@pytest.fixture(scope="module")
def many_cases(tmp_path_factory) -> Path:
    """Cases that take about a second each with the per-class scipy engine: time to interrupt."""
    return _cases(tmp_path_factory.mktemp("interrupt") / "labels", (80, 80, 64))


@pytest.fixture(scope="module")
def small_cases(tmp_path_factory) -> Path:
    """Cases whose npy maps are 590 kB each (32 x 32 x 24 voxels, 6 channels)."""
    return _cases(tmp_path_factory.mktemp("small") / "labels", (32, 32, 24))


def done_in(out: Path) -> int:
    try:
        cases = read_folder_manifest(out).cases  # the manifest and the journal a run appends to
    except (OSError, ValueError):
        return 0
    return sum(entry["status"] == "done" for entry in cases.values())


def group_is_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["SIGINT to the process group (Ctrl-C)", "SIGTERM to rwmaps (SLURM, Kubernetes)"])
def test_a_signal_stops_the_run_cleanly_and_a_rerun_resumes(many_cases, tmp_path, how):
    out = tmp_path / "maps"
    args = ["compute", "--input", many_cases, "--output", out, "--format", "npy", "--jobs", "2", "--classes",
            "0,1,2,3,4,5", "--engine", "scipy"]
    process = subprocess.Popen([sys.executable, "-m", "rwmaps_cli", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while done_in(out) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run finished before it could be interrupted: make the cases bigger"
        sent = time.monotonic()
        if how.startswith("SIGINT"):
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == (130 if how.startswith("SIGINT") else 143), stderr
    assert took < 10, f"took {took:.1f} s to stop"
    assert group_is_gone(process.pid, timeout=10), "worker processes outlived the run"
    line = stderr.strip().splitlines()[-1]
    done = done_in(out)
    assert line == (f"rwmaps: stopped ({'SIGINT' if how.startswith('SIGINT') else 'SIGTERM'}): {done} done, "
                    f"{N_CASES - done} not finished; run the same command again to resume"), stderr
    assert 2 <= done < N_CASES
    assert "Traceback" not in stderr and "leaked" not in stderr  # e.g. the resource tracker's warning
    maps = sorted(p.name for p in out.iterdir() if p.suffix == ".npy")
    assert len(maps) == done  # every map on disk is recorded, and only those
    assert not [p for p in out.rglob("*") if TMP_MARKER in p.name]

    rerun = run_rwmaps(*args, check=0)
    assert f"{N_CASES - done} done, {done} skipped (already done)" in rerun.stderr
    fresh = tmp_path / "fresh"
    run_rwmaps(*[str(a).replace(str(out), str(fresh)) for a in args], check=0)
    for name in maps:
        np.testing.assert_array_equal(np.load(out / name), np.load(fresh / name))


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs: room for a few maps, not for all of them."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip() or 'mount failed'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_its_case_leaves_no_partial_file_and_stops_the_run(small_cases, small_disk):
    out = small_disk / "maps"
    result = run_rwmaps("compute", "--input", small_cases, "--output", out, "--format", "npy", "--jobs", "1",
                        "--classes", "0,1,2,3,4,5", "--no-space-check")
    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if "no space left" in line and ".nii.gz" in line]
    assert len(failed) == 1, result.stderr  # one case failed; the run stopped instead of failing them all
    manifest = json.loads((out / "rwmaps.json").read_text())
    done = [name for name, entry in manifest["cases"].items() if entry["status"] == "done"]
    assert 0 < len(done) < N_CASES - 1
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".npy") == sorted(
        name.replace(".nii.gz", ".npy") for name in done)  # no partial map
    assert not [p for p in out.rglob("*") if TMP_MARKER in p.name]
    assert result.stderr.strip().splitlines()[-1] == (
        f"rwmaps: stopped (no space left on the output file system): {len(done)} done, "
        f"{N_CASES - len(done) - 1} not finished; run the same command again to resume")


def test_too_little_space_is_refused_before_any_work(small_cases, small_disk):
    out = small_disk / "maps"
    result = run_rwmaps("compute", "--input", small_cases, "--output", out, "--format", "npy", "--classes",
                        "0,1,2,3,4,5", check=2)
    assert result.stderr.startswith(f"rwmaps: {out}: the maps need about 9.4 MB and the file system has 3.1 MB "
                                    "free"), result.stderr
    assert "--no-space-check" in result.stderr
    assert not [p for p in out.iterdir() if p.suffix == ".npy"]


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


_LEAK = """
import multiprocessing, os, sys
from rwmaps_cli.workers import start_quiet_resource_tracker
if sys.argv[1] == "quiet":
    start_quiet_resource_tracker()
lock = multiprocessing.get_context("forkserver").Semaphore()  # registered with the resource tracker
print("done", flush=True)
os._exit(0)  # as a stopped run may end: the semaphore is left to the tracker, which cleans it up
"""


@pytest.mark.parametrize("tracker", ["quiet", "default"])
def test_what_a_stopped_run_leaves_is_cleaned_up_without_a_word_after_its_last_line(tracker):
    """After a stop, loky can leave a queue semaphore to multiprocessing's resource tracker,
    whose warning came after rwmaps' "stopped" line (a flaky failure of the test above)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _LEAK, tracker], capture_output=True, text=True, timeout=60)
    assert result.stdout == "done\n"
    if tracker == "quiet":
        assert result.stderr == ""
    else:  # the check can fail: the default tracker speaks
        assert "leaked semaphore" in result.stderr
