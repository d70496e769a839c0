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


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {_module_name(p, root): p for p in root.rglob("*.py")}


def _top_level_imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Package modules ``path`` imports, at module level or inside a function: an import
    deferred into a function hides a cycle, it does not remove it."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith(root.name):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(root.name))
    return found


def _find_cycle(graph: dict[str, set[str]], allowed=lambda node, nxt: False) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first = last), or None."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1 and not allowed(node, nxt):
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, trail + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {m for m in _top_level_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ is imported before its modules: an edge into a package is an edge
    # into its __init__, which is how Python resolves it; cycles through it count (but a
    # module importing its own package's __init__ is Python's normal order).
    cycle = _find_cycle(graph, allowed=lambda node, nxt: node.startswith(nxt + "."))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def package_graph(root: Path = PACKAGE) -> dict[str, dict[str, str]]:
    """The import graph of the package's top-level entries (its modules and subpackages).

    ``graph[a][b]`` is one module-level import that makes entry ``a`` import entry ``b``
    (for the message).  The package's own ``__init__`` is its face, not an entry.
    """
    modules = _modules(root)

    def entry(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else None

    graph: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        source = entry(name)
        if source is None:
            continue
        graph.setdefault(source, {})
        for target in sorted(_top_level_imports(path, root), reverse=True):  # the most specific name first
            if target in modules and entry(target) not in (None, source):
                graph[source].setdefault(entry(target), f"{name} imports {target}")
    return graph


def package_cycle(root: Path = PACKAGE) -> str | None:
    """The first cycle between the package's top-level entries, explained, or None."""
    graph = package_graph(root)
    cycle = _find_cycle({node: set(edges) for node, edges in graph.items()})
    if cycle is None:
        return None
    return " -> ".join(cycle) + " (" + "; ".join(graph[a][b] for a, b in zip(cycle, cycle[1:])) + ")"


def test_no_two_top_level_entries_import_each_other():
    """Packages import in one direction: formats/ and nnunet/ used to import each other
    (the seg reader needed nnunet.plans; nnunet.preprocessed the seg reader), which the
    module-level test above cannot see."""
    cycle = package_cycle()
    assert cycle is None, f"top-level entries import each other: {cycle}"


def test_the_package_cycle_check_can_fail(tmp_path):
    root = tmp_path / "pkg"
    for folder in ("readers", "training"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "readers" / "seg.py").write_text("from ..training import plans\n")
    (root / "training" / "plans.py").write_text("X = 1\n")
    (root / "training" / "folder.py").write_text("from pkg.readers.seg import *\n")
    (root / "errors.py").write_text("")
    assert package_cycle(root) == ("readers -> training -> readers (pkg.readers.seg imports pkg.training.plans; "
                                   "pkg.training.folder imports pkg.readers.seg)")
    (root / "training" / "folder.py").write_text("from pkg import errors\n")
    assert package_cycle(root) is None


SUFFIX = re.compile(r"[^\s]*\.(?:nii|npy|npz|mha|mhd|nrrd|nhdr|png|tiff?|b2nd)(?:\.gz)?$")
#: Keyword arguments whose strings only show the user an example (click's help texts).
HELP_TEXT = {"help", "metavar"}


def suffix_knowledge(source: str) -> list[int]:
    """Lines of ``source`` whose code knows a file suffix: a string literal that is or ends
    with one (outside a click help text or metavar), or an ``endswith`` call."""
    tree = ast.parse(source)
    shown = {id(node) for call in ast.walk(tree) if isinstance(call, ast.Call)
             for keyword in call.keywords if keyword.arg in HELP_TEXT for node in ast.walk(keyword.value)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in shown \
                and SUFFIX.search(node.value.strip("'\"")):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "endswith":
            lines.append(node.lineno)
    return sorted(set(lines))


def test_no_module_outside_formats_knows_a_file_suffix():
    """Only rwmaps_cli/formats/ knows a file suffix; a help text may show one."""
    offenders = [f"{path.relative_to(REPO)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
                 if "formats" not in path.relative_to(PACKAGE).parts
                 for line in suffix_knowledge(path.read_text())]
    assert not offenders, "\n".join(offenders)


def test_the_suffix_check_can_fail():
    assert suffix_knowledge('x = f"{case}.nii.gz"\nif name.endswith(ending): pass\n') == [1, 2]
    assert suffix_knowledge('y = "labels.png"\n') == [1]
    assert suffix_knowledge('@click.option("--png", metavar="OUT.png", help="e.g. a.nii.gz")\ndef f(): ...\n') == []


def test_cli_holds_no_policy():
    source = (PACKAGE / "cli.py").read_text()
    assert "run_local" not in source and " is run_local" not in source
    assert "in record" not in source and "in result.error" not in source  # no matching of error texts


#: What rwmaps_cli/formats/ may import from outside itself: the errors and the contract (which
#: owns the layouts and map dtypes a file stores).  Both are leaves: they import nothing of
#: rwmaps_cli beyond rwmaps_cli.errors, so formats/ stays below every other module.
BELOW_FORMATS = {"rwmaps_cli.errors", "rwmaps_cli.contract"}


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


GOOGLE_SECTION = re.compile(r"^\s+(Args|Arguments|Keyword Args|Returns|Raises|Yields|Attributes|Examples?|Notes?):\s*$",
                            re.MULTILINE)


def google_style_sections(source: str) -> list[str]:
    """Google-style section headers (``Args:``) in the docstrings of ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                getattr(getattr(d, "func", d), "attr", "") in ("command", "group") for d in node.decorator_list):
            continue  # a click command's docstring is its --help text, in click's style ("Example:")
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False) or ""
            found += [match.group(1) for match in GOOGLE_SECTION.finditer(docstring)]
    return found


def test_one_docstring_style_numpydoc():
    """numpydoc (``Parameters`` over a dashed line), as scikit-image and most of this package."""
    offenders = [f"{path.relative_to(REPO)}: {section}:" for path in sorted(PACKAGE.rglob("*.py"))
                 for section in google_style_sections(path.read_text())]
    assert not offenders, "\n".join(offenders)


def test_the_docstring_style_check_can_fail():
    source = 'def f(x):\n    """Do.\n\n    Args:\n        x: a value.\n\n    Returns:\n        y.\n    """\n'
    assert google_style_sections(source) == ["Args", "Returns"]
    assert google_style_sections('def f(x):\n    """Do.\n\n    Parameters\n    ----------\n    x : int\n    """\n') == []
    assert google_style_sections('@cli.command()\ndef f():\n    """Help.\n\n    Example:\n        rwmaps f\n    """\n') == []
