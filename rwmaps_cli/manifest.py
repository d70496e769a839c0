"""``rwmaps.json``: what a run was asked for, and what became of each case.

This module owns the schema: :class:`Settings` (the parameters that decide the maps)
to and from the manifest's header, the per-case entries made from a worker's
:class:`~rwmaps_cli.results.CaseResult`, and the one parser, :func:`read_manifest`.

A run records each finished case by appending one line to a journal beside the manifest
(``rwmaps.journal``: JSON lines, one ``write`` each, so a case costs the same whether it is
the first or the 100,000th), and folds the journal into ``rwmaps.json`` (an atomic rewrite)
when it starts and when it ends.  A reader (:func:`read_manifest`) takes the manifest and
then the journal's lines, newest last, and ignores a torn last line: after a SIGKILL at
any moment, every case recorded before it is there.  The journal names the manifest it
belongs to (``journal_id``), so a journal left beside a newer manifest is never applied
to it.  Each part of a job array has its own manifest and journal: one writer per file,
which stays right on NFS.  A rerun reads it to skip the cases whose map is done, with
the same parameters, from an unchanged input; ``load_map`` finds a map's classes, kind and
layout in it.  The schema, and why a journal, is in ``docs/design.md`` ("The manifest").
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .errors import UsageError
from .results import DONE, CaseResult
from .lock import PARTS_FOLDER, part_file_name
from .formats import DEFAULT_FORMAT, OUTPUT_FORMATS, SCHEMA, atomic_path, newer_schema
from .contract import (DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_ENGINE, DEFAULT_KIND, DEFAULT_LAYOUT, DEFAULT_SPACING,
                       DTYPE_NAMES, ENGINES, KINDS, LAYOUTS, SPACINGS)

MANIFEST_NAME = "rwmaps.json"
PART_MANIFEST_GLOB = "rwmaps.part-*-of-*.json"  # one per part of a job array, in PARTS_FOLDER: no two writers share a file
JOURNAL_SUFFIX = ".journal"  # rwmaps.json -> rwmaps.journal, beside it
# What manifest_text writes between the header and the first case, and the header key that
# says the case lines are sorted by name (those of rwmaps 0.1 are not).
CASES_OPENING = ',\n "cases": {'
SORTED_KEY = "cases_sorted"


def part_manifest_name(part: int, parts: int) -> str:
    """``rwmaps.parts/rwmaps.part-3-of-8.json``: the manifest a part of a job array writes,
    relative to the output folder."""
    return part_file_name(part, parts, ".json")




@dataclass(frozen=True)
class Settings:
    """Everything that decides the maps of a case, and how they are stored."""

    classes: tuple[int, ...]
    kind: str = DEFAULT_KIND
    spacing: str = DEFAULT_SPACING  # contract.SPACINGS: "voxel", or "physical" (the sizes in the file's header)
    slice_axis: int | None = None
    dtype: str = DEFAULT_DTYPE
    fmt: str = DEFAULT_FORMAT
    engine: str = DEFAULT_ENGINE
    ignore_label: int | None = None
    layout: str = DEFAULT_LAYOUT  # "full": (C, *spatial); "compact": (*spatial), rrw only
    regions: tuple[tuple[int, ...], ...] | None = None  # one channel per region (nnU-Net's region-based datasets)
    device: str = DEFAULT_DEVICE  # where the torch engine computes; like the engine, not a map parameter

    @property
    def map_channels(self) -> int:
        """Channels of a stored map: 1 compact, one per region, else one per class."""
        if self.layout == "compact":
            return 1
        return len(self.regions) if self.regions is not None else len(self.classes)

    @property
    def channel_labels(self) -> list[int]:
        """What a map file records for its channels: the class values (or the compact map's
        class list); for regions, their indices (the regions themselves are in the manifest)."""
        return list(range(len(self.regions))) if self.regions is not None else list(self.classes)

    def to_parameters(self) -> dict:
        """The manifest's ``parameters``: what a rerun must share to reuse earlier maps
        (engine and device excluded: every engine gives the same maps)."""
        parameters = asdict(self)
        parameters.pop("engine")
        parameters.pop("device")
        parameters["classes"] = list(self.classes)
        parameters["regions"] = None if self.regions is None else [list(r) for r in self.regions]
        return parameters

    @classmethod
    def from_parameters(cls, parameters: dict, engine: str | None = None) -> Settings:
        """The inverse of :meth:`to_parameters`; ValueError naming what is wrong.

        A manifest of schema 1 may lack ``layout`` (its first maps were full) and ``regions``.
        A compact run whose class list is settled at its end (none was given) has an empty
        one until then.
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
                engine=engine if engine in ENGINES else DEFAULT_ENGINE,
                ignore_label=None if parameters["ignore_label"] is None else int(parameters["ignore_label"]),
                layout=parameters.get("layout", DEFAULT_LAYOUT),
                regions=None if parameters.get("regions") is None
                else tuple(tuple(int(v) for v in region) for region in parameters["regions"]),
            )
        except KeyError as error:
            raise ValueError(f"lacks parameter {error}") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"has invalid parameters ({error})") from None
        if (settings.kind not in KINDS or settings.spacing not in SPACINGS or settings.dtype not in DTYPE_NAMES
                or settings.fmt not in OUTPUT_FORMATS or settings.layout not in LAYOUTS
                or (not settings.classes and settings.layout != "compact")):
            raise ValueError(f"has invalid parameters {parameters}")
        return settings


class NewerSchemaError(ValueError):
    """A manifest of a schema this rwmaps does not know: never read as if absent."""


@dataclass
class ManifestFile:
    """A parsed manifest: its header, the settings it describes, its case entries."""

    path: Path
    header: dict
    cases: dict[str, dict]
    settings: Settings | None
    settings_error: str | None  # why ``settings`` is None
    journaled: int = 0  # how many of the cases came from the journal (not yet folded into the manifest)


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
    settings, settings_error = header_settings(header)
    cases = {name: entry for name, entry in cases.items() if isinstance(entry, dict)}
    journaled = read_journal(journal_path(path), header.get("journal_id"))
    cases.update(journaled)
    return ManifestFile(path, header, cases, settings, settings_error, journaled=len(journaled))


def header_settings(header: dict) -> tuple[Settings | None, str | None]:
    """(the settings a manifest's header describes, None) or (None, why they cannot be read).

    Raises
    ------
    NewerSchemaError
        A header of a schema newer than this rwmaps reads.
    """
    problem = newer_schema(header.get("schema", 1))
    if problem:
        raise NewerSchemaError(problem)
    try:
        return Settings.from_parameters(header.get("parameters"), header.get("engine")), None
    except ValueError as error:
        return None, str(error)


def journal_path(manifest_path: str | os.PathLike) -> Path:
    """``rwmaps.journal`` beside ``rwmaps.json`` (``rwmaps.part-0-of-2.journal`` beside a part's)."""
    path = Path(manifest_path)
    return path.with_name(path.stem + JOURNAL_SUFFIX)


def read_journal(path: Path, journal_id: str | None) -> dict[str, dict]:
    """The case entries a journal holds, the newest per case, if it belongs to the manifest
    whose ``journal_id`` is given; else none.

    A line that is not a whole JSON object (the last one, torn by a kill mid-write) is
    ignored: it is a case that was never recorded, which a rerun computes again.
    """
    if journal_id is None:
        return {}
    try:
        lines = path.read_bytes().split(b"\n")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as error:
        raise ValueError(f"{path.name}: {error.strerror or error}") from None
    try:
        if json.loads(lines[0]).get("journal_id") != journal_id:
            return {}  # a journal of an earlier manifest (a crash between the two renames)
    except (ValueError, AttributeError):
        return {}
    cases = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
            cases[record["name"]] = record["entry"]
        except (ValueError, KeyError, TypeError):
            continue  # torn (a kill mid-write) or empty (after the last newline)
    return {name: entry for name, entry in cases.items() if isinstance(entry, dict)}


def manifest_files(folder: str | os.PathLike, legacy_parts: bool = True) -> list[Path]:
    """The manifests of output folder ``folder``: ``rwmaps.json`` and the parts', oldest first.

    Never lists ``folder`` itself (it may hold 100,000 maps), only its parts' folder,
    except with ``legacy_parts``: rwmaps 0.1 wrote the parts' manifests beside
    ``rwmaps.json``, and a command that reads a whole folder once (compute, verify) lists
    it to find them.  A plain run moves their records into ``rwmaps.json``.
    """
    folder = Path(folder)
    files = [folder / MANIFEST_NAME]
    try:
        files += [folder / PARTS_FOLDER / name for name in os.listdir(folder / PARTS_FOLDER)
                  if fnmatch.fnmatchcase(name, PART_MANIFEST_GLOB)]
    except OSError:  # no parts (the usual case), or not a folder
        pass
    if legacy_parts:
        files += folder.glob(PART_MANIFEST_GLOB)
    files = [p for p in files if p.is_file()]
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
            raise type(error)(f"{path.name}: {error}" if len(files) > 1 else str(error)) from None
    newest = parsed[-1]
    cases: dict[str, dict] = {}
    for one in parsed:
        cases.update(one.cases)
    settings, error = newest.settings, newest.settings_error
    disagree = [one.path.name for one in parsed if one.settings != newest.settings]
    if disagree:
        settings, error = None, (f"{', '.join(disagree)} and {newest.path.name} were made with other parameters "
                                 "(parts of one run must share them)")
    return ManifestFile(Path(folder) / MANIFEST_NAME, newest.header, cases, settings, error,
                        journaled=sum(one.journaled for one in parsed))


class Manifest:
    """The manifest a run keeps current on disk: ``rwmaps.json`` (or its part's file) and
    its journal.

    :meth:`record` appends one line to the journal per case (O(1), whatever the number
    of cases); :meth:`write` folds everything into the manifest with one atomic rewrite
    and starts a new, empty journal.  A run writes at its start and at its end; a run
    killed in between leaves the manifest plus a journal, which the next reader applies.
    """

    def __init__(self, output_dir: Path, settings: Settings, version: str, cases: dict | None = None,
                 selection: dict | None = None, name: str = MANIFEST_NAME, source: dict | None = None):
        self.folder = Path(output_dir)
        self.path = self.folder / name
        self.journal = journal_path(self.path)
        self.settings = settings
        self.header = {"tool": "rwmaps", "schema": SCHEMA, "version": version, "parameters": settings.to_parameters(),
                       "classes": list(settings.classes), "engine": settings.engine,
                       "selection": selection or {"include": [], "exclude": []},  # which files are cases
                       "source": source}  # for an nnU-Net preprocessed folder: its plans and their fingerprint
        self.cases: dict[str, dict] = dict(cases or {})
        self._journal_fd: int | None = None
        self._torn = False
        self._unwritten = True  # cases or header differ from what the manifest on disk says

    @staticmethod
    def load(output_dir: Path) -> ManifestFile | None:
        """What earlier runs (or parts) left in ``output_dir``; None if absent or unreadable
        (then every map is checked again)."""
        try:
            return read_folder_manifest(output_dir)
        except NewerSchemaError as error:  # recomputing would overwrite a newer rwmaps' maps
            raise UsageError(f"{output_dir}: {error}") from None
        except (FileNotFoundError, ValueError):
            return None

    def set_classes(self, classes: tuple[int, ...]) -> None:
        """Settle the class list after the cases ran (compact maps do not depend on it)."""
        self.settings = replace(self.settings, classes=tuple(classes))
        self.header["parameters"] = self.settings.to_parameters()
        self.header["classes"] = list(classes)
        self._unwritten = True

    def done_entry(self, name: str, input_path: Path) -> dict | None:
        """The entry of a case recorded done from the same input, else None."""
        entry = self.cases.get(name)
        if entry is None or entry.get("status") != DONE or entry.get("fingerprint") != fingerprint(input_path):
            return None
        return entry

    def record(self, input_path: Path, output_path: Path, result: CaseResult, reader: str | None = None) -> None:
        """Store the result of one case: one line appended to the journal.

        The input is recorded as an absolute path, so ``load_map`` finds the labels of a
        map (to expand a compact one) from any working directory; ``reader`` names the
        format that read it when its suffix does not (nnU-Net's segs).  The fingerprints
        are the worker's (taken around its own read and write) when it sent them.
        """
        entry = {"input": os.path.abspath(input_path), "output": str(output_path),
                 "fingerprint": result.input_stat or fingerprint(input_path), "status": result.status,
                 "error": result.error, "shape": result.shape, "seconds": result.seconds, "values": result.values}
        if reader is not None:
            entry["reader"] = reader
        if result.status == DONE:
            entry["map"] = result.map_stat or fingerprint(output_path, inode=True)
            entry["bytes"] = entry["map"]["size"] if entry["map"] else None
        self.cases[result.name] = entry
        self._unwritten = True  # folded into the manifest at the end, even if the journal failed
        self._append({"name": result.name, "entry": entry})

    def _append(self, record: dict) -> None:
        """One ``write`` of one line: a kill leaves the line whole or torn, never two half lines."""
        if "journal_id" not in self.header:
            self.write()  # a journal applies to the manifest that names it: write that first
        if self._journal_fd is None:
            self._journal_fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            self._write_line({"journal_id": self.header["journal_id"]})
        self._write_line(record)

    def _write_line(self, record: dict) -> None:
        # After a failed write (a full disk) the line before may be torn: start on a new line,
        # so that only the torn one is lost.
        data = (("\n" if self._torn else "") + json.dumps(record) + "\n").encode()
        self._torn = True
        while data:  # a regular file takes it in one write; a short write is only possible on a full disk
            data = data[os.write(self._journal_fd, data):]
        self._torn = False

    def write(self) -> None:
        """Fold the journal into the manifest: an atomic rewrite (a temporary beside it,
        then a rename), and a new journal id, so the old journal no longer applies."""
        if not self._unwritten:  # every record sets it
            return  # the manifest on disk already says all of it (a rerun of a finished folder)
        self.close_journal()
        header = {**self.header, "journal_id": secrets.token_hex(8)}
        with atomic_path(self.path) as tmp:
            tmp.write_text(manifest_text(header, self.cases))
        # Only now: a journal names a manifest that is on disk (a failed rewrite keeps the old
        # id, so the journal lines written after it still apply to the manifest there).
        self.header = header
        self.journal.unlink(missing_ok=True)
        self._unwritten = False

    def close_journal(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def adopt(self, previous: ManifestFile) -> None:
        """Mark the manifest on disk as already current when ``previous`` (what was read)
        says exactly what this one would write: then :meth:`write` has nothing to do."""
        # Only when the folder holds this one manifest: a merge of parts' files says nothing
        # about what is in rwmaps.json (read_folder_manifest names its merge rwmaps.json).
        alone = manifest_files(self.folder) == [self.path]
        # A manifest whose cases are not sorted (rwmaps 0.1) is rewritten: readers search sorted ones.
        same = (alone and not previous.journaled and previous.cases == self.cases and previous.header.get(SORTED_KEY)
                and {k: v for k, v in previous.header.items() if k not in ("journal_id", SORTED_KEY)} == self.header)
        if same:
            self.header["journal_id"] = previous.header.get("journal_id")
            self._unwritten = False


def manifest_text(header: dict, cases: dict[str, dict]) -> str:
    """The manifest as JSON text: the header indented, then one line per case, sorted by name.

    One line per case keeps 100,000 cases readable and lets CPython's C encoder write
    them (``json.dumps`` with ``indent`` falls back to the pure-Python encoder, about 7x
    slower).  Sorted lines let a reader find one map's entry by binary search, without
    parsing the others (:mod:`rwmaps_cli.manifest_lookup`); the header says so
    (``SORTED_KEY``).
    """
    head = json.dumps({**header, SORTED_KEY: True}, indent=1)
    body = ",\n".join(f"  {json.dumps(name)}: {json.dumps(cases[name])}" for name in sorted(cases))
    return head[:-2] + CASES_OPENING + ("\n" + body + "\n " if body else "") + "}\n}\n"


def fingerprint(path: str | os.PathLike, inode: bool = False) -> dict | None:
    """Size and modification time of a file (and its inode): changes when the file does.

    A map's fingerprint has the inode too: a map replaced by another file (a rename onto
    it) has a new inode even when size and time agree.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    found = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if inode:
        found["inode"] = stat.st_ino
    return found


def entry_is_current(entry: dict | None, input_path: str | os.PathLike, map_path: str | os.PathLike) -> bool:
    """Whether ``entry`` records ``map_path`` done from ``input_path`` as both files are now:
    two ``stat`` calls.  A truncated, rewritten or replaced map has another size, mtime or
    inode; an entry without the map's fingerprint (rwmaps 0.1) is never current."""
    return (isinstance(entry, dict) and entry.get("status") == DONE and entry.get("map") is not None
            and entry.get("fingerprint") == fingerprint(input_path)
            and entry["map"] == fingerprint(map_path, inode=True))


def changed_parameters(before: Settings, now: Settings, ignore: tuple[str, ...] = ()) -> list[str]:
    """The names of the parameters that differ (``"fmt"``, ``"classes"``...), except ``ignore``."""
    old, new = before.to_parameters(), now.to_parameters()
    return [key for key in new if old.get(key) != new.get(key) and key not in ignore]
