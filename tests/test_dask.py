"""``rwmaps compute --scheduler``: the cases computed on a real Dask cluster on localhost.

A ``LocalCluster`` of two worker processes is started once for the module and torn down at
the end; every run below is bounded in time (subprocess timeouts, a watchdog on in-process
runs), so a stuck cluster fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import blobs, run_rwmaps, write_nifti

from rwmaps_cli import compute_maps
from rwmaps_cli.case import process_case
from rwmaps_cli.manifest import Settings
from rwmaps_cli.results import CaseResult

RUN_TIMEOUT = 120  # seconds, for any one run; the whole module takes about 45 s on 2 cores


@pytest.fixture(scope="module")
def cluster():
    """A real two-worker Dask cluster (processes, one thread each) on 127.0.0.1."""
    distributed = pytest.importorskip("distributed")
    local = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
        silence_logs=logging.CRITICAL,
        scheduler_kwargs={"allowed_failures": 1},  # as rwmaps' own LocalCluster: a killer case is tried twice
    )
    try:
        yield local
    finally:
        local.close(timeout=30)


def read_npy_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.npy"))}


def cases_of(manifest_path: Path) -> dict:
    return {name: (r["status"], r["error"]) for name, r in json.loads(manifest_path.read_text())["cases"].items()}


def test_a_remote_scheduler_gives_the_maps_of_a_local_run(cluster, labels_dir, tmp_path):
    """Class scan, maps, manifest, error containment, exit code and resume, as a local run."""
    bad = labels_dir / "bad.npy"
    np.save(bad, np.array([[0.0, 1.5], [2.0, np.nan]]))
    args = ["compute", "--input", labels_dir, "--format", "npy", "--kind", "kervadec"]
    local = run_rwmaps(*args, "--output", tmp_path / "local", "--jobs", "2", check=1, timeout=RUN_TIMEOUT)
    dask = run_rwmaps(*args, "--output", tmp_path / "dask", "--scheduler", cluster.scheduler_address, check=1,
                      timeout=RUN_TIMEOUT)
    local_maps, dask_maps = read_npy_tree(tmp_path / "local"), read_npy_tree(tmp_path / "dask")
    assert sorted(dask_maps) == ["case_000.npy", "sub/case_001.npy", "sub/case_002.npy"]
    assert dask_maps == local_maps  # byte for byte
    manifest = json.loads((tmp_path / "dask" / "rwmaps.json").read_text())
    assert manifest["classes"] == [0, 1, 2, 3]  # the union scanned on the cluster
    assert cases_of(tmp_path / "dask" / "rwmaps.json") == cases_of(tmp_path / "local" / "rwmaps.json")
    assert [line for line in dask.stderr.splitlines() if str(bad) in line] == \
           [f"rwmaps: {bad}: labels are not integers: 1.5, nan"]
    assert "3 done, 0 skipped (already done), 1 failed" in dask.stderr
    assert "Traceback" not in dask.stderr and "Traceback" not in local.stderr
    # Resume: a rerun on the cluster skips the done cases and retries only the bad one.
    again = run_rwmaps(*args, "--output", tmp_path / "dask", "--scheduler", cluster.scheduler_address, check=1,
                       timeout=RUN_TIMEOUT)
    assert "0 done, 3 skipped (already done), 1 failed" in again.stderr


def test_scheduler_local_starts_and_stops_its_own_cluster(labels_dir, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "maps"
    result = run_rwmaps("compute", "--input", labels_dir, "--output", out, "--format", "npy", "--classes", "0,1,2,3",
                        "--scheduler", "local", "--jobs", "2", check=0, timeout=RUN_TIMEOUT)
    assert "3 done, 0 skipped (already done), 0 failed" in result.stderr
    assert "Traceback" not in result.stderr
    for name in ["case_000", "sub/case_001", "sub/case_002"]:
        labels = np.asarray(nib.load(labels_dir / f"{name}.nii.gz").dataobj)
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), compute_maps(labels, [0, 1, 2, 3]))


# A work function that kills the worker process running it: real process death, no mock.
# It is pickled by reference, so the workers import this module (pytest put tests/ on the path
# before the cluster's worker processes were spawned).

def killer_work(case, settings, threads, marker_dir, always, once):
    if case.name in always:
        os.kill(os.getpid(), signal.SIGKILL)
    if case.name in once:
        marker = Path(marker_dir) / f"{case.name}.died"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return process_case(case, settings, threads=threads)


def collect(records, timeout: float) -> list[dict]:
    """Every record of a runner, consumed in a thread so that a hang fails instead of blocking."""
    out: queue.Queue = queue.Queue()

    def consume():
        try:
            out.put(list(records))
        except BaseException as error:  # handed to the test
            out.put(error)

    threading.Thread(target=consume, daemon=True).start()
    try:
        result = out.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"the Dask run did not finish within {timeout} s")
    if isinstance(result, BaseException):
        raise result
    return result


@pytest.mark.parametrize("dies", ["once", "always"])
def test_a_worker_killed_mid_case_does_not_lose_the_run(cluster, tmp_path, dies):
    """Case c2 kills its worker once (then it is retried elsewhere), or on every worker (then it
    fails after one retry, with a clear one-line error); the other cases complete either way."""
    from rwmaps_cli.cluster import run_dask
    from rwmaps_cli.inputs.dataset import find_dataset

    for i in range(6):
        write_nifti(tmp_path / "labels" / f"c{i}.nii.gz", blobs((20, 24, 12), 4, seed=i))
    dataset = find_dataset(tmp_path / "labels", tmp_path / "maps", "npy")
    victim = {"c2.nii.gz"}
    settings = Settings((0, 1, 2, 3), fmt="npy")
    records = collect(run_dask(dataset.cases, killer_work, cluster.scheduler_address, settings=settings, threads=1,
                               marker_dir=str(tmp_path), always=victim if dies == "always" else set(),
                               once=victim if dies == "once" else set()),
                      timeout=RUN_TIMEOUT)
    by_name = {r.name: r for r in records}
    assert len(records) == len(by_name) == 6
    assert (tmp_path / "c2.nii.gz.died").exists() or dies == "always"  # the worker did die
    if dies == "always":
        assert by_name["c2.nii.gz"] == CaseResult("c2.nii.gz", "failed", seconds=None, error=(
            "the worker process died while computing this case (killed, or out of "
            "memory), on 2 Dask workers in turn; see the worker logs"))
        assert not (tmp_path / "maps" / "c2.npy").exists()
    done = [f"c{i}.nii.gz" for i in range(6) if dies == "once" or i != 2]
    for name in done:
        assert by_name[name].status == "done", by_name[name]
        labels = np.asarray(nib.load(tmp_path / "labels" / name).dataobj)
        np.testing.assert_array_equal(np.load(tmp_path / "maps" / name.replace(".nii.gz", ".npy")),
                                      compute_maps(labels, [0, 1, 2, 3]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_nobody_answers_on_is_a_usage_error_not_a_hang(labels_dir, tmp_path):
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    result = run_rwmaps("compute", "--input", labels_dir, "--output", tmp_path / "maps", "--scheduler", address,
                        check=2, timeout=60)
    assert time.perf_counter() - start < 40  # the 10 s connect timeout, plus start-up
    assert result.stderr.strip().splitlines() == [
        f"rwmaps: --scheduler {address}: no Dask scheduler answered within 10 s "
        f"(Timed out trying to connect to {address} after 10 s)"]
    assert not (tmp_path / "maps" / "rwmaps.json").exists()  # found before any work


def test_a_malformed_address_is_a_usage_error(labels_dir, tmp_path):
    pytest.importorskip("distributed")
    result = run_rwmaps("compute", "--input", labels_dir, "--output", tmp_path / "maps", "--scheduler", "nonsense",
                        check=2, timeout=60)
    assert result.stderr.strip().splitlines() == [
        "rwmaps: --scheduler nonsense: missing port number in address 'nonsense'; "
        "expected tcp://HOST:PORT, a scheduler file, or 'local'"]


_WITHOUT_DASK = """
import sys
sys.modules["dask"] = sys.modules["distributed"] = None  # as if Dask were not installed
from rwmaps_cli.cli import main
sys.argv = ["rwmaps", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("scheduler", [None, "local", "tcp://127.0.0.1:8786"])
def test_without_dask_a_scheduler_is_a_one_line_error_and_local_runs_still_work(labels_dir, tmp_path, scheduler):
    args = ["compute", "--input", str(labels_dir), "--output", str(tmp_path / "maps"), "--jobs", "1"]
    if scheduler:
        args += ["--scheduler", scheduler]
    result = subprocess.run([sys.executable, "-c", _WITHOUT_DASK, *args], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT)
    if scheduler is None:
        assert result.returncode == 0, result.stderr
        assert "3 done" in result.stderr
    else:
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == ["rwmaps: --scheduler needs Dask: pip install -e '.[dask]' in the rwmaps clone"]


def test_help_names_the_scheduler_option():
    help_text = " ".join(run_rwmaps("compute", "--help", check=0, timeout=60).stdout.split())
    assert "--scheduler ADDRESS" in help_text and "tcp://HOST:PORT" in help_text and "'local'" in help_text
