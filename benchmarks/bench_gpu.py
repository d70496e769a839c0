"""The PyTorch engine against the numpy kernel and per-class binary EDT, on the GPU (or the CPU).

Prints, in one run, medians and ratios (the machines are shared and noisy):

1. a training batch, 2 x 128^3 brain crops (``rwmaps_cli.synthetic.brain_like_labels``), at 4 and
   at 83 classes: ms per batch of ``rwmaps_cli.torch.compute_maps`` (compact rrw, the loss's map;
   full rrw; sdf) against the numpy kernel on the CPU (1 thread and all threads, item by item)
   and against a binary EDT per class on the device (CuPy's PBA+
   ``cupyx.scipy.ndimage.distance_transform_edt``, what MONAI's ``DistanceTransformEDT`` runs
   per channel through cuCIM; MONAI's own transform too where MONAI and cuCIM are installed);
2. the whole RW loss step on that batch: maps of the augmented patch on the fly, then
   ``region_wise_loss`` forward and backward, against the loss alone from a precomputed map;
3. a brain-sized volume (182 x 182 x 218, 83 classes) and a CT-sized one (512 x 512 x 400,
   118 classes): compact rrw maps, the torch engine against the numpy kernel.

Every torch map is checked against the numpy kernel's (the maximum difference is printed).

    python benchmarks/bench_gpu.py            # on CUDA when there is one, else on the CPU
    python benchmarks/bench_gpu.py --quick    # small sizes: a smoke test of the script (CPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from rwmaps_cli import compute_maps
from rwmaps_cli.synthetic import brain_like_labels
from rwmaps_cli.torch import compute_maps as torch_maps
from rwmaps_cli.torch import region_wise_loss


def timed(function, repeats: int, device: torch.device) -> float:
    """Median seconds of ``function()`` after one warm-up call, synchronising the device."""
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def numpy_batch(labels: np.ndarray, classes, threads: int, **options) -> np.ndarray:
    return np.stack([compute_maps(item, classes, threads=threads, **options) for item in labels])


def binary_per_class(labels: torch.Tensor, n_classes: int):
    """Each class's inside EDT by a binary transform per class and item (PBA+ through CuPy), or
    None without CuPy on a CUDA device."""
    if labels.device.type != "cuda":
        return None
    try:
        import cupy
        from cupyx.scipy.ndimage import distance_transform_edt
    except ImportError:
        return None
    volumes = cupy.from_dlpack(labels.contiguous())

    def run():
        for item in volumes:
            for c in range(n_classes):
                distance_transform_edt(item == c)

    return run


def monai_per_class(labels: torch.Tensor, n_classes: int):
    """MONAI's ``DistanceTransformEDT`` on the one-hot batch, or None where MONAI (with cuCIM on CUDA) is missing."""
    try:
        from monai.transforms import DistanceTransformEDT
    except ImportError:
        return None
    if labels.device.type == "cuda":
        try:
            import cucim  # noqa: F401  (MONAI's GPU path)
        except ImportError:
            return None
    transform = DistanceTransformEDT()
    one_hot = torch.stack([labels == c for c in range(n_classes)], dim=1).float()

    def run():
        for item in one_hot:
            transform(item)

    return run


def batch_section(device: torch.device, shape, n_classes: int, repeats: int) -> None:
    labels = np.stack([np.ascontiguousarray(brain_like_labels(shape, n_classes, seed=s)) for s in (0, 1)])
    classes = list(range(n_classes))
    on_device = torch.from_numpy(labels.astype(np.int64)).to(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n## a batch of 2 x {'x'.join(map(str, shape))}, {n_classes} classes, on {device}")
    for kind, layout in (("rrw", "compact"), ("rrw", "full"), ("sdf", "full")):
        options = dict(kind=kind, layout=layout)
        reference = numpy_batch(labels, classes, 1, **options)
        difference = float((torch_maps(on_device, classes, **options).cpu() - torch.from_numpy(reference)).abs().max())
        engine = timed(lambda: torch_maps(on_device, classes, **options), repeats, device)
        one = timed(lambda: numpy_batch(labels, classes, 1, **options), max(1, repeats // 3), torch.device("cpu"))
        every = timed(lambda: numpy_batch(labels, classes, cores, **options), max(1, repeats // 3),
                      torch.device("cpu"))
        print(f"{kind:3s} {layout:7s}: torch {engine * 1e3:8.1f} ms | numpy 1 thread {one * 1e3:8.1f} ms "
              f"({one / engine:.1f}x) | numpy {cores} threads {every * 1e3:8.1f} ms ({every / engine:.1f}x) "
              f"| max difference {difference:.1e}")
    for name, make in (("binary EDT per class (CuPy PBA+)", binary_per_class),
                       ("MONAI DistanceTransformEDT", monai_per_class)):
        run = make(on_device, n_classes)
        if run is None:
            print(f"{name}: not installed here")
            continue
        binary = timed(run, max(1, repeats // 3), device)
        engine = timed(lambda: torch_maps(on_device, classes, layout="compact"), repeats, device)
        print(f"{name}: {binary * 1e3:.1f} ms for the inside distances alone ({binary / engine:.1f}x the torch "
              "engine's whole compact map)")


def loss_section(device: torch.device, shape, n_classes: int, repeats: int) -> None:
    labels = torch.from_numpy(np.stack([np.ascontiguousarray(brain_like_labels(shape, n_classes, seed=s))
                                        for s in (0, 1)]).astype(np.int64)).to(device)
    classes = list(range(n_classes))
    logits = torch.randn((2, n_classes, *shape), device=device, requires_grad=True)
    compact = torch_maps(labels, classes, layout="compact")

    def precomputed():
        region_wise_loss(logits, labels, compact, classes).backward()

    def on_the_fly():
        region_wise_loss(logits, labels, torch_maps(labels, classes, layout="compact"), classes).backward()

    loss = timed(precomputed, repeats, device)
    step = timed(on_the_fly, repeats, device)
    print(f"RW loss step, 2 x {n_classes} x {'x'.join(map(str, shape))}: forward + backward {loss * 1e3:.1f} ms "
          f"from a precomputed map, {step * 1e3:.1f} ms with the maps computed in the step ({step / loss:.2f}x)")


def volume_section(device: torch.device, name: str, labels: np.ndarray, n_classes: int, repeats: int) -> None:
    classes = list(range(n_classes))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    on_device = torch.from_numpy(labels[None].astype(np.int64)).to(device)
    reference = compute_maps(labels, classes, layout="compact")
    difference = float((torch_maps(on_device, classes, layout="compact")[0].cpu() - torch.from_numpy(reference)).abs().max())
    engine = timed(lambda: torch_maps(on_device, classes, layout="compact"), repeats, device)
    one = timed(lambda: compute_maps(labels, classes, layout="compact"), 1, torch.device("cpu"))
    every = timed(lambda: compute_maps(labels, classes, layout="compact", threads=cores), 1, torch.device("cpu"))
    print(f"{name} ({'x'.join(map(str, labels.shape))}, {n_classes} classes), compact rrw: torch {engine:.3f} s | "
          f"numpy 1 thread {one:.3f} s ({one / engine:.1f}x) | numpy {cores} threads {every:.3f} s "
          f"({every / engine:.1f}x) | max difference {difference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
    parser.add_argument("--device", default=None, help="cuda or cpu [default: cuda when there is one]")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"rwmaps GPU benchmark on {name}; medians, compare the ratios")
    batch = (24, 24, 24) if args.quick else (128, 128, 128)
    repeats = 1 if args.quick else 5
    for n_classes in (4, 83) if not args.quick else (4, 12):
        batch_section(device, batch, n_classes, repeats)
        loss_section(device, batch, n_classes, repeats)
    print("\n## whole volumes, one item")
    if args.quick:
        volume_section(device, "brain-like", brain_like_labels((30, 32, 28), 12), 12, 1)
        return
    volume_section(device, "brain-sized", brain_like_labels((182, 182, 218), 83), 83, 3)
    ct = brain_like_labels((256, 256, 200), 118, seed=2).repeat(2, 0).repeat(2, 1).repeat(2, 2)  # nearest-upsampled
    volume_section(device, "CT-sized", np.asfortranarray(ct), 118, 3)


if __name__ == "__main__":
    sys.exit(main())
