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

    def script(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return _python(tmp_path / name).stdout.strip()

    guarded = f"if __name__ == '__main__':\n    {CHOSEN}\n"
    # The script pip writes for the `rwmaps` command: imports, then the guarded call.
    assert script("rwmaps", "import re\nimport sys\nfrom rwmaps_cli.__main__ import main\n" + guarded) == "forkserver"
    assert script("defines.py", '"""A tool."""\nimport os\n\ndef helper():\n    return 1\n' + guarded) == "forkserver"
    # A worker would run any other top level again.
    assert script("unguarded.py", CHOSEN + "\n") == "loky"
    assert script("constant.py", "ROOT = '/data'\n" + guarded) == "loky"
    assert script("wrapper.py", "import sys\nfrom rwmaps_cli.__main__ import main\n" + CHOSEN + "\n") == "loky"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__main__.py").write_text(CHOSEN + "\n")
    (tmp_path / "pkg" / "tool.py").write_text(CHOSEN + "\n")
    assert _python("-m", "pkg", cwd=tmp_path).stdout.strip() == "forkserver"  # never re-imported
    assert _python("-m", "pkg.tool", cwd=tmp_path).stdout.strip() == "loky"  # re-imported by name, run again


def test_a_tmpdir_too_long_for_the_servers_socket_falls_back_to_lokys_start(tmp_path):
    for i in range(2):
        write_nifti(tmp_path / "labels" / f"case_{i}.nii.gz", blobs((12, 11, 9), 3, seed=i))
    long_tmp = tmp_path / ("t" * 60) / ("m" * 60)  # AF_UNIX paths end at 107 bytes
    long_tmp.mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "rwmaps_cli", "compute", "--input", tmp_path / "labels",
                             "--output", tmp_path / "maps", "--jobs", "2"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TMPDIR": str(long_tmp)})
    assert result.returncode == 0 and "2 done" in result.stderr, result.stderr


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


def _marked(mark: str) -> list[list[str]]:
    """The command lines of the processes that inherited ``RWMAPS_TEST_RUN=mark``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("RWMAPS_TEST_RUN") == mark:
                found.append(process.cmdline())
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


def test_the_rwmaps_command_forks_its_workers_and_ends_with_its_code_its_output_and_no_process_left(tmp_path):
    for i in range(6):
        write_nifti(tmp_path / "labels" / f"case_{i}.nii.gz", blobs((40, 38, 30), 12, seed=i))
    (tmp_path / "labels" / "broken.nii.gz").write_bytes(b"not a nifti")
    mark = uuid.uuid4().hex  # inherited by the server and the workers: finds them
    env = {**os.environ, "RWMAPS_TEST_RUN": mark}
    process = subprocess.Popen([_rwmaps_command(), "compute", "--input", tmp_path / "labels", "--output",
                                tmp_path / "maps", "--jobs", "2", "--layout", "compact"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    while process.poll() is None:
        seen += _marked(mark)
        time.sleep(0.02)
    _, stderr = process.communicate(timeout=300)
    assert any("multiprocessing.forkserver" in " ".join(line) for line in seen), seen  # the workers' server ran
    assert process.returncode == 1  # one case failed
    assert "broken.nii.gz" in stderr and "6 done" in stderr.splitlines()[-1]
    assert "Traceback" not in stderr and "leaked" not in stderr
    for i in range(6):
        full, meta = load_map(tmp_path / "maps" / f"case_{i}.nii.gz")  # expanded with its labels
        assert full.shape == (len(meta.classes), 40, 38, 30) and np.isfinite(full).all()
    time.sleep(0.5)  # the server exits when it sees the command gone
    assert not _marked(mark)
    usage = subprocess.run([_rwmaps_command(), "compute", "--input", tmp_path / "nowhere", "--output",
                            tmp_path / "maps2"], capture_output=True, text=True, timeout=300)
    assert usage.returncode == 2 and usage.stderr.startswith("rwmaps: ")


def test_a_run_ends_cleanly_with_its_stdout_closed(tmp_path):
    # (sys.stdout is None then: loky's own worker start failed on it, the end must not.)
    write_nifti(tmp_path / "labels" / "case_0.nii.gz", blobs((12, 11, 9), 3))
    result = subprocess.run(f"{sys.executable} -m rwmaps_cli compute --input {tmp_path / 'labels'} "
                            f"--output {tmp_path / 'maps'} >&-", shell=True, timeout=300, capture_output=True)
    assert result.returncode == 0 and (tmp_path / "maps" / "case_0.nii.gz").exists(), result
