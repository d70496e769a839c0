"""The maps folder nnU-Net trains from: writing it from a preprocessed folder, reading it back.

Layout (chosen by measurement, see ``docs/nnunet.md``)::

    nnUNet_preprocessed/DatasetXXX_Name/
        nnUNetPlans_3d_fullres/            nnU-Net's data (never written to)
        nnUNetPlans_3d_fullres_rwmaps/     the sibling maps folder
            <case>.npy                     float32, C-ordered, memory-mappable
            rwmaps.json                    the manifest

Each ``<case>.npy`` is, in the preprocessed arrays' axis order (transposed, resampled):

- ``layout="full"``: ``(C, *spatial)``, one channel per class of the ``dataset.json``
  (``(R, *spatial)``, one per region, for a region-based dataset);
- ``layout="compact"`` (``rrw`` of a label-based dataset only): ``(*spatial)``, each
  voxel's own-class value ``-EDT/max`` (0 on the ignore label).  The full map is
  ``expand(labels, v)``: channel ``c`` is ``v`` where ``labels == classes[c]``, else 1.

``rwmaps.json``::

    {"tool": "rwmaps", "version": ...,
     "source": {"preprocessed": ..., "plans_file": ..., "plans_fingerprint": {...},
                "configuration": "3d_fullres", "dataset_json": ...},
     "parameters": {"classes": [0, 1, 2], "kind": "rrw", "layout": "full", "regions": null,
                    "slice_axis": null, "ignore_label": null, "spacing": "voxel", "format": "npy"},
     "cases": {"case_000": {"input": ".../case_000_seg.b2nd", "output": "case_000.npy",
                            "fingerprint": {"size": ..., "mtime_ns": ...}, "shape": [...],
                            "status": "done", "error": null, "seconds": 0.4}}}

``output`` is relative to the maps folder.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..maps import compute_maps
from ..regions import compute_region_maps, read_label_spec
from .preprocessed import (
    PreprocessedError,
    check_output,
    default_output,
    list_cases,
    map_spacing,
    open_preprocessed,
    plans_fingerprint,
    read_seg,
)

MANIFEST_NAME = "rwmaps.json"
LAYOUTS = ("full", "compact")


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
        if not isinstance(entry, dict) or entry.get("status") != "done":
            raise MapsFolderError(f"{self.folder}: no finished map for case {case!r}; run rwmaps compute again")
        return self.folder / entry["output"]


def read_manifest(folder: str | Path) -> MapsFolder:
    """Read a maps folder's ``rwmaps.json`` (to be replaced by the shared manifest parser).

    Raises
    ------
    MapsFolderError
        When the manifest is missing, unreadable, or lacks ``parameters.classes``.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MapsFolderError(f"{folder}: no {MANIFEST_NAME}; compute the maps first (rwmaps compute --input "
                              f"<the preprocessed folder>)") from None
    except (OSError, ValueError) as error:
        raise MapsFolderError(f"{path}: cannot read it ({error})") from None
    parameters = data.get("parameters") if isinstance(data, dict) else None
    if not isinstance(parameters, dict) or not isinstance(parameters.get("classes"), list):
        raise MapsFolderError(f"{path}: no parameters.classes")
    if parameters.get("layout", "full") not in LAYOUTS:
        raise MapsFolderError(f"{path}: unknown layout {parameters.get('layout')!r}")
    return MapsFolder(folder, parameters, data.get("cases") or {}, data.get("source") or {})


def expand_compact(compact: np.ndarray, labels: np.ndarray, classes: Sequence[int], outside: float = 1.0,
                   ignore_label: int | None = None) -> np.ndarray:
    """Full map ``(C, *spatial)`` from a compact one: channel c = v where labels == classes[c], else outside.

    Voxels with the ignore label are 0 in every channel.  (Private stand-in for
    ``rwmaps_cli.maps.expand_map``; replace it when that lands.)
    """
    compact = np.asarray(compact, dtype=np.float32)
    out = np.empty((len(classes), *compact.shape), dtype=np.float32)
    for c, value in enumerate(classes):
        mask = labels == value
        out[c] = np.where(mask, compact, np.float32(outside))
    if ignore_label is not None:
        out[:, labels == ignore_label] = 0
    return out


def compact_from_full(full: np.ndarray, labels: np.ndarray, classes: Sequence[int],
                      ignore_label: int | None = None) -> np.ndarray:
    """Each voxel's own-class value of a full map: ``(*spatial)`` float32, 0 on the ignore label."""
    out = np.zeros(labels.shape, dtype=np.float32)
    for c, value in enumerate(classes):
        np.copyto(out, full[c], where=labels == value)
    if ignore_label is not None:
        out[labels == ignore_label] = 0
    return out


def case_map(labels: np.ndarray, parameters: dict, spacing: Sequence[float] | None = None,
             threads: int = 1) -> np.ndarray:
    """The map of one seg as the parameters of a maps folder say: full or compact, classes or regions."""
    kind = parameters.get("kind", "rrw")
    common = dict(kind=kind, spacing=spacing, slice_axis=parameters.get("slice_axis"),
                  ignore_label=parameters.get("ignore_label"), threads=threads)
    if parameters.get("regions") is not None:
        return compute_region_maps(labels, parameters["regions"], **common)
    full = compute_maps(labels, parameters["classes"], **common)
    if parameters.get("layout", "full") == "compact":
        return compact_from_full(full, labels, parameters["classes"], parameters.get("ignore_label"))
    return full


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.rwmaps-tmp-{os.getpid()}-{secrets.token_hex(4)}.npy")
    try:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _file_fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def compute_preprocessed_maps(
    preprocessed_folder: str | Path,
    output: str | Path | None = None,
    layout: str = "full",
    kind: str = "rrw",
    spacing: str = "voxel",
    threads: int = 1,
    cases: Sequence[str] | None = None,
    progress=None,
) -> Path:
    """Write the maps of every case of an nnU-Net preprocessed configuration folder.

    Classes, ignore label and regions come from the ``dataset.json`` beside the folder;
    a 2d configuration gets per-slice maps along the first spatial axis (the slices
    nnU-Net's 2d loader takes).  A rerun skips cases whose map is done with the same
    parameters, from an unchanged seg file and plans file; after re-preprocessing
    everything is computed again.

    Parameters
    ----------
    preprocessed_folder : path of ``nnUNet_preprocessed/DatasetXXX/<plans>_<configuration>``
    output : path, optional
        The maps folder; default the sibling ``<folder>_rwmaps``.  Never inside the data
        folder.
    layout : {"full", "compact"}
        ``compact`` (one channel) for ``rrw`` on a label-based dataset only.
    kind : {"rrw", "boundary", "kervadec", "ac"}
    spacing : {"voxel", "physical"}
        Distances in voxels, or in mm using the configuration's target spacing.
    threads : int
        Threads for the EDT.
    cases : sequence of str, optional
        Only these case names (default: all).
    progress : callable(name, entry), optional
        Called after each case.

    Returns
    -------
    Path of the maps folder.

    Raises
    ------
    PreprocessedError, MapsFolderError, LabelSpecError
        For bad input, before any map is written.
    """
    pre = open_preprocessed(preprocessed_folder)
    out = check_output(pre.folder, output if output is not None else default_output(pre.folder))
    if layout not in LAYOUTS:
        raise MapsFolderError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if spacing not in ("voxel", "physical"):
        raise MapsFolderError(f"unknown spacing {spacing!r}; expected voxel or physical")
    spec = read_label_spec(pre.dataset_json)
    if layout == "compact" and (kind != "rrw" or spec.has_regions):
        raise MapsFolderError("the compact layout is for rrw maps of a label-based dataset; use --layout full"
                              + (" (regions overlap)" if spec.has_regions else ""))
    all_cases = list_cases(pre.folder)
    if cases is not None:
        wanted = set(cases)
        all_cases = [c for c in all_cases if c.name in wanted]
    parameters = {
        "classes": spec.classes,
        "kind": kind,
        "layout": layout,
        "regions": spec.regions,
        "slice_axis": pre.slice_axis,
        "ignore_label": spec.ignore_label,
        "spacing": spacing,
        "format": "npy",
    }
    source = {
        "preprocessed": str(pre.folder),
        "plans_file": str(pre.plans_file),
        "plans_fingerprint": plans_fingerprint(pre.plans_file),
        "configuration": pre.configuration,
        "dataset_json": str(pre.dataset_json),
    }
    from .. import __version__

    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_entries(out, parameters, source)
    entries: dict[str, dict] = {}
    manifest = {"tool": "rwmaps", "version": __version__, "source": source, "parameters": parameters,
                "cases": entries}
    phys = map_spacing(pre) if spacing == "physical" else None
    for case in all_cases:
        fingerprint = _file_fingerprint(case.seg)
        old = previous.get(case.name)
        target = out / f"{case.name}.npy"
        if old and old.get("status") == "done" and old.get("fingerprint") == fingerprint and target.is_file() \
                and target.stat().st_size == old.get("bytes"):
            entries[case.name] = old
            continue
        start = time.perf_counter()
        entry = {"input": str(case.seg), "output": target.name, "fingerprint": fingerprint}
        try:
            labels = read_seg(case.seg)
            array = case_map(labels, parameters, phys, threads)
            _atomic_save(target, array.astype(np.float32, copy=False))
            entry.update(status="done", error=None, shape=list(array.shape), bytes=target.stat().st_size)
        except (PreprocessedError, ValueError) as error:
            entry.update(status="failed", error=str(error).splitlines()[0], shape=None)
        entry["seconds"] = round(time.perf_counter() - start, 3)
        entries[case.name] = entry
        _write_manifest(out, manifest)
        if progress is not None:
            progress(case.name, entry)
    _write_manifest(out, manifest)
    return out


def _previous_entries(out: Path, parameters: dict, source: dict) -> dict:
    """Case entries of an earlier run with the same parameters and plans, else {}."""
    try:
        data = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("parameters") != parameters:
        return {}
    if (data.get("source") or {}).get("plans_fingerprint") != source["plans_fingerprint"]:
        return {}
    cases = data.get("cases")
    return cases if isinstance(cases, dict) else {}


def _write_manifest(out: Path, manifest: dict) -> None:
    path = out / MANIFEST_NAME
    tmp = out / f".{MANIFEST_NAME}.rwmaps-tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
