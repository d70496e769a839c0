"""Regenerate the figures of the docs: ``python docs/make_figures.py`` from the clone.

``docs/inspect_abdomen.png`` (shown in docs/cli.md) is what docs/cli.md says it is: the README's
first command (``rwmaps compute --input sample_data --output maps``), then
``rwmaps inspect maps/abdomen_ct_like.nii.gz --png docs/inspect_abdomen.png``. The maps go to a
temporary folder, so the clone is left as it was; ``--output`` writes the figure elsewhere
(tests/test_docs.py does, to check it). rwmaps runs as ``python -m rwmaps_cli`` with this
script's interpreter, so run it with the Python rwmaps is installed in (``.venv/bin/python``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "docs" / "inspect_abdomen.png"


def rwmaps(*args: str, cwd: Path) -> None:
    """``rwmaps ARGS`` in ``cwd``, as typed in a shell there (what it prints on stdout dropped, its
    errors shown); stops on a non-zero exit."""
    subprocess.run([sys.executable, "-m", "rwmaps_cli", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def inspect_abdomen(output: Path) -> None:
    """The figure of docs/cli.md: the sample's abdomen map, drawn by ``rwmaps inspect --png``."""
    with tempfile.TemporaryDirectory(prefix="rwmaps-figures-") as work:
        rwmaps("compute", "--input", str(REPO / "sample_data"), "--output", "maps", "--quiet", cwd=Path(work))
        rwmaps("inspect", "maps/abdomen_ct_like.nii.gz", "--png", str(output), cwd=Path(work))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=FIGURE,
                        help=f"where to write the figure (default: {FIGURE.relative_to(REPO)})")
    output = parser.parse_args().output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    inspect_abdomen(output)  # rwmaps inspect says where it wrote it


if __name__ == "__main__":
    main()
