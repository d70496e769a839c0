"""nnU-Net v2 support: train with RW loss from maps stored beside its preprocessed data.

Reading nnU-Net's preprocessed folders is the format module ``rwmaps_cli.formats.nnunet``
(re-exported here); ``rwmaps compute --input <preprocessed folder>`` writes the maps;
``store`` reads the maps folder back.  These need only numpy (and blosc2 for ``.b2nd``).
``trainers``, ``loader``, ``losses`` and ``train`` need nnU-Net
(``pip install 'rwmaps_cli[nnunet]'``) and are imported on use, never from here.
"""

from ..formats.nnunet import (
    MAPS_SUFFIX,
    PreprocessedCase,
    PreprocessedError,
    PreprocessedFolder,
    check_output,
    default_output,
    find_plans,
    is_preprocessed_folder,
    list_cases,
    map_spacing,
    open_preprocessed,
    plans_fingerprint,
    read_classes,
    read_seg,
)
from .store import (
    MANIFEST_NAME,
    MapsFolder,
    MapsFolderError,
    read_manifest,
)

#: The message given when the nnunet extra is missing.
EXTRA_HINT = "nnU-Net training needs the nnunet extra: pip install 'rwmaps_cli[nnunet]'"

__all__ = [
    "EXTRA_HINT", "MANIFEST_NAME", "MAPS_SUFFIX", "MapsFolder", "MapsFolderError", "PreprocessedCase",
    "PreprocessedError", "PreprocessedFolder", "check_output",
    "default_output", "find_plans", "is_preprocessed_folder", "list_cases", "map_spacing",
    "open_preprocessed", "plans_fingerprint", "read_classes", "read_manifest", "read_seg",
]
