"""``rwmaps.json``: what a run was asked for and what became of each case.

It is rewritten atomically after every finished case, so it is valid JSON at every
moment and a killed run still leaves the record of the cases it finished.  A rerun reads
it to skip cases whose map is done, with the same parameters, from an unchanged input.
"""

from __future__ import annotations

import json
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
