"""Speed and memory of rwmaps against the seed's formula, measured in one run.

Prints medians and, above all, ratios (the machines are shared and noisy):

1. kernel: the seed's per-class scipy loop vs ``compute_maps(kind="rrw")``, and one raw
   multi-label ``edt.edt`` call vs ``compute_maps`` (the cost of the per-class steps);
2. peak memory of one ``compute_maps`` call, in float32 volumes beyond its output;
3. end to end: ``rwmaps compute --jobs 2 --format npy`` on synthetic cases vs a naive
   loop (nibabel load, seed formula, nibabel save);
4. an 83-class whole-brain-sized volume: time and peak memory vs the seed formula;
5. Dask: throughput (cases/s) of a 2-worker ``LocalCluster`` next to the local joblib run
   (``--jobs 2``) on the same cases (``--only dask``; needs ``rwmaps_cli[dask]``);
6. the signed distance map (``--only sdf``): ``compute_maps(kind="sdf")`` against DTC's
   ``compute_sdf`` per class (what users run today), the raw multi-label EDT and the
   ``boundary`` kind, on a brain-like parcellation in both reader orders, one thread.

Run from the repository root (takes several minutes on 2 cores)::

    python benchmarks/bench_maps.py            # everything
    python benchmarks/bench_maps.py --quick    # small sizes, a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Many thin classes in Fortran order, as nibabel returns a real parcellation (section 4).
from seed import dtc_sdf, median_times, seed_formula  # noqa: E402  (benchmarks/seed.py)

from rwmaps_cli.synthetic import brain_like_labels  # noqa: F401  (also imported by the memory probe)

BENCH = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------
# Inputs and the seed's formula


def synthetic_labels(shape, n_classes=4, seed=0) -> np.ndarray:
    """Background plus ``n_classes - 1`` overlapping ellipsoids: organ-like regions."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    labels = np.zeros(shape, dtype=np.uint8)
    for label in range(1, n_classes):
        centre = rng.uniform(0.3, 0.7, size=3) * shape
        radii = rng.uniform(0.08, 0.3, size=3) * shape
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1
        labels[inside] = label
    return labels


# ---------------------------------------------------------------------------------------
# 1. Kernel


def bench_kernel(shape, repeats: int, seed_repeats: int) -> None:
    import edt

    from rwmaps_cli import compute_maps

    labels = synthetic_labels(shape)
    classes = [0, 1, 2, 3]
    print(f"\n## kernel, 4 classes, {shape[0]}x{shape[1]}x{shape[2]} ({labels.size / 1e6:.0f} M voxels)")
    seed_t = median_times({"seed": lambda: seed_formula(labels, 4)}, seed_repeats)["seed"]
    buffer = np.empty((4, *shape), dtype=np.float32)
    for threads in (1, 2):
        t = median_times({
            "edt": lambda: edt.edt(labels + 1, black_border=False, parallel=threads),
            "maps": lambda: compute_maps(labels, classes, threads=threads),
            "maps_out": lambda: compute_maps(labels, classes, threads=threads, out=buffer),
        }, repeats)
        print(f"threads={threads}: seed formula {seed_t:.2f} s (1 thread, median of {seed_repeats}) | "
              f"raw edt.edt {t['edt']:.2f} s | compute_maps {t['maps']:.2f} s | with out= buffer {t['maps_out']:.2f} s"
              f" (medians of {repeats})")
        print(f"  seed / compute_maps = {seed_t / t['maps']:.1f}x faster   (target >= 20x at 200x256x256)")
        print(f"  compute_maps / raw edt = {t['maps'] / t['edt']:.2f}   with out= {t['maps_out'] / t['edt']:.2f}"
              "   (target <= 1.5)")
    ours = compute_maps(labels, classes)
    theirs = seed_formula(labels, 4)
    print(f"  max |compute_maps - seed formula| = {np.abs(ours - theirs).max():.2e}")


# ---------------------------------------------------------------------------------------
# 2. Peak memory, measured in a fresh process (Linux: VmHWM after resetting it)

_MEMORY_PROBE = r"""
import json, sys, numpy as np
sys.path.insert(0, sys.argv[1])
from bench_maps import synthetic_labels, brain_like_labels, seed_formula
from rwmaps_cli import compute_maps
shape, n_classes, what, kind = json.loads(sys.argv[2])
labels = brain_like_labels(shape, n_classes) if n_classes > 4 else synthetic_labels(shape, n_classes)
import ctypes
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back the freed temporaries of making labels, or reusing them hides the peak
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
if what == "seed":
    seed_formula(labels, n_classes)
else:
    compute_maps(labels, list(range(n_classes)), kind=kind)
print(json.dumps({"peak": status("VmHWM:") - before}))
"""


def peak_memory(shape, n_classes: int, what: str, kind: str = "rrw") -> int:
    """Bytes the call adds to the process's peak resident memory."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(BENCH), json.dumps([shape, n_classes, what, kind])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["peak"]


def bench_memory(shape) -> None:
    print(f"\n## peak memory of one compute_maps call, 4 classes, {shape[0]}x{shape[1]}x{shape[2]}")
    volume = np.prod(shape) * 4  # one float32 volume
    output = 4 * volume
    for kind in ("rrw", "boundary"):
        peak = peak_memory(shape, 4, "maps", kind)
        print(f"kind={kind}: peak {peak / 2**20:.0f} MiB = output {output / 2**20:.0f} MiB "
              f"+ {(peak - output) / volume:.2f} float32 volumes   (target: <= output + 3 volumes)")


# ---------------------------------------------------------------------------------------
# 3. End to end


def naive_loop(inputs, out_dir: Path, n_classes: int) -> None:
    import nibabel as nib

    for path in inputs:
        image = nib.load(path)
        maps = seed_formula(np.asarray(image.dataobj), n_classes)
        nib.save(nib.Nifti1Image(np.moveaxis(maps, 0, -1), image.affine), out_dir / path.name.replace(".nii.gz", ".nii"))


def bench_end_to_end(shape, n_cases: int) -> None:
    import nibabel as nib

    print(f"\n## end to end, {n_cases} cases of {shape[0]}x{shape[1]}x{shape[2]}, 4 classes, 2 cores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        labels_dir = tmp / "labels"
        labels_dir.mkdir()
        inputs = []
        for i in range(n_cases):
            path = labels_dir / f"case_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(synthetic_labels(shape, seed=i), np.diag([0.8, 0.8, 2.5, 1])), path)
            inputs.append(path)
        rwmaps = [sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(labels_dir), "--quiet",
                  "--classes", "0,1,2,3", "--overwrite"]
        naive_dir = tmp / "naive"
        naive_dir.mkdir()
        t = median_times({
            "naive": lambda: naive_loop(inputs, naive_dir, 4),
            "npy": lambda: subprocess.run([*rwmaps, "--output", str(tmp / "npy"), "--format", "npy", "--jobs", "2"],
                                          check=True),
            "niigz": lambda: subprocess.run([*rwmaps, "--output", str(tmp / "gz"), "--format", "nii.gz",
                                             "--jobs", "2"], check=True),
        }, 1)
        print(f"naive loop (nibabel load, seed formula, nibabel save .nii): {t['naive']:.1f} s")
        print(f"rwmaps compute --jobs 2 --format npy: {t['npy']:.1f} s  -> {t['naive'] / t['npy']:.1f}x faster")
        print(f"rwmaps compute --jobs 2 --format nii.gz: {t['niigz']:.1f} s  -> {t['naive'] / t['niigz']:.1f}x faster")


# ---------------------------------------------------------------------------------------
# 4. Many classes


def bench_many_classes(shape, n_classes: int) -> None:
    from rwmaps_cli import compute_maps

    labels = brain_like_labels(shape, n_classes)
    print(f"\n## {n_classes} classes, {shape[0]}x{shape[1]}x{shape[2]} (whole-brain sized)")
    t = median_times({"seed": lambda: seed_formula(labels, n_classes),
                     "maps": lambda: compute_maps(labels, list(range(n_classes)))}, 1)
    seed_peak, maps_peak = peak_memory(shape, n_classes, "seed"), peak_memory(shape, n_classes, "maps")
    output = n_classes * np.prod(shape) * 4
    print(f"seed formula: {t['seed']:.1f} s, peak +{seed_peak / 2**30:.2f} GiB")
    print(f"compute_maps: {t['maps']:.1f} s, peak +{maps_peak / 2**30:.2f} GiB (output alone {output / 2**30:.2f} GiB)")
    print(f"  seed / compute_maps = {t['seed'] / t['maps']:.1f}x faster, "
          f"{seed_peak / maps_peak:.2f}x the memory")


def bench_sdf(shape, n_classes: int, repeats: int) -> None:
    """sdf maps against DTC's per-class loop, the raw EDT and the boundary kind, one thread."""
    import edt

    from rwmaps_cli import compute_maps

    classes = list(range(n_classes))
    print(f"\n## sdf, {n_classes} classes, {shape[0]}x{shape[1]}x{shape[2]} brain-like, one thread")
    for order in ("nibabel", "simpleitk"):
        labels = brain_like_labels(shape, n_classes)  # Fortran order, as nibabel gives it
        if order == "simpleitk":
            labels = np.ascontiguousarray(labels.T)  # (Z, Y, X), C order
        shifted = labels.astype(np.uint16) + 1  # edt's 0 is background: every class needs distances
        t = median_times({"edt": lambda: edt.edt(shifted, black_border=False),
                          "sdf": lambda: compute_maps(labels, classes, kind="sdf"),
                          "boundary": lambda: compute_maps(labels, classes, kind="boundary")}, repeats)
        t.update(median_times({"dtc": lambda: dtc_sdf(labels, n_classes)}, 1))
        difference = float(np.abs(compute_maps(labels, classes, kind="sdf") - dtc_sdf(labels, n_classes)).max())
        print(f"{order:9s}: edt {t['edt']:.2f} s | sdf {t['sdf']:.2f} s | boundary {t['boundary']:.2f} s | "
              f"DTC per class {t['dtc']:.1f} s")
        print(f"    DTC / sdf = {t['dtc'] / t['sdf']:.0f}x   sdf / boundary = {t['sdf'] / t['boundary']:.2f}   "
              f"sdf / raw EDT = {t['sdf'] / t['edt']:.1f}   max |sdf - DTC| = {difference:.1e}")


# ---------------------------------------------------------------------------------------
# 5. On a Dask cluster


def bench_dask(shape, n_cases: int) -> None:
    """Throughput of a 2-worker Dask LocalCluster next to the local joblib run, on the same cases."""
    import logging

    import nibabel as nib
    from distributed import Client, LocalCluster

    from rwmaps_cli.cluster import run_dask
    from rwmaps_cli.inputs.dataset import find_dataset
    from rwmaps_cli.case import process_case
    from rwmaps_cli.manifest import Settings
    from rwmaps_cli.run import run_local

    print(f"\n## Dask: {n_cases} cases of {shape[0]}x{shape[1]}x{shape[2]}, 4 classes, npy; "
          "2-worker LocalCluster vs joblib --jobs 2")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "labels").mkdir()
        for i in range(n_cases):
            nib.save(nib.Nifti1Image(synthetic_labels(shape, seed=i), np.diag([0.8, 0.8, 2.5, 1])),
                     tmp / "labels" / f"case_{i:03d}.nii.gz")
        rwmaps = [sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(tmp / "labels"), "--quiet",
                  "--classes", "0,1,2,3", "--format", "npy", "--overwrite", "--jobs", "2"]
        t = median_times({
            "joblib": lambda: subprocess.run([*rwmaps, "--output", str(tmp / "joblib")], check=True),
            "dask": lambda: subprocess.run([*rwmaps, "--output", str(tmp / "dask"), "--scheduler", "local"],
                                           check=True),
        }, 1)
        print(f"rwmaps compute --jobs 2 (joblib):                 {n_cases / t['joblib']:.2f} cases/s "
              f"({t['joblib']:.1f} s)")
        print(f"rwmaps compute --jobs 2 --scheduler local (Dask): {n_cases / t['dask']:.2f} cases/s "
              f"({t['dask']:.1f} s, starting the cluster included)  -> Dask / joblib = {t['joblib'] / t['dask']:.2f}")
        # The same cases with the worker pools already up: the cost of the runners themselves.
        cases = find_dataset(tmp / "labels", tmp / "inprocess", "npy").cases
        settings = Settings((0, 1, 2, 3), fmt="npy")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
                Client(cluster, set_as_default=False) as client:
            runs = {"joblib": lambda: list(run_local(cases, process_case, 2, settings=settings, threads=1)),
                    "dask": lambda: list(run_dask(cases, process_case, client, settings=settings, threads=1))}
            median_times(runs, 1)  # warm up both pools
            t = median_times(runs, 3)
        print(f"pools already up: joblib {n_cases / t['joblib']:.2f} cases/s, Dask {n_cases / t['dask']:.2f} cases/s"
              f"  -> Dask / joblib = {t['joblib'] / t['dask']:.2f}   (medians of 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
    parser.add_argument("--only", choices=["kernel", "memory", "e2e", "classes", "dask", "sdf"], help="run one section")
    args = parser.parse_args()
    print(f"rwmaps benchmark on {os.cpu_count()} cores; times are medians, compare the ratios")
    sizes = [(40, 64, 64)] if args.quick else [(200, 256, 256), (300, 512, 512)]
    if args.only in (None, "kernel"):
        for shape in sizes:
            big = shape[1] >= 512
            bench_kernel(shape, repeats=3 if big else 5, seed_repeats=1 if big else 3)
    if args.only in (None, "memory"):
        bench_memory(sizes[0])
    if args.only in (None, "e2e"):
        bench_end_to_end((32, 48, 48) if args.quick else (96, 160, 160), 4 if args.quick else 20)
    if args.only in (None, "classes"):
        bench_many_classes((40, 40, 44) if args.quick else (180, 180, 200), 83)
    if args.only in (None, "dask"):
        bench_dask((32, 48, 48) if args.quick else (96, 160, 160), 4 if args.quick else 20)
    if args.only in (None, "sdf"):
        bench_sdf((40, 40, 44) if args.quick else (182, 182, 218), 12 if args.quick else 83, 1 if args.quick else 3)


if __name__ == "__main__":
    sys.exit(main())
