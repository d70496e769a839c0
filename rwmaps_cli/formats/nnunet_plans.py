"""nnU-Net v2's plans file, read as JSON without importing nnU-Net.

A preprocessed configuration folder ``nnUNet_preprocessed/DatasetXXX_Name/<plans>_<cfg>``
sits beside ``<plans>.json``; the configuration whose ``data_identifier`` is the folder's
name says how its arrays were made (patch size, target spacing).  This module imports
nothing of rwmaps but its errors, so the seg reader in ``rwmaps_cli/formats/nnunet.py``
can take the spacing from here without depending on the folder model above it
(``rwmaps_cli/inputs/nnunet_preprocessed.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import PreprocessedError

#: Files beside the configuration folders that are not plans.
_NOT_PLANS = {"dataset.json", "dataset_fingerprint.json", "splits_final.json"}

#: ``inherits_from`` chains longer than this are taken as a loop and cut.
_MAX_INHERITANCE = 10


def resolve_configuration(configurations: dict, name: str) -> dict:
    """A configuration with its ``inherits_from`` chain applied, as nnU-Net's PlansManager does.

    Parameters
    ----------
    configurations : dict
        The ``configurations`` entry of a plans file.
    name : str
        A configuration name (``3d_fullres``, ``3d_cascade_fullres``, ...).

    Returns
    -------
    dict
        The configuration's entries over those of its ancestors; ``{}`` for an unknown name.
    """
    return _resolve(configurations, name, 0)


def _resolve(configurations: dict, name: str, depth: int) -> dict:
    config = configurations.get(name)
    if not isinstance(config, dict):
        return {}
    parent = config.get("inherits_from")
    if parent is None or depth > _MAX_INHERITANCE:
        return config
    return {**_resolve(configurations, parent, depth + 1), **config}


def find_plans(folder: str | Path) -> tuple[Path, dict, str]:
    """The plans file beside a configuration folder, its content, and the configuration.

    Parameters
    ----------
    folder : path of the configuration folder (``.../nnUNetPlans_3d_fullres``)

    Returns
    -------
    (plans_file, plans, configuration_name)

    Raises
    ------
    PreprocessedError
        When no JSON file beside the folder has a configuration whose ``data_identifier``
        is the folder's name.
    """
    folder = Path(folder)
    candidates = sorted(p for p in folder.parent.glob("*.json") if p.name not in _NOT_PLANS)
    for plans_file in candidates:
        try:
            plans = json.loads(plans_file.read_text())
        except (OSError, ValueError):
            continue
        configurations = plans.get("configurations") if isinstance(plans, dict) else None
        if not isinstance(configurations, dict):
            continue
        matching = [name for name in configurations
                    if resolve_configuration(configurations, name).get("data_identifier") == folder.name]
        if matching:
            plans_name = plans.get("plans_name", plans_file.stem)
            suffix = folder.name[len(plans_name) + 1:] if folder.name.startswith(plans_name + "_") else None
            configuration = suffix if suffix in matching else matching[0]
            return plans_file, plans, configuration
    raise PreprocessedError(f"{folder}: no plans file beside it (looked for a <plans>.json whose configuration's "
                            f"data_identifier is {folder.name!r}); is this an nnU-Net preprocessed folder?")


def spacing_for(spacing: Sequence[float], patch_size: Sequence[int], ndim: int) -> list[float] | None:
    """Voxel sizes of a configuration's arrays of rank ``ndim``, for physical-unit maps.

    For a 2d configuration (2 patch axes) the plans hold only the in-plane spacing; the
    slice axis gets 1.0, which per-slice maps never use.  None when ``spacing`` does not fit.
    """
    spacing = [float(s) for s in spacing]
    if len(spacing) == ndim:
        return spacing
    if len(spacing) == ndim - 1 and len(patch_size) == 2:
        return [1.0, *spacing]
    return None


def folder_spacing(folder: str | Path, ndim: int) -> list[float] | None:
    """The spacing of a configuration folder's arrays of rank ``ndim``, from the plans beside
    it; None when the folder has no plans (a seg away from its folder) or they do not say."""
    if not (Path(folder).parent / "dataset.json").is_file():
        return None  # not a preprocessed dataset's folder, whatever JSON lies beside it
    try:
        plans_file, plans, configuration = find_plans(folder)
    except PreprocessedError:
        return None
    config = resolve_configuration(plans["configurations"], configuration)
    return spacing_for(config.get("spacing", []), config.get("patch_size", []), ndim)
