"""Finding the manifest entry of one map file, at the same cost in a folder of 100 maps or 100,000.

``load_map``, ``map_info`` and ``inspect`` need what the manifest says of one map (its
classes, kind and layout; the labels it was computed from).  In rwmaps 0.1 every call listed
the output folder to find the parts' manifests (50 ms at 100,000 maps: the O(n) per case of
``verify`` and ``load_map``), and a process that needed one map parsed every case (0.8 s at
100,000).  Here, per map:

- the manifests of a folder are ``rwmaps.json`` and the files of ``rwmaps.parts/``: a few
  ``stat`` calls, the maps' folder is never listed;
- a manifest's case lines are sorted by case name (``manifest.manifest_text``), and a case's
  name is its map's path under the output folder with a label suffix instead of the map's:
  a binary search over the memory-mapped file reads about log2(n) lines, not n;
- a journal (a run in progress, or killed) is read whole and kept until it changes; a
  manifest of rwmaps 0.1 (unsorted) is parsed whole once per process.

Everything is cached per process by each file's size, mtime and inode, so a data loader
that calls ``load_map`` per sample pays a dictionary look-up and a few ``stat`` calls.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from json.decoder import scanstring
from pathlib import Path

from .formats import output_format
from .manifest import (
    CASES_OPENING,
    SORTED_KEY,
    NewerSchemaError,
    Settings,
    header_settings,
    journal_path,
    manifest_files,
    read_journal,
    read_manifest,
)


@dataclass(frozen=True)
class MapRecord:
    """What the manifests of a folder say of one map file.

    Attributes
    ----------
    manifest : Path
        The manifest that lists the map (``rwmaps.json``, or a part's in ``rwmaps.parts/``),
        else the folder's newest; as the caller named the map (relative stays relative).
    header : dict
        The newest manifest's header (its ``parameters``, ``classes``...).
    settings : Settings or None
        The parameters the maps were made with; None when unreadable, or when the parts of a
        job array disagree.
    entry : dict or None
        The map's case entry; None when the folder's manifests do not list it.
    """

    manifest: Path
    header: dict
    settings: Settings | None
    entry: dict | None


def manifest_for_map(path: str | os.PathLike) -> MapRecord | None:
    """The manifest in the map's folder or the nearest parent that lists it; else the
    nearest manifest (``entry`` None); else None.

    Raises
    ------
    NewerSchemaError
        A manifest of a newer rwmaps (``upgrade rwmaps``, not "no manifest").
    """
    relative_to_cwd = not Path(path).is_absolute()
    path = Path(os.path.abspath(path))

    def shown(manifest: Path) -> Path:  # as the caller named the map: relative stays relative
        return Path(os.path.relpath(manifest)) if relative_to_cwd else manifest

    nearest = None
    for folder in path.parents:
        indexes = _folder_indexes(folder)
        if not indexes:
            continue
        header, settings = _merged_header(indexes)
        relative = path.relative_to(folder).parts
        for index in reversed(indexes):  # the newest entry of a case wins, as in read_folder_manifest
            entry = index.find(relative)
            if entry is not None:
                return MapRecord(shown(index.path), header, settings, entry)
        if nearest is None:
            nearest = MapRecord(shown(indexes[-1].path), header, settings, None)
    return nearest


def _merged_header(indexes: list[_ManifestIndex]) -> tuple[dict, Settings | None]:
    """The newest header, and the settings all the folder's manifests share (None if they differ)."""
    newest = indexes[-1]
    same = all(index.settings == newest.settings for index in indexes)
    return newest.header, newest.settings if same else None


def _folder_indexes(folder: Path) -> list[_ManifestIndex]:
    """The readable manifests of ``folder``, oldest first, each indexed (cached)."""
    try:
        files = manifest_files(folder, legacy_parts=False)
    except OSError:
        return []
    indexes = []
    for file in files:
        index = _index_of(file)
        if index is not None:
            indexes.append(index)
    return indexes


_INDEXES: dict[Path, _ManifestIndex] = {}
_CACHED_MANIFESTS = 256  # a folder's rwmaps.json and its parts' (a job array of up to 255 parts stays cached)


def _index_of(path: Path) -> _ManifestIndex | None:
    """The cached index of manifest ``path``, made anew when the file or its journal changed."""
    key = (_identity(path), _identity(journal_path(path)))
    if key[0] is None:  # the manifest went away since the folder was looked at
        return None
    index = _INDEXES.pop(path, None)  # put back last: the dict's order is the least recently used first
    if index is None or index.key != key:
        try:
            index = _ManifestIndex(path, key)
        except NewerSchemaError:
            raise
        except (OSError, ValueError):
            return None  # unreadable: as if absent, as read_folder_manifest's callers treat it
        while len(_INDEXES) >= _CACHED_MANIFESTS:
            _INDEXES.pop(next(iter(_INDEXES)))  # never closed here: a caller may still search it (GC closes it)
    _INDEXES[path] = index
    return index


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime, inode) of a file, or None when it is absent."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


class _ManifestIndex:
    """One manifest file, ready to find one case's entry: sorted (binary search over a
    memory map) or, for a manifest of rwmaps 0.1, parsed whole."""

    def __init__(self, path: Path, key: tuple):
        self.path, self.key = path, key
        self._map: mmap.mmap | None = None
        self._by_map_name: dict[str, list[dict]] | None = None  # an unsorted manifest's entries
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            self._map = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) if size else None
        opening = self._map.find(CASES_OPENING.encode()) if self._map is not None else -1
        header = json.loads(self._map[:opening] + b"\n}") if opening > 0 else None
        if not isinstance(header, dict) or not header.get(SORTED_KEY):
            self._parse_whole()
            return
        self.header = header
        self.settings, _ = header_settings(header)  # NewerSchemaError for a newer rwmaps' manifest
        self._lines = (opening + len(CASES_OPENING) + 1, max(opening, self._map.rfind(b"\n }\n}")))
        self._journal = _by_map_name(read_journal(journal_path(path), header.get("journal_id")))

    def _parse_whole(self) -> None:
        parsed = read_manifest(self.path)  # the one parser: NewerSchemaError, ValueError
        self._map = None  # closed when no caller holds it any more
        self.header, self.settings = parsed.header, parsed.settings
        self._by_map_name = _by_map_name(parsed.cases)
        self._journal = {}

    def find(self, relative: tuple[str, ...]) -> dict | None:
        """The entry of the map at ``relative`` (path parts under the manifest's folder), or None."""
        for entry in self._journal.get(relative[-1], ()):  # newer than the manifest's lines
            if _records(entry, relative):
                return entry
        if self._by_map_name is None:
            try:
                return self._search(relative)
            except ValueError:  # a damaged line (UnicodeDecodeError too): read the file as a whole
                try:
                    self._parse_whole()
                except ValueError:
                    return None  # unreadable: as if it listed nothing
        return next((e for e in self._by_map_name.get(relative[-1], ()) if _records(e, relative)), None)

    def _search(self, relative: tuple[str, ...]) -> dict | None:
        """Binary search of the sorted case lines: a case's name is the map's relative path
        with a label suffix for the map's (``sub/case.png`` for ``sub/case.npy``), or without
        one (nnU-Net's preprocessed cases): the name equal to the stem, then the consecutive
        lines whose names start with the stem and a dot.  Names such as ``case-1.png``
        (``-`` and space sort before ``.``) lie between: a second bisection jumps over them."""
        try:
            stem = "/".join(relative)[: -len(output_format(relative[-1])) - 1]
        except ValueError:
            return None  # not a map's name
        prefix, jumped = stem + ".", False
        offset = self._first_line_at_or_after(stem)
        while offset < self._lines[1]:
            line_end = self._line_end(offset)
            line = self._map[offset:line_end].decode()
            name, after_name = scanstring(line, 3)  # the line is '  "name": {...},'
            if name == stem or name.startswith(prefix):
                entry = json.loads(line[after_name + 1:].rstrip(","))
                if isinstance(entry, dict) and _records(entry, relative):
                    return entry
                offset = line_end + 1
            elif name.startswith(stem) and not jumped:
                offset, jumped = self._first_line_at_or_after(prefix), True
            else:
                return None
        return None

    def _first_line_at_or_after(self, target: str) -> int:
        """The offset of the first case line whose name is >= ``target`` (the end if none)."""
        low, high = self._lines
        while low < high:
            middle = (low + high) // 2
            start = self._map.rfind(b"\n", low, middle) + 1 or low  # the line holding `middle`
            line_end = self._line_end(start)
            name = self._name(start, line_end)
            if name < target:
                low = line_end + 1
            else:
                high = start
        return low

    def _name(self, start: int, line_end: int) -> str:
        """The case name of the line at ``start``, decoding only its first bytes when they hold it."""
        try:
            return scanstring(self._map[start:min(line_end, start + 256)].decode(), 3)[0]
        except ValueError:  # a longer name (or a multi-byte character cut at 256)
            return scanstring(self._map[start:line_end].decode(), 3)[0]

    def _line_end(self, start: int) -> int:
        end = self._lines[1]
        found = self._map.find(b"\n", start, end)
        return end if found < 0 else found


def _records(entry: dict, relative: tuple[str, ...]) -> bool:
    """Whether ``entry`` records the map at ``relative``: its ``output`` ends with those parts
    (it is recorded as the run named it, relative or absolute)."""
    output = entry.get("output")
    return isinstance(output, str) and Path(output).parts[-len(relative):] == relative


def _by_map_name(cases: dict[str, dict]) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for entry in cases.values():
        if isinstance(entry, dict) and isinstance(entry.get("output"), str):
            by_name.setdefault(Path(entry["output"]).name, []).append(entry)
    return by_name
