"""How the local workers start (rwmaps_cli.workers) and how the command ends (__main__)."""

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import blobs, write_nifti

from rwmaps_cli import load_map


def _python(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


CHOSEN = "from rwmaps_cli.workers import _context; print('forkserver' if _context() else 'loky')"


def test_workers_are_forked_only_where_the_main_module_is_never_run_again(tmp_path):
    assert _python("-c", CHOSEN).stdout.strip() == "forkserver"  # -c, like a REPL or a notebook
    (tmp_path / "user_script.py").write_text(CHOSEN + "\n")  # unguarded: a worker would run it again
    assert _python(tmp_path / "user_script.py").stdout.strip() == "loky"
    # The script pip writes for the `rwmaps` command imports rwmaps_cli.__main__.main, guarded.
    (tmp_path / "rwmaps").write_text("import sys\nfrom rwmaps_cli.__main__ import main\n" + CHOSEN + "\n"
                                     "if __name__ == '__main__':\n    sys.exit(main())\n")
    assert _python(tmp_path / "rwmaps").stdout.strip() == "forkserver"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__main__.py").write_text(CHOSEN + "\n")
    (tmp_path / "pkg" / "tool.py").write_text(CHOSEN + "\n")
    assert _python("-m", "pkg", cwd=tmp_path).stdout.strip() == "forkserver"  # never re-imported
    assert _python("-m", "pkg.tool", cwd=tmp_path).stdout.strip() == "loky"  # re-imported by name


def test_an_unguarded_script_that_calls_compute_dataset_works(tmp_path):
    for i in range(3):
        write_nifti(tmp_path / "labels" / f"case_{i}.nii.gz", blobs((12, 11, 9), 3, seed=i))
    script = tmp_path / "precompute.py"
    script.write_text("from rwmaps_cli.compute import compute_dataset\n"
                      f"outcome = compute_dataset({str(tmp_path / 'labels')!r}, {str(tmp_path / 'maps')!r}, jobs=2)\n"
                      "print(outcome.done)\n")
    result = _python(script)
    assert result.returncode == 0 and result.stdout.strip() == "3", result.stderr
    assert load_map(tmp_path / "maps" / "case_0.nii.gz")[0].shape == (3, 12, 11, 9)


def _rwmaps_command() -> str:
    found = shutil.which("rwmaps", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("the rwmaps script is not installed beside this interpreter")
    return found


def test_the_rwmaps_command_ends_with_its_exit_code_its_output_and_no_process_left(tmp_path):
    for i in range(4):
        write_nifti(tmp_path / "labels" / f"case_{i}.nii.gz", blobs((16, 15, 11), 4, seed=i))
    (tmp_path / "labels" / "broken.nii.gz").write_bytes(b"not a nifti")
    mark = uuid.uuid4().hex  # inherited by the server and the workers: finds them afterwards
    env = {**os.environ, "RWMAPS_TEST_RUN": mark}
    result = subprocess.run([_rwmaps_command(), "compute", "--input", tmp_path / "labels", "--output",
                             tmp_path / "maps", "--jobs", "2", "--layout", "compact"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 1  # one case failed
    assert "broken.nii.gz" in result.stderr and "4 done" in result.stderr.splitlines()[-1]
    for i in range(4):
        full, meta = load_map(tmp_path / "maps" / f"case_{i}.nii.gz")  # expanded with its labels
        assert full.shape == (len(meta.classes), 16, 15, 11) and np.isfinite(full).all()
    time.sleep(0.5)  # the server exits when it sees the command gone
    left = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("RWMAPS_TEST_RUN") == mark:
                left.append(process.cmdline())
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    assert not left
    usage = subprocess.run([_rwmaps_command(), "compute", "--input", tmp_path / "nowhere", "--output",
                            tmp_path / "maps2"], capture_output=True, text=True, timeout=300)
    assert usage.returncode == 2 and usage.stderr.startswith("rwmaps: ")
