"""nnU-Net v2 training with RW loss, from maps stored beside its preprocessed data.

Reading nnU-Net's folders is an input and lives with the inputs: the preprocessed folder
model in ``rwmaps_cli/inputs/nnunet_preprocessed.py``, the plans JSON in
``rwmaps_cli/formats/nnunet_plans.py``, the segs in the label format
``rwmaps_cli/formats/nnunet.py``; ``rwmaps compute --input <preprocessed folder>`` writes the
maps.  This package trains: ``store`` reads the maps folder back, and ``trainers``,
``loader``, ``transforms``, ``losses`` and ``train`` need nnU-Net
(``pip install -e '.[nnunet]'``) and are imported on use, never from here.

The names below are loaded on first access (PEP 562), so importing this package loads
nothing else; the folder model's names are offered here too, where nnU-Net users look.
"""

from __future__ import annotations

import importlib

#: The message given when the nnunet extra is missing.
EXTRA_HINT = "nnU-Net training needs the nnunet extra: pip install -e '.[nnunet]' in the rwmaps clone"

_EXPORTS = {
    "rwmaps_cli.inputs.nnunet_preprocessed": ("MAPS_SUFFIX", "PreprocessedCase", "PreprocessedError", "PreprocessedFolder", "check_output",
                     "maps_folder_beside", "find_plans", "is_preprocessed_folder", "list_cases", "map_spacing",
                     "open_preprocessed", "plans_fingerprint", "read_classes", "read_seg", "resolve_configuration"),
    "rwmaps_cli.nnunet.store": ("MANIFEST_NAME", "MapsFolder", "MapsFolderError", "read_maps_folder"),
}
_OWNER = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name not in _OWNER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_OWNER[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_OWNER])


__all__ = ["EXTRA_HINT", *sorted(_OWNER)]
