"""rwmaps: precompute Region-wise loss maps for segmentation datasets.

The kernels are pure functions on arrays::

    from rwmaps_cli import compute_maps
    maps = compute_maps(labels, classes=[0, 1, 2], kind="rrw")   # (C, *labels.shape)
"""

from importlib.metadata import PackageNotFoundError, version

from .io import load_map
from .maps import ENGINES, KINDS, class_codes, compute_maps, compute_maps_batch, unique_labels

try:
    __version__ = version("rwmaps_cli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["ENGINES", "KINDS", "class_codes", "compute_maps", "compute_maps_batch", "load_map", "unique_labels",
           "__version__"]
