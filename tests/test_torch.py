"""rwmaps_cli.torch: the compact-map loss equals the full-map loss, in values and gradients.

Every full map here comes from ``compute_maps`` (or is written from docs/design.md's formulas
with scipy), never from the module under test; the compact map is the full map's
own-class channel, taken with a numpy gather.  Everything is float64 so that a 1e-12
tolerance catches a wrong term, not rounding.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import blobs
from reference import seed_patch_map
from scipy.ndimage import distance_transform_edt

torch = pytest.importorskip("torch")

from rwmaps_cli import compute_maps  # noqa: E402
from rwmaps_cli.contract import KINDS  # noqa: E402
from rwmaps_cli.torch import COMPACT_KINDS, expand_map, region_wise_loss  # noqa: E402

TOL = dict(rtol=1e-12, atol=1e-12)


def own_channel(full: np.ndarray, labels: np.ndarray, classes, ignore_label=None) -> np.ndarray:
    """The compact map: each voxel's value in its own class's channel (0 on the ignore label)."""
    index = np.zeros(labels.shape, dtype=np.int64)
    for c, k in enumerate(classes):
        index[labels == k] = c
    compact = np.take_along_axis(full, index[None], axis=0)[0]
    if ignore_label is not None:
        compact[labels == ignore_label] = 0
    return compact


def with_outside(full: np.ndarray, labels: np.ndarray, classes, outside, ignore_label=None) -> np.ndarray:
    """A full rrw map with ``outside[c]`` in place of 1 outside class c (the class-imbalance map)."""
    result = full.astype(np.float64).copy()
    for c, k in enumerate(classes):
        result[c][labels != k] = outside[c]
    if ignore_label is not None:
        result[:, labels == ignore_label] = 0
    return result


def batch_of(volumes, classes, **kwargs):
    """(labels (B, *S), full maps (B, C, *S) float64, compact (B, *S) float64) from compute_maps."""
    fulls = [compute_maps(v, classes, kind="rrw", **kwargs).astype(np.float64) for v in volumes]
    compacts = [own_channel(f, v, classes, kwargs.get("ignore_label")) for f, v in zip(fulls, volumes)]
    return np.stack(volumes), np.stack(fulls), np.stack(compacts)


def full_loss(logits: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The definition: mean(softmax(logits) * map)."""
    return (torch.softmax(logits, dim=1) * full).mean()


def value_and_grad(loss_fn, logits: torch.Tensor):
    logits = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(logits)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), grad


def random_logits(shape, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(scale=3.0, size=shape))


def assert_same_loss(logits, labels, compact, full, classes, **kwargs):
    """Values and gradients of the compact loss equal those of the full-map loss."""
    labels_t, compact_t, full_t = (torch.from_numpy(np.ascontiguousarray(a)) for a in (labels, compact, full))
    want, want_grad = value_and_grad(lambda x: full_loss(x, full_t), logits)
    got, got_grad = value_and_grad(lambda x: region_wise_loss(x, labels_t, compact_t, classes, **kwargs), logits)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_grad, want_grad, **TOL)
    return got


@pytest.mark.parametrize("shape", [(20, 18), (12, 10, 8)], ids=["2d", "3d"])
def test_loss_and_gradient_equal_the_full_map_loss(shape):
    classes = [0, 1, 2, 3]
    labels, full, compact = batch_of([blobs(shape, 4, seed=s) for s in (1, 2, 3)], classes)
    logits = random_logits((3, 4, *shape))
    loss = assert_same_loss(logits, labels, compact, full, classes)
    assert loss.dtype == torch.float64


def test_expand_map_gives_back_compute_maps():
    classes = [0, 1, 2, 5]
    volumes = [blobs((14, 12, 9), 3, seed=s) for s in (4, 5)]  # no 5: an absent class, all 1
    volumes[1][volumes[1] == 2] = 5
    labels, full, compact = batch_of(volumes, classes)
    got = expand_map(torch.from_numpy(compact), torch.from_numpy(labels), classes)
    np.testing.assert_array_equal(got.numpy(), full)
    assert (got[:, 3][torch.from_numpy(labels) != 5] == 1).all()


def test_float32_maps_as_stored_expand_exactly():
    """A loader gives float32 compact maps; expanding must not change a single value."""
    classes = [0, 1, 2]
    labels = blobs((16, 16, 6), 3, seed=9)
    full = compute_maps(labels, classes)
    compact = torch.from_numpy(own_channel(full, labels, classes))
    got = expand_map(compact[None], torch.from_numpy(labels)[None], classes)[0]
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), full)


def test_per_class_outside_values():
    classes = [0, 1, 2]
    outside = [0.95, 0.05, 0.3]  # the authors' class-imbalance variant
    volumes = [blobs((16, 14, 6), 3, seed=s) for s in (6, 7)]
    labels, full, compact = batch_of(volumes, classes)
    full = np.stack([with_outside(f, v, classes, outside) for f, v in zip(full, volumes)])
    logits = random_logits((2, 3, 16, 14, 6), seed=1)
    assert_same_loss(logits, labels, compact, full, classes, outside=outside)
    assert_same_loss(logits, labels, compact, full, classes, outside=torch.tensor(outside, dtype=torch.float64))
    expanded = expand_map(torch.from_numpy(compact), torch.from_numpy(labels), classes, outside=outside)
    np.testing.assert_allclose(expanded.numpy(), full, **TOL)
    # and it matters: the plain map gives another loss
    plain = region_wise_loss(logits, torch.from_numpy(labels), torch.from_numpy(compact), classes)
    assert not torch.isclose(plain, full_loss(logits, torch.from_numpy(full)))


def test_a_scalar_outside_value_other_than_one():
    classes = [0, 1, 2]
    labels, full, compact = batch_of([blobs((18, 18), 3, seed=8)], classes)
    full = np.stack([with_outside(full[0], labels[0], classes, [0.5] * 3)])
    assert_same_loss(random_logits((1, 3, 18, 18), seed=2), labels, compact, full, classes, outside=0.5)


def test_ignore_label_carries_no_weight():
    classes, ignore = [0, 1, 2], 255
    volumes = [blobs((14, 12, 8), 3, seed=s) for s in (10, 11)]
    for v in volumes:
        v[:4, :5] = ignore
    labels, full, compact = batch_of(volumes, classes, ignore_label=ignore)
    assert (full[:, :, labels[0] == ignore] == 0).all()  # the contract, from compute_maps
    logits = random_logits((2, 3, 14, 12, 8), seed=3)
    assert_same_loss(logits, labels, compact, full, classes, ignore_label=ignore)
    outside = [0.9, 0.2, 0.4]
    full_out = np.stack([with_outside(f, v, classes, outside, ignore) for f, v in zip(full, volumes)])
    assert_same_loss(logits, labels, compact, full_out, classes, ignore_label=ignore, outside=outside)
    _, grad = value_and_grad(lambda x: region_wise_loss(x, torch.from_numpy(labels), torch.from_numpy(compact),
                                                        classes, ignore_label=ignore), logits)
    assert (grad.permute(1, 0, 2, 3, 4)[:, torch.from_numpy(labels) == ignore] == 0).all()


def test_absent_classes_in_the_batch():
    """A class missing from every item still has a logit channel, with weight 1 everywhere."""
    classes = [0, 1, 2, 3, 7]
    volumes = [blobs((16, 16), 3, seed=s) for s in (12, 13)]
    labels, full, compact = batch_of(volumes, classes)
    assert (full[:, 3:] == 1).all()
    assert_same_loss(random_logits((2, 5, 16, 16), seed=4), labels, compact, full, classes)


def test_large_label_values():
    classes = [0, 70000, 123456]
    small = blobs((12, 12, 5), 3, seed=14)
    labels = np.asarray(classes, dtype=np.int64)[small]
    _, full, compact = batch_of([labels], classes)
    assert_same_loss(random_logits((1, 3, 12, 12, 5), seed=5), labels[None], compact, full, classes)


def test_monai_style_channel_axis_and_float_labels():
    """MONAI batches labels as (B, 1, *spatial) floats; the loss takes them as they come."""
    classes = [0, 1, 2]
    labels, full, compact = batch_of([blobs((10, 12, 6), 3, seed=15)], classes)
    logits = random_logits((1, 3, 10, 12, 6), seed=6)
    want = full_loss(logits, torch.from_numpy(full))
    got = region_wise_loss(logits, torch.from_numpy(labels)[:, None].double(), torch.from_numpy(compact)[:, None],
                           classes)
    torch.testing.assert_close(got, want, **TOL)


def whole_volume_distance(volume: np.ndarray, k: int) -> np.ndarray:
    """EDT of class k over the whole volume (scipy, float64): the distances a compact map holds."""
    return distance_transform_edt(volume == k)


def formula_compact(volume: np.ndarray, classes) -> np.ndarray:
    """The compact rrw map in float64, from the formula: -EDT/max(EDT) of each voxel's own class."""
    out = np.zeros(volume.shape)
    for k in classes:
        inside = volume == k
        if inside.any():
            distance = whole_volume_distance(volume, k)
            out[inside] = -distance[inside] / distance[inside].max()
    return out


def random_windows(shape, patch, count, seed=0):
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        start = [int(rng.integers(0, n - p + 1)) for n, p in zip(shape, patch)]
        windows.append(tuple(slice(s, s + p) for s, p in zip(start, patch)))
    return windows


@pytest.mark.parametrize("shape,patch", [((40, 36), (17, 20)), ((30, 26, 14), (12, 15, 9))], ids=["2d", "3d"])
def test_patch_renormalisation_reproduces_the_seed_per_patch_maps(shape, patch):
    classes = [0, 1, 2, 3]
    volume = blobs(shape, 4, seed=16, sigma=3.0)
    windows = random_windows(shape, patch, 3)
    labels = np.stack([volume[w] for w in windows])
    want_full = np.stack([seed_patch_map(volume, w, classes) for w in windows])
    logits = random_logits((3, 4, *patch), seed=7)
    # exact, in float64, from a compact map written from the formula
    compacts = np.stack([formula_compact(volume, classes)[w] for w in windows])
    assert_same_loss(logits, labels, compacts, want_full, classes, renormalize="patch")
    # and from compute_maps, whose distances are float32
    stored = own_channel(compute_maps(volume, classes), volume, classes)
    stored = torch.from_numpy(np.stack([stored[w] for w in windows]))
    got = expand_map(stored, torch.from_numpy(labels), classes, renormalize="patch")
    np.testing.assert_allclose(got.numpy(), want_full, rtol=1e-6, atol=1e-6)
    # the per-patch maps differ from the volume's: without renormalisation the test would fail
    assert not np.allclose(compacts, own_channel_batch(want_full, labels, classes))


def own_channel_batch(full, labels, classes):
    return np.stack([own_channel(f, v, classes) for f, v in zip(full, labels)])


def test_patch_renormalisation_with_ignore_label_and_per_class_outside():
    classes, ignore = [0, 1, 2], 9
    volume = blobs((30, 30, 10), 3, seed=17, sigma=3.0)
    volume[8:14, 5:20] = ignore  # counts as "not this class" for every distance
    window = (slice(4, 24), slice(6, 22), slice(1, 9))
    outside = [0.8, 0.1, 0.6]
    want = with_outside(seed_patch_map(volume, window, classes, ignore), volume[window], classes, outside, ignore)
    compact = formula_compact(volume, classes)[window]
    assert_same_loss(random_logits((1, 3, 20, 16, 8), seed=8), volume[window][None], compact[None], want[None],
                     classes, renormalize="patch", ignore_label=ignore, outside=outside)
    # the compact map compute_maps makes with the ignore label gives the same, to float32
    stored = own_channel(compute_maps(volume, classes, ignore_label=ignore), volume, classes, ignore)[window]
    got = expand_map(torch.from_numpy(stored)[None], torch.from_numpy(volume[window])[None], classes,
                     outside=outside, ignore_label=ignore, renormalize="patch")
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-6, atol=1e-6)


def test_ac_loss_needs_no_map():
    classes = [0, 1, 2]
    labels = np.stack([blobs((12, 10, 6), 3, seed=18)])
    full = compute_maps(labels[0], classes, kind="ac").astype(np.float64)[None]
    logits = random_logits((1, 3, 12, 10, 6), seed=9)
    want, want_grad = value_and_grad(lambda x: full_loss(x, torch.from_numpy(full)), logits)
    got, got_grad = value_and_grad(lambda x: region_wise_loss(x, torch.from_numpy(labels), None, classes, kind="ac"),
                                   logits)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_grad, want_grad, **TOL)
    np.testing.assert_array_equal(expand_map(None, torch.from_numpy(labels), classes, kind="ac").numpy(), full)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_the_compact_loss_or_a_one_line_error_naming_the_full_map_loss(kind):
    """rrw (from its compact map) and ac (from the labels) give the full-map loss; boundary,
    kervadec and sdf have no compact form: refused in one line that names the way, and that
    way, ``(torch.softmax(logits, dim=1) * full_map).mean()`` with compute_maps' full map, is
    the loss (for sdf, the normalised Boundary loss: a perfect prediction scores lowest)."""
    from rwmaps_cli.nnunet.losses import full_map_rw_loss

    classes = [0, 1, 2]
    volumes = [blobs((14, 12, 8), 3, seed=s) for s in (23, 24)]
    labels = np.stack(volumes)
    full = np.stack([compute_maps(v, classes, kind=kind, spacing=(1.0, 1.0, 2.5)) for v in volumes]).astype(np.float64)
    logits = random_logits((2, 3, 14, 12, 8), seed=11)
    labels_t, full_t = torch.from_numpy(labels), torch.from_numpy(full)
    if kind in COMPACT_KINDS:
        compact = torch.from_numpy(own_channel_batch(full, labels, classes)) if kind == "rrw" else None
        want, want_grad = value_and_grad(lambda x: full_loss(x, full_t), logits)
        got, got_grad = value_and_grad(lambda x: region_wise_loss(x, labels_t, compact, classes, kind=kind), logits)
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(got_grad, want_grad, **TOL)
        np.testing.assert_array_equal(expand_map(compact, labels_t, classes, kind=kind).numpy(), full)
        return
    compact = torch.from_numpy(own_channel_batch(full, labels, classes))
    for call in (lambda: region_wise_loss(logits, labels_t, compact, classes, kind=kind),
                 lambda: expand_map(compact, labels_t, classes, kind=kind),
                 lambda: region_wise_loss(logits, labels_t, full_t, classes, kind=kind)):  # a full map given: same
        with pytest.raises(ValueError) as raised:
            call()
        message = str(raised.value)
        assert "\n" not in message and f"kind {kind!r} has no compact form" in message
        assert f"compute_maps(labels, classes, kind={kind!r})" in message
        assert "(torch.softmax(logits, dim=1) * full_map).mean()" in message
    # the way the message names: the full-map loss, as nnU-Net's trainers compute it too
    got, got_grad = value_and_grad(lambda x: (torch.softmax(x, dim=1) * full_t).mean(), logits)
    want, want_grad = value_and_grad(lambda x: full_map_rw_loss(x, full_t), logits)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_grad, want_grad, **TOL)
    if kind == "sdf":  # the normalised Boundary loss: in [-1, 1], lowest for the one-hot labels
        one_hot = 50.0 * (labels_t[:, None] == torch.tensor(classes).view(1, -1, 1, 1, 1)).double()
        assert -1 <= got <= 1 and full_map_rw_loss(one_hot, full_t) < got


def test_an_unknown_kind_is_refused_by_name():
    labels = torch.from_numpy(blobs((8, 8), 3, seed=25)).long()[None]
    with pytest.raises(ValueError, match="unknown kind 'rw'; expected one of rrw, ac"):
        expand_map(torch.zeros(1, 8, 8), labels, [0, 1, 2], kind="rw")


def test_the_loss_trains_like_the_full_map_loss():
    """A few SGD steps on the compact loss and on the full loss follow the same path."""
    classes = [0, 1, 2]
    labels, full, compact = batch_of([blobs((16, 16), 3, seed=19)], classes)
    start = random_logits((1, 3, 16, 16), seed=10)
    paths = []
    for loss_fn in (lambda x: full_loss(x, torch.from_numpy(full)),
                    lambda x: region_wise_loss(x, torch.from_numpy(labels), torch.from_numpy(compact), classes)):
        logits = start.clone().requires_grad_(True)
        optimiser = torch.optim.SGD([logits], lr=50.0)
        losses = []
        for _ in range(5):
            loss = loss_fn(logits)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        paths.append(losses)
    np.testing.assert_allclose(paths[0], paths[1], rtol=1e-10)
    assert paths[0][-1] < paths[0][0]


@pytest.mark.parametrize("bad", ["unknown label", "fraction", "outside length", "shape", "renormalize", "kind"])
def test_bad_input_raises_value_error(bad):
    classes = [0, 1, 2]
    labels = torch.from_numpy(blobs((8, 8), 3, seed=20)).long()[None]
    compact = torch.zeros(1, 8, 8, dtype=torch.float64)
    logits = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    kwargs = {}
    if bad == "unknown label":
        labels[0, 0, 0] = 4
    elif bad == "fraction":
        labels = labels.double()
        labels[0, 0, 0] = 0.5
    elif bad == "outside length":
        kwargs["outside"] = [1.0, 1.0]
    elif bad == "shape":
        compact = compact[:, :7]
    elif bad == "renormalize":
        kwargs["renormalize"] = "volume"
    else:
        kwargs["kind"] = "boundary"
    with pytest.raises(ValueError):
        region_wise_loss(logits, labels, compact, classes, **kwargs)


def test_importing_rwmaps_cli_does_not_import_torch():
    code = "import sys, rwmaps_cli, rwmaps_cli.maps, rwmaps_cli.formats, rwmaps_cli.mapfile; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_loss_and_expansion_follow_bfloat16_logits_under_autocast():
    """Under CPU autocast the network's logits are bfloat16: the loss and the expansion run in
    the logits' dtype (no float32 made on the side) and agree with float32 to bfloat16 precision."""
    from rwmaps_cli.nnunet.losses import full_map_rw_loss as full_map_loss

    classes = [0, 1, 2, 3]
    volumes = [blobs((12, 14, 10), 4, seed=s, sigma=2.0) for s in (21, 22)]
    labels, full, compact = batch_of(volumes, classes)
    labels_t, full_t, compact_t = (torch.from_numpy(a) for a in (labels, full.astype(np.float32),
                                                                 compact.astype(np.float32)))
    conv = torch.nn.Conv3d(1, len(classes), 3, padding=1)
    image = torch.from_numpy(labels[:, None].astype(np.float32)) + 0.1 * random_logits(labels[:, None].shape).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(image)
        assert logits.dtype == torch.bfloat16
        got = region_wise_loss(logits, labels_t, compact_t, classes)
        got_renorm = region_wise_loss(logits, labels_t, compact_t, classes, renormalize="patch")
        got_full = full_map_loss(logits, full_t)
        expanded = expand_map(compact_t.to(torch.bfloat16), labels_t, classes)
    assert got.dtype == got_full.dtype == expanded.dtype == torch.bfloat16
    (grad,) = torch.autograd.grad(got, conv.weight)
    reference = logits.detach().float().requires_grad_(True)
    want = full_loss(reference, full_t)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(got_full.float(), want, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(got_renorm.float(), region_wise_loss(reference, labels_t, compact_t, classes,
                                                                    renormalize="patch"), rtol=2e-2, atol=2e-3)
    # the gradient through the bfloat16 network equals float32's to bfloat16 precision
    conv32 = torch.nn.Conv3d(1, len(classes), 3, padding=1)
    conv32.load_state_dict(conv.state_dict())
    (want_grad,) = torch.autograd.grad(region_wise_loss(conv32(image), labels_t, compact_t, classes), conv32.weight)
    cosine = torch.nn.functional.cosine_similarity(grad.float().flatten(), want_grad.flatten(), dim=0)
    assert cosine > 0.99
    # the expansion is exact up to the rounding of the map's values to bfloat16 (8 bits)
    np.testing.assert_allclose(expanded.float().numpy(), full, rtol=2 ** -8, atol=0)
    assert (expanded.float().numpy() != full).any()  # bfloat16 really rounded: the test sees the dtype


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [{}, {"spacing": (1.0, 1.0, 2.5)}, {"slice_axis": 2, "ignore_label": 9}])
def test_maps_computed_in_the_loss_equal_the_maps_of_each_item(device, kind, options):
    """``region_wise_loss(logits, labels, None, classes, kind=...)`` computes the batch's maps on
    the logits' device: its value and gradient equal the full-map loss with the numpy kernel's
    maps of each item (the paper's per-patch maps), for every kind."""
    classes = [0, 1, 2]
    labels = np.stack([blobs((14, 12, 8), 3, seed=s) for s in (3, 4)]).astype(np.int64)
    if "ignore_label" in options:
        labels[1, :3] = 9
    full = np.stack([compute_maps(item, classes, kind=kind, **options) for item in labels]).astype(np.float64)
    logits = random_logits((2, 3, 14, 12, 8), seed=5).to(device)
    labels_t, full_t = torch.from_numpy(labels).to(device), torch.from_numpy(full).to(device)
    if kind == "ac" and ("spacing" in options or "slice_axis" in options):  # an ac map has no distances
        with pytest.raises(ValueError, match="an ac map has none"):
            region_wise_loss(logits, labels_t, None, classes, kind=kind, **options)
        options = {key: value for key, value in options.items() if key == "ignore_label"}
    want, want_grad = value_and_grad(lambda x: full_loss(x, full_t), logits)
    got, got_grad = value_and_grad(lambda x: region_wise_loss(x, labels_t, None, classes, kind=kind, **options),
                                   logits)
    assert got.device.type == device
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-7)


def test_options_the_loss_would_not_use_are_refused():
    labels, logits = torch.zeros((1, 4, 4), dtype=torch.long), torch.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="spacing and slice_axis are for maps computed here"):
        region_wise_loss(logits, labels, torch.zeros((1, 4, 4)), [0, 1], spacing=(1.0, 2.0))
    for option in (dict(outside=[1.0, 0.5]), dict(outside=0.5), dict(renormalize="patch")):
        with pytest.raises(ValueError, match="outside and renormalize shape rrw maps; a sdf map computed here"):
            region_wise_loss(logits, labels, None, [0, 1], kind="sdf", **option)
