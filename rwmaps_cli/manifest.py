"""``rwmaps.json``: what a run was asked for, and what became of each case.

This module owns the schema: :class:`Settings` (the parameters that decide the maps)
to and from the manifest's header, :class:`CaseResult` (what a worker reports for one
case), the per-case entries, and the one parser, :func:`read_manifest`.

The manifest is rewritten atomically after every finished case, so it is valid JSON at
every moment and a killed run still leaves the record of the cases it finished.  A
rerun reads it to skip the cases whose map is done, with the same parameters, from an
unchanged input; ``load_map`` finds a map's classes, kind and layout in it.  The schema is
written out in ``docs/design.md`` ("The manifest").
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .formats import LAYOUTS, OUTPUT_FORMATS, atomic_path
from .maps import ENGINES, KINDS

MANIFEST_NAME = "rwmaps.json"
PART_MANIFEST_GLOB = "rwmaps.part-*-of-*.json"  # one per part of a job array: no two writers share a file


def part_manifest_name(part: int, parts: int) -> str:
    """``rwmaps.part-03-of-08.json``: the manifest a part of a job array writes."""
    width = len(str(parts - 1))
    return f"rwmaps.part-{part:0{width}d}-of-{parts}.json"
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Settings:
    """Everything that decides the maps of a case, and how they are stored."""

    classes: tuple[int, ...]
    kind: str = "rrw"
    spacing: str = "voxel"  # "voxel" or "physical" (voxel sizes from the file header)
    slice_axis: int | None = None
    dtype: str = "float32"
    fmt: str = "nii.gz"
    engine: str = "edt"
    ignore_label: int | None = None
    layout: str = "full"  # "full": (C, *spatial); "compact": (*spatial), rrw only
    regions: tuple[tuple[int, ...], ...] | None = None  # one channel per region (nnU-Net's region-based datasets)

    def to_parameters(self) -> dict:
        """The manifest's ``parameters``: what a rerun must share to reuse earlier maps
        (engine excluded: both engines give the same maps)."""
        parameters = asdict(self)
        parameters.pop("engine")
        parameters["classes"] = list(self.classes)
        parameters["regions"] = None if self.regions is None else [list(r) for r in self.regions]
        return parameters

    @classmethod
    def from_parameters(cls, parameters: dict, engine: str | None = None) -> Settings:
        """The inverse of :meth:`to_parameters`; ValueError naming what is wrong.

        A manifest of rwmaps 0.1 has no ``layout`` (its maps are full) and no ``regions``.
        """
        if not isinstance(parameters, dict):
            raise ValueError("has no 'parameters'")
        try:
            settings = cls(
                classes=tuple(int(v) for v in parameters["classes"]),
                kind=parameters["kind"],
                spacing=parameters["spacing"],
                slice_axis=None if parameters["slice_axis"] is None else int(parameters["slice_axis"]),
                dtype=parameters["dtype"],
                fmt=parameters["fmt"],
                engine=engine if engine in ENGINES else "edt",
                ignore_label=None if parameters["ignore_label"] is None else int(parameters["ignore_label"]),
                layout=parameters.get("layout", "full"),
                regions=None if parameters.get("regions") is None
                else tuple(tuple(int(v) for v in region) for region in parameters["regions"]),
            )
        except KeyError as error:
            raise ValueError(f"lacks parameter {error}") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"has invalid parameters ({error})") from None
        if (settings.kind not in KINDS or settings.spacing not in ("voxel", "physical") or settings.dtype not in DTYPES
                or settings.fmt not in OUTPUT_FORMATS or settings.layout not in LAYOUTS
                or not settings.classes):
            raise ValueError(f"has invalid parameters {parameters}")
        return settings


@dataclass
class CaseResult:
    """What a worker reports for one case; never an exception.

    ``status`` is ``"done"`` (map written), ``"failed"`` (``error`` says why in one line),
    ``"scanned"`` (label values listed in ``values``) or ``"checked"`` (``problems``).
    """

    name: str
    status: str
    error: str | None = None
    seconds: float | None = None
    shape: list[int] | None = None
    values: list[int] | None = None
    problems: list[str] = field(default_factory=list)
    traceback: str | None = None
    unknown_labels: bool = False  # failed because labels hold values outside the class list
    disk_full: bool = False  # failed because the output file system is full


@dataclass
class ManifestFile:
    """A parsed manifest: its header, the settings it describes, its case entries."""

    path: Path
    header: dict
    cases: dict[str, dict]
    settings: Settings | None
    settings_error: str | None  # why ``settings`` is None


def read_manifest(path: str | os.PathLike) -> ManifestFile:
    """Parse ``rwmaps.json``: the one parser.

    Raises
    ------
    FileNotFoundError
        No manifest there.
    ValueError
        Not a JSON object with an object of cases (the message says which).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(str(error)) from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    cases = data.get("cases") or {}
    if not isinstance(cases, dict):
        raise ValueError("'cases' is not an object")
    header = {k: v for k, v in data.items() if k != "cases"}
    try:
        settings, settings_error = Settings.from_parameters(header.get("parameters"), header.get("engine")), None
    except ValueError as error:
        settings, settings_error = None, str(error)
    cases = {name: entry for name, entry in cases.items() if isinstance(entry, dict)}
    return ManifestFile(path, header, cases, settings, settings_error)


def manifest_files(folder: str | os.PathLike) -> list[Path]:
    """The manifests in ``folder``: ``rwmaps.json`` and the parts', oldest first."""
    folder = Path(folder)
    files = [p for p in [folder / MANIFEST_NAME, *folder.glob(PART_MANIFEST_GLOB)] if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def read_folder_manifest(folder: str | os.PathLike) -> ManifestFile:
    """The manifest of an output folder: ``rwmaps.json`` merged with the parts' manifests.

    Parts of a job array each write their own file (no two processes ever write one file,
    which stays correct on NFS); a case's newest entry wins.  The parts must agree on the
    parameters: when they do not, ``settings`` is None and ``settings_error`` says so.

    Raises
    ------
    FileNotFoundError
        No manifest in ``folder``.
    ValueError
        A manifest that is not valid (the message names the file).
    """
    files = manifest_files(folder)
    if not files:
        raise FileNotFoundError(Path(folder) / MANIFEST_NAME)
    parsed = []
    for path in files:
        try:
            parsed.append(read_manifest(path))
        except ValueError as error:
            raise ValueError(f"{path.name}: {error}" if len(files) > 1 else str(error)) from None
    newest = parsed[-1]
    cases: dict[str, dict] = {}
    for one in parsed:
        cases.update(one.cases)
    settings, error = newest.settings, newest.settings_error
    disagree = [one.path.name for one in parsed if one.settings != newest.settings]
    if disagree:
        settings, error = None, (f"{', '.join(disagree)} and {newest.path.name} were made with other parameters "
                                 "(parts of one run must share them)")
    return ManifestFile(Path(folder) / MANIFEST_NAME, newest.header, cases, settings, error)


class Manifest:
    """The manifest a run keeps current on disk: ``rwmaps.json``, or its part's file."""

    def __init__(self, output_dir: Path, settings: Settings, version: str, cases: dict | None = None,
                 selection: dict | None = None, name: str = MANIFEST_NAME, source: dict | None = None):
        self.path = Path(output_dir) / name
        self.settings = settings
        self.header = {"tool": "rwmaps", "version": version, "parameters": settings.to_parameters(),
                       "classes": list(settings.classes), "engine": settings.engine,
                       "selection": selection or {"include": [], "exclude": []},  # which files are cases
                       "source": source}  # for an nnU-Net preprocessed folder: its plans and their fingerprint
        self.cases: dict[str, dict] = dict(cases or {})

    @staticmethod
    def load(output_dir: Path) -> ManifestFile | None:
        """What earlier runs (or parts) left in ``output_dir``; None if absent or unreadable
        (then every map is checked again)."""
        try:
            return read_folder_manifest(output_dir)
        except (FileNotFoundError, ValueError):
            return None

    def done_entry(self, name: str, input_path: Path) -> dict | None:
        """The entry of a case recorded done from the same input, else None."""
        entry = self.cases.get(name)
        if entry is None or entry.get("status") != "done" or entry.get("fingerprint") != fingerprint(input_path):
            return None
        return entry

    def record(self, input_path: Path, output_path: Path, result: CaseResult, reader: str | None = None) -> None:
        """Store the result of one case and write the manifest to disk.

        The input is recorded as an absolute path, so ``load_map`` finds the labels of a
        map (to expand a compact one) from any working directory; ``reader`` names the
        format that read it when its suffix does not (nnU-Net's segs).
        """
        entry = {"input": os.path.abspath(input_path), "output": str(output_path),
                 "fingerprint": fingerprint(input_path), "status": result.status, "error": result.error,
                 "shape": result.shape, "seconds": result.seconds, "values": result.values}
        if reader is not None:
            entry["reader"] = reader
        if result.status == "done":
            entry["bytes"] = Path(output_path).stat().st_size
        self.cases[result.name] = entry
        self.write()

    def write(self) -> None:
        """Write atomically: a temporary file beside it, then a rename."""
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({**self.header, "cases": self.cases}, indent=1) + "\n")


def fingerprint(path: Path) -> dict | None:
    """Size and modification time of an input: changes when the file does."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def changed_parameters(before: Settings, now: Settings) -> list[str]:
    """The names of the parameters that differ (``"fmt"``, ``"classes"``...)."""
    old, new = before.to_parameters(), now.to_parameters()
    return [key for key in new if old.get(key) != new.get(key)]


# --------------------------------------------------------------------------- finding a map's manifest


@dataclass(frozen=True)
class MapRecord:
    """The manifest that lists a map file: its path (as the caller named it), and the entry."""

    manifest: Path
    parsed: ManifestFile
    entry: dict | None  # None: the nearest manifest, which does not list this map


def manifest_for_map(path: str | os.PathLike) -> MapRecord | None:
    """The ``rwmaps.json`` in the map's folder or the nearest parent whose manifest lists
    it; else the nearest manifest (``entry`` None); else None."""
    relative_to_cwd = not Path(path).is_absolute()
    path = Path(os.path.abspath(path))
    nearest = None
    for folder in path.parents:
        candidate = folder / MANIFEST_NAME
        cached = _cached_manifest(folder)
        if cached is None:
            continue
        parsed, by_name = cached
        shown = Path(os.path.relpath(candidate)) if relative_to_cwd else candidate  # as the caller named the map
        relative = path.relative_to(folder).parts
        for entry in by_name.get(path.name, ()):
            if Path(entry["output"]).parts[-len(relative):] == relative:
                return MapRecord(shown, parsed, entry)
        if nearest is None:
            nearest = MapRecord(shown, parsed, None)
    return nearest


_MANIFEST_CACHE: dict[tuple, tuple[ManifestFile, dict[str, list[dict]]]] = {}


def _cached_manifest(folder: Path) -> tuple[ManifestFile, dict[str, list[dict]]] | None:
    """(the folder's merged manifest, case entries by output file name), or None if absent
    or unreadable.

    Cached by the manifests' paths, sizes and mtimes: a data loader calls load_map for every
    map of every epoch, and a manifest of many cases takes milliseconds to parse.
    """
    try:
        key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in manifest_files(folder))
    except OSError:
        return None
    if not key:
        return None
    if key not in _MANIFEST_CACHE:
        try:
            parsed = read_folder_manifest(folder)
        except (FileNotFoundError, ValueError):
            return None
        by_name: dict[str, list[dict]] = {}
        for entry in parsed.cases.values():
            if isinstance(entry.get("output"), str):
                by_name.setdefault(Path(entry["output"]).name, []).append(entry)
        if len(_MANIFEST_CACHE) >= 16:
            _MANIFEST_CACHE.clear()
        _MANIFEST_CACHE[key] = (parsed, by_name)
    return _MANIFEST_CACHE[key]
