"""nnU-Net v2 support: read its preprocessed data, store maps beside it, train with RW loss.

``preprocessed`` and ``store`` need only numpy (and blosc2 to read ``.b2nd`` segs);
``trainers``, ``loader``, ``losses`` and ``train`` need nnU-Net (``pip install 'rwmaps_cli[nnunet]'``)
and are imported on use, never from here.
"""

from .preprocessed import (
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
    case_map,
    compute_preprocessed_maps,
    expand_compact,
    read_manifest,
)

#: The message given when the nnunet extra is missing.
EXTRA_HINT = "nnU-Net training needs the nnunet extra: pip install 'rwmaps_cli[nnunet]'"

__all__ = [
    "EXTRA_HINT", "MANIFEST_NAME", "MAPS_SUFFIX", "MapsFolder", "MapsFolderError", "PreprocessedCase",
    "PreprocessedError", "PreprocessedFolder", "case_map", "check_output", "compute_preprocessed_maps",
    "default_output", "expand_compact", "find_plans", "is_preprocessed_folder", "list_cases", "map_spacing",
    "open_preprocessed", "plans_fingerprint", "read_classes", "read_manifest", "read_seg",
]
