"""rwmaps: precompute Region-wise loss maps for segmentation datasets.

The kernels are pure functions on arrays::

    from rwmaps_cli import compute_maps
    maps = compute_maps(labels, classes=[0, 1, 2], kind="rrw")   # (C, *labels.shape)

Where things are: ``maps.py`` computes a map; ``formats/`` reads and writes each file
format (one module per format); ``mapfile.py`` loads a map for training
(:func:`load_map`); ``manifest.py`` is ``rwmaps.json``; ``compute.py`` is the dataset
service behind ``rwmaps compute``; ``cli.py`` the command line.  Importing the package
loads numpy and scipy only: nibabel, SimpleITK, edt, matplotlib and Dask are imported
where a file or a cluster needs them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rwmaps_cli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .mapfile import MapMeta, load_map  # noqa: E402  (after __version__: the modules below read it)
from .maps import (  # noqa: E402
    ENGINES,
    KINDS,
    LAYOUTS,
    class_codes,
    compute_maps,
    compute_maps_batch,
    expand_map,
    unique_labels,
)

__all__ = ["ENGINES", "KINDS", "LAYOUTS", "MapMeta", "class_codes", "compute_maps", "compute_maps_batch", "expand_map",
           "load_map", "unique_labels", "__version__"]
