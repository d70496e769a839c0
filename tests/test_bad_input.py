"""The catalogue of bad input: each gets one line naming the file and the cause, no
traceback, and never stops the other cases (exit 1), or is a usage error found before
any work (exit 2). One case per line of BAD_INPUTS."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import blobs, run_rwmaps, write_nifti


def good_case(root: Path) -> Path:
    return write_nifti(root / "good.nii.gz", blobs((12, 12, 6), 3, seed=1))


# Each maker writes the bad thing into the input folder `root` (which already holds one
# good case) and returns (extra CLI args, the file the message must name or None).

def empty_folder(root, tmp):
    (root / "good.nii.gz").unlink()
    return [], root


def non_label_files(root, tmp):
    (root / "notes.txt").write_text("not a label file")
    (root / "report.pdf").write_bytes(b"%PDF-1.4")
    return [], None


def truncated_nifti(root, tmp):
    path = write_nifti(root / "cut.nii.gz", blobs((12, 12, 6), 3, seed=2))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [], path


def corrupt_nifti(root, tmp):
    path = root / "garbage.nii.gz"
    path.write_bytes(os.urandom(2000))
    return [], path


def unreadable_file(root, tmp):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    path = write_nifti(root / "locked.nii.gz", blobs((12, 12, 6), 3, seed=3))
    path.chmod(0)
    return [], path


def four_d_labels(root, tmp):
    path = root / "fourd.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 4, 3), np.uint8), np.eye(4)), path)
    return [], path


def fractional_labels(root, tmp):
    path = root / "fraction.npy"
    np.save(path, np.array([[0.0, 0.5], [1.0, 2.0]]))
    return [], path


def nan_labels(root, tmp):
    path = write_nifti(root / "nan.nii.gz", np.where(blobs((8, 8, 4), 2) == 1, np.nan, 0.0).astype(np.float32))
    return [], path


def negative_labels(root, tmp):
    path = write_nifti(root / "negative.nii.gz", blobs((8, 8, 4), 3).astype(np.int16) - 1)
    return [], path


def outside_class_list(root, tmp):
    path = write_nifti(root / "extra.nii.gz", (np.arange(8 * 8 * 4) % 6).reshape(8, 8, 4).astype(np.uint8))
    return ["--classes", "0,1,2"], path


def dataset_json_disagrees(root, tmp):
    (root / "good.nii.gz").unlink()
    write_nifti(root / "labelsTr" / "good.nii.gz", blobs((12, 12, 6), 2, seed=1))
    three = write_nifti(root / "labelsTr" / "three.nii.gz", blobs((12, 12, 6), 3, seed=2))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1}}))
    return [], three


def too_many_classes(root, tmp):
    # Each file alone looks like labels (200 values), together they hold 400.
    write_nifti(root / "many_a.nii.gz", np.arange(200, dtype=np.uint16).reshape(10, 10, 2))
    write_nifti(root / "many_b.nii.gz", np.arange(200, 400, dtype=np.uint16).reshape(10, 10, 2))
    return ["--max-classes", "256"], None


def image_not_labels(root, tmp):
    rng = np.random.default_rng(0)
    path = write_nifti(root / "ct_image.nii.gz", rng.integers(0, 3000, size=(16, 16, 8)).astype(np.int16))
    return [], path


def same_output_twice(root, tmp):
    nib.save(nib.load(root / "good.nii.gz"), root / "good.nii")
    return [], None


def output_inside_input(root, tmp):
    return ["--output", root / "maps"], None


def output_not_writable(root, tmp):
    blocker = tmp / "a_file"
    blocker.write_text("")
    return ["--output", blocker / "maps"], None


def huge_sparse_nifti(root: Path, shape=(4000, 4000, 4000)) -> Path:
    """A real NIfTI of 4000^3 uint8 voxels (64 GB) whose file holds them: sparse, so it takes
    no disk.  Its header tells the truth; the need is read from the header alone."""
    path = root / "huge.nii"
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_data_offset(352)
    path.write_bytes(header.binaryblock + b"\0" * 4)
    os.truncate(path, 352 + int(np.prod(shape)))
    return path


def too_big_for_the_machine(root, tmp):
    return ["--classes", "0,1,2", "--no-space-check"], huge_sparse_nifti(root)


def too_big_to_scan(root, tmp):
    """The same, when the class list is read from the files: the scan runs out of memory."""
    return ["--no-space-check"], huge_sparse_nifti(root)


def header_that_lies(root, tmp):
    """The same header in a file of 4 bytes: it fails alone, before any allocation, and the
    disk-space check does not count it."""
    path = huge_sparse_nifti(root)
    os.truncate(path, 356)
    return ["--classes", "0,1,2"], path


def too_big_for_the_disk(root, tmp):
    """A true header whose map alone would not fit on the output file system (64 G voxels,
    3 channels): that case fails alone, the others are computed."""
    return ["--classes", "0,1,2"], huge_sparse_nifti(root)


def float16_nifti(root, tmp):
    return ["--dtype", "float16"], None


# (maker, exit code, text the stderr must contain)
BAD_INPUTS = [
    (empty_folder, 2, "no label files found"),
    (non_label_files, 0, "2 other files ignored"),
    (truncated_nifti, 1, "cannot read"),
    (corrupt_nifti, 1, "cannot read"),
    (unreadable_file, 1, "permission denied"),
    (four_d_labels, 1, "4D label volume"),
    (fractional_labels, 1, "labels are not integers: 0.5"),
    (nan_labels, 1, "labels are not integers: nan"),
    (negative_labels, 1, "negative label values: -1"),
    (outside_class_list, 1, "label values not in the class list [0, 1, 2]: 3, 4, 5"),
    (dataset_json_disagrees, 1, "label values not in the class list [0, 1]: 2"),
    (too_many_classes, 2, "more than --max-classes 256"),
    (image_not_labels, 1, "distinct values"),
    (same_output_twice, 2, "would both write"),
    (output_inside_input, 2, "inside the input folder"),
    (output_not_writable, 2, "cannot be written"),
    (too_big_for_the_machine, 1, "GiB of memory, more than the"),
    (too_big_to_scan, 1, "out of memory"),
    (header_that_lies, 1, "the header claims 4000 × 4000 × 4000 voxels (64.0 GB), more than the file can hold (4 bytes)"),
    (too_big_for_the_disk, 1, "its map needs about"),
    (float16_nifti, 2, "cannot be stored as nii.gz"),
]


@pytest.mark.parametrize("make, code, message", BAD_INPUTS, ids=[m.__name__ for m, _, _ in BAD_INPUTS])
def test_bad_input(tmp_path, make, code, message, monkeypatch):
    if make is too_big_for_the_disk:  # whatever this machine has free, less than that map's 15 GB
        from rwmaps_cli import disk_space

        usage = disk_space.shutil.disk_usage(tmp_path)
        monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda path: usage._replace(free=10**9))
    root = tmp_path / "labels"
    good_case(root)
    extra, named = make(root, tmp_path)
    args = ["compute", "--input", root, "--output", tmp_path / "out", *extra]
    if "--output" in map(str, extra):
        args = ["compute", "--input", root, *extra]
    result = run_rwmaps(*args, check=code)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if named is not None:
        lines = [line for line in result.stderr.splitlines() if message.split(":")[0] in line]
        assert lines and all(str(named) in line for line in lines), result.stderr
    if make is dataset_json_disagrees:
        assert f"hint: the class list [0, 1] comes from {root / 'dataset.json'}" in result.stderr
    if code == 1:  # the good case still completed
        assert len(list((tmp_path / "out").rglob("good.nii.gz"))) == 1


def test_every_error_line_has_one_style(mixed_folder, tmp_path):
    usage = run_rwmaps("compute", "--input", tmp_path / "nowhere", "--output", tmp_path / "maps", check=2)
    case = run_rwmaps("compute", "--input", mixed_folder, "--output", tmp_path / "maps", "--classes", "0,1",
                      "--include", "*_seg.nii.gz", check=1)
    assert usage.stderr.startswith(f"rwmaps: {tmp_path / 'nowhere'}: ")
    assert all(line.startswith("rwmaps: ") for line in case.stderr.splitlines())
