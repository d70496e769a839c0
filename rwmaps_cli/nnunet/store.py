"""The maps folder nnU-Net trains from, as the trainers read it.

``rwmaps compute --input $nnUNet_preprocessed/DatasetXXX/nnUNetPlans_3d_fullres`` writes it
(``rwmaps_cli.compute``; the folder is understood by ``rwmaps_cli.inputs.nnunet_preprocessed``, the
segs read by ``rwmaps_cli.formats.nnunet``)::

    nnUNet_preprocessed/DatasetXXX_Name/
        nnUNetPlans_3d_fullres/            nnU-Net's data (never written to)
        nnUNetPlans_3d_fullres_rwmaps/     the sibling maps folder
            <case>.npy                     float32, memory-mappable
            rwmaps.json                    the manifest (rwmaps_cli.manifest)

Each ``<case>.npy`` is, in the preprocessed arrays' axis order (transposed, resampled):
``(C, *spatial)`` full, one channel per class of ``dataset.json`` (``(R, *spatial)``, one per
region, for a region-based dataset), of the manifest's kind (``rrw`` by default; ``sdf``,
``boundary``, ``kervadec`` or ``ac`` with ``--kind``); or ``(*spatial)`` compact (``rrw`` of a
label-based dataset): each voxel's own-class value, expanded with the augmented seg after
augmentation.
Why ``.npy`` and not blosc2: measured in ``docs/nnunet.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..manifest import MANIFEST_NAME, read_folder_manifest
from ..results import DONE


class MapsFolderError(InputError, ValueError):
    """A maps folder that cannot be used for training (one line, names the cause)."""


@dataclass(frozen=True)
class MapsFolder:
    """A maps folder as its manifest describes it.

    Attributes
    ----------
    folder : Path
    parameters : dict
        The manifest's ``parameters`` (classes, kind, layout, regions, slice_axis,
        ignore_label, ...).
    cases : dict
        Case name to its manifest entry.
    source : dict
        Where the maps came from (preprocessed folder, plans fingerprint), may be empty.
    """

    folder: Path
    parameters: dict
    cases: dict
    source: dict

    @property
    def layout(self) -> str:
        return self.parameters.get("layout", "full")

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.parameters["classes"]]

    @property
    def regions(self) -> list[list[int]] | None:
        return self.parameters.get("regions")

    @property
    def ignore_label(self) -> int | None:
        return self.parameters.get("ignore_label")

    @property
    def kind(self) -> str:
        return self.parameters.get("kind", "rrw")

    def path(self, case: str) -> Path:
        """The map file of a case that is done.

        Raises
        ------
        MapsFolderError
            When the manifest has no finished map for it.
        """
        entry = self.cases.get(case)
        if not isinstance(entry, dict) or entry.get("status") != DONE:
            raise MapsFolderError(f"{self.folder}: no finished map for case {case!r}; run rwmaps compute again")
        return self.folder / Path(entry["output"]).name


def read_maps_folder(folder: str | Path) -> MapsFolder:
    """The maps folder as its manifest describes it (the shared parser, merged over parts).

    Raises
    ------
    MapsFolderError
        When the manifest is missing, unreadable, or its parameters cannot be used.
    """
    folder = Path(folder)
    try:
        parsed = read_folder_manifest(folder)
    except FileNotFoundError:
        raise MapsFolderError(f"{folder}: no {MANIFEST_NAME}; compute the maps first (rwmaps compute --input "
                              f"<the preprocessed folder>)") from None
    except ValueError as error:
        raise MapsFolderError(f"{folder / MANIFEST_NAME}: cannot read it ({error})") from None
    if parsed.settings is None:
        raise MapsFolderError(f"{folder / MANIFEST_NAME}: {parsed.settings_error}")
    return MapsFolder(folder, parsed.settings.to_parameters(), parsed.cases, parsed.header.get("source") or {})
