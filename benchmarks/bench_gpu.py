"""The PyTorch engine against the numpy kernel, the seed's loop and per-class binary EDT, on the
GPU (or the CPU).

Prints, in one run, medians and ratios (the machines are shared and noisy):

1. a training batch, 2 x 128^3 brain crops (``rwmaps_cli.synthetic.brain_like_labels``), at 4 and
   at 83 classes, ms per batch:

   - ``rwmaps_cli.torch.compute_maps`` (compact rrw, the loss's map; full rrw; sdf), and its raw
     multi-label distance transform alone (``torch_engine.inside_distance``);
   - the numpy kernel on the CPU, item by item, 1 thread and all threads; the raw ``edt``
     multi-label transform;
   - the seed's per-class scipy loop (``benchmarks/seed.py``; once, it takes seconds to minutes);
   - a binary EDT per class on the device: MONAI's ``DistanceTransformEDT`` on the one-hot
     batch (on the CPU it runs scipy per channel; on CUDA it needs cuCIM), and CuPy's PBA+
     ``cupyx.scipy.ndimage.distance_transform_edt`` where CuPy is installed;
   - the torch engine's cost at 83 classes over its cost at 4 (it does not depend on the
     number of classes);

2. the whole RW loss step on that batch, forward and backward: the maps computed in the step
   (``region_wise_loss(logits, labels, None, classes)``) against the loss from a precomputed
   compact map;
3. a brain-sized volume (182 x 182 x 218, 83 classes) and a CT-sized one (512 x 512 x 400,
   118 classes, nibabel's Fortran order): compact rrw maps, the torch engine against the numpy
   kernel and the raw transforms.

Every torch map is checked against the numpy kernel's (the maximum difference is printed).  On
the CPU, sdf at 83 classes (83 binary passes of the batch) and the CT-sized volume are skipped
unless ``--all`` is given: they take many minutes there.

    python benchmarks/bench_gpu.py            # on CUDA when there is one, else on the CPU
    python benchmarks/bench_gpu.py --quick    # small sizes: a smoke test of the script
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rwmaps_cli import compute_maps
from rwmaps_cli.contract import MapRequest
from rwmaps_cli.maps import DistanceTransform, class_codes
from rwmaps_cli.synthetic import brain_like_labels
from rwmaps_cli.torch import compute_maps as torch_maps
from rwmaps_cli.torch import region_wise_loss
from rwmaps_cli.torch_engine import channel_codes, inside_distance


sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed import seed_formula  # noqa: E402  (benchmarks/seed.py)

CPU = torch.device("cpu")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def timed(function, repeats: int, device: torch.device, warm_up: bool = True) -> float:
    """Median seconds of ``function()`` (after one warm-up call), synchronising the device."""
    if warm_up:
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


def raw_torch(on_device: torch.Tensor, classes):
    """The torch engine's multi-label distance transform of the batch alone."""
    codes = channel_codes(on_device, MapRequest.checked(classes, tuple(on_device.shape[1:])))
    return lambda: inside_distance(codes)


def raw_edt(labels: np.ndarray, classes, threads: int):
    """The ``edt`` package's multi-label transform of each item alone (what the numpy kernel adds to)."""
    transform = DistanceTransform("edt", threads)
    codes = [class_codes(item, classes) for item in labels]
    return lambda: [transform.inside(c, len(classes), None) for c in codes]


def cupy_per_class(labels: torch.Tensor, n_classes: int):
    """Each class's inside EDT, a binary PBA+ transform per class and item (CuPy), or None
    without CuPy on a CUDA device."""
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
    """MONAI's ``DistanceTransformEDT`` on each item's one-hot channels, or None where MONAI
    (with cuCIM, on CUDA) is missing."""
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


def batch_section(device: torch.device, shape, n_classes: int, repeats: int, every_kind: bool) -> float:
    """Section 1 for one class count; returns the torch engine's compact seconds."""
    labels = np.stack([np.ascontiguousarray(brain_like_labels(shape, n_classes, seed=s)) for s in (0, 1)])
    classes = list(range(n_classes))
    on_device = torch.from_numpy(labels.astype(np.int64)).to(device)
    print(f"\n## a batch of 2 x {'x'.join(map(str, shape))}, {n_classes} classes, on {device}")
    raw = timed(raw_torch(on_device, classes), repeats, device)
    raw_one, raw_all = (timed(raw_edt(labels, classes, t), repeats, CPU) for t in (1, cores()))
    print(f"raw multi-label EDT: torch {raw * 1e3:.1f} ms | edt 1 thread {raw_one * 1e3:.1f} ms "
          f"({raw_one / raw:.2f}x) | edt {cores()} threads {raw_all * 1e3:.1f} ms ({raw_all / raw:.2f}x)")
    compact = None
    for kind, layout in (("rrw", "compact"), ("rrw", "full"), ("sdf", "full")):
        if kind == "sdf" and not every_kind:
            print(f"sdf full   : skipped on the CPU at {n_classes} classes ({n_classes} binary passes); --all runs it")
            continue
        options = dict(kind=kind, layout=layout)
        reference = numpy_batch(labels, classes, 1, **options)
        difference = float((torch_maps(on_device, classes, **options).cpu() - torch.from_numpy(reference)).abs().max())
        engine = timed(lambda: torch_maps(on_device, classes, **options), repeats, device)
        one = timed(lambda: numpy_batch(labels, classes, 1, **options), repeats, CPU)
        every = timed(lambda: numpy_batch(labels, classes, cores(), **options), repeats, CPU)
        compact = engine if layout == "compact" else compact
        print(f"{kind:3s} {layout:7s}: torch {engine * 1e3:8.1f} ms ({engine / raw:.2f}x its raw EDT) | numpy 1 thread "
              f"{one * 1e3:8.1f} ms ({one / engine:.2f}x) | numpy {cores()} threads {every * 1e3:8.1f} ms "
              f"({every / engine:.2f}x) | max difference {difference:.1e}")
    seed = timed(lambda: [seed_formula(item, n_classes) for item in labels], 1, CPU, warm_up=False)
    print(f"the seed's per-class scipy loop (CPU, once): {seed * 1e3:.0f} ms ({seed / compact:.1f}x the torch "
          "engine's compact map)")
    for name, make in (("binary EDT per class, CuPy PBA+", cupy_per_class),
                       ("binary EDT per class, MONAI DistanceTransformEDT", monai_per_class)):
        run = make(on_device, n_classes)
        if run is None:
            print(f"{name}: not installed here")
            continue
        binary = timed(run, max(1, repeats // 2), device)
        print(f"{name}: {binary * 1e3:.1f} ms for the inside distances alone ({binary / compact:.1f}x the torch "
              "engine's whole compact map)")
    return compact


def loss_section(device: torch.device, shape, n_classes: int, repeats: int) -> None:
    labels = torch.from_numpy(np.stack([np.ascontiguousarray(brain_like_labels(shape, n_classes, seed=s))
                                        for s in (0, 1)]).astype(np.int64)).to(device)
    classes = list(range(n_classes))
    logits = torch.randn((2, n_classes, *shape), device=device, requires_grad=True)
    compact = torch_maps(labels, classes, layout="compact")

    def precomputed():
        region_wise_loss(logits, labels, compact, classes).backward()

    def in_the_step():
        region_wise_loss(logits, labels, None, classes).backward()

    loss = timed(precomputed, repeats, device)
    step = timed(in_the_step, repeats, device)
    print(f"RW loss step, 2 x {n_classes} x {'x'.join(map(str, shape))}: forward + backward {loss * 1e3:.1f} ms "
          f"from a precomputed map, {step * 1e3:.1f} ms with the maps computed in the step ({step / loss:.2f}x)")


def volume_section(device: torch.device, name: str, labels: np.ndarray, n_classes: int, repeats: int) -> None:
    classes = list(range(n_classes))
    on_device = torch.from_numpy(np.ascontiguousarray(labels)[None].astype(np.int32)).to(device)
    reference = compute_maps(labels, classes, layout="compact")
    difference = float((torch_maps(on_device, classes, layout="compact")[0].cpu() - torch.from_numpy(reference)).abs().max())
    engine = timed(lambda: torch_maps(on_device, classes, layout="compact"), repeats, device)
    raw = timed(raw_torch(on_device, classes), repeats, device)
    one = timed(lambda: compute_maps(labels, classes, layout="compact"), 1, CPU)
    every = timed(lambda: compute_maps(labels, classes, layout="compact", threads=cores()), 1, CPU)
    raw_all = timed(raw_edt(labels[None], classes, cores()), 1, CPU)
    print(f"{name} ({'x'.join(map(str, labels.shape))}, {n_classes} classes), compact rrw: torch {engine:.3f} s "
          f"(raw EDT {raw:.3f} s) | numpy 1 thread {one:.3f} s ({one / engine:.2f}x) | numpy {cores()} threads "
          f"{every:.3f} s ({every / engine:.2f}x; raw edt {raw_all:.3f} s) | max difference {difference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
    parser.add_argument("--all", action="store_true", help="on the CPU too: sdf at 83 classes, the CT-sized volume")
    parser.add_argument("--device", default=None, help="cuda or cpu [default: cuda when there is one]")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"the CPU, {torch.get_num_threads()} threads"
    print(f"rwmaps GPU benchmark on {name} (PyTorch {torch.__version__}, {cores()} CPU cores); medians, "
          "compare the ratios")
    shape = (24, 24, 24) if args.quick else (128, 128, 128)
    repeats = 1 if args.quick else (5 if device.type == "cuda" else 3)
    every_kind = args.all or device.type == "cuda"
    costs = {}
    for n_classes in (4, 12) if args.quick else (4, 83):
        costs[n_classes] = batch_section(device, shape, n_classes, repeats, every_kind or n_classes < 10)
        loss_section(device, shape, n_classes, repeats)
    few, many = sorted(costs)
    print(f"\nthe torch engine's compact map at {many} classes costs {costs[many] / costs[few]:.2f}x its cost at {few}")
    print("\n## whole volumes, one item")
    if args.quick:
        volume_section(device, "brain-like", brain_like_labels((30, 32, 28), 12), 12, 1)
        return
    volume_section(device, "brain-sized", brain_like_labels((182, 182, 218), 83), 83, repeats)
    if not every_kind:
        print("CT-sized (512x512x400, 118 classes): skipped on the CPU; --all runs it")
        return
    ct = brain_like_labels((256, 256, 200), 118, seed=2).repeat(2, 0).repeat(2, 1).repeat(2, 2)  # nearest-upsampled
    volume_section(device, "CT-sized", np.asfortranarray(ct), 118, repeats)


if __name__ == "__main__":
    sys.exit(main())
