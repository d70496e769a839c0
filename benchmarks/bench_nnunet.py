"""Seconds per training iteration: precomputed maps against maps computed on the fly.

    python benchmarks/bench_nnunet.py --workdir /tmp/rwbench --classes 4 16
    python benchmarks/bench_nnunet.py --workdir /tmp/rwbench --store 128 256 256 4   # the maps store

``--store Z Y X C``: how to store maps for nnU-Net's loader, ``.npy`` memory maps against
blosc2 with nnU-Net's own chunking (``comp_blosc2_params`` for the patch): write time, size,
and the time to crop one patch (cold: page cache dropped first; warm).

For each class count: a synthetic dataset, nnU-Net's planning and preprocessing, the maps
(timed), then the same RW loss with ``nnUNetTrainerRW`` (maps read from the maps folder)
and ``nnUNetTrainerRWOnTheFly`` (maps computed in the loader from each augmented patch, or with
the torch engine in the train step, where the loader does no map work).
Reported per iteration, in the main process (``nnUNet_n_proc_DA=0``, so nothing overlaps):
the data loader's time (load, crop, augment, map) and the whole iteration (loader plus the
network's forward and backward pass).  Interleaved runs, median of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _prepare(workdir: Path, n_classes: int, shape, n_cases: int, patch) -> str:
    from rwmaps_cli.compute import compute_dataset
    from rwmaps_cli.nnunet.synthetic import make_dataset, write_small_plans

    dataset_id = 950 + n_classes
    name = f"Dataset{dataset_id}_Bench{n_classes}"
    pre = workdir / "preprocessed" / name
    if not (pre / "nnUNetPlans_3d_fullres").is_dir():
        make_dataset(workdir / "raw", dataset_id, f"Bench{n_classes}", n_cases=n_cases, shape=shape,
                     n_classes=n_classes, seed=n_classes)
        subprocess.run([sys.executable, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints "
                        "import plan_and_preprocess_entry as m; m()", "-d", str(dataset_id), "-c", "3d_fullres",
                        "-np", "1", "-npfp", "1"], check=True, capture_output=True,
                       env={**os.environ, "nnUNet_n_proc_DA": "1"})
    write_small_plans(pre, "nnUNetPlansBench", features=(16, 32, 64, 128), patch_size=patch)
    start = time.perf_counter()
    compute_dataset(pre / "nnUNetPlans_3d_fullres", jobs=1)
    middle = time.perf_counter()
    compute_dataset(pre / "nnUNetPlans_3d_fullres", pre / "compact", layout="compact", jobs=1)
    print(f"{n_classes} classes: maps of {n_cases} cases {shape}: full {middle - start:.1f} s, compact "
          f"{time.perf_counter() - middle:.1f} s (0 when already written)", flush=True)
    return name


VARIANTS = {  # label: (trainer, maps folder beside the data folder or None, on-the-fly engine)
    "precomputed, full": ("nnUNetTrainerRW", None, None),
    "precomputed, compact": ("nnUNetTrainerRW", "compact", None),
    "on the fly, edt": ("nnUNetTrainerRWOnTheFly", None, "edt"),
    "on the fly, torch engine in the train step": ("nnUNetTrainerRWOnTheFly", None, "torch"),
    "on the fly, scipy per class (paper)": ("nnUNetTrainerRWOnTheFly", None, "scipy"),
}


def _measure(name: str, variant: str, iterations: int) -> tuple[list[float], list[float]]:
    from nnunetv2.paths import nnUNet_preprocessed

    from rwmaps_cli.nnunet.train import build_trainer

    trainer, maps, engine = VARIANTS[variant]
    maps = None if maps is None else Path(nnUNet_preprocessed.get()) / name / maps
    t = build_trainer(name, "3d_fullres", 0, trainer=trainer, plans="nnUNetPlansBench", device="cpu", maps=maps)
    if engine is not None:
        t.rw_engine = engine
    t.initialize()
    dl_tr, _ = t.get_dataloaders()
    t.network.train()
    loader, whole = [], []
    for i in range(iterations + 1):
        start = time.perf_counter()
        batch = next(dl_tr)
        loaded = time.perf_counter()
        t.train_step(batch)
        end = time.perf_counter()
        if i:  # the first iteration warms up
            loader.append(loaded - start)
            whole.append(end - start)
    return loader, whole


def measure_store(workdir: Path, shape, n_classes: int, patch=(64, 128, 128), repeats: int = 20) -> None:
    """Print write time, size and patch-crop time of full and compact maps as .npy and as blosc2."""
    import blosc2
    import numpy as np
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    from rwmaps_cli.maps import compute_maps
    from rwmaps_cli.synthetic import blob_labels

    blosc2.set_nthreads(1)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = blob_labels(shape, n_classes, rng, sigma=4.0)
    full = compute_maps(labels, list(range(n_classes)), threads=2)
    compact = compute_maps(labels, list(range(n_classes)), layout="compact")
    boxes = [[[int(s), int(s) + p] for s, p in zip((rng.integers(0, n - p + 1) for n, p in zip(shape, patch)), patch)]
             for _ in range(repeats)]

    def drop_cache(path):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    def npy_write(path, a):
        np.save(path, a)

    def b2_write(codec, clevel):
        def write(path, a):
            blocks, chunks = comp_blosc2_params(a.shape if a.ndim == 4 else (1, *a.shape), patch, bytes_per_pixel=4)
            if a.ndim == 3:
                blocks, chunks = blocks[1:], chunks[1:]
            blosc2.asarray(np.ascontiguousarray(a), urlpath=path, chunks=chunks, blocks=blocks,
                           cparams={"codec": codec, "clevel": clevel, "filters": [blosc2.Filter.SHUFFLE],
                                    "nthreads": 1})
        return write

    def npy_open(path):
        return np.load(path, mmap_mode="r")

    def b2_open(path):
        return blosc2.open(urlpath=path, mode="r", mmap_mode="r", dparams={"nthreads": 1})

    print(f"labels {shape}, {n_classes} classes, patch {patch}: full map {full.nbytes / 2**20:.0f} MiB, "
          f"compact {compact.nbytes / 2**20:.0f} MiB")
    stores = [("npy", npy_write, npy_open), ("lz4hc5.b2nd", b2_write(blosc2.Codec.LZ4HC, 5), b2_open),
              ("lz4-1.b2nd", b2_write(blosc2.Codec.LZ4, 1), b2_open),
              ("zstd1.b2nd", b2_write(blosc2.Codec.ZSTD, 1), b2_open)]
    for layout, array in (("full", full), ("compact", compact)):
        for suffix, write, open_ in stores:
            path = str(workdir / f"{layout}.{suffix}")
            if os.path.exists(path):
                os.remove(path)
            start = time.perf_counter()
            write(path, array)
            os.sync()
            seconds = time.perf_counter() - start
            cold, warm = [], []
            for box in boxes:
                drop_cache(path)
                start = time.perf_counter()
                np.array(crop_and_pad_nd(open_(path), box, 0), copy=True)
                cold.append(time.perf_counter() - start)
            for box in boxes:
                start = time.perf_counter()
                np.array(crop_and_pad_nd(open_(path), box, 0), copy=True)
                warm.append(time.perf_counter() - start)
            print(f"{layout + '.' + suffix:22s} write {seconds:5.2f} s  size {os.path.getsize(path) / 2**20:6.1f} MiB  "
                  f"patch cold {1e3 * statistics.median(cold):6.1f} ms  warm {1e3 * statistics.median(warm):6.1f} ms",
                  flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--store", type=int, nargs=4, metavar=("Z", "Y", "X", "C"), default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if args.store is not None:
        measure_store(workdir, tuple(args.store[:3]), args.store[3])
        return
    os.environ.update(nnUNet_raw=str(workdir / "raw"), nnUNet_preprocessed=str(workdir / "preprocessed"),
                      nnUNet_results=str(workdir / "results"), nnUNet_n_proc_DA="0")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    for n_classes in args.classes:
        name = _prepare(workdir, n_classes, tuple(args.shape), args.cases, tuple(args.patch))
        results = {variant: ([], []) for variant in VARIANTS}
        for _ in range(args.rounds):
            for variant, (loader, whole) in results.items():
                a, b = _measure(name, variant, args.iterations)
                loader += a
                whole += b
        for label, (loader, whole) in results.items():
            print(f"{n_classes:2d} classes, patch {tuple(args.patch)}, {label}: loader "
                  f"{statistics.median(loader):.3f} s/iteration, whole iteration {statistics.median(whole):.3f} s "
                  f"(median of {len(whole)})", flush=True)


if __name__ == "__main__":
    main()
