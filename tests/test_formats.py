"""Tests for rwmaps_cli.formats: real files written by nibabel, SimpleITK and numpy; no mocks."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import dead_pid

from rwmaps_cli.errors import InputError
from rwmaps_cli.formats import (
    LABEL_SUFFIXES,
    TMP_MARKER,
    LabelVolume,
    atomic_path,
    clean_temporaries,
    label_suffix,
    output_path,
    read_labels,
    read_shape,
    write_map,
)
from rwmaps_cli.mapfile import map_is_complete
from rwmaps_cli.synthetic import brain_like_labels

SPACING_XYZ = (0.7, 0.8, 3.0)  # anisotropic on purpose: axis-order mistakes show up
SITK_3D = (".mha", ".mhd", ".nrrd", ".nhdr")


def rotation(angles: tuple[float, float, float]) -> np.ndarray:
    """A 3x3 rotation from three Euler angles."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def labels(shape: tuple[int, ...], dtype=np.uint8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(dtype)


def sitk_image(array_zyx: np.ndarray, spacing=SPACING_XYZ, origin=(12.5, -30.0, 7.25), angles=(0.3, -0.2, 1.1)):
    """A SimpleITK image with non-trivial geometry; ``array_zyx`` is in numpy (z, y, x) order."""
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(rotation(angles).ravel().tolist())
    return image


def nifti_with_forms(path: Path, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Save ``array`` with qform code 1 and sform code 2 holding different matrices."""
    qform = np.eye(4)
    qform[:3, :3] = rotation((0.1, 0.0, 0.4)) @ np.diag(SPACING_XYZ)
    qform[:3, 3] = (-10.0, 20.0, 5.0)
    sform = np.array([[0.0, -0.8, 0.0, 1.0], [0.7, 0.0, 0.0, 2.0], [0.0, 0.0, 3.0, 3.0], [0, 0, 0, 1]])
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)  # a given header's dtype wins over the array's in nibabel
    header.set_qform(qform, code=1)
    header.set_sform(sform, code=2)
    header.set_zooms(SPACING_XYZ[: array.ndim])
    nib.save(nib.Nifti1Image(array, None, header), path)
    return qform, sform


def assert_one_line_without_path(error: InputError, path: Path) -> None:
    message = str(error)
    assert message and "\n" not in message
    assert str(path) not in message and path.name not in message


def ras_point(image: sitk.Image, itk_index: tuple[int, ...]) -> np.ndarray:
    """World point of an ITK index, LPS -> RAS, padded to 3D."""
    point = list(image.TransformIndexToPhysicalPoint(tuple(int(i) for i in itk_index)))
    point += [0.0] * (3 - len(point))
    return np.array([-point[0], -point[1], point[2]])


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("case.nii.gz", ".nii.gz"),
        ("CASE.NII.GZ", ".nii.gz"),
        ("case.nii", ".nii"),
        ("a.b.mha", ".mha"),
        ("x.tiff", ".tiff"),
        ("x.tif", ".tif"),
        ("x.npz", ".npz"),
        ("x.gz", None),
        ("x.txt", None),
        (".nii.gz", None),
        (f".case{TMP_MARKER}12-ab.nii.gz", None),
    ],
)
def test_label_suffix(name, suffix):
    assert label_suffix(Path("some/dir") / name) == suffix


def test_every_label_suffix_is_recognised():
    for suffix in LABEL_SUFFIXES:
        assert label_suffix("case" + suffix) == suffix


def test_output_path_mirrors_tree(tmp_path):
    got = output_path(tmp_path / "labels/sub/case.nii.gz", tmp_path / "labels", tmp_path / "maps", "npz")
    assert got == tmp_path / "maps/sub/case.npz"
    assert output_path("labels/Case.NII.GZ", "labels", "maps", "nii.gz") == Path("maps/Case.nii.gz")
    assert output_path("labels/a.b.mha", "labels", "out", "npy") == Path("out/a.b.npy")


def test_output_path_mixed_relative_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = output_path("labels/case.mha", tmp_path / "labels", "maps", "nii")
    assert got == Path("maps/case.nii")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("labels/case.nii.gz", "labels", "maps", "nifti"), "unknown output format"),
        (("labels/case.txt", "labels", "maps", "npz"), "not a label file"),
        (("other/case.nii.gz", "labels", "maps", "npz"), "is not under"),
    ],
)
def test_output_path_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        output_path(*args)


# --------------------------------------------------------------------------- NIfTI reader


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip(tmp_path, suffix):
    array = labels((6, 7, 5), np.int16)
    path = tmp_path / f"case{suffix}"
    qform, sform = nifti_with_forms(path, array)

    volume = read_labels(path)

    assert volume.array.dtype == np.int16 and np.array_equal(volume.array, array)
    np.testing.assert_allclose(volume.spacing, SPACING_XYZ, rtol=1e-6)
    assert all(type(s) is float for s in volume.spacing)
    np.testing.assert_allclose(volume.affine, sform)  # sform code 2 > 0 wins, as in nibabel
    assert volume.affine.dtype == np.float64 and volume.affine.shape == (4, 4)
    assert volume.nifti_header is not None and int(volume.nifti_header["sform_code"]) == 2
    assert read_shape(path) == array.shape


def _set_scaling(path: Path, slope: float, inter: float) -> None:
    """Overwrite scl_slope/scl_inter in place (nibabel recomputes them on save)."""
    header = nib.load(path).header.copy()
    header["scl_slope"], header["scl_inter"] = slope, inter
    with open(path, "r+b") as f:
        header.write_to(f)


@pytest.mark.parametrize(("slope", "inter"), [(np.nan, np.nan), (1.0, 0.0), (0.0, 0.0)])
def test_nifti_unscaled_labels_keep_integer_dtype(tmp_path, slope, inter):
    array = labels((4, 5, 6), np.uint8)
    path = tmp_path / "case.nii"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    _set_scaling(path, slope, inter)
    volume = read_labels(path)
    assert volume.array.dtype == np.uint8 and np.array_equal(volume.array, array)


def test_nifti_scaled_labels_are_scaled_like_nibabel(tmp_path):
    array = labels((4, 5, 6), np.uint8)
    path = tmp_path / "case.nii"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    _set_scaling(path, 2.0, 1.0)
    volume = read_labels(path)
    np.testing.assert_array_equal(volume.array, array * 2.0 + 1.0)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [((6, 7, 5, 1), (6, 7, 5)), ((6, 7, 5, 1, 1), (6, 7, 5)), ((6, 7), (6, 7)), ((6, 7, 1), (6, 7, 1))],
)
def test_nifti_shapes(tmp_path, stored, expected):
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(labels(stored), np.diag([0.5, 0.6, 2.0, 1.0])), path)
    volume = read_labels(path)
    assert volume.array.shape == expected == read_shape(path)
    assert len(volume.spacing) == len(expected)
    np.testing.assert_allclose(volume.spacing[:2], (0.5, 0.6), rtol=1e-6)


@pytest.mark.parametrize("reader", [read_labels, read_shape])
def test_nifti_4d_is_rejected(tmp_path, reader):
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(labels((6, 7, 5, 2)), np.eye(4)), path)
    with pytest.raises(InputError, match=r"4D label volume \(shape \(6, 7, 5, 2\)\); expected 2D or 3D") as err:
        reader(path)
    assert_one_line_without_path(err.value, path)


# --------------------------------------------------------------------------- SimpleITK reader


@pytest.mark.parametrize("suffix", SITK_3D)
def test_sitk_3d_round_trip(tmp_path, suffix):
    array = labels((5, 6, 7), np.int16)  # (z, y, x)
    image = sitk_image(array)
    path = tmp_path / f"case{suffix}"
    sitk.WriteImage(image, str(path))

    volume = read_labels(path)

    assert volume.array.dtype == np.int16 and np.array_equal(volume.array, array)
    assert volume.spacing == pytest.approx((3.0, 0.8, 0.7))  # array axes are (z, y, x)
    assert volume.nifti_header is None
    assert read_shape(path) == array.shape
    for k, j, i in [(0, 0, 0), (4, 5, 6), (1, 2, 3), (4, 0, 6)]:
        np.testing.assert_allclose(volume.affine @ [k, j, i, 1], [*ras_point(image, (i, j, k)), 1], atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    angles=st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
    spacing=st.tuples(*[st.floats(0.1, 5.0)] * 3),
    origin=st.tuples(*[st.floats(-300, 300)] * 3),
    flip=st.booleans(),
)
def test_sitk_affine_matches_itk_geometry(angles, spacing, origin, flip):
    array = labels((3, 4, 5))
    image = sitk_image(array, spacing, origin, angles)
    if flip:  # a left-handed direction (det -1) must survive too
        direction = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag([1, 1, -1])
        image.SetDirection(direction.ravel().tolist())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "case.mha"
        sitk.WriteImage(image, str(path))
        volume = read_labels(path)
    index = np.array([[k, j, i, 1] for k in (0, 2) for j in (0, 3) for i in (0, 1, 4)], dtype=float)
    expected = [ras_point(image, (i, j, k)) for k, j, i, _ in index.astype(int)]
    np.testing.assert_allclose((volume.affine @ index.T).T[:, :3], expected, atol=1e-6)


def test_sitk_and_nifti_agree_on_world_coordinates(tmp_path):
    """SimpleITK writes the same image as NIfTI (RAS) and MetaImage (LPS); both paths must agree."""
    array = labels((5, 6, 7))
    image = sitk_image(array)
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "case.mha"))
    nifti, meta = read_labels(tmp_path / "case.nii.gz"), read_labels(tmp_path / "case.mha")

    assert np.array_equal(nifti.array, meta.array.transpose(2, 1, 0))
    assert nifti.spacing == pytest.approx(meta.spacing[::-1], rel=1e-6)
    xyz = np.array([[i, j, k, 1] for i in (0, 6) for j in (0, 5) for k in (0, 4)], dtype=float)
    zyx = xyz[:, [2, 1, 0, 3]]
    np.testing.assert_allclose(nifti.affine @ xyz.T, meta.affine @ zyx.T, atol=1e-4)  # NIfTI stores float32


def test_png_2d_round_trip(tmp_path):
    array = labels((6, 9))  # (rows=y, columns=x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.25))
    path = tmp_path / "case.png"
    sitk.WriteImage(image, str(path))

    volume = read_labels(path)

    assert volume.array.dtype == np.uint8 and np.array_equal(volume.array, array)
    assert volume.spacing == pytest.approx((0.25, 0.5))
    assert read_shape(path) == (6, 9)
    written = sitk.ReadImage(str(path))  # PNG keeps spacing, not origin/direction
    for j, i in [(0, 0), (5, 8), (2, 7)]:
        np.testing.assert_allclose(volume.affine @ [j, i, 0, 1], [*ras_point(written, (i, j)), 1], atol=1e-6)
    np.testing.assert_allclose(volume.affine[:, 2], [0, 0, 1, 0])  # unit z axis for a 2D image


def test_tiff_3d_round_trip(tmp_path):
    array = labels((4, 6, 7), np.uint16)
    path = tmp_path / "case.tif"
    sitk.WriteImage(sitk_image(array), str(path))
    volume = read_labels(path)
    assert volume.array.dtype == np.uint16 and np.array_equal(volume.array, array)
    # TIFF stores in-plane spacing only (as a float32 rational); z spacing comes back as 1.
    assert volume.spacing == pytest.approx((1.0, 0.8, 0.7), rel=1e-6)
    assert read_shape(path) == array.shape


def test_tiff_2d_round_trip(tmp_path):
    array = labels((6, 9), np.uint8)
    path = tmp_path / "case.tiff"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert np.array_equal(read_labels(path).array, array)
    assert read_shape(path) == (6, 9)


# --------------------------------------------------------------------------- numpy readers


def test_npy_round_trip(tmp_path):
    array = labels((5, 6, 7), np.int32)
    path = tmp_path / "case.npy"
    np.save(path, array)
    volume = read_labels(path)
    assert volume.array.dtype == np.int32 and np.array_equal(volume.array, array)
    assert volume.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(volume.affine, np.eye(4))
    assert read_shape(path) == array.shape


def test_npy_2d_and_bool(tmp_path):
    path = tmp_path / "mask.npy"
    np.save(path, labels((6, 7)).astype(bool))
    volume = read_labels(path)
    assert volume.array.dtype == bool and volume.spacing == (1.0, 1.0)


@pytest.mark.parametrize("key", ["whatever", "labels", "seg"])
def test_npz_single_array(tmp_path, key):
    array = labels((5, 6, 7))
    path = tmp_path / "case.npz"
    np.savez(path, **{key: array})
    assert np.array_equal(read_labels(path).array, array)
    assert read_shape(path) == array.shape


def test_npz_conventional_key_and_spacing(tmp_path):
    array = labels((5, 6, 7))
    path = tmp_path / "case.npz"
    np.savez_compressed(path, image=np.zeros(3), seg=array, spacing=np.array([3.0, 0.8, 0.7]))
    volume = read_labels(path)
    assert np.array_equal(volume.array, array)
    assert volume.spacing == (3.0, 0.8, 0.7)
    np.testing.assert_array_equal(volume.affine, np.diag([3.0, 0.8, 0.7, 1.0]))
    assert read_shape(path) == array.shape


def test_npz_labels_key_preferred_over_order(tmp_path):
    array = labels((5, 6))
    path = tmp_path / "case.npz"
    np.savez(path, arr_0=np.zeros((2, 2)), labels=array)
    assert np.array_equal(read_labels(path).array, array)


@pytest.mark.parametrize("reader", [read_labels, read_shape])
def test_npz_ambiguous_keys(tmp_path, reader):
    path = tmp_path / "case.npz"
    np.savez(path, image=labels((3, 3)), mask=labels((3, 3)))
    with pytest.raises(InputError, match=r"keys are \['image', 'mask'\]") as err:
        reader(path)
    assert_one_line_without_path(err.value, path)


def test_npz_spacing_length_mismatch(tmp_path):
    path = tmp_path / "case.npz"
    np.savez(path, labels=labels((3, 4, 5)), spacing=np.array([1.0, 2.0]))
    with pytest.raises(InputError, match="'spacing' has 2 values"):
        read_labels(path)


# --------------------------------------------------------------------------- errors


def _truncated_nifti(path: Path) -> None:
    nib.save(nib.Nifti1Image(labels((40, 50, 30)), np.eye(4)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _without_raw(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(labels((3, 4, 5))), str(path))
    path.with_suffix(".raw").unlink()


def _cut_last_100_bytes(path: Path) -> None:
    """A file whose header is whole and whose voxels lack their last 100 bytes."""
    sitk.WriteImage(sitk.GetImageFromArray(labels((8, 8, 8))), str(path))
    path.write_bytes(path.read_bytes()[:-100])


# name -> (file name, regex the message must match, writer of the bad file)
BAD_INPUTS = {
    "truncated_nii_gz": (
        "a.nii.gz",
        r"^cannot read: file is truncated or not a valid NIfTI \(EOFError: ",
        _truncated_nifti,
    ),
    "truncated_nii": ("a.nii", "^the header claims 40 × 50 × 30 voxels .*truncated", _truncated_nifti),
    "vox_offset_inside_header": (
        "a.nii",
        "^the header puts the voxels at byte 0, inside the header itself",
        lambda p: p.write_bytes(_header_only((3, 4, 5)) + bytes(60)),
    ),
    "garbage_nii_gz": ("a.nii.gz", "^cannot read: .*NIfTI", lambda p: p.write_bytes(os.urandom(4000))),
    "garbage_gzip": ("a.nii.gz", "^cannot read: .*NIfTI", lambda p: p.write_bytes(gzip.compress(os.urandom(4000)))),
    "empty_nii_gz": ("a.nii.gz", r"^empty file \(0 bytes\)$", lambda p: p.write_bytes(b"")),
    "garbage_mha": ("a.mha", "^cannot read: .*MetaImage", lambda p: p.write_bytes(os.urandom(4000))),
    "garbage_nrrd": ("a.nrrd", "^cannot read: .*NRRD", lambda p: p.write_bytes(os.urandom(4000))),
    "garbage_png": ("a.png", "^cannot read: .*PNG", lambda p: p.write_bytes(os.urandom(4000))),
    "garbage_npy": ("a.npy", r"^cannot read: .*\.npy", lambda p: p.write_bytes(os.urandom(4000))),
    "garbage_npz": ("a.npz", r"^cannot read: .*\.npz", lambda p: p.write_bytes(os.urandom(4000))),
    "missing": ("a.nii.gz", "^file not found$", lambda p: None),
    "directory": ("a.nii.gz", "^is a directory, not a file$", lambda p: p.mkdir()),
    "unknown_suffix": ("a.txt", "^unsupported file type", lambda p: p.write_text("x")),
    "rgb_png": (
        "a.png",
        "^has 3 components per pixel; expected a single-channel label image",
        lambda p: sitk.WriteImage(sitk.GetImageFromArray(labels((5, 6, 3)), isVector=True), str(p)),
    ),
    "vector_mha": (
        "a.mha",
        "^has 2 components per pixel",
        lambda p: sitk.WriteImage(sitk.GetImageFromArray(labels((4, 5, 6, 2)), isVector=True), str(p)),
    ),
    "4d_mha": (
        "a.mha",
        r"^4D label volume \(shape \(2, 3, 4, 5\)\)",
        lambda p: sitk.WriteImage(sitk.Image([5, 4, 3, 2], sitk.sitkUInt8), str(p)),
    ),
    "mha_cut_in_data": ("a.mha", r"^the header claims 8 × 8 × 8 voxels \(512 bytes\), more than the file can "
                        r"hold \(412 bytes\)", _cut_last_100_bytes),
    "nrrd_cut_in_data": ("a.nrrd", r"can hold \(412 bytes\)", _cut_last_100_bytes),
    "mha_naming_a_missing_file": ("a.mha", "^data file 'b.raw' named in the header is missing$", lambda p: p.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementDataFile = b.raw\n")),
    "mhd_without_raw": ("a.mhd", "^data file 'a.raw' named in the header is missing$", _without_raw),
    "nhdr_without_raw": ("a.nhdr", "^data file 'a.raw' named in the header is missing$", _without_raw),
    "complex_npy": (
        "a.npy",
        "^unsupported label dtype complex64",
        lambda p: np.save(p, np.ones((3, 4, 5), np.complex64)),
    ),
    "string_npy": ("a.npy", "^unsupported label dtype <U1", lambda p: np.save(p, np.full((3, 4), "a"))),
    "object_npy": (
        "a.npy",
        "^cannot read: .*Object arrays cannot be loaded",
        lambda p: np.save(p, np.array([[{}, 1]], dtype=object), allow_pickle=True),
    ),
    "1d_npy": ("a.npy", r"^1D label volume \(shape \(5,\)\)", lambda p: np.save(p, np.arange(5))),
    "4d_npy": ("a.npy", r"^4D label volume", lambda p: np.save(p, np.zeros((2, 3, 4, 5), np.uint8))),
    "empty_npy": ("a.npy", r"^empty label volume \(shape \(0, 3\)\)", lambda p: np.save(p, np.zeros((0, 3), np.uint8))),
    "complex_nifti": (
        "a.nii.gz",
        "^unsupported label dtype complex64",
        lambda p: nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.complex64), np.eye(4)), p),
    ),
}


def _header_only(shape) -> bytes:
    """A NIfTI-1 header as nibabel makes it, vox_offset left at 0, and its extension flag."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    return header.binaryblock + b"\0" * 4


def bad_input(tmp_path: Path, name: str) -> tuple[Path, str]:
    filename, match, writer = BAD_INPUTS[name]
    path = tmp_path / filename
    writer(path)
    return path, match


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_one_line_input_error(tmp_path, name):
    path, match = bad_input(tmp_path, name)
    with pytest.raises(InputError, match=match) as err:
        read_labels(path)
    assert_one_line_without_path(err.value, path)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_read_shape_errors_are_input_errors(tmp_path, name):
    """read_shape may accept files whose voxel data are bad, but never leaks another exception."""
    path, _ = bad_input(tmp_path, name)
    try:
        read_shape(path)
    except InputError as err:
        assert_one_line_without_path(err, path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(tmp_path):
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(labels((3, 4, 5)), np.eye(4)), path)
    path.chmod(0)
    try:
        with pytest.raises(InputError, match="^permission denied$"):
            read_labels(path)
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------- writers


def volume_from_nifti(tmp_path: Path, shape=(6, 7, 5)) -> tuple[LabelVolume, np.ndarray, np.ndarray]:
    path = tmp_path / "labels" / "case.nii.gz"
    path.parent.mkdir(exist_ok=True)
    qform, sform = nifti_with_forms(path, labels(shape, np.int16))
    return read_labels(path), qform, sform


def some_maps(volume: LabelVolume, channels: int = 3, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(-1, 1, size=(channels, *volume.array.shape)).astype(dtype)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_write_nifti_keeps_qform_and_sform(tmp_path, suffix):
    volume, qform, sform = volume_from_nifti(tmp_path)
    maps = some_maps(volume)
    out = tmp_path / "maps" / "sub" / f"case{suffix}"

    write_map(out, maps, volume, [0, 1, 2], "rrw")

    img = nib.load(out)
    header = img.header
    assert img.shape == (6, 7, 5, 3)
    assert img.get_data_dtype() == np.float32
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.float32 and np.array_equal(data, np.moveaxis(maps, 0, -1))
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 2
    np.testing.assert_allclose(header.get_qform(), qform, atol=1e-5)
    np.testing.assert_allclose(header.get_sform(), sform, atol=1e-6)
    np.testing.assert_allclose(img.affine, volume.affine, atol=1e-6)
    np.testing.assert_allclose(header.get_zooms(), (*SPACING_XYZ, 1.0), rtol=1e-6)
    assert header["descrip"].item() == b"rwmaps rrw full 3d schema 2"  # kind, layout, spatial rank, schema
    assert sorted(os.listdir(out.parent)) == [out.name]  # no temporary left


def test_write_nifti_from_sitk_input_sets_scanner_codes(tmp_path):
    array = labels((5, 6, 7))
    sitk.WriteImage(sitk_image(array), str(tmp_path / "case.mha"))
    volume = read_labels(tmp_path / "case.mha")
    out = tmp_path / "case.nii.gz"

    write_map(out, some_maps(volume, 2), volume, [0, 3], "boundary")

    img = nib.load(out)
    assert img.shape == (5, 6, 7, 2)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.header.get_sform(), volume.affine, atol=1e-6)
    np.testing.assert_allclose(img.header.get_qform(), volume.affine, atol=1e-5)
    np.testing.assert_allclose(img.header.get_zooms(), (3.0, 0.8, 0.7, 1.0), rtol=1e-6)
    assert img.header.get_xyzt_units()[0] == "mm"


def test_write_nifti_2d_map_is_h_w_1_c(tmp_path):
    path = tmp_path / "case.png"
    image = sitk.GetImageFromArray(labels((6, 9)))
    image.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image, str(path))
    volume = read_labels(path)
    maps = some_maps(volume, 4)
    out = tmp_path / "case.nii.gz"

    write_map(out, maps, volume, [0, 1, 2, 3], "ac")

    img = nib.load(out)
    assert img.shape == (6, 9, 1, 4)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj)[:, :, 0, :], np.moveaxis(maps, 0, -1))
    np.testing.assert_allclose(img.header.get_zooms(), (0.25, 0.5, 1.0, 1.0))


def test_write_nifti_is_reproducible_and_honours_level(tmp_path):
    volume, _, _ = volume_from_nifti(tmp_path, (30, 30, 30))
    maps = np.ones((2, 30, 30, 30), np.float32)
    write_map(tmp_path / "a.nii.gz", maps, volume, [0, 1], "rrw")
    a = (tmp_path / "a.nii.gz").read_bytes()
    write_map(tmp_path / "a.nii.gz", maps, volume, [0, 1], "rrw")
    b = (tmp_path / "a.nii.gz").read_bytes()
    write_map(tmp_path / "c.nii.gz", maps, volume, [0, 1], "rrw", compresslevel=9)
    c = (tmp_path / "c.nii.gz").read_bytes()
    assert a == b  # mtime 0 and the final name in the gzip header, not the temporary's
    assert c[8] == 2  # gzip XFL 2: zlib's best, the level a caller chose
    assert gzip.decompress(a) == gzip.decompress(c)  # ISA-L's default output is standard gzip: same NIfTI bytes
    assert b"a.nii" in a[:40] and TMP_MARKER.encode() not in a[:100]


def test_write_nifti_rejects_float16(tmp_path):
    volume, _, _ = volume_from_nifti(tmp_path)
    out = tmp_path / "maps" / "case.nii.gz"
    with pytest.raises(ValueError, match="float16"):
        write_map(out, some_maps(volume, dtype=np.float16), volume, [0, 1, 2], "rrw")
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("compresslevel", [0, 1, 6])
def test_write_npz(tmp_path, dtype, compresslevel):
    volume, _, _ = volume_from_nifti(tmp_path)
    maps = some_maps(volume, dtype=dtype)
    out = tmp_path / "maps" / "case.npz"

    write_map(out, maps, volume, np.array([0, 2, 5], dtype=np.uint8), "kervadec", compresslevel=compresslevel)

    with np.load(out, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["classes", "kind", "layout", "map", "schema", "spacing"]
        assert npz["map"].dtype == dtype and np.array_equal(npz["map"], maps)
        assert npz["classes"].dtype == np.int64 and npz["classes"].tolist() == [0, 2, 5]
        assert npz["spacing"].dtype == np.float64
        np.testing.assert_allclose(npz["spacing"], SPACING_XYZ, rtol=1e-6)
        assert npz["kind"].ndim == 0 and npz["kind"].dtype.kind == "U" and str(npz["kind"]) == "kervadec"
    assert sorted(os.listdir(out.parent)) == [out.name]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_write_npy_is_memory_mappable(tmp_path, dtype):
    volume, _, _ = volume_from_nifti(tmp_path)
    maps = some_maps(volume, dtype=dtype)
    out = tmp_path / "maps" / "case.npy"

    write_map(out, maps, volume, [0, 1, 2], "rrw")

    mapped = np.load(out, mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    assert mapped.dtype == dtype and mapped.shape == (3, 6, 7, 5) and np.array_equal(mapped, maps)
    assert sorted(os.listdir(out.parent)) == [out.name]


def test_write_replaces_existing_file(tmp_path):
    volume, _, _ = volume_from_nifti(tmp_path)
    out = tmp_path / "case.npy"
    out.write_bytes(b"old")
    write_map(out, some_maps(volume), volume, [0, 1, 2], "rrw")
    assert np.load(out).shape == (3, 6, 7, 5)


@pytest.mark.parametrize(
    ("name", "maps", "classes", "match"),
    [
        ("case.npz", np.empty((3, 6, 7, 5), dtype=object), [0, 1, 2], "object"),
        ("case.npy", np.zeros((3, 6, 7, 5), np.float64), [0, 1, 2], "float64"),
        ("case.npy", np.zeros((3, 6, 7, 4), np.float32), [0, 1, 2], "does not match"),
        ("case.npz", np.zeros((3, 6, 7, 5), np.float32), [0, 1], "2 classes for 3"),
        ("case.nii.gz", [[0.0]], [0], "expected float32"),
        ("case.mha", np.zeros((3, 6, 7, 5), np.float32), [0, 1, 2], "output name must end"),
    ],
)
def test_write_rejects_bad_arguments_without_leaving_files(tmp_path, name, maps, classes, match):
    volume, _, _ = volume_from_nifti(tmp_path)
    out = tmp_path / "maps" / name
    with pytest.raises(ValueError, match=match):
        write_map(out, maps, volume, classes, "rrw")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_write_failure_removes_temporary(tmp_path):
    """The rename fails (the target is a non-empty folder): no temporary may survive."""
    volume, _, _ = volume_from_nifti(tmp_path)
    out = tmp_path / "maps" / "case.nii.gz"
    (out / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        write_map(out, some_maps(volume), volume, [0, 1, 2], "rrw")
    assert sorted(os.listdir(out.parent)) == ["case.nii.gz"] and out.is_dir()


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    out = tmp_path / "deep" / "rwmaps.json"
    out.parent.mkdir()
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            assert TMP_MARKER in tmp.name and tmp.name.endswith(".json") and tmp.parent == out.parent
            tmp.write_text("half written")
            raise RuntimeError("killed")
    assert out.read_text() == "old" and os.listdir(out.parent) == ["rwmaps.json"]


def test_temporary_name_keeps_double_suffix(tmp_path):
    with atomic_path(tmp_path / "new" / "case.nii.gz") as tmp:
        assert tmp.name.startswith(".case" + TMP_MARKER) and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"x")
    assert (tmp_path / "new" / "case.nii.gz").read_bytes() == b"x"


def test_clean_temporaries_removes_only_those_whose_writer_is_gone(tmp_path):
    from rwmaps_cli.formats.base import _HOST

    gone = dead_pid()
    keep = [tmp_path / "a.nii.gz", tmp_path / "sub" / "b.npz",
            tmp_path / f".live{TMP_MARKER}{_HOST}-{os.getpid()}-0123abcd.nii.gz",  # this process writes it
            tmp_path / f".far{TMP_MARKER}other_host-{gone}-0123abcd.npy"]  # another host's pid: unknown here
    planted = [
        tmp_path / f".a{TMP_MARKER}{_HOST}-{gone}-deadbeef.nii.gz",
        tmp_path / "sub" / f".b{TMP_MARKER}{gone}-00ff00ff.npz",  # rwmaps 0.1's name: no host
        tmp_path / "sub" / "deeper" / f".c{TMP_MARKER}{_HOST}-{gone}-12345678.npy",
    ]
    for path in keep + planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")

    assert clean_temporaries(tmp_path) == 3
    assert all(p.exists() for p in keep) and not any(p.exists() for p in planted)
    assert clean_temporaries(tmp_path) == 0
    assert clean_temporaries(tmp_path, all_writers_gone=True) == 1  # the lock: no other host writes; this pid lives
    assert clean_temporaries(tmp_path / "missing") == 0


def test_write_nifti_from_2d_nifti_input(tmp_path):
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(labels((6, 9)), np.diag([0.5, 0.25, 1.0, 1.0])), path)
    volume = read_labels(path)
    out = tmp_path / "map.nii.gz"

    write_map(out, some_maps(volume, 2), volume, [0, 1], "rrw")

    img = nib.load(out)
    assert img.shape == (6, 9, 1, 2)
    np.testing.assert_allclose(img.affine, volume.affine, atol=1e-6)
    assert int(img.header["sform_code"]) == int(volume.nifti_header["sform_code"])
    assert int(img.header["qform_code"]) == int(volume.nifti_header["qform_code"])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".npz", ".npy"])
@pytest.mark.parametrize("spatial", [(6, 9), (6, 9, 1), (6, 7, 5)])
def test_map_is_complete(tmp_path, suffix, spatial):
    path = tmp_path / "labels.npy"
    np.save(path, labels(spatial))
    volume = read_labels(path)
    out = tmp_path / f"map{suffix}"
    write_map(out, some_maps(volume, 2), volume, [0, 1], "rrw")
    size = out.stat().st_size
    shape = [2, *spatial]

    assert map_is_complete(out, shape, size)
    assert not map_is_complete(out, [3, *spatial], size)
    assert not map_is_complete(out, shape, size + 1)
    assert not map_is_complete(out, None, size) and not map_is_complete(out, shape, None)
    assert not map_is_complete(tmp_path / f"missing{suffix}", shape, size)
    out.write_bytes(out.read_bytes()[: size // 2])
    assert not map_is_complete(out, shape, size)
    out.write_bytes(b"\0" * size)  # right size, not a map
    assert not map_is_complete(out, shape, size)


def test_a_map_description_is_read_into_named_fields():
    from rwmaps_cli.formats.base import describe_map, parse_description

    said = parse_description(describe_map("rrw", "compact", 2))
    assert (said.says_map, said.kind, said.layout, said.spatial_ndim, said.schema) == (True, "rrw", "compact", 2, 2)
    assert parse_description("rwmaps boundary") == (True, "boundary", "full", None, 1)  # schema 1, first form
    assert parse_description("rwmaps rrw compact 2d") == (True, "rrw", "compact", 2, 1)  # schema 1, later form
    assert not parse_description("a NIfTI from the scanner").says_map


# --------------------------------------------------------------------------- ISA-L gzip


@pytest.mark.parametrize("layout", ["full", "compact"])
def test_isal_gzip_maps_open_in_nibabel_simpleitk_and_monai(tmp_path, layout):
    """.nii.gz maps are written by ISA-L: standard gzip that every reader opens alike."""
    from monai.transforms import LoadImage

    volume, _, _ = volume_from_nifti(tmp_path, (17, 12, 9))
    maps = some_maps(volume, 3)
    data = maps if layout == "full" else maps[0]
    out = tmp_path / "m.nii.gz"
    write_map(out, data, volume, [0, 1, 2], "rrw", layout=layout)
    stored = np.moveaxis(data, 0, -1) if layout == "full" else data  # X x Y x Z (x C) as NIfTI keeps it
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), stored)
    by_itk = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))  # ITK reverses every axis, the 4th too
    np.testing.assert_array_equal(by_itk, stored.T)
    np.testing.assert_array_equal(np.asarray(LoadImage(image_only=True)(str(out))), stored)
    plain = gzip.decompress(out.read_bytes())  # one standard gzip member: Python's zlib agrees
    np.testing.assert_array_equal(np.frombuffer(plain[352:], "<f4").reshape(stored.shape, order="F"), stored)


def test_labels_read_through_isal_equal_nibabels(tmp_path):
    """Label .nii.gz files (zlib-written, as every tool writes them) read by ISA-L: the
    same array, dtype, memory order and header as nib.load; and a NIfTI-2 file too."""
    labels = brain_like_labels((21, 18, 13), n_classes=9, dtype=np.int16)
    for image_class in (nib.Nifti1Image, nib.Nifti2Image):
        path = tmp_path / f"{image_class.__name__}.nii.gz"
        nib.save(image_class(labels, np.diag([0.8, 0.9, 2.5, 1.0])), path)
        volume = read_labels(path)
        reference = nib.load(path)
        np.testing.assert_array_equal(volume.array, np.asanyarray(reference.dataobj))
        assert volume.array.dtype == np.int16 and volume.array.flags.f_contiguous
        np.testing.assert_allclose(volume.spacing, (0.8, 0.9, 2.5), rtol=1e-6)
        np.testing.assert_array_equal(volume.affine, reference.affine)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes((tmp_path / "Nifti1Image.nii.gz").read_bytes()[:-40])
    with pytest.raises(InputError, match="truncated or not a valid NIfTI"):
        read_labels(truncated)


def _one_bit_png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((1024, 1024), bool)).save(path)  # 1 bit per pixel, a few hundred bytes


def _mhd_with_a_space(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(labels((4, 5, 6))), str(path.with_name("my case.mhd")))
    path.with_name("my case.mhd").rename(path)  # the header still names "my case.raw"


def _metaimage_compressed_t(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((40, 40, 40), np.uint8)), str(path), True)
    path.write_bytes(path.read_bytes().replace(b"CompressedData = True", b"CompressedData = T", 1))


# Good files the header rule must not refuse: packed pixels, names with spaces, MetaIO's spellings.
GOOD_UNUSUAL = {"one_bit.png": _one_bit_png, "a.mhd": _mhd_with_a_space, "c.mha": _metaimage_compressed_t}


@pytest.mark.parametrize("name", sorted(GOOD_UNUSUAL))
def test_unusual_good_files_are_read(tmp_path, name):
    path = tmp_path / name
    GOOD_UNUSUAL[name](path)
    volume = read_labels(path)
    assert volume.array.ndim in (2, 3) and volume.array.size > 0
    assert read_shape(path) == volume.array.shape


def test_what_a_library_prints_during_a_failed_read_goes_into_its_one_line(tmp_path):
    """C code's stderr (fd 2) and Python warnings, while rwmaps captures (its commands and
    workers do): in the failed read's line, in order, and fd 2 is given back, every time."""
    import warnings

    from rwmaps_cli.formats import capturing_library_output, input_errors

    path = tmp_path / "a.nii"
    path.write_bytes(b"x" * 10)
    before = os.fstat(2)
    with capturing_library_output():
        for attempt in range(3):  # the sink is reused: no stale bytes from the attempt before
            with pytest.raises(InputError) as err:
                with input_errors(path, "NIfTI"):
                    os.write(2, f"C-LEVEL MESSAGE {attempt}\n".encode())
                    warnings.warn(f"PY WARNING {attempt}")
                    raise RuntimeError("boom")
            assert str(err.value) == f"cannot read: file is truncated or not a valid NIfTI (RuntimeError: boom; " \
                                     f"PY WARNING {attempt}; C-LEVEL MESSAGE {attempt})"
            assert os.fstat(2).st_ino == before.st_ino  # fd 2 is the terminal's again


def test_outside_rwmaps_commands_a_read_changes_nothing_of_the_process(tmp_path):
    """load_map in a user's loader: warnings and stderr are the user's, as they were."""
    import warnings

    from rwmaps_cli.formats import input_errors

    path = tmp_path / "a.nii"
    path.write_bytes(b"x" * 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=r"\(RuntimeError: boom\)$"):
            with input_errors(path, "NIfTI"):
                warnings.warn("the user's warning")
                raise RuntimeError("boom")
    assert [str(w.message) for w in caught] == ["the user's warning"]
