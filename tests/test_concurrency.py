"""Many writers, one output folder: the folder lock, job-array parts, and temporaries of
live writers.  Every test runs real, concurrent ``rwmaps compute`` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import blobs, dead_pid, run_rwmaps, write_nifti

from rwmaps_cli.formats import TMP_MARKER
from rwmaps_cli.formats.base import _HOST
from rwmaps_cli.manifest import read_manifest

N_CASES = 12


@pytest.fixture(scope="module")
def slow_cases(tmp_path_factory) -> Path:
    """Cases of about a second each with the per-class scipy engine: time to start a second writer."""
    root = tmp_path_factory.mktemp("concurrency") / "labels"
    for i in range(N_CASES):
        write_nifti(root / f"case_{i:02d}.nii.gz", blobs((72, 72, 56), 5, seed=i, sigma=3.0))
    return root


def start(labels: Path, out: Path, *extra) -> subprocess.Popen:
    args = ["compute", "--input", labels, "--output", out, "--format", "npy", "--engine", "scipy", "--jobs", "1",
            "--classes", "0,1,2,3,4", *extra]
    return subprocess.Popen([sys.executable, "-m", "rwmaps_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def done_cases(out: Path) -> dict[str, list[str]]:
    """Case name -> the manifest files that record it done."""
    found: dict[str, list[str]] = {}
    for path in sorted([*out.glob("rwmaps*.json"), *out.glob("rwmaps.parts/rwmaps*.json")]):
        try:
            cases = read_manifest(path).cases  # with the journal beside it, which a running run appends to
        except (OSError, ValueError):
            continue
        for name, entry in cases.items():
            if entry["status"] == "done":
                found.setdefault(name, []).append(path.name)
    return found


def wait_until(condition, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def finish(process: subprocess.Popen, timeout=300) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, stderr


def test_a_second_writer_is_refused_without_disturbing_the_first(slow_cases, tmp_path):
    out = tmp_path / "maps"
    first = start(slow_cases, out)
    try:
        wait_until(lambda: len(done_cases(out)) >= 1)
        second = run_rwmaps("compute", "--input", slow_cases, "--output", out, "--format", "npy", "--classes",
                            "0,1,2,3,4", check=2)
        part = run_rwmaps("compute", "--input", slow_cases, "--output", out, "--format", "npy", "--classes",
                          "0,1,2,3,4", "--num-parts", "2", "--part-id", "0", check=2)
    finally:
        code, stderr = finish(first)
    assert code == 0, stderr
    line = second.stderr.strip()
    assert line.startswith(f"rwmaps: {out}: another rwmaps compute is writing into it (pid {first.pid} on "
                           f"{socket.gethostname()}, started "), line
    assert "Wait for it to finish, or use another --output" in line
    assert "a plain rwmaps compute (not a part) is writing into it" in part.stderr
    assert len(done_cases(out)) == N_CASES and all(len(files) == 1 for files in done_cases(out).values())
    run_rwmaps("verify", "--input", slow_cases, "--output", out, check=0)


def test_two_parts_at_once_write_every_case_exactly_once(slow_cases, tmp_path):
    out = tmp_path / "maps"
    parts = [start(slow_cases, out, "--num-parts", "2", "--part-id", str(i)) for i in range(2)]
    results = [finish(p) for p in parts]
    assert [code for code, _ in results] == [0, 0], results
    recorded = done_cases(out)
    assert sorted(recorded) == sorted(p.name for p in slow_cases.iterdir())
    assert all(len(files) == 1 for files in recorded.values()), recorded  # once, by one part
    assert sorted({files[0] for files in recorded.values()}) == ["rwmaps.part-0-of-2.json", "rwmaps.part-1-of-2.json"]
    assert len(list(out.glob("*.npy"))) == N_CASES
    run_rwmaps("verify", "--input", slow_cases, "--output", out, check=0)
    again = run_rwmaps("compute", "--input", slow_cases, "--output", out, "--format", "npy", "--classes",
                       "0,1,2,3,4", check=0)  # a plain rerun sees the union, and takes the records over
    assert f"0 done, {N_CASES} skipped" in again.stderr
    assert [p.name for p in out.glob("rwmaps*.json")] == ["rwmaps.json"]
    assert len(done_cases(out)) == N_CASES


def test_a_part_killed_with_sigkill_leaves_nothing_that_blocks_its_rerun(slow_cases, tmp_path):
    out = tmp_path / "maps"
    part = start(slow_cases, out, "--num-parts", "2", "--part-id", "1")
    wait_until(lambda: len(done_cases(out)) >= 1)
    os.killpg(part.pid, signal.SIGKILL)
    part.wait(timeout=30)
    before = len(done_cases(out))
    rerun = run_rwmaps("compute", "--input", slow_cases, "--output", out, "--format", "npy", "--engine", "scipy",
                       "--classes", "0,1,2,3,4", "--num-parts", "2", "--part-id", "1", check=0)
    assert f"{N_CASES // 2 - before} done, {before} skipped (already done)" in rerun.stderr
    recorded = done_cases(out)
    assert sorted(recorded) == [f"case_{i:02d}.nii.gz" for i in range(1, N_CASES, 2)]  # part 1's share
    assert all(files == ["rwmaps.part-1-of-2.json"] for files in recorded.values())
    assert not [p for p in out.rglob("*") if TMP_MARKER in p.name]


def test_a_dead_writers_temporary_is_removed_a_live_ones_is_not(slow_cases, tmp_path):
    out = tmp_path / "maps"
    out.mkdir()
    live = out / f".case_00{TMP_MARKER}{_HOST}-{os.getpid()}-0123abcd.npy"  # this test process: alive
    dead = out / f".case_01{TMP_MARKER}{_HOST}-{dead_pid()}-deadbeef.npy"
    for path in (live, dead):
        path.write_bytes(b"half a map")
    result = run_rwmaps("compute", "--input", slow_cases, "--output", out, "--format", "npy", "--classes",
                        "0,1,2,3,4", "--include", "case_0[01].nii.gz", check=0)
    assert live.exists() and not dead.exists()
    assert "1 stale temporary file removed" in result.stderr
