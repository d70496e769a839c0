"""The documentation says what the code does: every module is in design.md's module map, every
relative link resolves, every option the pages name exists, and the README's Python runs as written."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import REPO, SAMPLE_DATA, run_rwmaps

PACKAGE = REPO / "rwmaps_cli"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Paths a docstring or comment names: docs/x.md, README.md, a module's path.
NAMED_PATH = re.compile(r"(?<![\w/.-])((?:docs/|rwmaps_cli/|benchmarks/|examples/|tests/)?[\w./-]*[\w-]\.(?:md|py|png))\b")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def _module_map() -> str:
    design = (REPO / "docs" / "design.md").read_text()
    section = design[design.index("## The code"):]
    return FENCE.search(section).group(2)


def test_every_module_of_the_package_is_in_the_module_map():
    listed = _module_map()
    missing = [str(path.relative_to(REPO)) for path in sorted(PACKAGE.rglob("*.py"))
               if str(path.relative_to(REPO)) not in listed]
    assert not missing, f"docs/design.md's module map omits {missing}"
    stale = [name for name in re.findall(r"rwmaps_cli/[\w/]+\.py", listed) if not (REPO / name).is_file()]
    assert not stale, f"docs/design.md's module map lists modules that do not exist: {stale}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_of_the_pages_resolves(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


OURS = ("docs/", "rwmaps_cli/", "benchmarks/", "examples/", "tests/", "sample_data/")


def test_every_path_the_code_names_exists():
    """Docstrings and comments cite docs/design.md and friends: those files must be there."""
    broken = []
    for source in sorted([*PACKAGE.rglob("*.py"), *(REPO / "examples").glob("*.py"),
                          *(REPO / "benchmarks").glob("*.py")]):
        for number, line in enumerate(source.read_text().splitlines(), 1):
            for name in NAMED_PATH.findall(line):
                if "/" in name and not name.startswith(OURS):
                    continue  # a path in another project (nnunetv2/run/run_training.py)
                if "/" not in name and not name.endswith(".md"):
                    continue  # a bare module name (maps.py), said in passing
                if not any((base / name).exists() for base in (REPO, source.parent, PACKAGE)):
                    broken.append(f"{source.relative_to(REPO)}:{number}: {name}")
    assert not broken, "\n".join(broken)


def _click_options() -> set[str]:
    """Every long option of every rwmaps command, as click declares it."""
    import click

    from rwmaps_cli.cli import cli
    from rwmaps_cli.nnunet.command import nnunet

    found: set[str] = set()

    def walk(command: click.Command) -> None:
        for parameter in command.params:
            found.update(o for o in [*parameter.opts, *parameter.secondary_opts] if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli)
    walk(nnunet)
    return found


def _script_options() -> set[str]:
    """The options the benchmark and example scripts declare (argparse)."""
    scripts = [*(REPO / "benchmarks").glob("*.py"), *(REPO / "examples").glob("*.py")]
    return {o for script in scripts for o in re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text())}


# Long options of other tools the pages show: dask scheduler and workers, SLURM's #SBATCH lines.
OTHER_TOOLS = {"--port", "--nworkers", "--nthreads", "--array", "--cpus-per-task", "--mem", "--help", "--version"}


def test_every_option_the_pages_name_exists():
    """The option reference is ``--help``; a page naming an option no command or script has is stale."""
    options = _click_options() | _script_options() | OTHER_TOOLS
    stale = sorted({(page.name, option) for page in PAGES
                    for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", page.read_text())
                    if option not in options})
    assert not stale, stale


def test_the_readme_keeps_its_two_commands():
    """CI runs the second one verbatim (.ci/run)."""
    readme = (REPO / "README.md").read_text()
    assert ("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/rwmaps compute --input sample_data "
            "--output maps") in readme
    assert 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest' in readme


def test_the_readmes_python_runs_as_written_on_the_sample_data(tmp_path, monkeypatch):
    """As a newcomer would: the first command in a clone, then every ```python block, in order."""
    blocks = [code for language, code in FENCE.findall((REPO / "README.md").read_text()) if language == "python"]
    assert blocks, "the README shows no Python"
    shutil.copytree(SAMPLE_DATA, tmp_path / "sample_data")
    monkeypatch.chdir(tmp_path)
    run_rwmaps("compute", "--input", "sample_data", "--output", "maps", "--quiet", check=0)
    namespace: dict = {"__name__": "__readme__"}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert os.getcwd() == str(tmp_path)
