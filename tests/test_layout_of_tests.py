"""The tests stand apart from the benchmarks: no test imports a script of ``benchmarks/``.

A test that checks a benchmark runs it as a user does, in a subprocess (``python
benchmarks/X.py --quick``, as tests/test_example.py does for study_outcome.py); code the
tests need lives in the package or in tests/.  The check reads every ``tests/*.py`` with
``ast`` and fails on an ``import``/``from`` of a benchmark module, an importlib or runpy
load of one, a ``sys.path`` entry or ``site.addsitedir`` pointing into ``benchmarks``, and
the same inside Python source held in a string (a probe run with ``python -c``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

TESTS = REPO / "tests"
BENCHMARKS = REPO / "benchmarks"
# Benchmark scripts import each other by bare name (benchmarks/ on sys.path); a name that
# tests/ also holds would import the test module, not the benchmark.
BENCHMARK_MODULES = ({p.stem for p in BENCHMARKS.glob("*.py")} - {p.stem for p in TESTS.glob("*.py")}) | {"benchmarks"}

# Calls that load code from a path or put a folder on the import path.
PATH_LOADERS = {"spec_from_file_location", "run_path", "addsitedir", "SourceFileLoader"}
PATH_EDITS = {"insert", "append", "extend"}  # on sys.path
NAME_LOADERS = {"import_module", "__import__", "run_module", "find_spec"}


def _called(node: ast.Call) -> str:
    function = node.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")


def _is_sys_path(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"


def _mentions_benchmarks(node: ast.AST, tainted: set[str]) -> bool:
    """Whether an expression names the benchmarks folder: a string with 'benchmarks' in
    it, or a variable assigned from one."""
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str) and "benchmarks" in child.value:
            return True
        if isinstance(child, ast.Name) and child.id in tainted:
            return True
    return False


def _tainted_names(tree: ast.AST) -> set[str]:
    """Variables that hold a path into benchmarks/, followed through assignments."""
    tainted: set[str] = set()
    while True:
        before = len(tainted)
        for node in ast.walk(tree):
            targets, value = [], None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
                targets, value = [node.target], node.value
            if value is not None and _mentions_benchmarks(value, tainted):
                tainted |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        if len(tainted) == before:
            return tainted


def _is_benchmark_module(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in BENCHMARK_MODULES


def benchmark_imports(source: str, filename: str = "<test>") -> list[str]:
    """Every place in ``source`` (Python) that imports or loads a benchmark: 'file:line: what'."""
    tree = ast.parse(source, filename)
    tainted = _tainted_names(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if _is_benchmark_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_benchmark_module(node.module):
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            called, arguments = _called(node), [*node.args, *(k.value for k in node.keywords)]
            if called in PATH_LOADERS and any(_mentions_benchmarks(a, tainted) for a in arguments):
                found.append(f"{where}: {called}(...) of a file in benchmarks/")
            elif (called in PATH_EDITS and isinstance(node.func, ast.Attribute) and _is_sys_path(node.func.value)
                  and any(_mentions_benchmarks(a, tainted) for a in arguments)):
                found.append(f"{where}: sys.path.{called}(...) into benchmarks/")
            elif called in NAME_LOADERS and any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                                and _is_benchmark_module(a.value) for a in node.args[:1]):
                found.append(f"{where}: {called}({node.args[0].value!r})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:  # Python source in a string: a probe run with `python -c`
                found += [f"{where}: in a string: {f.split(': ', 1)[1]}"
                          for f in benchmark_imports(node.value, filename)]
            except SyntaxError:
                pass
    return found


def test_no_test_imports_a_benchmark():
    files = sorted(TESTS.glob("*.py"))
    assert Path(__file__) in files and len(files) > 10
    files.remove(Path(__file__))  # this file's own examples of what the check finds
    found = [f for path in files for f in benchmark_imports(path.read_text(), path.relative_to(REPO).as_posix())]
    assert not found, "tests import benchmark scripts (run them in a subprocess instead):\n" + "\n".join(found)


PROBE = '''
PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from bench_maps import brain_like_labels
"""
'''


@pytest.mark.parametrize("source", [
    "from bench_maps import brain_like_labels",
    "import fidelity",
    "import benchmarks.fidelity as f",
    "from benchmarks import seed",
    "import importlib\nmodule = importlib.import_module('study_outcome')",
    "import importlib.util\nfrom helpers import REPO\n"
    "spec = importlib.util.spec_from_file_location('fidelity', REPO / 'benchmarks' / 'fidelity.py')",
    "import sys\nfrom pathlib import Path\nbench = Path(__file__).parents[1] / 'benchmarks'\nfolder = str(bench)\n"
    "sys.path.insert(0, folder)",
    "import runpy\nrunpy.run_path('benchmarks/bench_maps.py')",
    PROBE,
], ids=["from", "import", "package", "from-package", "import_module", "spec_from_file_location",
        "sys.path", "run_path", "probe-string"])
def test_the_check_finds_a_test_that_imports_a_benchmark(source):
    assert benchmark_imports(source), source


def test_the_check_lets_a_benchmark_run_as_a_subprocess():
    source = ("import subprocess, sys\nfrom helpers import REPO\nscript = REPO / 'benchmarks' / 'fidelity.py'\n"
              "subprocess.run([sys.executable, str(script), '--quick'], check=True)\n"
              "from hypothesis import seed\nimport seedling\n")
    assert benchmark_imports(source) == []
