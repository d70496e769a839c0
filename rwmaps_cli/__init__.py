"""rwmaps: precompute Region-wise loss maps for segmentation datasets.

The kernels are pure functions on arrays::

    from rwmaps_cli import compute_maps
    maps = compute_maps(labels, classes=[0, 1, 2], kind="rrw")   # (C, *labels.shape)

Where things are: ``contract.py`` says what a map is (kinds, codes, layouts), ``maps.py``
computes one with numpy; ``formats/`` reads and writes each file
format (one module per format); ``mapfile.py`` loads a map for training
(:func:`load_map`); ``manifest.py`` is ``rwmaps.json``; ``compute.py`` is the dataset
service behind ``rwmaps compute``; ``cli.py`` the command line.  Importing the package
loads nothing else; its names load numpy only: scipy, nibabel, SimpleITK, edt, matplotlib
and Dask are imported where a file or a cluster needs them.
"""

from typing import TYPE_CHECKING

# The one place the version is written (pyproject.toml reads it from here): a lookup in
# the installed metadata costs 40 ms of imports in every process and worker.
__version__ = "0.2.0"

# The public names are imported on first use (PEP 562): ``rwmaps compute`` starts its
# workers before it imports numpy and the readers, so that both happen at once.
_EXPORTS = {"MapMeta": "mapfile", "load_map": "mapfile", "ENGINES": "contract", "KINDS": "contract",
            "LAYOUTS": "contract", **{name: "maps" for name in (
                "class_codes", "compute_maps", "compute_maps_batch", "expand_map", "unique_labels")}}

__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .mapfile import MapMeta, load_map
    from .contract import ENGINES, KINDS, LAYOUTS
    from .maps import class_codes, compute_maps, compute_maps_batch, expand_map, unique_labels


def __getattr__(name: str):
    import importlib

    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:  # a submodule, as `rwmaps_cli.maps` worked when this file imported it
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as missing:
            if missing.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
