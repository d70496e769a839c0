"""Helpers shared by the tests: real label files and the real ``rwmaps`` command."""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np

from rwmaps_cli.synthetic import blob_labels

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"


def blobs(shape, n_classes, seed=0, sigma=2.0):
    """:func:`rwmaps_cli.synthetic.blob_labels` with a seed: smooth touching regions, uint8."""
    return blob_labels(shape, n_classes, np.random.default_rng(seed), sigma)


def write_nifti(path: Path, labels: np.ndarray, zooms=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = origin
    image = nib.Nifti1Image(labels, affine)
    image.header.set_zooms(zooms[: labels.ndim])
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def run_rwmaps(*args, check=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``rwmaps ARGS`` as a user would, in this process (click's CliRunner: the real
    command, option parsing and exit code, without starting an interpreter per call);
    ``check`` is the expected exit code.  Tests of signals, kills and installs start real
    processes themselves (:func:`run_rwmaps_process`)."""
    from click.testing import CliRunner

    from rwmaps_cli.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="rwmaps")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # as the interpreter would print it
    completed = subprocess.CompletedProcess(["rwmaps", *map(str, args)], result.exit_code, result.stdout, stderr)
    if check is not None:
        assert completed.returncode == check, (f"exit {completed.returncode}\nstdout:{completed.stdout}\n"
                                               f"stderr:{completed.stderr}")
    return completed


def run_rwmaps_process(*args, check=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``rwmaps ARGS`` in a new Python process."""
    result = subprocess.run([sys.executable, "-m", "rwmaps_cli", *map(str, args)], capture_output=True,
                            text=True, timeout=timeout)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def compute_npy(labels_dir, out, *args, check=0) -> subprocess.CompletedProcess:
    """``rwmaps compute --input labels_dir --output out --format npy *args``."""
    return run_rwmaps("compute", "--input", labels_dir, "--output", out, "--format", "npy", *args, check=check)


def manifest_json(out) -> dict:
    """The ``rwmaps.json`` of the maps folder ``out``, as JSON."""
    return json.loads((out / "rwmaps.json").read_text())
