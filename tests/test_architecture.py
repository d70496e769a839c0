"""The package's shape, as the architecture promises it: light to import, no import
cycle, and one owner for each file format."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "rwmaps_cli"
HEAVY = ("nibabel", "SimpleITK", "matplotlib", "edt", "dask", "distributed", "torch", "monai", "nnunetv2", "blosc2", "torchio")


def test_importing_the_package_loads_no_file_library_kernel_backend_or_cluster():
    probe = ("import sys, rwmaps_cli; from rwmaps_cli import load_map, compute_maps; "
             f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """rwmaps_cli modules ``path`` imports, at module level or inside a function: an import
    deferred into a function hides a cycle, it does not remove it."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("rwmaps_cli"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("rwmaps_cli"))
    return found


def test_no_import_cycle():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _top_level_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ is imported before its modules: an edge into a package is an edge
    # into its __init__, which is how Python resolves it; cycles through it count.
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and not (nxt in trail and node.startswith(nxt + ".")):
                raise AssertionError(f"import cycle: {' -> '.join(trail[trail.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_outside_formats_knows_a_file_suffix():
    """Only rwmaps_cli/formats/ branches on a suffix; cli.py's help texts aside."""
    suffix = re.compile(r"""["'][^"'\s]*\.(?:nii|npy|npz|mha|mhd|nrrd|nhdr|png|tiff?|b2nd)(?:\.gz)?["']""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "formats" in path.relative_to(PACKAGE).parts or path.name == "cli.py":
            continue
        if path.relative_to(PACKAGE).as_posix() == "nnunet/synthetic.py":
            continue  # writes a made-up nnU-Net raw dataset for tests and benchmarks; reads no file
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if suffix.search(code) or re.search(r"endswith\(", code):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_cli_holds_no_policy():
    source = (PACKAGE / "cli.py").read_text()
    assert "run_local" not in source and " is run_local" not in source
    assert "in record" not in source and "in result.error" not in source  # no matching of error texts
