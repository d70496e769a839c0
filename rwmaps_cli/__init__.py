"""rwmaps: precompute Region-wise loss maps for segmentation datasets.

The kernels are pure functions on arrays::

    from rwmaps_cli import compute_maps
    maps = compute_maps(labels, classes=[0, 1, 2], kind="rrw")   # (C, *labels.shape)

Where things are: ``maps.py`` computes a map; ``formats/`` reads and writes each file
format (one module per format); ``mapfile.py`` loads a map for training
(:func:`load_map`); ``manifest.py`` is ``rwmaps.json``; ``compute.py`` is the dataset
service behind ``rwmaps compute``; ``cli.py`` the command line.  Importing the package
loads nothing else; its names load numpy only: scipy, nibabel, SimpleITK, edt, matplotlib
and Dask are imported where a file or a cluster needs them.
"""

# The one place the version is written (pyproject.toml reads it from here): a lookup in
# the installed metadata costs 40 ms of imports in every process and worker.
__version__ = "0.2.0"

# The public names are imported on first use (PEP 562): ``rwmaps compute`` starts its
# workers before it imports numpy and the readers, so that both happen at once.
_EXPORTS = {"MapMeta": "mapfile", "load_map": "mapfile", **{name: "maps" for name in (
    "ENGINES", "KINDS", "LAYOUTS", "class_codes", "compute_maps", "compute_maps_batch", "expand_map",
    "unique_labels")}}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rwmaps_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
