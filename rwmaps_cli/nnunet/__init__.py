"""nnU-Net v2 support: train with RW loss from maps stored beside its preprocessed data.

``preprocessed`` is nnU-Net's preprocessed folder model (plans, cases, classes, where the
maps go); ``plans`` reads its plans JSON; the segs are read by the label format
``rwmaps_cli.formats.nnunet``; ``rwmaps compute --input <preprocessed folder>`` writes the
maps; ``store`` reads the maps folder back.  These need only numpy (and blosc2 for
``.b2nd``).  ``trainers``, ``loader``, ``losses`` and ``train`` need nnU-Net
(``pip install -e '.[nnunet]'``) and are imported on use, never from here.

The names below are loaded on first access (PEP 562), so importing this package, as the
seg format's import of ``rwmaps_cli.nnunet.plans`` does, loads nothing else.
"""

from __future__ import annotations

import importlib

#: The message given when the nnunet extra is missing.
EXTRA_HINT = "nnU-Net training needs the nnunet extra: pip install -e '.[nnunet]' in the rwmaps clone"

_EXPORTS = {
    "preprocessed": ("MAPS_SUFFIX", "PreprocessedCase", "PreprocessedError", "PreprocessedFolder", "check_output",
                     "maps_folder_beside", "find_plans", "is_preprocessed_folder", "list_cases", "map_spacing",
                     "open_preprocessed", "plans_fingerprint", "read_classes", "read_seg", "resolve_configuration"),
    "store": ("MANIFEST_NAME", "MapsFolder", "MapsFolderError", "read_maps_folder"),
}
_OWNER = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name not in _OWNER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_OWNER[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_OWNER])


__all__ = ["EXTRA_HINT", *sorted(_OWNER)]
