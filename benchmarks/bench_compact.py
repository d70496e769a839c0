"""Benchmark the map kernels on brain-like label volumes, as the readers return them.

Real parcellations have many thin classes, and nibabel returns Fortran-ordered arrays
(SimpleITK C-ordered ``(Z, Y, X)`` ones): a kernel tuned on a few C-ordered blobs can
cost many times its EDT there.  Every figure below is measured in this run, with the
calls interleaved (the machine is shared: compare the ratios, not the seconds):

1. ``compute_maps(layout="compact")`` against the raw multi-label EDT of the same array
   (``edt.edt(labels + 1)``: the background is a class, so it needs distances too; the
   ``+ 1`` is done before timing, the array keeps the reader's order).  Target <= 1.2.
2. ``compute_maps(layout="full")`` against its floor: the raw EDT plus filling C fresh
   float32 volumes (``np.empty((C, *shape)).fill(1)``).  Target <= 1.2.
3. Both against the seed's formula (the per-class scipy loop of the paper's README), at
   one thread.
4. Peak memory of the compact layout, 16 classes at 512^3, in a fresh process: target at
   most the labels plus 3 float32 volumes.

Volumes: ``rwmaps_cli.synthetic.brain_like_labels`` (182x182x218, Voronoi parcels in a
head-shaped ellipsoid), 4 and 83 classes, Fortran order as nibabel gives it and the
same volume as SimpleITK gives it.

Run from the repository root::

    python benchmarks/bench_compact.py            # about 10 minutes on 2 cores
    python benchmarks/bench_compact.py --quick    # small sizes: a smoke test of the script
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

from seed import median_times, seed_formula  # noqa: E402  (benchmarks/seed.py)

from rwmaps_cli.maps import compute_maps, expand_map
from rwmaps_cli.synthetic import as_simpleitk, brain_like_labels


# ---------------------------------------------------------------------------------------
# 1-3. Speed


def bench_kernel(labels: np.ndarray, reader: str, n_classes: int, threads: int, repeats: int,
                 seed_repeats: int) -> dict:
    """Time compact, full, their floors and (at one thread) the seed formula on one array."""
    import edt

    classes = list(range(n_classes))
    shifted = labels + 1  # same memory order; background becomes a label with distances

    def raw_edt():
        return edt.edt(shifted, black_border=False, parallel=threads)

    def floor():
        raw_edt()
        np.empty((n_classes, *labels.shape), dtype=np.float32).fill(1)

    functions = {
        "edt": raw_edt,
        "compact": lambda: compute_maps(labels, classes, layout="compact", threads=threads),
        "floor": floor,
        "full": lambda: compute_maps(labels, classes, threads=threads),
    }
    t = median_times(functions, repeats)
    if seed_repeats:
        t["seed"] = median_times({"seed": lambda: seed_formula(labels, n_classes)}, seed_repeats)["seed"]
    order = "F" if labels.flags.f_contiguous else "C"
    print(f"{reader:9s} {order} {n_classes:2d} classes, threads={threads}: "
          f"edt {t['edt']:.3f} s | compact {t['compact']:.3f} s | floor {t['floor']:.3f} s | "
          f"full {t['full']:.3f} s" + (f" | seed {t['seed']:.2f} s" if "seed" in t else "") +
          f"  (medians of {repeats})")
    line = (f"    compact / edt = {t['compact'] / t['edt']:.2f} (target <= 1.2)   "
            f"full / (edt + fill C volumes) = {t['full'] / t['floor']:.2f} (target <= 1.2)")
    if "seed" in t:
        line += f"   seed / compact = {t['seed'] / t['compact']:.0f}x   seed / full = {t['seed'] / t['full']:.0f}x"
    print(line)
    return t


def check_exact(labels: np.ndarray, n_classes: int) -> None:
    """The maps timed above equal the seed formula, and expand(compact) equals full."""
    classes = list(range(n_classes))
    full = compute_maps(labels, classes)
    compact = compute_maps(labels, classes, layout="compact")
    same = np.array_equal(expand_map(compact, labels, classes), full)
    difference = np.abs(full - seed_formula(labels, n_classes)).max()
    print(f"    expand_map(compact) == full bit for bit: {same};  max |full - seed formula| = {difference:.1e}")


def bench_speed(shape, repeats: int, seed_repeats: int, threads_list) -> None:
    print(f"\n## speed: brain-like {shape[0]}x{shape[1]}x{shape[2]} ({np.prod(shape) / 1e6:.1f} M voxels), "
          "nibabel (X, Y, Z) Fortran order and SimpleITK (Z, Y, X) C order")
    for n_classes in (83, 4):
        nibabel = brain_like_labels(shape, n_classes=n_classes, seed=n_classes)
        for reader, labels in (("nibabel", nibabel), ("simpleitk", as_simpleitk(nibabel))):
            for threads in threads_list:
                bench_kernel(labels, reader, n_classes, threads, repeats, seed_repeats if threads == 1 else 0)
        check_exact(nibabel, n_classes)


# ---------------------------------------------------------------------------------------
# 4. Peak memory, in a fresh process (Linux: VmHWM after resetting it)

_MEMORY_PROBE = r"""
import json, sys
import numpy as np
from rwmaps_cli.maps import compute_maps
labels = np.load(sys.argv[1])  # made in another process: no freed temporaries to reuse here
n_classes, layout = int(sys.argv[2]), sys.argv[3]
compute_maps(labels[:8, :8, :8], range(n_classes), layout=layout)  # import edt, warm up
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
maps = compute_maps(labels, range(n_classes), layout=layout)
print(json.dumps({"peak": status("VmHWM:") - before}))
"""


def bench_memory(shape, n_classes: int) -> None:
    volume = int(np.prod(shape)) * 4  # one float32 volume
    print(f"\n## peak memory: compact, {n_classes} classes, {shape[0]}x{shape[1]}x{shape[2]} "
          f"(one float32 volume = {volume / 2**20:.0f} MiB)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.npy"
        start = time.perf_counter()
        labels = brain_like_labels(shape, n_classes=n_classes)
        np.save(path, labels)
        print(f"(labels made in {time.perf_counter() - start:.0f} s; {labels.nbytes / 2**20:.0f} MiB uint8, "
              "Fortran order)")
        for layout in ("compact", "full"):
            if layout == "full" and volume * n_classes > 8 * 2**30:
                continue
            out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), str(n_classes), layout],
                                 capture_output=True, text=True, check=True)
            peak = json.loads(out.stdout)["peak"]
            beyond = (peak - labels.nbytes) / volume
            target = "   (target: <= labels + 3 volumes)" if layout == "compact" else ""
            print(f"{layout}: peak +{peak / 2**20:.0f} MiB = labels + {beyond:.2f} float32 volumes{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
    parser.add_argument("--only", choices=["speed", "memory"], help="run one section")
    args = parser.parse_args()
    print(f"rwmaps compact benchmark on {os.cpu_count()} cores; times are medians, compare the ratios")
    if args.only in (None, "speed"):
        if args.quick:
            bench_speed((41, 45, 39), repeats=3, seed_repeats=1, threads_list=(1,))
        else:
            bench_speed((182, 182, 218), repeats=5, seed_repeats=1, threads_list=(1, 2))
    if args.only in (None, "memory"):
        bench_memory((64, 64, 64) if args.quick else (512, 512, 512), 16)


if __name__ == "__main__":
    sys.exit(main())
