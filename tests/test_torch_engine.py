"""The PyTorch engine (``rwmaps_cli.torch.compute_maps``): exact against the numpy kernel and the
slow reference, on every device the machine has (CPU always; CUDA where there is one)."""

import numpy as np
import pytest
import torch
from helpers import blobs
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_maps

from rwmaps_cli import compute_maps
from rwmaps_cli.contract import KINDS
from rwmaps_cli.synthetic import brain_like_labels
from rwmaps_cli.torch import compute_maps as torch_maps

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 on both sides; distances summed in another order


def numpy_batch(labels: np.ndarray, classes, **kwargs) -> np.ndarray:
    """The numpy kernel on each item."""
    return np.stack([compute_maps(item, classes, **kwargs) for item in labels])


@st.composite
def requests(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    n_classes = draw(st.integers(1, 4))
    ignore = draw(st.sampled_from([None, n_classes]))
    top = n_classes if ignore is not None else n_classes - 1
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    labels = np.random.default_rng(seed).integers(0, top + 1, size=(batch, *shape))
    kind = draw(st.sampled_from(KINDS))
    layout = draw(st.sampled_from(["full", "compact"])) if kind == "rrw" else "full"
    spacing = draw(st.none() | st.tuples(*[st.floats(0.3, 3.0)] * ndim))
    axis = draw(st.none() | st.integers(0, ndim - 1)) if ndim > 1 else None
    options = dict(kind=kind, layout=layout, spacing=spacing, slice_axis=axis, ignore_label=ignore)
    return labels, list(range(n_classes)), options


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=150, deadline=None)
@given(case=requests())
def test_random_batches_equal_the_numpy_kernel(device, case):
    labels, classes, options = case
    expected = numpy_batch(labels, classes, **options)
    actual = torch_maps(torch.from_numpy(labels).to(device), classes, **options)
    assert actual.device.type == device and actual.dtype == torch.float32
    np.testing.assert_allclose(actual.cpu().numpy(), expected, **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spacing", [None, (1.0, 1.2, 3.0)])
def test_thin_classes_anisotropic_against_the_reference(device, kind, spacing):
    """A brain-like parcellation (thin Voronoi parcels), Fortran-ordered as nibabel reads it,
    against the slow reference; a class in the list occurs in no voxel."""
    labels = brain_like_labels((23, 26, 19), n_classes=9, seed=1)
    classes = [*range(9), 20]
    actual = torch_maps(torch.from_numpy(labels[None].astype(np.int64)).to(device), classes, kind=kind, spacing=spacing)
    np.testing.assert_allclose(actual[0].cpu().numpy(), reference_maps(labels, classes, kind, spacing), **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_whose_items_differ(device, kind):
    """Items with other classes present, a class filling one item, a single voxel, the
    ignore label in one item only: each item is its own field."""
    items = np.stack([blobs((9, 12, 10), 3, seed=4), np.full((9, 12, 10), 1), np.zeros((9, 12, 10), int)])
    items[2, 4, 6, 5] = 2  # a single voxel of class 2
    items[0, :2] = 7  # the ignore label
    options = dict(kind=kind, ignore_label=7)
    actual = torch_maps(torch.from_numpy(items).to(device), [0, 1, 2], **options)
    np.testing.assert_allclose(actual.cpu().numpy(), numpy_batch(items, [0, 1, 2], **options), **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_per_slice_maps_and_the_compact_layout(device):
    labels = np.stack([blobs((6, 15, 13), 4, seed=s) for s in (1, 2)])
    for axis in (0, 1, 2):
        options = dict(layout="compact", slice_axis=axis, spacing=(2.5, 0.8, 0.7))
        actual = torch_maps(torch.from_numpy(labels).to(device), range(4), **options)
        np.testing.assert_allclose(actual.cpu().numpy(), numpy_batch(labels, range(4), **options), **TOL)


def test_long_lines_are_taken_in_blocks(monkeypatch):
    """A pass takes its lines in blocks of at most BLOCK_VOXELS voxels: a tiny bound (a few
    lines per block) gives the same maps."""
    import rwmaps_cli.torch_engine as engine

    labels = torch.from_numpy(blobs((5, 40, 37), 3, seed=6))[None]
    whole = torch_maps(labels, [0, 1, 2], kind="sdf", spacing=(2.0, 1.0, 0.5))
    monkeypatch.setattr(engine, "BLOCK_VOXELS", 40 * 15)  # 15 lines at a time
    torch.testing.assert_close(torch_maps(labels, [0, 1, 2], kind="sdf", spacing=(2.0, 1.0, 0.5)), whole)


def test_classes_are_taken_a_few_at_a_time(monkeypatch):
    """boundary, kervadec and sdf maps take their classes in chunks: one class at a time gives
    the same maps."""
    import rwmaps_cli.torch_engine as engine

    labels = torch.from_numpy(np.stack([blobs((7, 11, 9), 4, seed=s) for s in (1, 2)]))
    for kind in ("boundary", "kervadec", "sdf"):
        whole = torch_maps(labels, range(3), kind=kind, spacing=(1.5, 1.0, 0.8), ignore_label=3)
        with monkeypatch.context() as patch:
            patch.setattr(engine, "BLOCK_VOXELS", labels.numel())  # one class at a time
            torch.testing.assert_close(torch_maps(labels, range(3), kind=kind, spacing=(1.5, 1.0, 0.8),
                                                  ignore_label=3), whole)


def test_the_work_does_not_grow_with_the_number_of_classes(monkeypatch):
    """The cost of an rrw map does not depend on the number of classes: counted, not timed, as
    the candidates the passes examine, on brain-like crops at 4 and at 83 classes (more classes
    make shorter runs, so fewer candidates)."""
    import rwmaps_cli.torch_engine as engine

    examined = []
    ranged_min = engine._ranged_min

    def counting(values, codes, rows, lo, hi, step):
        examined.append(int((hi - lo + 1).sum()))
        return ranged_min(values, codes, rows, lo, hi, step)

    monkeypatch.setattr(engine, "_ranged_min", counting)
    work = {}
    for n_classes in (4, 83):
        labels = torch.from_numpy(np.stack([brain_like_labels((40, 44, 36), n_classes, seed=s) for s in (1, 2)]))
        examined.clear()
        torch_maps(labels.long(), range(n_classes), layout="compact")
        work[n_classes] = sum(examined)
    assert 0 < work[83] <= 1.5 * work[4], work


def brute_force_pass(values: np.ndarray, codes: np.ndarray, step: float) -> np.ndarray:
    """One pass straight from its formula, along the last axis: for each voxel ``x`` of a line,
    ``min over y of ((x - y) step)^2 + (values[y] if codes[y] == codes[x] else 0)``."""
    out = np.empty_like(values)
    n = values.shape[-1]
    for line in np.ndindex(values.shape[:-1]):
        for x in range(n):
            candidates = [((x - y) * step) ** 2 + (values[line][y] if codes[line][y] == codes[line][x] else 0.0)
                          for y in range(n)]
            out[line][x] = min(candidates)
    return out


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 70), runs=st.integers(1, 6), step=st.sampled_from([1.0, 0.7, 3.0]))
def test_one_pass_against_its_formula_on_long_lines(device, seed, n, runs, step):
    """The divide-and-conquer pass equals the O(n^2) formula on lines of up to 70 voxels, with
    few long runs (so a voxel's nearest other code is far), arbitrary values, inf values (a
    line whose earlier passes found nothing) and whole lines of one code."""
    from rwmaps_cli.torch_engine import _pass

    rng = np.random.default_rng(seed)
    codes = np.sort(rng.integers(1, runs + 1, size=(6, n)), axis=1)  # sorted: a few long runs per line
    codes[0] = codes[0, 0]  # a line of one code
    values = rng.uniform(0, 50, size=(6, n)).astype(np.float32)
    values[rng.random((6, n)) < 0.3] = np.inf
    values[1] = np.inf  # a line with no finite value
    actual = _pass(torch.from_numpy(values).to(device), torch.from_numpy(codes).to(device), 1, step, first=False)
    np.testing.assert_allclose(actual.cpu().numpy(), brute_force_pass(values, codes, step), rtol=1e-6)
    first = _pass(torch.full((6, n), float("inf"), device=device), torch.from_numpy(codes).to(device), 1, step,
                  first=True)
    np.testing.assert_allclose(first.cpu().numpy(), brute_force_pass(np.full((6, n), np.inf, np.float32), codes, step),
                               rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(300,), (3, 257), (2, 65, 33)])
def test_long_lines_and_large_fields_equal_the_numpy_kernel(device, shape):
    """Fields where most voxels are far from another code (a few large classes): every level
    of the pass is used."""
    labels = np.stack([blobs(shape, 3, seed=s, sigma=8.0) for s in (1, 2)])
    labels[1, ..., :5] = 0  # one item with a block of one class at an edge
    for kind, layout in (("rrw", "compact"), ("rrw", "full"), ("sdf", "full")):
        options = dict(kind=kind, layout=layout, spacing=(0.9,) * (len(shape) - 1) + (2.0,))
        actual = torch_maps(torch.from_numpy(labels).to(device), [0, 1, 2], **options)
        np.testing.assert_allclose(actual.cpu().numpy(), numpy_batch(labels, [0, 1, 2], **options), **TOL)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"label values not in the class list \[0, 1\]: \[5\]"):
        torch_maps(torch.tensor([[0, 1, 5]]), [0, 1])
    with pytest.raises(ValueError, match="not integers"):
        torch_maps(torch.tensor([[0.0, 0.5]]), [0, 1])
    with pytest.raises(ValueError, match="no compact layout"):
        torch_maps(torch.zeros((1, 3, 3), dtype=torch.long), [0], kind="sdf", layout="compact")
    with pytest.raises(ValueError, match=r"\(B, \*spatial\)"):
        torch_maps(torch.zeros(3, dtype=torch.long), [0])


def test_integer_valued_floats_and_the_output_dtype():
    labels = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
    maps = torch_maps(labels, [0, 1], dtype=torch.float16)
    assert maps.dtype == torch.float16
    np.testing.assert_allclose(maps.float().numpy(), compute_maps(np.array([[0, 1, 1, 0]]), [0, 1])[None], atol=1e-3)


# ---- engine="torch" in the numpy API and in ``rwmaps compute`` ------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ["nibabel", "SimpleITK"])
@pytest.mark.parametrize("kind", KINDS)
def test_engine_torch_of_the_numpy_api_equals_edt_on_a_brain(device, order, kind):
    """``compute_maps(..., engine="torch")``: the numpy kernel with the PyTorch engine's
    distances, on a brain-like parcellation as nibabel (Fortran) and SimpleITK ((Z, Y, X), C)
    return it, with anisotropic spacing; the same memory order comes back."""
    labels = brain_like_labels((37, 42, 30), n_classes=12, spacing=(1.0, 1.0, 1.5), seed=5)
    spacing = (1.0, 1.0, 1.5)
    if order == "SimpleITK":
        labels, spacing = np.ascontiguousarray(labels.transpose(2, 1, 0)), spacing[::-1]
    classes = [*range(12), 30]
    layouts = ["full", "compact"] if kind == "rrw" else ["full"]
    for layout in layouts:
        options = dict(kind=kind, layout=layout, spacing=spacing, ignore_label=11)
        expected = compute_maps(labels, classes[:11] + [30], **options)
        actual = compute_maps(labels, classes[:11] + [30], engine="torch", device=device, **options)
        assert actual.strides == expected.strides
        np.testing.assert_allclose(actual, expected, **TOL)


def test_engine_torch_with_more_classes_than_a_byte_holds():
    """300 classes: the numpy kernel's codes are uint16, which PyTorch barely supports."""
    labels = np.random.default_rng(0).integers(0, 300, (12, 13, 11))
    for kind, layout in (("rrw", "compact"), ("sdf", "full")):
        options = dict(kind=kind, layout=layout)
        expected = compute_maps(labels, range(300), **options)
        np.testing.assert_allclose(compute_maps(labels, range(300), engine="torch", device="cpu", **options),
                                   expected, **TOL)


def test_engine_torch_regions_and_slices():
    from rwmaps_cli.regions import compute_region_maps

    labels = blobs((9, 21, 17), 4, seed=3)
    regions = [[1, 2, 3], [2, 3], [3]]
    for kind in KINDS:
        expected = compute_region_maps(labels, regions, kind=kind, slice_axis=1)
        actual = compute_region_maps(labels, regions, kind=kind, slice_axis=1, engine="torch", device="cpu")
        np.testing.assert_allclose(actual, expected, **TOL)


def test_rwmaps_compute_engine_torch_equals_the_default_engine_on_brains(tmp_path):
    """``rwmaps compute --engine torch --device cpu`` on brain-like NIfTI files (83 thin
    classes, anisotropic, odd sizes) and a SimpleITK MetaImage: the same maps as the default
    engine, and ``verify`` agrees."""
    import SimpleITK as sitk
    from helpers import run_rwmaps, write_nifti

    from rwmaps_cli import load_map

    root = tmp_path / "labels"
    for seed in (1, 2):
        brain = brain_like_labels((41, 47, 35), n_classes=83, spacing=(1.0, 1.0, 1.4), seed=seed)
        write_nifti(root / f"brain_{seed}.nii.gz", brain, zooms=(1.0, 1.0, 1.4))
    image = sitk.GetImageFromArray(blobs((11, 30, 26), 4, seed=7).astype(np.uint8))
    image.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(image, str(root / "ct.mha"))
    classes = ",".join(map(str, range(83)))
    for engine in ("edt", "torch"):
        extra = ["--device", "cpu"] if engine == "torch" else []
        run_rwmaps("compute", "--input", root, "--output", tmp_path / engine, "--engine", engine, *extra,
                   "--spacing", "physical", "--classes", classes, "-q", check=0)
    for name in ("brain_1.nii.gz", "brain_2.nii.gz", "ct.nii.gz"):
        expected, _ = load_map(tmp_path / "edt" / name)
        actual, meta = load_map(tmp_path / "torch" / name)
        np.testing.assert_allclose(actual, expected, **TOL)
    assert run_rwmaps("verify", "--input", root, "--output", tmp_path / "torch", check=0).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hint is for a run without a GPU")
def test_a_torch_run_on_the_cpu_hints_at_the_faster_engine(tmp_path):
    from helpers import SAMPLE_DATA, run_rwmaps

    result = run_rwmaps("compute", "--input", SAMPLE_DATA, "--output", tmp_path / "m", "--engine", "torch", check=0)
    assert ("rwmaps: hint: --engine torch computed on the CPU (PyTorch sees no GPU here), where the default "
            "--engine edt is faster") in result.stderr


def test_a_device_this_machine_lacks_is_one_line(tmp_path):
    from helpers import SAMPLE_DATA, run_rwmaps

    lacking = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    result = run_rwmaps("compute", "--input", SAMPLE_DATA, "--output", tmp_path / "m", "--engine", "torch",
                        "--device", lacking, check=2)
    assert f"rwmaps: --device {lacking}: PyTorch sees" in result.stderr
    assert "use --device cpu or --device auto" in result.stderr and "Traceback" not in result.stderr
    result = run_rwmaps("compute", "--input", SAMPLE_DATA, "--output", tmp_path / "m", "--device", "cpu", check=2)
    assert "--device cpu chooses where --engine torch computes; this run uses --engine edt" in result.stderr
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_pytorch_running_out_of_memory_is_one_line_not_a_bug():
    """A case whose PyTorch allocation fails (here a real one, far beyond any machine) fails with
    rwmaps' out-of-memory line, not as an internal error with PyTorch's words."""
    from rwmaps_cli.case import contained

    result = contained("case", lambda: {"size": torch.empty(1 << 45).numel()})
    assert result.status == "failed" and result.error.startswith("out of memory: this case needs more memory")
    assert "DefaultCPUAllocator" not in result.error and result.traceback is None


def test_the_numpy_api_checks_the_device_first():
    labels = np.zeros((3, 4), int)
    with pytest.raises(ValueError, match="device 'cpu' chooses where engine 'torch' computes; this call uses 'edt'"):
        compute_maps(labels, [0, 1], device="cpu")
    for device in ("meta", "bogus", f"cuda:{torch.cuda.device_count()}"):
        with pytest.raises(ValueError, match=f"device '{device}'"):
            compute_maps(labels, [0, 1], engine="torch", device=device)
