"""The documentation says what the code does: every module is in design.md's module map, every
relative link resolves, every option the pages name exists, the Python of the README and of every
page of docs/ runs as written, and what the pages say of real files (the manifest, the .npz keys,
the parameters a rerun compares, the README's figures, the inspect figure) is what the code does."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, SAMPLE_DATA, run_rwmaps

PACKAGE = REPO / "rwmaps_cli"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]
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
                          *(REPO / "benchmarks").glob("*.py"), *(REPO / "docs").glob("*.py")]):
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
    """The options the benchmark, example and docs scripts declare (argparse)."""
    scripts = [*(REPO / "benchmarks").glob("*.py"), *(REPO / "examples").glob("*.py"), *(REPO / "docs").glob("*.py")]
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


# A ```python block is not run when the line right before its fence is this comment, with its reason
# (a block that needs a GPU, a queue or a trained model; ten characters at least); the reason is the
# test's skip message. See the README's "Use a map in Python".
NOT_RUN = re.compile(r"<!-- not-run: (\S.{9,}?) -->")


def _python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """The ```python blocks of a page: (line of the fence, code, why it is not run, or None)."""
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) == "python":
            before = text[:match.start()].removesuffix("\n").rpartition("\n")[2]
            mark = NOT_RUN.fullmatch(before.strip())
            blocks.append((text.count("\n", 0, match.start()) + 1, match.group(2), mark and mark.group(1)))
    return blocks


def _after_the_first_command(folder: Path, monkeypatch) -> None:
    """Make ``folder`` the current directory as a clone is after the README's first command:
    ``sample_data/``, and the maps ``rwmaps compute --input sample_data --output maps`` wrote."""
    shutil.copytree(SAMPLE_DATA, folder / "sample_data")
    monkeypatch.chdir(folder)
    run_rwmaps("compute", "--input", "sample_data", "--output", "maps", "--quiet", check=0)


def _run_blocks(page: Path, name: str) -> None:
    """Every runnable ```python block of ``page``, in order, as one script (one namespace, whose
    ``__name__`` is ``name``: a block's ``if __name__ == "__main__":`` part does not run);
    a traceback names the page's own line numbers."""
    blocks = [(line, code) for line, code, reason in _python_blocks(page) if reason is None]
    assert blocks, f"{page.name} shows no Python to run"
    namespace: dict = {"__name__": name}
    for line, code in blocks:
        exec(compile("\n" * line + code, str(page), "exec"), namespace)  # noqa: S102 - the page's own example


def test_the_readmes_python_runs_as_written_on_the_sample_data(tmp_path, monkeypatch):
    """As a newcomer would: the first command in a clone, then every ```python block, in order."""
    _after_the_first_command(tmp_path, monkeypatch)
    _run_blocks(REPO / "README.md", "__readme__")
    assert os.getcwd() == str(tmp_path)


@pytest.mark.parametrize("page", [p for p in DOCS if _python_blocks(p)], ids=lambda p: p.name)
def test_the_python_of_the_docs_runs_as_written_after_the_readmes_first_command(page, tmp_path, monkeypatch):
    """Each page's ```python blocks, in order, as one script, in a clone after the README's
    first command (a fresh one per page); the extras' blocks (torch, TorchIO, nnU-Net) too."""
    reasons = [reason for _, _, reason in _python_blocks(page) if reason]
    if len(reasons) == len(_python_blocks(page)):
        pytest.skip(f"{page.name}: every block is marked not-run: {'; '.join(reasons)}")
    _after_the_first_command(tmp_path, monkeypatch)
    _run_blocks(page, f"__docs_{page.stem}__")
    assert os.getcwd() == str(tmp_path)


def test_every_not_run_mark_gives_its_reason_right_before_a_python_block():
    """A mark the runner would not honour (no reason, a blank line before the fence, another
    language) is a block that silently runs or a mark that silently does nothing."""
    wrong = []
    for page in PAGES:
        marks = len(re.findall(r"^\s*<!--\s*not-run", page.read_text(), re.MULTILINE))  # a line of its own
        honoured = sum(1 for *_, reason in _python_blocks(page) if reason)
        if marks != honoured:
            wrong.append(f"{page.relative_to(REPO)}: {marks} not-run marks, {honoured} honoured")
    assert not wrong, wrong
    runnable = sum(1 for page in DOCS for *_, reason in _python_blocks(page) if reason is None)
    assert runnable >= 5, f"only {runnable} Python blocks of docs/ run: the marks are meant for exceptions"


@pytest.fixture(scope="module")
def sample_maps(tmp_path_factory) -> Path:
    """The README's first command on a copy of sample_data (``maps/``), and the same with
    ``--format npz`` (``maps_npz/``)."""
    root = tmp_path_factory.mktemp("sample_maps")
    shutil.copytree(SAMPLE_DATA, root / "sample_data")
    for output, extra in (("maps", []), ("maps_npz", ["--format", "npz"])):
        run_rwmaps("compute", "--input", root / "sample_data", "--output", root / output, "--quiet", *extra, check=0)
    return root


def _keys(value):
    """The key structure of a JSON value: {key: structure} for an object, None for anything else."""
    return {key: _keys(item) for key, item in value.items()} if isinstance(value, dict) else None


def test_design_mds_manifest_example_has_the_keys_of_a_real_manifest(sample_maps):
    design = (REPO / "docs" / "design.md").read_text()
    section = design[design.index("## The manifest"):]
    example = json.loads(next(code for language, code in FENCE.findall(section) if language == "json"))
    real = json.loads((sample_maps / "maps" / "rwmaps.json").read_text())
    assert _keys({**example, "cases": None}) == _keys({**real, "cases": None}), "the header (or its parameters)"
    example_case = next(iter(example["cases"].values()))
    assert _keys(example_case) == _keys(real["cases"]["abdomen_ct_like.nii.gz"]), "a case's entry"
    assert example["schema"] == real["schema"]


def _module_map_entry(module: str) -> str:
    """The module map's text for ``module``: its line and the indented lines that continue it."""
    lines = _module_map().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [module])
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        entry.append(line)
    return " ".join(line.strip() for line in entry)


def test_the_module_map_lists_every_public_name():
    """The ``rwmaps_cli/__init__.py`` entry lists ``rwmaps_cli.__all__`` (after its colon), no more, no less."""
    import rwmaps_cli

    listed = {name.strip() for name in _module_map_entry("rwmaps_cli/__init__.py").split(":", 1)[1].split(",")}
    assert not set(rwmaps_cli.__all__) - listed, f"design.md's module map omits {set(rwmaps_cli.__all__) - listed}"
    assert not listed - set(rwmaps_cli.__all__), f"design.md lists names not in __all__: {listed - set(rwmaps_cli.__all__)}"


# A speed figure: a number or range followed by x / × (a ratio) or a time unit.
FIGURE = re.compile(r"(?<![\w.,–-])(\d[\d,]*(?:\.\d+)?(?:–\d[\d,]*(?:\.\d+)?)?)(?:[x×](?!\w)|\s(ms|µs|s)\b)")
DOCS_LINK = re.compile(r"\]\((docs/[\w-]+\.md)(?:#[^)]*)?\)")


def _dashes(text: str) -> str:
    return re.sub(r"(?<=\d)-(?=\d)", "–", text)


def _on_page(figure: str, unit: str | None, page_text: str) -> bool:
    """Whether the page states ``figure`` (the same number or range, not part of a longer one),
    in the same time unit; a ratio may stand bare on the page (a table's ratio column)."""
    number = rf"(?<![\w.,–-]){re.escape(figure)}(?!\d|[.,]\d|–\d)"
    return re.search(number + (rf"\s?{unit}\b" if unit else ""), page_text) is not None


def test_every_speed_figure_of_the_readme_is_on_the_page_it_cites():
    """A figure (``43–301x``, ``6.29 s``) is cited from the docs pages its clause links to (the
    clause: up to a ``;`` or a sentence's end), else from those its paragraph links to."""
    readme = _dashes(FENCE.sub("", (REPO / "README.md").read_text()))
    checked, missing = 0, []
    for paragraph in re.split(r"\n\s*\n", readme):
        paragraph = re.sub(r"`[^`\n]*`", "", paragraph)  # commands and options, not figures
        for clause in re.split(r";|(?<=\.)\s+(?=[A-Z])", paragraph):
            pages = DOCS_LINK.findall(clause) or DOCS_LINK.findall(paragraph)
            for figure in FIGURE.finditer(clause):
                if not pages:
                    continue  # attributed to no page
                checked += 1
                texts = [_dashes((REPO / page).read_text()) for page in pages]
                if not any(_on_page(figure.group(1), figure.group(2), text) for text in texts):
                    missing.append(f"{figure.group(0)!r} (cites {', '.join(sorted(set(pages)))})")
    assert checked >= 10, f"only {checked} figures found: is FIGURE still right?"
    assert not missing, f"README figures its pages do not state: {missing}"


# How the pages name each manifest parameter (Settings.to_parameters); a new parameter needs its words here.
PARAMETER_WORDS = {"classes": "class list", "kind": "kind", "spacing": "spacing", "slice_axis": "slice axis",
                   "dtype": "dtype", "fmt": "format", "ignore_label": "ignore label", "layout": "layout",
                   "regions": "regions"}


def _bullet(page: str, opening: str) -> str:
    """The list item of ``page`` (a docs file name) that starts with ``opening``, on one line."""
    text = (REPO / "docs" / page).read_text()
    start = text.index(opening)
    end = min(i for i in (text.find("\n- ", start), text.find("\n\n", start), len(text)) if i >= 0)
    return " ".join(text[start:end].split())


def test_the_pages_name_every_parameter_a_rerun_compares(sample_maps):
    """troubleshooting.md's list of what a rerun refuses, and cli.md's of what verify takes from
    the manifest, name every key of a real manifest's ``parameters``."""
    parameters = json.loads((sample_maps / "maps" / "rwmaps.json").read_text())["parameters"]
    assert set(parameters) == set(PARAMETER_WORDS), "the manifest's parameters changed: update the pages and PARAMETER_WORDS"
    for page, opening in (("troubleshooting.md", "- **Other parameters, same folder: refused.**"),
                          ("cli.md", "- **Give the same `--input` as to `rwmaps compute`**")):
        bullet = _bullet(page, opening)
        missing = [words for words in PARAMETER_WORDS.values() if words not in bullet]
        assert not missing, f"{page} ({opening}) does not name {missing}"


def test_cli_and_design_name_the_keys_of_a_real_npz_map(sample_maps):
    with np.load(sample_maps / "maps_npz" / "abdomen_ct_like.npz") as npz:
        real = set(npz.files)
    design = " ".join((REPO / "docs" / "design.md").read_text().split())
    named = {"cli.md": set(re.findall(r"`(\w+)`", _bullet("cli.md", "- **`.npz`**:"))),
             "design.md": set(re.findall(r"`(\w+)`", re.search(r"an `\.npz` has the keys (.*?)\. ", design).group(1)))}
    for page, keys in named.items():
        assert keys == real, f"{page} names the .npz keys {sorted(keys)}, a real map has {sorted(real)}"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_figure_script_redraws_the_committed_figure(tmp_path):
    """docs/make_figures.py draws docs/inspect_abdomen.png as cli.md says (at the size it says),
    and cli.md says how."""
    cli = " ".join((REPO / "docs" / "cli.md").read_text().split())
    assert "python docs/make_figures.py" in cli
    said = tuple(int(n) for n in re.search(r"\((\d+) × (\d+) px above\)", cli).groups())
    drawn = tmp_path / "figure.png"
    subprocess.run([sys.executable, str(REPO / "docs" / "make_figures.py"), "--output", str(drawn)], check=True,
                   capture_output=True, timeout=300)
    assert _png_size(drawn) == _png_size(REPO / "docs" / "inspect_abdomen.png") == said


def test_the_distance_dependency_is_pinned_to_its_lgpl_versions():
    """edt is GPL-3.0 before 3.0 and LGPL-3.0-or-later from it: the pin admits no GPL release,
    and the README says what the pin is and why."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    edt = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "edt")
    assert not any(edt.specifier.contains(v) for v in ("2.3.0", "2.4.1", "3.0.0"))
    assert edt.specifier.contains("3.1.0")
    readme = (REPO / "README.md").read_text()
    assert "LGPL-3.0-or-later" in readme and "edt>=3.1" in readme
