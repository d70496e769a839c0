"""``rwmaps.json``: what a run was asked for and what became of each case.

It is rewritten atomically after every finished case, so it is valid JSON at every
moment and a killed run still leaves the record of the cases it finished.  A rerun reads
it to skip cases whose map is done, with the same parameters, from an unchanged input, and
``load_map`` finds a map's classes and kind in it (:func:`manifest_for_map`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .dataset import Case
from .io import atomic_path, map_is_complete

MANIFEST_NAME = "rwmaps.json"


class Manifest:
    """The manifest of one output folder, kept current on disk."""

    def __init__(self, output_dir: Path, header: dict, cases: dict | None = None):
        self.path = Path(output_dir) / MANIFEST_NAME
        self.header = header  # tool, version, parameters, classes
        self.cases: dict[str, dict] = dict(cases or {})

    @classmethod
    def load(cls, output_dir: Path) -> Manifest | None:
        """The manifest left in ``output_dir`` by an earlier run, or None."""
        path = Path(output_dir) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            header = {k: v for k, v in data.items() if k != "cases"}
            return cls(output_dir, header, data.get("cases", {}))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError):
            return None  # unreadable: treated as absent, every map is checked again

    def is_done(self, case: Case) -> bool:
        """True when ``case`` has a complete map from its current input."""
        record = self.cases.get(case.name)
        if record is None or record.get("status") != "done":
            return False
        return record.get("fingerprint") == fingerprint(case.input) and map_is_complete(
            case.output, record.get("shape"), record.get("bytes")
        )

    def record(self, case: Case, result: dict) -> None:
        """Store the result of one case and write the manifest to disk."""
        entry = {
            "input": str(case.input),
            "output": str(case.output),
            "fingerprint": fingerprint(case.input),
            "status": result["status"],
            "error": result.get("error"),
            "shape": result.get("shape"),
            "seconds": result.get("seconds"),
        }
        if result["status"] == "done":
            entry["bytes"] = case.output.stat().st_size
        self.cases[case.name] = entry
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


def manifest_for_map(path: Path) -> tuple[Path, dict, dict | None] | None:
    """(manifest path, its header, this map's case entry) from ``rwmaps.json`` in the map's
    folder or the nearest parent whose manifest lists it; else the nearest manifest with
    entry None; else None."""
    relative_to_cwd = not Path(path).is_absolute()
    path = Path(os.path.abspath(path))
    nearest = None
    for folder in path.parents:
        candidate = folder / MANIFEST_NAME
        parsed = _parsed_manifest(candidate)
        if parsed is None:
            continue
        header, by_name = parsed
        if relative_to_cwd:  # name it as the caller named the map: maps/rwmaps.json
            candidate = Path(os.path.relpath(candidate))
        relative = path.relative_to(folder).parts
        for entry in by_name.get(path.name, ()):
            if Path(entry["output"]).parts[-len(relative):] == relative:
                return candidate, header, entry
        if nearest is None:
            nearest = (candidate, header, None)
    return nearest


_MANIFEST_CACHE: dict[tuple, tuple[dict, dict]] = {}


def _parsed_manifest(path: Path) -> tuple[dict, dict[str, list[dict]]] | None:
    """(header, case entries by output file name) of a manifest, or None if absent or unreadable.

    Cached by path, size and mtime: a data loader calls load_map for every map of every
    epoch, and a manifest of many cases takes milliseconds to parse.
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _MANIFEST_CACHE:
        try:
            data = json.loads(path.read_text())
            cases = data.get("cases") or {}
            header = {k: v for k, v in data.items() if k != "cases"}
            by_name: dict[str, list[dict]] = {}
            for entry in cases.values():
                if isinstance(entry, dict) and isinstance(entry.get("output"), str):
                    by_name.setdefault(Path(entry["output"]).name, []).append(entry)
        except (OSError, ValueError, AttributeError):
            return None
        if len(_MANIFEST_CACHE) >= 16:
            _MANIFEST_CACHE.clear()
        _MANIFEST_CACHE[key] = (header, by_name)
    return _MANIFEST_CACHE[key]
