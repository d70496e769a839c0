"""Cost per case from one case to 100,000, and a run against the sum of its parts.

Prints ratios measured in the same run (the machines are shared and noisy):

0. **the manifest**: what recording one more case costs after n cases, for the options
   considered: rewriting the JSON (indented, as 0.1 did; plain; every 100 cases) against
   appending one journal line (0.2);
1. **many small cases**: N PNG label tiles (128x128, 4 classes, cut from brain-like
   volumes, as SimpleITK returns them) through ``rwmaps compute --format npy --jobs 2``
   (the service, in process), time per case by decile of the run, against a naive loop in
   one process (SimpleITK read, ``compute_maps``, ``np.save``) on the same files; then a
   rerun of the finished folder (ms per case to confirm it is done).
2. **one CT-sized case** (512x512x400, 118 classes, nibabel order), ``--layout compact``,
   nii.gz and npy, ``rwmaps compute --jobs 1`` (a real process) against its parts in one
   process: nibabel read, ``compute_maps`` (the threads rwmaps gives the case), and the
   write: ``nibabel.save`` for nii.gz, ``np.save`` for npy.  Also ``--jobs 1`` with one
   thread, for what the second core buys one large case.  Section ``kernel``: ``compute_maps``
   on 1 thread and on all, and gzip of the compact channel by zlib and by ISA-L's levels.
3. **a set of brain-like cases** (6 x 182x218x182, 83 classes, nii.gz): ``rwmaps compute
   --jobs 2 --layout compact`` against the sum of their parts divided by 2 cores.

Run from the repository root::

    python benchmarks/bench_scale.py                       # everything (about 25 minutes)
    python benchmarks/bench_scale.py --small 1000,10000    # only the small-case sizes given
    python benchmarks/bench_scale.py --only large          # sections 2 and 3
    python benchmarks/bench_scale.py --dask 20000          # also --scheduler local on 20,000 tiles
    python benchmarks/bench_scale.py --quick               # a smoke test of the script
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seed import median_times  # noqa: E402  (benchmarks/seed.py)

from rwmaps_cli import compute_maps
from rwmaps_cli.synthetic import brain_like_labels

TILE = 128
TILE_CLASSES = [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------
# 1. Many small cases


def make_tiles(folder: Path, n: int) -> list[Path]:
    """``n`` PNG tiles, slices of a few brain-like 4-class volumes flipped and rolled so
    that no two are alike; written once per folder."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i // 1000:03d}" / f"tile_{i:06d}.png" for i in range(n)]
    if all(p.exists() for p in (paths[0], paths[-1])):
        return paths
    volumes = [brain_like_labels((TILE, TILE, 48), n_classes=4, order="C", seed=s) for s in range(4)]
    for i, path in enumerate(paths):
        volume = volumes[i % len(volumes)]
        tile = volume[:, :, (i // len(volumes)) % volume.shape[2]]
        tile = np.roll(tile[::-1] if i % 3 else tile, (i * 7) % TILE, axis=1)
        path.parent.mkdir(exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(tile, dtype=np.uint8)), str(path))
    return paths


def naive_loop(paths: list[Path], out_dir: Path) -> np.ndarray:
    """What a user would write: read, compute, save, one case after another; the time at
    which each case finished."""
    import SimpleITK as sitk

    out_dir.mkdir(parents=True, exist_ok=True)
    finished = np.empty(len(paths))
    start = time.perf_counter()
    for i, path in enumerate(paths):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        np.save(out_dir / f"{path.stem}.npy", compute_maps(labels, TILE_CLASSES))
        finished[i] = time.perf_counter() - start
    return finished


class _Clock:
    """A progress bar that notes when each case finished."""

    def __init__(self, total: int):
        self.start, self.times = time.perf_counter(), []

    def update(self, n: int = 1) -> None:
        self.times.extend([time.perf_counter() - self.start] * n)

    def close(self) -> None: ...


def rwmaps_run(input_dir: Path, output_dir: Path, jobs: int, scheduler: str | None = None) -> tuple[np.ndarray, float]:
    """``rwmaps compute`` in process: the time each case finished, and the whole call's seconds."""
    from rwmaps_cli.compute import compute_dataset

    clocks = []

    def progress(total, description):
        clocks.append(_Clock(total))
        return clocks[-1]

    start = time.perf_counter()
    outcome = compute_dataset(input_dir, output_dir, fmt="npy", classes=TILE_CLASSES, jobs=jobs,
                              scheduler=scheduler, progress=progress)
    seconds = time.perf_counter() - start
    assert not outcome.failures, outcome.failures[:3]
    times = np.asarray(clocks[-1].times) if clocks and clocks[-1].times else np.zeros(0)
    return times, seconds


def per_case_by_decile(finished: np.ndarray) -> np.ndarray:
    """Milliseconds per case within each tenth of the run (by cases finished)."""
    edges = np.linspace(0, len(finished), 11).astype(int)
    ends = np.concatenate([[0.0], finished])[edges]
    return np.diff(ends) / np.maximum(np.diff(edges), 1) * 1000


def bench_small(sizes: list[int], root: Path, dask_size: int | None) -> None:
    print("\n## many small cases: 128x128 PNG tiles, 4 classes, --format npy --jobs 2 (ms per case)")
    print("| cases | naive loop, 1 process | rwmaps, first 10 % | rwmaps, last 10 % | last / first "
          "| rwmaps run / naive loop | rerun of the finished folder |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        tiles = root / f"tiles_{n}"
        paths = make_tiles(tiles, n)
        naive = naive_loop(paths, root / "naive_out")
        shutil.rmtree(root / "naive_out")
        out = root / f"maps_{n}"
        shutil.rmtree(out, ignore_errors=True)
        finished, seconds = rwmaps_run(tiles, out, jobs=2)
        deciles = per_case_by_decile(finished)
        _, rerun = rwmaps_run(tiles, out, jobs=2)
        print(f"| {n:,} | {naive[-1] / n * 1000:.2f} | {deciles[0]:.2f} | {deciles[-1]:.2f} | "
              f"{deciles[-1] / deciles[0]:.2f} | {seconds / naive[-1]:.2f} | {rerun / n * 1000:.3f} |", flush=True)
        print(f"  deciles (ms per case): {' '.join(f'{d:.2f}' for d in deciles)}; whole run {seconds:.1f} s, "
              f"naive loop {naive[-1]:.1f} s, rerun {rerun:.2f} s", flush=True)
        shutil.rmtree(out)
    if dask_size:
        tiles = root / f"tiles_{dask_size}"
        make_tiles(tiles, dask_size)
        _, local = rwmaps_run(tiles, root / "local", jobs=2)
        _, dask = rwmaps_run(tiles, root / "dask", jobs=2, scheduler="local")
        print(f"\n{dask_size:,} tiles: --scheduler local (2 workers) {dask:.1f} s, local processes {local:.1f} s: "
              f"Dask / local = {dask / local:.2f} (target <= 1.5)")
        shutil.rmtree(root / "local")
        shutil.rmtree(root / "dask")


# ---------------------------------------------------------------------------------------
# 0. The manifest: what recording one more case costs, by how many are recorded already


def bench_manifest(sizes: list[int], root: Path) -> None:
    """The options for recording a case, each timed on its n-th case (median of 50)."""
    import json

    from rwmaps_cli.manifest import Manifest, Settings
    from rwmaps_cli.results import CaseResult

    print("\n## recording one case in the manifest, after n cases (ms per case, median of 50)")
    print("| n | rewrite, indent=1 (0.1) | rewrite, no indent | rewrite every 100 cases | journal line (0.2) |")
    print("|---|---|---|---|---|")
    settings = Settings(classes=(0, 1, 2, 3), fmt="npy")
    entry = {"input": "/data/labels/tile_000001.png", "output": "/data/maps/tile_000001.npy",
             "fingerprint": {"size": 1834, "mtime_ns": 1764650000000000000}, "status": "done", "error": None,
             "shape": [4, 128, 128], "seconds": 0.0021, "values": [0, 1, 2, 3],
             "map": {"size": 262272, "mtime_ns": 1764650000000000000, "inode": 123456}, "bytes": 262272}
    folder = root / "manifest"
    folder.mkdir(exist_ok=True)
    for n in sizes:
        cases = {f"tile_{i:06d}.png": dict(entry) for i in range(n)}
        header = {"tool": "rwmaps", "parameters": settings.to_parameters()}

        def rewrite(indent):
            (folder / "m.json").write_text(json.dumps({**header, "cases": cases}, indent=indent))

        timings = {}
        for name, record in {"indent": lambda: rewrite(1), "plain": lambda: rewrite(None),
                             "every 100": lambda: rewrite(None)}.items():
            repeats = 50 if name != "every 100" else 5
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                record()
                samples.append(time.perf_counter() - start)
            timings[name] = float(np.median(samples)) / (100 if name == "every 100" else 1)
        manifest = Manifest(folder, settings, "bench", cases)
        manifest.write()
        result = CaseResult("x", "done", shape=[4, 128, 128], seconds=0.002, values=[0, 1, 2, 3],
                            input_stat=entry["fingerprint"], map_stat=entry["map"])
        samples = []
        for i in range(50):
            result.name = f"new_{i}"
            start = time.perf_counter()
            manifest.record(Path(entry["input"]), Path(entry["output"]), result)
            samples.append(time.perf_counter() - start)
        manifest.close_journal()
        timings["journal"] = float(np.median(samples))
        print(f"| {n:,} | {timings['indent'] * 1000:.2f} | {timings['plain'] * 1000:.2f} | "
              f"{timings['every 100'] * 1000:.3f} | {timings['journal'] * 1000:.4f} |", flush=True)


# ---------------------------------------------------------------------------------------
# 2 and 3. Large cases against their parts


def write_nifti(path: Path, labels: np.ndarray, zooms) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, np.diag([*zooms, 1.0])), path)
    return path


def parts(path: Path, fmt: str, threads: int, out: Path) -> dict[str, float]:
    """Seconds of each part of one compact case, as a user's script would do them."""
    import nibabel as nib

    start = time.perf_counter()
    img = nib.load(path)
    labels = np.asanyarray(img.dataobj)
    read = time.perf_counter()
    classes = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(order="K")))]
    compact = compute_maps(labels, classes, layout="compact", threads=threads)
    computed = time.perf_counter()
    if fmt == "nii.gz":
        nib.save(nib.Nifti1Image(compact, img.affine), out / (path.name))
    else:
        np.save(out / (path.name.split(".")[0] + ".npy"), compact)
    written = time.perf_counter()
    return {"read": read - start, "compute": computed - read, "write": written - computed}


def cli_run(input_path: Path, output: Path, fmt: str, jobs: int, threads: int | None = None) -> float:
    """Seconds of a real ``rwmaps compute`` process."""
    shutil.rmtree(output, ignore_errors=True)
    # One thread: the process may use one core only (rwmaps counts the cores it may use, as
    # under a SLURM or cgroup CPU set).
    pin = ["taskset", "-c", "0"] if threads == 1 else []
    start = time.perf_counter()
    subprocess.run([*pin, sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(input_path), "--output",
                    str(output), "--layout", "compact", "--format", fmt, "--jobs", str(jobs), "--quiet"],
                   check=True)
    return time.perf_counter() - start


def bench_ct(root: Path, shape, n_classes: int, repeats: int) -> None:
    print(f"\n## one CT-sized case {'x'.join(map(str, shape))}, {n_classes} classes, --layout compact, --jobs 1")
    path = write_nifti(root / "ct" / "ct.nii.gz", brain_like_labels(shape, n_classes, spacing=(0.8, 0.8, 1.5)),
                       (0.8, 0.8, 1.5))
    out = root / "ct_parts"
    out.mkdir(exist_ok=True)
    threads = os.cpu_count() or 1
    for fmt in ("nii.gz", "npy"):
        runs, part_sums, breakdown = [], [], []
        single = []
        for _ in range(repeats):  # interleaved, so noise hits all alike
            p = parts(path, fmt, threads, out)
            part_sums.append(sum(p.values()))
            breakdown.append(p)
            runs.append(cli_run(path, root / "ct_maps", fmt, jobs=1))
            single.append(cli_run(path, root / "ct_maps", fmt, jobs=1, threads=1))
        run, whole, one = float(np.median(runs)), float(np.median(part_sums)), float(np.median(single))
        detail = {k: float(np.median([b[k] for b in breakdown])) for k in breakdown[0]}
        print(f"{fmt}: rwmaps compute {run:.2f} s | parts {whole:.2f} s (read {detail['read']:.2f}, compute_maps "
              f"{detail['compute']:.2f} on {threads} threads, write {detail['write']:.2f}) | rwmaps / parts = "
              f"{run / whole:.2f} (target <= 1.2) | 1 thread {one:.2f} s: {threads} threads "
              f"{one / run:.2f}x faster (target >= 1.6) (medians of {repeats})", flush=True)


def bench_kernel_and_gzip(shape, n_classes: int, repeats: int) -> None:
    """What the writer and a case's threads rest on, on the CT-sized labels as nibabel
    returns them: compute_maps (compact) on 1 thread and on all, and gzip of its channel by
    zlib level 1 (nibabel's) against ISA-L's levels (formats/nifti.py writes ISAL_LEVEL)."""
    import zlib

    from isal import igzip

    from rwmaps_cli.formats.nifti import ISAL_LEVEL

    labels = brain_like_labels(shape, n_classes, spacing=(0.8, 0.8, 1.5))
    classes = list(range(n_classes))
    threads = os.cpu_count() or 1
    print(f"\n## compute_maps (compact) and gzip on the CT-sized labels (medians of {repeats})")
    t = median_times({"1": lambda: compute_maps(labels, classes, layout="compact", threads=1),
                      "all": lambda: compute_maps(labels, classes, layout="compact", threads=threads)}, repeats)
    print(f"compute_maps: 1 thread {t['1']:.2f} s, {threads} threads {t['all']:.2f} s: {t['1'] / t['all']:.2f}x")
    raw = compute_maps(labels, classes, layout="compact").tobytes(order="F")
    codecs = {"zlib 1": lambda: zlib.compress(raw, 1), **{f"isal {level}": (lambda level=level: igzip.compress(raw, level))
                                                         for level in range(4)}}
    t = median_times(codecs, repeats)
    sizes = {name: len(codec()) for name, codec in codecs.items()}
    print(f"gzip of the compact channel ({len(raw) / 1e6:.0f} MB raw; rwmaps writes isal {ISAL_LEVEL}):")
    for name in codecs:
        print(f"  {name}: {t[name]:.2f} s, {sizes[name] / 1e6:.1f} MB, zlib 1 / this = {t['zlib 1'] / t[name]:.1f}x")


def bench_brains(root: Path, shape, n_classes: int, n_cases: int, repeats: int) -> None:
    """Brain sets at --jobs 2 against their parts: ``n_cases`` brains, and twice as many, so
    that the cost of one more brain (the slope from one set to the other) is measured apart
    from the fixed cost of a run (a process that starts, imports and starts its workers,
    also timed alone on one tiny case)."""
    print(f"\n## {n_cases} and {2 * n_cases} brain-like cases {'x'.join(map(str, shape))}, {n_classes} classes, "
          "nii.gz, --layout compact, --jobs 2")
    paths = [write_nifti(root / "brains_2n" / f"brain_{i}.nii.gz", brain_like_labels(shape, n_classes, seed=i),
                         (1.0, 1.0, 1.0)) for i in range(2 * n_cases)]
    (root / "brains_n").mkdir(exist_ok=True)
    for path in paths[:n_cases]:
        shutil.copy(path, root / "brains_n" / path.name)
    out = root / "brain_parts"
    out.mkdir(exist_ok=True)
    tiny = write_nifti(root / "tiny" / "tiny.nii.gz", brain_like_labels((8, 9, 7), 3), (1.0, 1.0, 1.0))
    runs_n, runs_2n, parts_n, parts_2n, startups = [], [], [], [], []
    for _ in range(repeats):  # interleaved, so noise hits all alike
        seconds = [sum(parts(p, "nii.gz", 1, out).values()) for p in paths]
        parts_n.append(sum(seconds[:n_cases]) / 2)
        parts_2n.append(sum(seconds) / 2)
        runs_n.append(cli_run(root / "brains_n", root / "brain_maps", "nii.gz", jobs=2))
        runs_2n.append(cli_run(root / "brains_2n", root / "brain_maps", "nii.gz", jobs=2))
        startups.append(cli_run(tiny.parent, root / "tiny_maps", "nii.gz", jobs=2))
    run_n, run_2n, part_n, part_2n, startup = (float(np.median(x)) for x in (runs_n, runs_2n, parts_n, parts_2n,
                                                                               startups))
    print(f"{n_cases} brains: rwmaps compute {run_n:.2f} s | parts (one thread each) summed / 2 cores {part_n:.2f} s "
          f"| rwmaps / parts = {run_n / part_n:.2f} (target <= 1.2)\n"
          f"{2 * n_cases} brains: rwmaps compute {run_2n:.2f} s | parts {part_2n:.2f} s | rwmaps / parts = "
          f"{run_2n / part_2n:.2f}\n"
          f"one brain more (from {n_cases} to {2 * n_cases}): rwmaps {(run_2n - run_n) / n_cases:.3f} s | parts "
          f"{(part_2n - part_n) / n_cases:.3f} s | rwmaps / parts = {(run_2n - run_n) / (part_2n - part_n):.2f}\n"
          f"a run of one tiny case (interpreter, imports, workers, exit): {startup:.2f} s "
          f"(medians of {repeats})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    parser.add_argument("--only", choices=["manifest", "small", "large", "kernel"], help="one section only")
    parser.add_argument("--small", default="1000,10000,100000", help="numbers of small cases (comma-separated)")
    parser.add_argument("--dask", type=int, default=0, help="also time --scheduler local on this many tiles")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brains", type=int, default=6, help="number of brain-like cases in section 3")
    parser.add_argument("--workdir", help="where the inputs go (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="rwmaps-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    sizes = [200, 400] if args.quick else [int(n) for n in args.small.split(",")]
    ct, ct_classes = ((96, 96, 64), 20) if args.quick else ((512, 512, 400), 118)
    brain, brain_cases = ((64, 72, 60), 3) if args.quick else ((182, 218, 182), args.brains)
    repeats = 1 if args.quick else args.repeats
    print(f"# bench_scale on {os.cpu_count()} cores, inputs in {root}")
    try:
        if args.only in (None, "manifest"):
            bench_manifest([1000, 10000] if args.quick else [1000, 10000, 100000], root)
        if args.only in (None, "small"):
            bench_small(sizes, root, args.dask if not args.quick else 0)
        if args.only in (None, "kernel"):
            bench_kernel_and_gzip(ct, ct_classes, repeats)
        if args.only in (None, "large"):
            bench_ct(root, ct, ct_classes, repeats)
            bench_brains(root, brain, 83, brain_cases, repeats)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
