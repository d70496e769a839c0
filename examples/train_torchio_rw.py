"""Train a small U-Net with Region-wise loss on TorchIO patches (Subject, augmentation, Queue).

    python examples/train_torchio_rw.py --quick                    # precomputed compact npy maps (default)
    python examples/train_torchio_rw.py --quick --map full         # precomputed full maps, interpolated
    python examples/train_torchio_rw.py --quick --map on-the-fly   # RegionWiseMap on every patch: the paper's way
    python examples/train_torchio_rw.py --quick --maps DIR         # maps written earlier by rwmaps compute

Needs TorchIO and PyTorch (``pip install -e ".[torchio]"`` in the clone; CPU is enough).  The toy
dataset has labels only, so the image is the labels plus noise.

Where the map comes from (``--map``):

- ``compact``: ``rwmaps compute --layout compact`` writes one channel per case; it goes through
  the augmentation with the label and the image, ``tio.Queue`` crops the patch, and
  ``ExpandRegionWiseMap(renormalize="patch")`` expands it with the patch's label, normalised by
  the patch's maxima (the paper's per-patch normalisation, from the volume's distances).
- ``full``: ``rwmaps compute`` writes ``(C, *spatial)`` maps, interpolated by the augmentation.
- ``on-the-fly``: ``RegionWiseMap`` computes the map of every augmented patch from its label.

Maps are opened as ``RegionWiseMapImage``: TorchIO's intensity transforms (here ``RandomNoise``)
skip them, and ``RandomAffineWithMaps`` resamples them linearly and fills them with the outside
value 1 (``tio.RandomAffine`` would fill them with its ``default_pad_value``).
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
import torchio as tio

from rwmaps_cli.torchio import ExpandRegionWiseMap, RandomAffineWithMaps, RegionWiseMap, RegionWiseMapImage

DATASET = Path(__file__).resolve().parents[1] / "sample_data" / "Dataset001_Toy"
CLASSES = [0, 1, 2]  # dataset.json: background, organ, lesion


def compute_maps_into(folder: Path, map_mode: str) -> None:
    """Run the real CLI, as a user would."""
    layout = ["--layout", "compact"] if map_mode == "compact" else []
    subprocess.run([sys.executable, "-m", "rwmaps_cli", "compute", "--input", str(DATASET), "--output", str(folder),
                    "--format", "npy", "--quiet", *layout], check=True)


def subjects(maps_dir: Path | None, seed: int = 0) -> list[tio.Subject]:
    """One Subject per case: a noisy image of the labels, the labels, and (unless on the fly) the map."""
    rng = np.random.default_rng(seed)
    result = []
    for path in sorted((DATASET / "labelsTr").glob("*.nii.gz")):
        label = tio.LabelMap(path)
        noise = torch.from_numpy(rng.normal(0.0, 0.7, label.shape).astype(np.float32))
        items = {"image": tio.ScalarImage(tensor=label.data.float() + noise, affine=label.affine), "label": label}
        if maps_dir is not None:
            found = sorted(maps_dir.glob(path.name.split(".")[0] + ".*"))
            if not found:
                raise SystemExit(f"train_torchio_rw: no map of {path.name} in {maps_dir}")
            items["rwmap"] = RegionWiseMapImage(found[0])  # read lazily, with the label's affine
        result.append(tio.Subject(**items))
    return result


def augmentation() -> tio.Compose:
    return tio.Compose([
        tio.RandomFlip(axes=(0, 1), flip_probability=0.5),
        RandomAffineWithMaps(maps=["rwmap"], scales=0.1, degrees=(0, 0, 0, 0, -10, 10), p=0.5),
        tio.RandomNoise(std=(0, 0.1)),  # intensity: the image only, never the map
    ])


def unet(n_classes: int) -> torch.nn.Module:
    """A two-level 3D U-Net, small enough for a CPU."""

    def block(a, b):
        return torch.nn.Sequential(torch.nn.Conv3d(a, b, 3, padding=1), torch.nn.InstanceNorm3d(b),
                                   torch.nn.LeakyReLU())

    class UNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.down, self.bottom = block(1, 8), block(8, 16)
            self.up = torch.nn.ConvTranspose3d(16, 8, 2, stride=2)
            self.out = torch.nn.Sequential(block(16, 8), torch.nn.Conv3d(8, n_classes, 1))

        def forward(self, x):
            skip = self.down(x)
            return self.out(torch.cat([skip, self.up(self.bottom(torch.nn.functional.max_pool3d(skip, 2)))], 1))

    return UNet()


def train(maps_dir: Path | None, map_mode: str, steps: int, patch: tuple[int, int, int]) -> list[float]:
    torch.manual_seed(0)
    dataset = tio.SubjectsDataset(subjects(maps_dir), transform=augmentation())
    queue = tio.Queue(dataset, max_length=12, samples_per_volume=4, sampler=tio.UniformSampler(patch),
                      num_workers=0, verbose=False)
    # After the Queue: the map of the patch the network sees.
    per_patch = {"compact": ExpandRegionWiseMap(map="rwmap", label="label", classes=CLASSES, renormalize="patch"),
                 "on-the-fly": RegionWiseMap(label="label", output="rwmap", classes=CLASSES),
                 "full": None}[map_mode]
    loader = tio.SubjectsLoader(queue, batch_size=2, collate_fn=lambda batch: batch)  # patches (Subjects) as a list
    net = unet(len(CLASSES))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses: list[float] = []
    while len(losses) < steps:
        for batch in loader:
            if per_patch is not None:
                batch = [per_patch(p) for p in batch]
            image = torch.stack([p["image"].data for p in batch])
            rwmap = torch.stack([p["rwmap"].data for p in batch])  # (B, C, *patch)
            loss = (torch.softmax(net(image), dim=1) * rwmap).mean()  # Region-wise loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            print(f"step {len(losses):3d}  region-wise loss {loss.item():+.4f}", flush=True)
            if len(losses) == steps:
                break
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", dest="map_mode", choices=["compact", "full", "on-the-fly"], default="compact",
                        help="where the map comes from [default: compact]")
    parser.add_argument("--maps", type=Path, help="folder of maps of sample_data/Dataset001_Toy written by rwmaps "
                                                   "compute, matching --map [default: computed into a temporary folder]")
    parser.add_argument("--steps", type=int, default=60, help="optimisation steps [default: 60; --quick: 15]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, small patches (CPU, seconds)")
    args = parser.parse_args()
    steps = 15 if args.quick and args.steps == 60 else args.steps
    patch = (16, 16, 8) if args.quick else (32, 32, 16)
    torch.set_num_threads(1)  # a tiny network: more threads only wait for each other
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        maps_dir = args.maps
        if maps_dir is None and args.map_mode != "on-the-fly":
            maps_dir = Path(scratch) / "maps"
            compute_maps_into(maps_dir, args.map_mode)
        losses = train(None if args.map_mode == "on-the-fly" else maps_dir, args.map_mode, steps, patch)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"mean region-wise loss of the first 3 steps {first:+.4f}, of the last 3 {last:+.4f} "
          f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
