"""End to end on an 83-class dataset: compact against full maps, on disk and in a loader;
and the peak memory of ``rwmaps verify`` against ``rwmaps compute``.

Every figure is measured in this run, on brain-like label files written as NIfTI (read back
by nibabel, Fortran-ordered, as a user's files are):

1. ``rwmaps compute`` wall time and size on disk: full ``nii.gz`` (the default), full
   ``npy``, compact ``nii.gz`` and compact ``npy``.  Targets: compact ``nii.gz`` at least 20x
   faster and 50x smaller than full ``nii.gz``.
2. Load time per case in a data loader: compact + expand (``load_map``) against full ``npy``
   (``np.load``) and full ``nii.gz`` (``load_map``); medians over the cases.
3. Peak memory (the whole process tree, sampled) of ``rwmaps verify`` and of ``rwmaps
   compute`` on the full ``nii.gz`` maps.

Run from the repository root::

    python benchmarks/bench_files.py           # 4 cases of 182x182x218, 83 classes: ~5 minutes
    python benchmarks/bench_files.py --quick   # small: a smoke test of the script
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil

from rwmaps_cli import load_map
from rwmaps_cli.synthetic import brain_like_labels

RUNS = {  # name -> options of rwmaps compute
    "full nii.gz": ["--format", "nii.gz"],
    "full npy": ["--format", "npy"],
    "compact nii.gz": ["--format", "nii.gz", "--layout", "compact"],
    "compact npy": ["--format", "npy", "--layout", "compact"],
}


def run_measured(args: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS bytes of the process and all its descendants, sampled every 50 ms)."""
    start = time.perf_counter()
    process = psutil.Popen([sys.executable, "-m", "rwmaps_cli", *args], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                tree = [process, *process.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"rwmaps {' '.join(args)} failed:\n{stderr.decode()}")
    return time.perf_counter() - start, peak


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith("rwmaps."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", type=int, default=4)
    options = parser.parse_args()
    shape = (60, 70, 64) if options.quick else (182, 182, 218)
    n_classes, n_cases = 83, 2 if options.quick else options.cases
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "labels").mkdir()
        for i in range(n_cases):
            labels = brain_like_labels(shape, n_classes, seed=i).astype(np.int16)
            nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp / "labels" / f"brain_{i}.nii.gz")
        print(f"## {n_cases} cases of {'x'.join(map(str, shape))}, {n_classes} classes, NIfTI labels; "
              f"rwmaps compute --jobs 2")
        seconds, size, peaks = {}, {}, {}
        for name, extra in RUNS.items():
            out = tmp / name.replace(" ", "_")
            seconds[name], peaks[name] = run_measured(["compute", "--input", str(tmp / "labels"), "--output",
                                                       str(out), "--jobs", "2", "--quiet", *extra])
            size[name] = folder_bytes(out)
        base = "full nii.gz"
        print("| output | seconds | MB on disk | faster than full nii.gz | smaller than full nii.gz |")
        print("|---|---|---|---|---|")
        for name in RUNS:
            print(f"| {name} | {seconds[name]:.1f} | {size[name] / 1e6:.1f} | {seconds[base] / seconds[name]:.1f}x "
                  f"| {size[base] / size[name]:.1f}x |")

        print("\n## Load time per case (median over the cases)")
        loads = {
            "compact nii.gz + expand (load_map)": lambda i: load_map(tmp / "compact_nii.gz" / f"brain_{i}.nii.gz"),
            "compact npy + expand (load_map)": lambda i: load_map(tmp / "compact_npy" / f"brain_{i}.npy"),
            "full npy (np.load)": lambda i: np.load(tmp / "full_npy" / f"brain_{i}.npy"),
            "full nii.gz (load_map)": lambda i: load_map(tmp / "full_nii.gz" / f"brain_{i}.nii.gz"),
        }
        for name, load in loads.items():
            times = []
            for i in range(n_cases):
                start = time.perf_counter()
                load(i)
                times.append(time.perf_counter() - start)
            print(f"{name:38s} {statistics.median(times):6.2f} s")

        print("\n## Peak memory, whole process tree")
        _, verify_peak = run_measured(["verify", "--input", str(tmp / "labels"), "--output",
                                       str(tmp / "full_nii.gz"), "--jobs", "2", "--quiet"])
        full_map = n_classes * np.prod(shape) * 4
        print(f"rwmaps compute --jobs 2 (full nii.gz): {peaks[base] / 2**30:.2f} GiB")
        print(f"rwmaps verify  --jobs 2 (full nii.gz): {verify_peak / 2**30:.2f} GiB  "
              f"(one full map is {full_map / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
