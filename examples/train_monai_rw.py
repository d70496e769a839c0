"""Train a MONAI U-Net with Region-wise loss and spatial augmentation (MONAI dictionary transforms).

    python examples/train_monai_rw.py --quick                    # precomputed full nii.gz maps
    python examples/train_monai_rw.py --quick --map on-the-fly   # RegionWiseMapd: the paper's way
    python examples/train_monai_rw.py --quick --map compact      # compact maps + ExpandRegionWiseMapd
    python examples/train_monai_rw.py --quick --loss dice_ce     # a loss the paper compared against

Needs MONAI (``pip install -e ".[monai]"`` in the clone; CPU is enough).  The toy dataset has
labels only, so the image is the labels plus noise.

Where the map comes from (``--map``):

- ``precomputed``: ``rwmaps compute --format nii.gz`` writes ``X × Y × Z × C`` NIfTI maps with
  the label's affine; ``LoadImaged`` + ``EnsureChannelFirstd(channel_dim=-1)`` load them, and
  every spatial transform is applied to the image, the label and the map together (the map
  with linear interpolation, the label with nearest).
- ``compact``: one channel per case (``rwmaps compute --layout compact``, or ``--maps`` a
  folder of compact NIfTI maps); transformed like the image, then expanded with the
  transformed label by ``ExpandRegionWiseMapd``.
- ``on-the-fly``: ``RegionWiseMapd`` computes the map of the augmented patch from its label.

The deterministic part (loading, channel first, the synthetic image) is cached by
``CacheDataset``; the random crop, flips, 90° rotations and a small affine run every epoch.
Every step prints the Region-wise loss and the Dice + cross-entropy loss of the batch; the
one named by ``--loss`` is minimised.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
)
from monai.utils import set_determinism

from rwmaps_cli.monai import ExpandRegionWiseMapd, RegionWiseMapd

DATASET = Path(__file__).resolve().parents[1] / "sample_data" / "Dataset001_Toy"
CLASSES = [0, 1, 2]  # dataset.json: background, organ, lesion


class SyntheticImaged(MapTransform):
    """Make an ``image`` from the label plus noise (the toy dataset has no images)."""

    def __init__(self, label_key: str = "label", seed: int = 0):
        super().__init__(keys=[label_key])
        self.rng = np.random.default_rng(seed)

    def __call__(self, data):
        d = dict(data)
        label = d[self.keys[0]]
        noise = torch.from_numpy(self.rng.normal(0.0, 0.7, label.shape).astype(np.float32))
        d["image"] = label.clone() + noise  # a MetaTensor: it keeps the label's affine
        return d


def transforms(map_mode: str, patch: tuple[int, ...]) -> tuple[Compose, Compose]:
    """(deterministic transforms, cached; random transforms, run every time)."""
    map_keys = [] if map_mode == "on-the-fly" else ["rwmap"]
    load = [LoadImaged(keys=["label", *map_keys]), EnsureChannelFirstd(keys="label"), SyntheticImaged()]
    if map_mode == "precomputed":  # X Y Z C NIfTI: the channels are the last axis
        load.append(EnsureChannelFirstd(keys="rwmap", channel_dim=-1))
    elif map_mode == "compact":  # X Y Z: no channel axis
        load.append(EnsureChannelFirstd(keys="rwmap", channel_dim="no_channel"))
    keys = ["image", "label", *map_keys]
    modes = {"image": "bilinear", "label": "nearest", "rwmap": "bilinear"}
    augment = [
        RandSpatialCropd(keys=keys, roi_size=patch, random_size=False),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),
        # a small rotation and scaling: the map is interpolated (see docs/training.md, "Fidelity");
        # border padding keeps a map's values where the rotation brings in voxels from outside.
        RandAffined(keys=keys, prob=0.5, rotate_range=(0.0, 0.0, 0.2), scale_range=0.1,
                    mode=[modes[k] for k in keys], padding_mode="border"),
    ]
    if map_mode == "on-the-fly":
        augment.append(RegionWiseMapd(keys="label", classes=CLASSES, map_keys="rwmap"))
    elif map_mode == "compact":
        augment.append(ExpandRegionWiseMapd(keys="rwmap", label_key="label", classes=CLASSES))
    return Compose(load), Compose(augment)


def rw_loss(logits: torch.Tensor, rwmap: torch.Tensor) -> torch.Tensor:
    """Region-wise loss: mean(softmax(logits) * map), both (B, C, *spatial)."""
    return (torch.softmax(logits, dim=1) * rwmap).mean()


def compute_maps_into(folder: Path, map_mode: str) -> None:
    """Run the real CLI, as a user would."""
    extra = ["--layout", "compact"] if map_mode == "compact" else []
    subprocess.run([sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(DATASET), "--output", str(folder),
                    "--format", "nii.gz", "--quiet", *extra], check=True)


def train(maps_dir: Path | None, map_mode: str, loss_name: str, steps: int, patch: tuple[int, ...]) -> list[float]:
    set_determinism(seed=0)
    files = sorted((DATASET / "labelsTr").glob("*.nii.gz"))
    items = [{"label": str(f)} if maps_dir is None else {"label": str(f), "rwmap": str(maps_dir / f.name)}
             for f in files]
    deterministic, random_part = transforms(map_mode, patch)
    cached = CacheDataset(items, transform=Compose([deterministic, random_part]), cache_rate=1.0, num_workers=0,
                          progress=False)
    loader = DataLoader(cached, batch_size=2, shuffle=True, num_workers=0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=len(CLASSES), channels=(8, 16, 32), strides=(2, 2),
               num_res_units=1)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses: list[float] = []
    while len(losses) < steps:
        for batch in loader:
            logits = net(batch["image"])
            rw, dce = rw_loss(logits, batch["rwmap"]), dice_ce(logits, batch["label"])
            loss = {"rw": rw, "dice_ce": dce, "rw+dice_ce": rw + dce}[loss_name]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            print(f"step {len(losses):3d}  region-wise loss {rw.item():+.4f}  dice+ce loss {dce.item():.4f}  "
                  f"{loss_name} {loss.item():+.4f}", flush=True)
            if len(losses) == steps:
                break
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", dest="map_mode", choices=["precomputed", "compact", "on-the-fly"],
                        default="precomputed", help="where the map comes from [default: precomputed]")
    parser.add_argument("--maps", type=Path, help="folder of nii.gz maps of sample_data/Dataset001_Toy "
                                                   "[default: rwmaps compute into a temporary folder]")
    parser.add_argument("--loss", choices=["rw", "dice_ce", "rw+dice_ce"], default="rw",
                        help="the loss to minimise [default: rw]")
    parser.add_argument("--steps", type=int, default=60, help="optimisation steps [default: 60; --quick: 15]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, small patches (CPU, seconds)")
    args = parser.parse_args()
    steps = 15 if args.quick and args.steps == 60 else args.steps
    patch = (16, 16, 8) if args.quick else (32, 32, 16)
    torch.set_num_threads(2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        maps_dir = args.maps
        if maps_dir is None and args.map_mode != "on-the-fly":
            maps_dir = Path(scratch) / "maps"
            compute_maps_into(maps_dir, args.map_mode)
        losses = train(maps_dir, args.map_mode, args.loss, steps, patch)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"mean {args.loss} loss of the first 3 steps {first:+.4f}, of the last 3 {last:+.4f} "
          f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
