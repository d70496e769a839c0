"""examples/train_tiny_rw.py: trains with Region-wise loss when PyTorch is installed."""

import py_compile
import re
import subprocess
import sys

import pytest
from helpers import REPO

EXAMPLE = REPO / "examples" / "train_tiny_rw.py"


def test_example_is_valid_python(tmp_path):
    py_compile.compile(str(EXAMPLE), cfile=str(tmp_path / "example.pyc"), doraise=True)


def test_example_trains_and_the_loss_goes_down():
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "12"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    losses = [float(v) for v in re.findall(r"region-wise loss ([-+][0-9.]+)", result.stdout)]
    assert len(losses) == 12
    assert sum(losses[-3:]) < sum(losses[:3])
