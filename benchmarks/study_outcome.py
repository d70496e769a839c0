"""Do precomputed Region-wise maps train as well as maps computed on the fly?  A training-outcome study.

The same small 3D U-Net (MONAI ``UNet``), the same data, augmentation, patches and schedule
for every arm; only the loss and where its map comes from change:

- ``dice_ce``: Dice + cross-entropy (MONAI ``DiceCELoss``), no map: the baseline.
- ``rw_fly``: RW loss, map computed on every augmented patch from its label
  (``rwmaps_cli.torchio.RegionWiseMap``): the paper's way.
- ``rw_compact``: RW loss, compact map precomputed by ``rwmaps compute --layout compact``,
  pushed through the augmentation, expanded after the Queue cropped the patch
  (``ExpandRegionWiseMap(renormalize="patch")``: per-patch maxima, as the paper).
- ``rw_full``: RW loss, full map precomputed by ``rwmaps compute``, interpolated through the
  augmentation like an image (normalised per volume, as stored).
- ``ce_rw``: cross-entropy and RW (on-the-fly maps) with the paper's gradual schedule
  ``a * CE + (1 - a) * RW``, ``a`` going from 1 to 0.01 over the run (optional, ``--arms``).
- ``dice_ce_boundary``: Dice + CE and Kervadec et al.'s Boundary loss,
  ``a * DiceCE + (1 - a) * mean(softmax * kervadec_map)``, with the same gradual schedule as
  ``ce_rw`` (the RW paper's, not Kervadec's own rising weight), the ``kervadec`` map computed on
  every augmented patch from its label (``RegionWiseMap(kind="kervadec")``, exact, in voxels, as
  ``rw_fly``) (optional).
- ``dice_ce_sdf``: the same with ``kind="sdf"`` maps, the normalised Boundary loss
  ``mean(softmax * sdf)`` in [-1, 1] (DTC's signed distance per class), under the same schedule,
  so that only the map differs from ``dice_ce_boundary`` (optional).

Every map loss is ``mean(softmax * map)`` over batch, channels and voxels.

Data: brain-like label volumes (``rwmaps_cli.synthetic.brain_like_labels``: many thin classes,
anisotropic voxels 1 x 1 x 2.5 mm), images synthesised from them with overlapping class
intensities, a smooth multiplicative bias field, blur and noise; fixed seeded train and test
cases, written as NIfTI; maps written by really running ``rwmaps compute`` on those files.
Augmentation (TorchIO): flips on two axes, ``RandomAffineWithMaps`` (rotation about the slice
axis and scaling; maps filled with the outside value 1), random noise on the image; patches
from ``tio.Queue`` with a uniform sampler.  Reported on the test cases, per arm over the seeds
(mean ± sd): Dice per foreground class, HD95 (mm, MONAI, on the anisotropic grid) and seconds
per training iteration (data + step, measured).

    nice -n 10 python benchmarks/study_outcome.py              # 3 seeds x 4 arms, 2000 iterations each
    nice -n 10 python benchmarks/study_outcome.py --arms dice_ce,rw_fly,rw_compact,rw_full,ce_rw   # as published
    nice -n 10 python benchmarks/study_outcome.py --arms dice_ce,dice_ce_boundary,dice_ce_sdf,ce_rw  # the targets
    python benchmarks/study_outcome.py --quick                 # smoke test of every arm, < 1 min
    python benchmarks/study_outcome.py --report a.json b.json  # the table of runs saved with --json, pooled
    python benchmarks/study_outcome.py --report a.json b.json --against dice_ce  # and paired differences
"""

from __future__ import annotations

import argparse
import warnings
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from monai.losses import DiceCELoss
from monai.metrics import compute_hausdorff_distance
from monai.networks.nets import UNet
from scipy import ndimage as ndi

from rwmaps_cli.synthetic import brain_like_labels
from rwmaps_cli.torch import region_wise_loss
from rwmaps_cli.torchio import ExpandRegionWiseMap, RandomAffineWithMaps, RegionWiseMap, RegionWiseMapImage

SPACING = (1.0, 1.0, 2.5)
ARMS = ("dice_ce", "rw_fly", "rw_compact", "rw_full")
OPTIONAL_ARMS = ("ce_rw", "dice_ce_boundary", "dice_ce_sdf")
# Arms whose map is computed by RegionWiseMap on every augmented patch: the map's kind.
ON_THE_FLY = {"rw_fly": "rrw", "ce_rw": "rrw", "dice_ce_boundary": "kervadec", "dice_ce_sdf": "sdf"}
# Arms on the gradual schedule a * region + (1 - a) * map loss, a from 1 to 0.01: the region loss.
SCHEDULED = {"ce_rw": "ce", "dice_ce_boundary": "dice_ce", "dice_ce_sdf": "dice_ce"}


# ---------------------------------------------------------------------------------------
# Data


def atlas_labels(shape, n_classes: int) -> np.ndarray:
    """One brain-like parcellation, a little larger than the cases, that every case is warped from."""
    margin = (8, 8, 4)
    return brain_like_labels([n + m for n, m in zip(shape, margin)], n_classes, spacing=SPACING, seed=0)


def warped_case(atlas: np.ndarray, shape, rng: np.random.Generator) -> np.ndarray:
    """A case: the atlas under a smooth random deformation and shift, cropped to ``shape``.

    The same classes sit in the same places from case to case (as anatomy does), with
    thin classes displaced by a few voxels: learnable, and not by heart.
    """
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    offset = [(a - n) / 2 + rng.uniform(-2, 2) for a, n in zip(atlas.shape, shape)]
    amplitude = (2.5, 2.5, 1.0)  # voxels; less across the thick slices
    coords = [g + o + a * ndi.gaussian_filter(rng.normal(size=shape), sigma=5) * 5
              for g, o, a in zip(grid, offset, amplitude)]
    return np.asfortranarray(ndi.map_coordinates(atlas, coords, order=0, mode="nearest").astype(np.uint8))


def synth_image(labels: np.ndarray, means: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MR-like image of ``labels``: overlapping class means, bias field, blur, noise."""
    n_classes = len(means)
    image = (means + rng.normal(0, 0.03, n_classes))[labels]  # per-case jitter of each class's mean
    image = image * (1 + 0.08 * rng.normal(size=labels.shape))  # texture inside each class
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in labels.shape], indexing="ij")
    coefficients = rng.normal(0, 0.15, 4)
    bias = np.exp(coefficients[0] * grid[0] + coefficients[1] * grid[1] + coefficients[2] * grid[2]
                  + coefficients[3] * grid[0] * grid[1])
    image = ndi.gaussian_filter(image * bias, sigma=(0.8, 0.8, 0.4))
    image += rng.normal(0, 0.06, labels.shape)
    return np.asfortranarray(image.astype(np.float32))


def write_nifti(path: Path, array: np.ndarray) -> None:
    affine = np.diag([*SPACING, 1.0])
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def make_dataset(root: Path, shape, n_classes: int, n_train: int, n_test: int) -> dict:
    """Seeded label/image NIfTI volumes, and their maps by the real ``rwmaps compute``."""
    rng = np.random.default_rng(2026)
    atlas = atlas_labels(shape, n_classes)
    # Class means on a narrow range, several classes close together: neighbouring thin
    # classes are told apart by small contrasts under the bias field and the noise.
    means = np.concatenate([[0.0], rng.uniform(0.45, 1.0, n_classes - 1)])
    cases = {"train": [], "test": []}
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            name = f"{split}_{i:02d}"
            labels = warped_case(atlas, shape, rng)
            write_nifti(root / "labels" / f"{name}.nii.gz", labels)
            write_nifti(root / "images" / f"{name}.nii.gz", synth_image(labels, means, rng))
            cases[split].append(name)
    classes = ",".join(str(k) for k in range(n_classes))
    started = time.perf_counter()
    for layout in ("full", "compact"):
        subprocess.run([sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(root / "labels"),
                        "--output", str(root / f"maps_{layout}"), "--format", "npy", "--layout", layout,
                        "--classes", classes, "--quiet"], check=True)
    cases["maps_seconds"] = time.perf_counter() - started
    return cases


def subject(root: Path, name: str, arm: str) -> tio.Subject:
    items = {"image": tio.ScalarImage(root / "images" / f"{name}.nii.gz"),
             "label": tio.LabelMap(root / "labels" / f"{name}.nii.gz")}
    if arm == "rw_compact":
        items["rwmap"] = RegionWiseMapImage(root / "maps_compact" / f"{name}.npy")
    elif arm == "rw_full":
        items["rwmap"] = RegionWiseMapImage(root / "maps_full" / f"{name}.npy")
    return tio.Subject(**items)


# ---------------------------------------------------------------------------------------
# Training


def augmentation() -> tio.Compose:
    return tio.Compose([
        tio.RandomFlip(axes=(0, 1), flip_probability=0.5),
        # rotation about the slice axis and scaling: the maps are interpolated, filled with 1
        RandomAffineWithMaps(maps=["rwmap"], scales=0.1, degrees=(0, 0, 0, 0, -15, 15), p=0.75),
        tio.RandomNoise(std=(0, 0.03)),  # an intensity transform: never touches the maps
    ])


def train_arm(root: Path, cases: dict, arm: str, seed: int, args) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    classes = list(range(args.classes))
    subjects = tio.SubjectsDataset([subject(root, n, arm) for n in cases["train"]], transform=augmentation())
    queue = tio.Queue(subjects, max_length=4 * args.samples_per_volume, samples_per_volume=args.samples_per_volume,
                      sampler=tio.UniformSampler(args.patch), num_workers=0, shuffle_subjects=True,
                      shuffle_patches=True, verbose=False)
    if arm in ON_THE_FLY:
        per_patch = RegionWiseMap(classes=classes, kind=ON_THE_FLY[arm])
    elif arm == "rw_compact":
        per_patch = ExpandRegionWiseMap(classes=classes, renormalize="patch")
    else:
        per_patch = None
    net = UNet(spatial_dims=3, in_channels=1, out_channels=len(classes), channels=(8, 16, 32), strides=(2, 2),
               num_res_units=1)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    ce = torch.nn.CrossEntropyLoss()
    iterator = iter(torch.utils.data.DataLoader(queue, batch_size=None, shuffle=False, num_workers=0,
                                                collate_fn=lambda s: s))
    step_seconds = []
    for step in range(args.iterations):
        started = time.perf_counter()
        patches = []
        while len(patches) < args.batch:
            try:
                patch = next(iterator)
            except StopIteration:
                iterator = iter(torch.utils.data.DataLoader(queue, batch_size=None, shuffle=False, num_workers=0,
                                                            collate_fn=lambda s: s))
                patch = next(iterator)
            patches.append(per_patch(patch) if per_patch is not None else patch)
        image = torch.stack([p["image"].data for p in patches]).float()
        label = torch.stack([p["label"].data for p in patches]).long()
        logits = net(image)
        if arm == "dice_ce":
            loss = dice_ce(logits, label)
        else:
            rwmap = torch.stack([p["rwmap"].data for p in patches]).float()
            rw = (torch.softmax(logits, 1) * rwmap).mean()  # RW, Boundary or sdf loss: full maps
            if arm in SCHEDULED:
                alpha = max(1 - step / args.iterations, 0.01)  # the paper's gradual schedule, over this run
                region = ce(logits, label[:, 0]) if SCHEDULED[arm] == "ce" else dice_ce(logits, label)
                loss = alpha * region + (1 - alpha) * rw
            else:
                loss = rw
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step_seconds.append(time.perf_counter() - started)
    return {"net": net, "seconds_per_iteration": float(np.mean(step_seconds))}


# ---------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(net, root: Path, names, n_classes: int) -> dict:
    net.eval()
    dice, hd95 = [], []
    for name in names:
        image = torch.from_numpy(np.asarray(nib.load(root / "images" / f"{name}.nii.gz").dataobj, dtype=np.float32))
        labels = np.asarray(nib.load(root / "labels" / f"{name}.nii.gz").dataobj).astype(np.int64)
        predicted = net(image[None, None]).argmax(1)[0].numpy()
        per_class = []
        for k in range(1, n_classes):
            truth, guess = labels == k, predicted == k
            per_class.append(2 * np.sum(truth & guess) / max(np.sum(truth) + np.sum(guess), 1))
        dice.append(per_class)
        onehot = lambda a: torch.nn.functional.one_hot(torch.from_numpy(a), n_classes).permute(3, 0, 1, 2)[None]
        distance = compute_hausdorff_distance(onehot(predicted), onehot(labels), include_background=False,
                                              percentile=95, spacing=SPACING)[0].numpy()
        hd95.append(distance)  # inf/nan where a class is missing from the prediction
    net.train()
    hd = np.asarray(hd95, dtype=float)
    missing = ~np.isfinite(hd)
    # A class the network never predicts has no surface distance: count it at the volume's
    # diagonal (the worst possible), so an arm cannot look better by missing classes.
    shape = labels.shape
    hd[missing] = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, SPACING))))
    return {"dice": np.asarray(dice).mean(axis=0), "hd95": hd.mean(axis=0), "missing": int(missing.sum())}


def report(results: dict, n_classes: int, args, cases: dict, total_seconds: float) -> str:
    lines = [f"{len(cases['train'])} training and {len(cases['test'])} test volumes {tuple(args.shape)} "
             f"(spacing {SPACING} mm), {n_classes} classes; patches {tuple(args.patch)}, batch {args.batch}, "
             f"{args.iterations} iterations, {args.seeds} seeds"
             + ("" if total_seconds is None else f"; whole study {total_seconds / 60:.1f} min"),
             "", "| arm | mean Dice (fg) | HD95 mm (fg) | s / iteration | "
             + " | ".join(f"Dice {k}" for k in range(1, n_classes)) + " |",
             "|---|---|---|---|" + "---|" * (n_classes - 1)]
    for arm, runs in results.items():
        dice = np.stack([r["dice"] for r in runs])  # (seeds, classes)
        mean_dice = dice.mean(axis=1)
        hd = np.stack([r["hd95"] for r in runs]).mean(axis=1)
        seconds = np.array([r["seconds_per_iteration"] for r in runs])
        per_class = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(dice.mean(0), dice.std(0, ddof=1 if len(runs) > 1 else 0)))
        sd = lambda a: a.std(ddof=1) if len(a) > 1 else 0.0
        missing = sum(r["missing"] for r in runs)
        lines.append(f"| {arm} | {mean_dice.mean():.3f} ± {sd(mean_dice):.3f} | {hd.mean():.1f} ± {sd(hd):.1f}"
                     f"{f' ({missing} missing)' if missing else ''} | {seconds.mean():.3f} | {per_class} |")
    lines.append("")
    lines.append("mean ± sd over seeds; Dice and HD95 averaged over the test volumes, then over the foreground "
                 "classes; HD95 of a class never predicted counted as the volume diagonal (\"missing\").")
    return "\n".join(lines)


def differences(results: dict, against: str) -> str:
    """Paired by seed (same initial weights, same draws of patches and augmentation): each arm
    minus ``against``, mean ± sd of the per-seed differences and their standard error."""
    base = results[against]
    lines = [f"| arm − {against} | mean Dice | HD95 (mm) |", "|---|---|---|"]
    for arm, runs in results.items():
        if arm == against:
            continue
        n = min(len(runs), len(base))  # the seeds both arms ran
        dice = np.array([runs[i]["dice"].mean() - base[i]["dice"].mean() for i in range(n)])
        hd = np.array([runs[i]["hd95"].mean() - base[i]["hd95"].mean() for i in range(n)])
        sd = lambda a: a.std(ddof=1) if n > 1 else 0.0
        lines.append(f"| {arm} | {dice.mean():+.3f} ± {sd(dice):.3f} (se {sd(dice) / np.sqrt(n):.3f}) | "
                     f"{hd.mean():+.1f} ± {sd(hd):.1f} (se {sd(hd) / np.sqrt(n):.1f}) |")
    lines.append("")
    lines.append("mean ± sd over the seeds of the paired differences; se = sd / sqrt(seeds)")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny volumes, few iterations (< 1 min)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--arms", help=f"comma-separated, of {ARMS + OPTIONAL_ARMS}; default {','.join(ARMS)} "
                                       "(with --quick, every arm)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--train", type=int, default=6)
    parser.add_argument("--test", type=int, default=4)
    # One thread: on a shared 2-core machine two intra-op threads measured 10x slower per
    # iteration (0.375 against 0.035 s) for this small network, waiting for each other.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="print the table of earlier --json results (runs with other seeds pooled), train nothing")
    parser.add_argument("--against", metavar="ARM", help="also print every arm's differences from ARM, paired by seed")
    args = parser.parse_args(argv)
    args.shape, args.patch, args.batch, args.samples_per_volume, args.lr = (40, 48, 20), (24, 24, 12), 2, 4, 3e-3
    if args.quick:
        args.shape, args.patch, args.iterations, args.seeds = (24, 28, 16), (16, 16, 8), 6, 1
        args.train, args.test = 2, 1
    if args.arms is None:
        args.arms = ",".join(ARMS + OPTIONAL_ARMS if args.quick else ARMS)
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS + OPTIONAL_ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}")
    if args.against and not args.report and args.against not in arms:
        parser.error(f"--against {args.against}: not one of the arms run ({','.join(arms)})")
    if args.report:
        pooled: dict[str, list] = {}
        for path in args.report:
            for arm, runs in json.loads(path.read_text()).items():
                pooled.setdefault(arm, []).extend({k: np.asarray(v) for k, v in r.items()} for r in runs)
        args.seeds = len(next(iter(pooled.values())))
        print(report(pooled, args.classes, args, {"train": [None] * args.train, "test": [None] * args.test}, None))
        if args.against:
            print()
            print(differences(pooled, args.against))
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*(is all 0|nan/inf distance).*")  # counted as missing
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        cases = make_dataset(root, args.shape, args.classes, args.train, args.test)
        print(f"data and maps written ({cases['maps_seconds']:.1f} s for both rwmaps compute runs)", flush=True)
        results: dict[str, list] = {arm: [] for arm in arms}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for arm in arms:  # interleaved: machine load drifts alike for every arm
                t0 = time.perf_counter()
                run = train_arm(root, cases, arm, seed, args)
                scores = evaluate(run["net"], root, cases["test"], args.classes)
                results[arm].append({**scores, "seconds_per_iteration": run["seconds_per_iteration"]})
                print(f"seed {seed} {arm:16s} mean Dice {scores['dice'].mean():.3f}  HD95 {scores['hd95'].mean():.1f} mm  "
                      f"{run['seconds_per_iteration']:.3f} s/it  ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = report(results, args.classes, args, cases, time.perf_counter() - started)
    print()
    print(table)
    if args.against:
        print()
        print(differences(results, args.against))
    if args.json:
        args.json.write_text(json.dumps({arm: [{k: np.asarray(v).tolist() for k, v in r.items()} for r in runs]
                                         for arm, runs in results.items()}, indent=1))


if __name__ == "__main__":
    main()
