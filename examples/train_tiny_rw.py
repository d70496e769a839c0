"""Train a tiny 3D network for a few steps with Region-wise loss on precomputed maps.

    python examples/train_tiny_rw.py                   # computes the maps of the sample dataset first
    python examples/train_tiny_rw.py --maps maps_toy/  # maps from: rwmaps compute --input
                                                       #   sample_data/Dataset001_Toy --output maps_toy --format npy

Needs PyTorch (``pip install torch``; CPU is enough).  The toy dataset has labels only,
so the "image" is made from the labels plus noise.  Every step prints the Region-wise
loss, ``(softmax(logits) * rwmap).mean()``; it goes down.  The random crop and flip are
applied to the image, the labels AND the map alike: a map that is not transformed with
its labels no longer describes them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rwmaps_cli import load_map
from rwmaps_cli.io import read_labels

DATASET = Path(__file__).resolve().parents[1] / "sample_data" / "Dataset001_Toy"
PATCH = (32, 32, 16)  # every case is at least 44 x 48 x 22


class RegionWiseDataset(Dataset):
    """(image, labels, rwmap) patches: (1, *PATCH) float32, (*PATCH) int64, (C, *PATCH) float32."""

    def __init__(self, labels_dir: Path, maps_dir: Path, seed: int = 0):
        self.label_files = sorted(labels_dir.glob("*.nii.gz"))
        self.maps_dir = maps_dir
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.label_files)

    def __getitem__(self, index: int):
        label_file = self.label_files[index]
        labels = read_labels(label_file).array.astype(np.int64)
        rwmap, meta = load_map(self.maps_dir / label_file.name.replace(".nii.gz", ".npy"), mmap=True)
        image = labels.astype(np.float32) + self.rng.normal(0.0, 0.5, labels.shape).astype(np.float32)
        # One random crop and flip for all three arrays (channel axis of the map excluded).
        start = [int(self.rng.integers(0, n - p + 1)) for n, p in zip(labels.shape, PATCH)]
        window = tuple(slice(s, s + p) for s, p in zip(start, PATCH))
        image, labels, rwmap = image[window], labels[window], np.asarray(rwmap[(slice(None), *window)], np.float32)
        if self.rng.random() < 0.5:  # a flip moves the map with the labels; distances are unchanged
            image, labels, rwmap = image[::-1], labels[::-1], rwmap[:, ::-1]
        return (torch.from_numpy(image[None].copy()), torch.from_numpy(labels.copy()),
                torch.from_numpy(rwmap.copy()))


def tiny_net(n_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv3d(8, n_classes, 1),
    )


def region_wise_loss(logits: torch.Tensor, rwmap: torch.Tensor) -> torch.Tensor:
    """Region-wise loss: logits and rwmap (B, C, *spatial)."""
    return (F.softmax(logits, dim=1) * rwmap).mean()


def compute_maps_into(folder: Path) -> None:
    subprocess.run([sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(DATASET), "--output",
                    str(folder), "--format", "npy", "--quiet"], check=True)


def train(maps_dir: Path, steps: int) -> list[float]:
    torch.manual_seed(0)
    data = RegionWiseDataset(DATASET / "labelsTr", maps_dir)
    n_classes = load_map(maps_dir / "toy_000.npy", mmap=True)[0].shape[0]
    net = tiny_net(n_classes)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    loader = DataLoader(data, batch_size=2, shuffle=True)
    while len(losses) < steps:
        for image, labels, rwmap in loader:
            loss = region_wise_loss(net(image), rwmap)
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
    parser.add_argument("--steps", type=int, default=15, help="optimisation steps [default: 15]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        maps_dir = args.maps
        if maps_dir is None:
            maps_dir = Path(scratch) / "maps"
            compute_maps_into(maps_dir)
        losses = train(maps_dir, args.steps)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"mean loss of the first 3 steps {first:+.4f}, of the last 3 {last:+.4f}")


if __name__ == "__main__":
    main()
