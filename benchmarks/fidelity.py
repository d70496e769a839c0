"""How faithful is a precomputed Region-wise map after augmentation?  And what does the paper's way cost?

The paper computed every rrw map on the augmented patch the network saw, normalised by that
patch's maxima.  A precomputed map instead goes through the augmentation (interpolated) and
is normalised per volume.  For each augmentation, on brain-like label volumes (many thin
classes, anisotropic voxels, Fortran order as nibabel returns them), this compares with
(a) the map recomputed from the augmented label (``RegionWiseMapd``, the paper's way):

- (b) the precomputed full map pushed through the same transform;
- (c) the compact map pushed through the same transform, expanded with the augmented label
  (``ExpandRegionWiseMapd``), normalised per volume as stored;
- (c/patch) the same, renormalised per patch (``renormalize="patch"``, the seed's per-patch maxima).

Reported, over the C channels of every voxel: max and mean absolute difference from (a), the
share of voxels where some channel is off by more than 0.05, and the relative difference of
the loss ``mean(softmax(z) * map)`` and of its gradient (L2 norm) on a fixed softmax ``z``.
Labels are always resampled with nearest neighbour, maps with linear interpolation; all
transforms are MONAI's, with border padding.

Part 2 measures the per-sample cost of ``RegionWiseMapd`` against loading a precomputed map
written by the real ``rwmaps compute`` (single thread, as in a data-loader worker).

    python benchmarks/fidelity.py            # 2 volumes of 128x160x48, 33 classes; a few minutes
    python benchmarks/fidelity.py --quick    # small, a smoke test of the script
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # a data-loader worker is single-threaded

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.transforms import (  # noqa: E402
    Affined,
    Compose,
    EnsureChannelFirstd,
    Flipd,
    LoadImaged,
    Rand3DElasticd,
    Rotate90d,
    SpatialCropd,
)
from monai.utils import set_determinism  # noqa: E402

from rwmaps_cli import compute_maps  # noqa: E402
from rwmaps_cli.monai import ExpandRegionWiseMapd, RegionWiseMapd  # noqa: E402

SPACING = (1.0, 1.0, 3.0)  # mm: thick slices, as many clinical MR and CT
OFF = 0.05


# ---------------------------------------------------------------------------------------
# Brain-like labels: cortical shells and stretched Voronoi cells (not the package's
# rwmaps_cli.synthetic.brain_like_labels, which the other benchmarks use)


def shell_and_voronoi_labels(shape, n_classes, spacing=SPACING, seed=0) -> np.ndarray:
    """Labels like a parcellation, Fortran-ordered uint8.

    Background 0 outside an ellipsoid head; a 4 mm shell under its surface split by angle
    into thin "cortical" classes (one to two slices thick along the 3 mm axis); inside,
    Voronoi cells whose seeds each stretch their own metric along one axis (elongated,
    curved, sometimes split cells).
    """
    rng = np.random.default_rng(seed)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radii = np.array([(n * s) / 2 * 0.88 for n, s in zip(shape, spacing)])
    radius = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
    head = radius <= 1
    shell = head & (radius > 1 - 4.0 / radii.min())
    n_shell = max(2, (n_classes - 1) // 4)
    n_inner = n_classes - 1 - n_shell
    labels = np.zeros(shape, dtype=np.uint8)
    sector = ((np.arctan2(y, x) + np.pi) / (2 * np.pi) * n_shell).astype(int) % n_shell
    labels[shell] = 1 + sector[shell]
    inner = head & ~shell
    points = np.stack([x[inner], y[inner], z[inner]], axis=1)
    seeds = points[rng.choice(len(points), n_inner, replace=False)]
    stretch = np.ones((n_inner, 3))
    stretch[np.arange(n_inner), rng.integers(0, 3, n_inner)] = rng.uniform(2.0, 4.0, n_inner)
    best = np.full(len(points), np.inf)
    owner = np.zeros(len(points), dtype=np.uint8)
    for i in range(n_inner):  # one seed at a time: memory stays at a few voxel-sized arrays
        distance = (((points - seeds[i]) * stretch[i]) ** 2).sum(axis=1)
        closer = distance < best
        best[closer], owner[closer] = distance[closer], 1 + n_shell + i
    labels[inner] = owner
    return np.asfortranarray(labels)


def own_channel(full: np.ndarray, labels: np.ndarray, classes) -> np.ndarray:
    """The compact map: each voxel's value in its own class's channel."""
    codes = np.searchsorted(classes, labels)
    return np.take_along_axis(full, codes[None], axis=0)[0]


# ---------------------------------------------------------------------------------------
# Augmentations (MONAI dictionary transforms, one call moves every key the same way)

KEYS = ["label", "full", "compact"]
MODES = ["nearest", "bilinear", "bilinear"]


def augmentations(shape, patch) -> dict[str, Callable[[], list]]:
    start = tuple((n - p) // 2 + (n - p) // 5 for n, p in zip(shape, patch))  # off centre
    crop = [SpatialCropd(keys=KEYS, roi_start=start, roi_end=tuple(s + p for s, p in zip(start, patch)))]
    affine = [Affined(keys=KEYS, rotate_params=(np.deg2rad(5), np.deg2rad(5), np.deg2rad(15)),
                      scale_params=(1.15, 1.15, 1.15), mode=MODES, padding_mode="border")]
    elastic = [Rand3DElasticd(keys=KEYS, prob=1.0, sigma_range=(9, 13), magnitude_range=(300, 400), mode=MODES,
                              padding_mode="border")]
    return {
        "flip + 90° rotation": lambda: [Flipd(keys=KEYS, spatial_axis=0),
                                        Rotate90d(keys=KEYS, k=1, spatial_axes=(0, 1))],
        f"patch crop {'x'.join(map(str, patch))}": lambda: list(crop),
        "affine: rotation 15°/5°/5°, scale 1.15 (linear)": lambda: list(affine),
        "elastic deformation": lambda: list(elastic),
        "nnU-Net-like: affine + elastic + crop + flip": lambda: [*affine, *elastic, *crop,
                                                                Flipd(keys=KEYS, spatial_axis=1)],
    }


def augment(labels, full, compact, transforms, classes, seed) -> dict[str, np.ndarray]:
    """Push label, full and compact maps through ``transforms``; return the maps a network sees."""
    data = {"label": torch.from_numpy(np.ascontiguousarray(labels)[None]).float(), "full": torch.from_numpy(full),
            "compact": torch.from_numpy(compact[None])}
    pipeline = Compose([*transforms,
                        RegionWiseMapd(keys="label", classes=classes, map_keys="a"),
                        ExpandRegionWiseMapd(keys="compact", label_key="label", classes=classes, map_keys="c"),
                        ExpandRegionWiseMapd(keys="compact", label_key="label", classes=classes,
                                             renormalize="patch", map_keys="c/patch")])
    pipeline.set_random_state(seed=seed)
    out = pipeline(data)
    return {"label": np.asarray(out["label"][0]), "a": np.asarray(out["a"]), "b": np.asarray(out["full"]),
            "c": np.asarray(out["c"]), "c/patch": np.asarray(out["c/patch"])}


# ---------------------------------------------------------------------------------------
# Comparison


def loss_and_grad(logits: torch.Tensor, rwmap: np.ndarray) -> tuple[float, torch.Tensor]:
    """RW loss mean(softmax(z) * map) and its gradient in z, float64."""
    z = logits.clone().requires_grad_(True)
    loss = (torch.softmax(z, dim=0) * torch.from_numpy(rwmap).double()).mean()
    (grad,) = torch.autograd.grad(loss, z)
    return loss.item(), grad


def fixed_logits(labels: np.ndarray, n_classes: int, seed: int) -> torch.Tensor:
    """A plausible, imperfect prediction: the one-hot label plus strong noise, (C, *spatial) float64."""
    rng = np.random.default_rng(seed)
    codes = torch.from_numpy(np.searchsorted(np.arange(n_classes), labels))
    one_hot = torch.nn.functional.one_hot(codes.long(), n_classes).movedim(-1, 0).double()
    return 3.0 * one_hot + torch.from_numpy(rng.normal(0.0, 1.5, one_hot.shape))


def compare(maps: dict[str, np.ndarray], logits: torch.Tensor) -> dict[str, dict[str, float]]:
    """Every map against (a): difference statistics and loss/gradient relative differences."""
    truth = maps["a"]
    loss_a, grad_a = loss_and_grad(logits, truth)
    rows = {}
    for name in ("b", "c", "c/patch"):
        diff = np.abs(maps[name] - truth)
        loss, grad = loss_and_grad(logits, maps[name])
        rows[name] = {
            "max": float(diff.max()),
            "mean": float(diff.mean()),
            "off": float((diff.max(axis=0) > OFF).mean()),
            "loss": abs(loss - loss_a) / abs(loss_a),
            "grad": float(torch.linalg.vector_norm(grad - grad_a) / torch.linalg.vector_norm(grad_a)),
        }
    return rows


def fidelity(shape, patch, n_classes, n_volumes) -> dict[str, dict[str, dict[str, float]]]:
    """Average of :func:`compare` over volumes, per augmentation and method."""
    classes = list(range(n_classes))
    results: dict[str, list] = {}
    for v in range(n_volumes):
        labels = shell_and_voronoi_labels(shape, n_classes, seed=v)
        full = compute_maps(labels, classes)
        compact = own_channel(full, labels, classes)
        for i, (name, make) in enumerate(augmentations(shape, patch).items()):
            set_determinism(seed=100 * v + i)
            maps = augment(labels, full, compact, make(), classes, seed=100 * v + i)
            results.setdefault(name, []).append(compare(maps, fixed_logits(maps["label"], n_classes, seed=v)))
            print(f"  volume {v}: {name} done", file=sys.stderr, flush=True)
    return {name: {m: {k: _combine(k, [r[m][k] for r in runs]) for k in runs[0][m]} for m in runs[0]}
            for name, runs in results.items()}


def _combine(key: str, values: list[float]) -> float:
    return max(values) if key == "max" else float(np.mean(values))


def fidelity_table(results) -> str:
    lines = ["| augmentation | map | max abs diff | mean abs diff | voxels off > 0.05 | loss rel. diff "
             "| gradient rel. diff |", "|---|---|---|---|---|---|---|"]
    label = {"b": "(b) full, transformed", "c": "(c) compact, transformed + expanded",
             "c/patch": "(c) + per-patch renormalisation"}
    for name, methods in results.items():
        for m, r in methods.items():
            lines.append(f"| {name} | {label[m]} | {r['max']:.3g} | {r['mean']:.2g} | {100 * r['off']:.2f}% "
                         f"| {100 * r['loss']:.2g}% | {100 * r['grad']:.2g}% |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Part 2: the cost per sample


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def write_case(root: Path, labels: np.ndarray, classes) -> dict[str, Path]:
    """A one-case dataset and its maps, written by the real ``rwmaps compute``."""
    affine = np.diag([*SPACING, 1.0])
    label_path = root / "labels" / "case.nii.gz"
    label_path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(labels, affine), label_path)
    paths = {"label": label_path}
    for fmt in ("nii.gz", "npy"):
        subprocess.run([sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(label_path.parent), "--output",
                        str(root / fmt), "--format", fmt, "--classes", ",".join(map(str, classes)), "--quiet"],
                       check=True)
        paths[f"full {fmt}"] = root / fmt / f"case.{fmt}"
    full = np.load(paths["full npy"])
    compact = own_channel(full, labels, classes)  # what --layout compact stores
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    paths["compact nii.gz"] = root / "compact.nii.gz"
    nib.save(nib.Nifti1Image(compact, affine, header), paths["compact nii.gz"])
    return paths


def cost(shape, n_classes, patch, repeats) -> list[tuple[str, float]]:
    """Seconds per sample of each way to give the loader a map (the label's own load excluded)."""
    classes = list(range(n_classes))
    labels = shell_and_voronoi_labels(shape, n_classes, seed=0)
    window = tuple(slice(0, p) for p in patch)
    with tempfile.TemporaryDirectory() as scratch:
        paths = write_case(Path(scratch), labels, classes)
        load_label = Compose([LoadImaged(keys="label"), EnsureChannelFirstd(keys="label")])
        label = load_label({"label": str(paths["label"])})["label"]
        label_patch = label[(slice(None), *window)]
        load_full_nii = Compose([LoadImaged(keys="m"), EnsureChannelFirstd(keys="m", channel_dim=-1)])
        load_full_npy = Compose([LoadImaged(keys="m"), EnsureChannelFirstd(keys="m", channel_dim=0)])
        load_compact = Compose([LoadImaged(keys="m"), EnsureChannelFirstd(keys="m", channel_dim="no_channel")])
        compact = load_compact({"m": str(paths["compact nii.gz"])})["m"]
        expand = ExpandRegionWiseMapd(keys="m", label_key="label", classes=classes)
        on_the_fly = RegionWiseMapd(keys="label", classes=classes, map_keys="m")
        # what a precomputed map adds to the augmentation: interpolating its channels
        rotate = Affined(keys="m", rotate_params=(0.1, 0.1, 0.3), scale_params=(1.15,) * 3, padding_mode="border")
        full_patch = load_full_npy({"m": str(paths["full npy"])})["m"][(slice(None), *window)]
        c_voxels = f"{n_classes} x {'x'.join(map(str, shape))}"
        p_voxels = f"{n_classes} x {'x'.join(map(str, patch))}"
        return [
            (f"load the label (for reference), {'x'.join(map(str, shape))}",
             median_time(lambda: load_label({"label": str(paths["label"])}), repeats)),
            (f"load full nii.gz map ({c_voxels})",
             median_time(lambda: load_full_nii({"m": str(paths["full nii.gz"])}), repeats)),
            (f"load full npy map ({c_voxels})",
             median_time(lambda: load_full_npy({"m": str(paths["full npy"])}), repeats)),
            (f"full npy map, memory-mapped, read one patch ({p_voxels})",
             median_time(lambda: np.array(np.load(paths["full npy"], mmap_mode="r")[(slice(None), *window)]),
                         repeats)),
            ("load compact nii.gz map (1 channel)",
             median_time(lambda: load_compact({"m": str(paths["compact nii.gz"])}), repeats)),
            ("load compact nii.gz + ExpandRegionWiseMapd, whole volume",
             median_time(lambda: expand(load_compact({"m": str(paths["compact nii.gz"]), "label": label})), repeats)),
            (f"ExpandRegionWiseMapd on a patch ({p_voxels})",
             median_time(lambda: expand({"m": compact[(slice(None), *window)], "label": label_patch}), repeats)),
            (f"rotate + scale the full map patch (Affined, bilinear, {p_voxels})",
             median_time(lambda: rotate({"m": full_patch}), repeats)),
            ("rotate + scale the compact map patch (Affined, bilinear, 1 channel)",
             median_time(lambda: rotate({"m": compact[(slice(None), *window)]}), repeats)),
            ("RegionWiseMapd (compute_maps), whole volume",
             median_time(lambda: on_the_fly({"label": label}), repeats)),
            (f"RegionWiseMapd on a patch ({p_voxels})",
             median_time(lambda: on_the_fly({"label": label_patch}), repeats)),
        ]


def cost_table(rows) -> str:
    lines = ["| per sample, one thread | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.3f} |" for name, seconds in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small volumes: a smoke test of the script")
    parser.add_argument("--volumes", type=int, default=2, help="label volumes to average over [default: 2]")
    parser.add_argument("--classes", type=int, default=33, help="classes, background included [default: 33]")
    parser.add_argument("--part", choices=["all", "fidelity", "cost"], default="all", help="what to run [default: all]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape, n_classes, volumes = ((40, 48, 18), 9, 1) if args.quick else ((128, 160, 48), args.classes, args.volumes)
    patch = (24, 28, 12) if args.quick else (96, 96, 32)
    started = time.perf_counter()
    if args.part in ("all", "fidelity"):
        results = fidelity(shape, patch, n_classes, volumes)
        print(f"## Fidelity: {volumes} brain-like volume(s) {'x'.join(map(str, shape))}, {n_classes} classes, "
              f"voxels {'x'.join(f'{s:g}' for s in SPACING)} mm, distances in voxels\n")
        print(fidelity_table(results))
    if args.part in ("all", "cost"):
        print(f"\n## Cost per sample ({'x'.join(map(str, shape))}, {n_classes} classes)\n")
        print(cost_table(cost(shape, n_classes, patch, repeats=1 if args.quick else 5)))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
