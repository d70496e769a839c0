"""What the end of a ``compute`` run suggests to the user: one line each, never an error.

Options are named as the Python API spells them, in backquotes (``layout=compact``); the
command line shows its flags instead (``cli.in_flags``).
"""

from __future__ import annotations

import numpy as np

from .classlist import listing, unseen_classes
from .inputs.dataset import Dataset
from .manifest import Manifest, Settings
from .results import DONE, CaseResult

# Above this many bytes per full map, the summary suggests the compact layout.
COMPACT_HINT_BYTES = 1_000_000_000


def run_hints(dataset: Dataset, settings: Settings, manifest: Manifest, failures: list[CaseResult],
              check_unseen: bool, voxels: dict[str, int]) -> list[str]:
    """The hints for a finished run.

    Parameters
    ----------
    dataset, settings, manifest
        The run's.
    failures : list of CaseResult
        The cases that failed.
    check_unseen : bool
        Whether to name the classes of a given list that occur in no case (a typo?).
    voxels : dict of case name to int
        The voxels of the cases whose headers were read.
    """
    hints = []
    if settings.kind == "rrw" and settings.layout == "full" and settings.regions is None:
        largest = max(voxels.values(), default=0) * len(settings.classes) * np.dtype(settings.dtype).itemsize
        if largest > COMPACT_HINT_BYTES:
            hints.append(f"the largest map is {largest / 1e9:.1f} GB; `layout=compact` stores one channel "
                         f"instead of {len(settings.classes)}, {len(settings.classes)}x smaller, and "
                         "rwmaps_cli.load_map expands it exactly")
    if check_unseen and not failures:
        unseen = unseen_classes(settings.classes, [entry.get("values") for entry in manifest.cases.values()
                                                   if entry.get("status") == DONE])
        if unseen:
            hints.append(f"class values {listing(unseen)} occur in no case: their channels are constant "
                         "(a typo in `classes` or dataset.json?); `strict=True` refuses this")
    if any(result.unknown_labels for result in failures) and dataset.dataset_json is not None:
        shown = str(list(settings.classes)) if len(settings.classes) <= 8 else f"({listing(settings.classes)})"
        hints.append(f"the class list {shown} comes from {dataset.dataset_json}; "
                     "fix its 'labels' or pass `classes`")
    return hints


#: After a run whose torch engine computed on the CPU: the default engine is the faster one there.
TORCH_ON_CPU_HINT = ("`engine=torch` computed on the CPU (PyTorch sees no GPU here), where the default "
                     "`engine=edt` is faster (15-20x, docs/performance.md) and gives the same maps")
