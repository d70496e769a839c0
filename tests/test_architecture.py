"""The package's shape, as the architecture promises it: light to import, no import
cycle, and one owner for each file format."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "rwmaps_cli"
HEAVY = ("nibabel", "SimpleITK", "matplotlib", "edt", "dask", "distributed", "torch", "monai", "nnunetv2", "blosc2", "torchio")


def test_importing_the_package_loads_no_file_library_kernel_backend_or_cluster():
    probe = ("import sys, rwmaps_cli; from rwmaps_cli import load_map, compute_maps; "
             f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _loaded_after(statement: str, modules) -> list[str]:
    probe = f"import sys; {statement}; print(sorted(m for m in {tuple(modules)!r} if m in sys.modules))"
    return eval(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)


def test_the_package_and_the_command_start_light():
    # Every process and worker pays its imports: scipy.ndimage alone was 0.2 s, for the
    # scipy engine only.  The command's entry and the workers' start (which runs before
    # the rest is imported, rwmaps_cli.workers) need the standard library only.
    assert _loaded_after("import rwmaps_cli", ("numpy", "importlib.metadata")) == []
    assert _loaded_after("from rwmaps_cli import compute_maps, load_map", ("scipy", "scipy.ndimage")) == []
    assert _loaded_after("import rwmaps_cli.__main__, rwmaps_cli.workers", ("numpy", "click", "joblib")) == []


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


#: What rwmaps_cli/formats/ may import from outside itself: the errors, the contract (which
#: owns the layouts and map dtypes a file stores) and the plans JSON reader its nnU-Net seg
#: format takes the voxel sizes from.  All are leaves: they import nothing of rwmaps_cli
#: beyond rwmaps_cli.errors, so formats/ stays below every other module.
BELOW_FORMATS = {"rwmaps_cli.errors", "rwmaps_cli.contract", "rwmaps_cli.nnunet.plans"}


def _module_imports(name: str) -> set[str]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m for m in _top_level_imports(modules[name]) if m in modules and m != name}


def test_formats_import_nothing_above_them():
    """formats/ is the bottom layer: readers and writers, no policy, no service."""
    offenders = []
    for path in sorted((PACKAGE / "formats").glob("*.py")):
        name = _module_name(path)
        above = {m for m in _module_imports(name) if not m.startswith("rwmaps_cli.formats")} - BELOW_FORMATS
        offenders += [f"{name} imports {m}" for m in sorted(above)]
    for leaf in sorted(BELOW_FORMATS):
        offenders += [f"{leaf} (below formats/) imports {m}" for m in sorted(_module_imports(leaf) - {"rwmaps_cli.errors"})]
    # rwmaps_cli.nnunet.plans is reached through its package: that __init__ must import nothing.
    offenders += [f"rwmaps_cli.nnunet imports {m}" for m in sorted(_module_imports("rwmaps_cli.nnunet"))]
    assert not offenders, "\n".join(offenders)


def test_the_nnunet_package_is_import_light():
    """Beyond what ``import rwmaps_cli`` loads, the package loads nothing until a name is used."""
    probe = ("import sys, rwmaps_cli; before = set(sys.modules); import rwmaps_cli.nnunet; "
             f"print(sorted(m for m in set(sys.modules) - before if m.startswith('rwmaps_cli') or m in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() in ("[]", "['rwmaps_cli.nnunet']")


def test_every_format_carries_its_own_name():
    from rwmaps_cli.formats import FORMATS, read_labels

    readers = [fmt.reader_name for fmt in FORMATS if fmt.reader_name]
    assert readers == ["nnunet"] and len(set(readers)) == len(readers)
    with pytest.raises(ValueError, match="unknown reader 'nope'"):
        read_labels(REPO / "sample_data" / "slice_2d.png", reader="nope")


def _reaches(start: str) -> set[str]:
    """Every rwmaps_cli module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for module in _module_imports(todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    return seen


def test_the_two_services_do_not_import_each_other():
    """compute and verify share the worker side of a case (case.py), not each other."""
    assert "rwmaps_cli.verify" not in _reaches("rwmaps_cli.compute")
    assert "rwmaps_cli.compute" not in _reaches("rwmaps_cli.verify")


# The options every layer shares: their defaults are named constants (maps.DEFAULT_KIND,
# manifest.DEFAULT_DTYPE, formats.DEFAULT_FORMAT...), each defined once.
SHARED_OPTIONS = {"kind", "layout", "fmt", "engine", "dtype", "spacing", "max_classes"}


def _literal_defaults(path: Path) -> list[str]:
    """Places in ``path`` that give a shared option a literal default (not None)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [f"{node.name}({a.arg}={d.value!r})" for a, d in pairs
                      if a.arg in SHARED_OPTIONS and isinstance(d, ast.Constant) and d.value is not None]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id in SHARED_OPTIONS and isinstance(node.value, ast.Constant):
            found += [f"field {node.target.id} = {node.value.value!r}"] if node.value.value is not None else []
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "option":
            flags = [a.value.lstrip("-").replace("-", "_") for a in node.args if isinstance(a, ast.Constant)]
            for keyword in node.keywords:
                if keyword.arg == "default" and isinstance(keyword.value, ast.Constant) \
                        and keyword.value.value is not None and SHARED_OPTIONS & set(flags):
                    found.append(f"click option {flags} default={keyword.value.value!r}")
    return found


def test_the_default_of_each_option_is_defined_once():
    offenders = [f"{path.relative_to(REPO)}: {place}" for path in sorted(PACKAGE.rglob("*.py"))
                 for place in _literal_defaults(path)]
    assert not offenders, "name the constant instead:\n" + "\n".join(offenders)


def test_the_default_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('import click\n@click.option("--kind", default="rrw")\ndef f(layout="full", n=3): ...\n')
    assert _literal_defaults(bad) == ["f(layout='full')", "click option ['kind'] default='rrw'"]
