"""Train a small 3D U-Net with Region-wise loss on maps written by ``rwmaps compute`` (plain PyTorch).

    python examples/train_tiny_rw.py --quick           # computes the sample dataset's maps first
    python examples/train_tiny_rw.py --maps maps_toy/  # maps from: rwmaps compute --input
                                                       #   sample_data/Dataset001_Toy --output maps_toy --format npy
    python examples/train_tiny_rw.py --layout compact --renormalize patch   # one channel per case

Needs PyTorch (``pip install -e ".[torch]"`` in the clone; CPU is enough).  The toy dataset has
labels only, so the "image" is made from the labels plus noise.

The Dataset memory-maps each ``.npy`` map and reads only the patch it crops.  A full map
``(C, *spatial)`` goes into ``mean(softmax(logits) * map)``; a compact map (``*spatial``,
from ``--layout compact``) goes into :func:`rwmaps_cli.torch.region_wise_loss`, which
gives the same loss and gradient without building the C channels.  The random crop and
flip are applied to the image, the labels AND the map alike: a map that is not transformed
with its labels no longer describes them.
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
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rwmaps_cli.formats import read_labels
from rwmaps_cli.torch import region_wise_loss

DATASET = Path(__file__).resolve().parents[1] / "sample_data" / "Dataset001_Toy"
CLASSES = [0, 1, 2]  # dataset.json: background, organ, lesion


class RegionWiseDataset(Dataset):
    """Random patches of (image, labels, map) from label files and ``rwmaps compute`` maps.

    Returns ``(1, *patch)`` float32 image, ``(*patch)`` int64 labels, and the map patch:
    ``(C, *patch)`` float32 for a full map, ``(*patch)`` float32 for a compact one.
    """

    def __init__(self, labels_dir: Path, maps_dir: Path, patch: tuple[int, ...], seed: int = 0):
        self.label_files = sorted(labels_dir.glob("*.nii.gz"))
        self.maps_dir, self.patch = maps_dir, patch
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.label_files)

    def __getitem__(self, index: int):
        label_file = self.label_files[index]
        labels = read_labels(label_file).array.astype(np.int64)
        # A memory map: the crop below reads only the patch from disk, not C whole volumes.
        rwmap = np.load(self.maps_dir / label_file.name.replace(".nii.gz", ".npy"), mmap_mode="r")
        channels = (slice(None),) if rwmap.ndim == labels.ndim + 1 else ()  # full: (C, *S); compact: (*S)
        start = [int(self.rng.integers(0, n - p + 1)) for n, p in zip(labels.shape, self.patch)]
        window = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        labels, rwmap = labels[window], np.asarray(rwmap[(*channels, *window)], dtype=np.float32)
        image = labels.astype(np.float32) + self.rng.normal(0.0, 0.7, labels.shape).astype(np.float32)
        if self.rng.random() < 0.5:  # a flip moves the map with the labels and is exact for it
            image, labels, rwmap = image[::-1], labels[::-1], rwmap[(*channels, slice(None, None, -1))]
        return (torch.from_numpy(image[None].copy()), torch.from_numpy(labels.copy()),
                torch.from_numpy(rwmap.copy()))


class TinyUNet(nn.Module):
    """A two-level 3D U-Net: (B, 1, *S) -> (B, C, *S) logits; S divisible by 2."""

    def __init__(self, n_classes: int, width: int = 8):
        super().__init__()
        self.down = self.block(1, width)
        self.bottom = self.block(width, 2 * width)
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.out = nn.Sequential(self.block(2 * width, width), nn.Conv3d(width, n_classes, 1))

    @staticmethod
    def block(n_in: int, n_out: int) -> nn.Module:
        return nn.Sequential(nn.Conv3d(n_in, n_out, 3, padding=1), nn.InstanceNorm3d(n_out), nn.LeakyReLU(),
                             nn.Conv3d(n_out, n_out, 3, padding=1), nn.InstanceNorm3d(n_out), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down(x)
        deep = self.bottom(F.max_pool3d(skip, 2))
        return self.out(torch.cat([skip, self.up(deep)], dim=1))


def loss_of(logits, labels, rwmap, renormalize):
    """Region-wise loss of a batch, from a full map or from a compact one."""
    if rwmap.ndim == logits.ndim:  # full map (B, C, *S): the definition
        if renormalize:
            raise SystemExit("--renormalize patch needs compact maps (--layout compact)")
        return (torch.softmax(logits, dim=1) * rwmap).mean()
    return region_wise_loss(logits, labels, rwmap, CLASSES, renormalize=renormalize)


def compute_maps_into(folder: Path, layout: str) -> None:
    """Run the real CLI, as a user would."""
    extra = [] if layout == "full" else ["--layout", layout]
    subprocess.run([sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(DATASET), "--output", str(folder),
                    "--format", "npy", "--quiet", *extra], check=True)


def train(maps_dir: Path, steps: int, patch: tuple[int, ...], renormalize: str | None) -> list[float]:
    torch.manual_seed(0)
    data = RegionWiseDataset(DATASET / "labelsTr", maps_dir, patch)
    net = TinyUNet(len(CLASSES))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = DataLoader(data, batch_size=2, shuffle=True)
    losses: list[float] = []
    while len(losses) < steps:
        for image, labels, rwmap in loader:
            loss = loss_of(net(image), labels, rwmap, renormalize)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            print(f"step {len(losses):3d}  region-wise loss {losses[-1]:+.4f}", flush=True)
            if len(losses) == steps:
                break
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=Path, help="folder of .npy maps of sample_data/Dataset001_Toy "
                                                   "[default: compute them into a temporary folder]")
    parser.add_argument("--layout", choices=["full", "compact"], default="full",
                        help="layout to ask rwmaps compute for when --maps is not given [default: full]")
    parser.add_argument("--renormalize", choices=["patch"], default=None,
                        help="per-patch normalisation, as the seed (compact maps only)")
    parser.add_argument("--steps", type=int, default=60, help="optimisation steps [default: 60; --quick: 15]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, small patches (CPU, seconds)")
    args = parser.parse_args()
    steps = 15 if args.quick and args.steps == 60 else args.steps
    patch = (16, 16, 8) if args.quick else (32, 32, 16)  # every toy case is at least 44 x 48 x 22
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        maps_dir = args.maps
        if maps_dir is None:
            maps_dir = Path(scratch) / "maps"
            compute_maps_into(maps_dir, args.layout)
        losses = train(maps_dir, steps, patch, args.renormalize)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"mean loss of the first 3 steps {first:+.4f}, of the last 3 {last:+.4f} "
          f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
