"""Recreate the small sample label volumes bundled with rwmaps.

Run from the repository root:

    python sample_data/make_sample_data.py

Everything is synthetic and deterministic (fixed seeds, no downloads); re-running the script
gives byte-identical files. It writes, next to this script:

abdomen_ct_like.nii.gz
    A miniature abdominal CT segmentation: uint8, 96 x 96 x 40 voxels (X x Y x Z), anisotropic
    0.8 x 0.8 x 2.5 mm voxels, RAS affine with a non-zero origin, qform/sform codes 1.
    Classes: 0 background, 1 liver (large smooth lobed blob, patient's right),
    2 kidneys (two bean-like ellipsoids, left and right, posterior), 3 tumour (small blob
    inside the liver, touching its surface). Exercises multi-class maps and --spacing physical.

slice_2d.png
    A 128 x 128 uint8 2D label image, labels 0, 1, 2 (a disc and an ellipse that touch),
    written with SimpleITK so the pixel values are exactly the labels. Exercises 2D input.

Dataset001_Toy/
    An nnU-Net v2 raw dataset (dataset.json + labelsTr/, deliberately no imagesTr/):
    three 3D uint8 cases with 1 x 1 x 3 mm voxels, classes 0 background, 1 organ,
    2 lesion. toy_001 has NO lesion: its maps must still have a lesion channel, because
    channels follow the dataset's class list, not the classes present in one case.
    toy_002 has a slightly different shape from the other two, as real datasets do.
"""

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent


def world_grid(shape, affine):
    """Physical (mm) coordinates x, y, z of every voxel centre, each of the given shape."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:]
    return xyz.reshape((3,) + tuple(shape))


def smooth_noise(rng, shape, sigma_mm, spacing):
    """Gaussian-smoothed white noise with unit standard deviation (smooth in millimetres)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), [sigma_mm / s for s in spacing])
    return field / field.std()


def blob(xyz, centre, radii, noise=None, amplitude=0.0):
    """Mask of an ellipsoid (centre, semi-axes in mm) whose surface is perturbed by noise."""
    r = np.sqrt(sum(((c - c0) / a) ** 2 for c, c0, a in zip(xyz, centre, radii)))
    if noise is not None:
        r = r + amplitude * noise
    return r < 1.0


def largest(mask):
    """The largest connected component of a mask."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    return lab == 1 + int(np.argmax(ndi.sum(mask, lab, index=np.arange(1, n + 1))))


def clean(mask):
    """Keep the largest connected component and fill its holes: one solid organ."""
    return ndi.binary_fill_holes(largest(mask))


def save_nifti(labels, affine, path):
    """Write a uint8 label volume with qform = sform = affine (codes 1), units mm.

    The gzip stream is written with mtime=0 and no file name so that the bytes are reproducible.
    """
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f,
                                              compresslevel=9, mtime=0) as gz:
        gz.write(img.to_bytes())


def make_abdomen(path):
    shape, spacing = (96, 96, 40), (0.8, 0.8, 2.5)
    # RAS+: x to the patient's Right, y Anterior, z Superior; origin = centre of voxel (0, 0, 0).
    affine = np.diag(spacing + (1.0,))
    affine[:3, 3] = (-37.6, -52.4, -85.0)
    x, y, z = world_grid(shape, affine)
    # Coordinates relative to the centre of the field of view (about 77 x 77 x 100 mm).
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    xyz = (x - centre[0], y - centre[1], z - centre[2])
    rng = np.random.default_rng(2023)

    # Liver: a big right lobe plus a smaller left lobe reaching across the midline, upper abdomen.
    noise = smooth_noise(rng, shape, 8.0, spacing)
    right_lobe = blob(xyz, (12, 4, 14), (22, 24, 34), noise, 0.10)
    left_lobe = blob(xyz, (-8, 14, 24), (18, 12, 20), noise, 0.10)
    liver = clean(right_lobe | left_lobe)

    # Kidneys: posterior, either side of the spine, lower; bean shape = ellipsoid minus hilum.
    kidneys = np.zeros(shape, bool)
    for side in (+1, -1):  # +1 right, -1 left
        body = blob(xyz, (side * 24, -22, -16), (8, 10, 22), smooth_noise(rng, shape, 6.0, spacing), 0.05)
        hilum = blob(xyz, (side * 15, -20, -16), (4, 4, 8))
        kidneys |= body & ~hilum

    # Tumour: a small irregular blob in the right lobe, reaching the liver's anterior surface.
    tumour = blob(xyz, (16, 22, 18), (8, 8, 10), smooth_noise(rng, shape, 4.0, spacing), 0.15)
    tumour = clean(tumour & ndi.binary_dilation(liver, iterations=2) & ~kidneys)

    labels = np.zeros(shape, np.uint8)
    labels[largest(liver & ~kidneys & ~tumour)] = 1  # no stray liver voxels cut off by the others
    labels[kidneys] = 2
    labels[tumour] = 3
    save_nifti(labels, affine, path)


def make_slice_2d(path):
    rows, cols = np.indices((128, 128))
    labels = np.zeros((128, 128), np.uint8)
    labels[(rows - 64) ** 2 + (cols - 48) ** 2 < 30 ** 2] = 1                   # disc
    labels[((rows - 60) / 36.0) ** 2 + ((cols - 88) / 22.0) ** 2 < 1.0] = 2     # ellipse over it: they touch
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(path))


def make_toy_dataset(root):
    spacing = (1.0, 1.0, 3.0)
    cases = [  # name, shape, organ centre/radii (mm, from the FOV centre), lesion centre or None
        ("toy_000", (48, 48, 24), (0, 0, 0), (15, 12, 24), (5, 3, 4)),
        ("toy_001", (48, 48, 24), (-3, 2, 3), (13, 14, 21), None),
        ("toy_002", (44, 52, 22), (2, -3, -3), (14, 13, 20), (-6, -4, -6)),
    ]
    for seed, (name, shape, o_centre, o_radii, l_centre) in enumerate(cases):
        rng = np.random.default_rng(100 + seed)
        affine = np.diag(spacing + (1.0,))
        affine[:3, 3] = [-(n - 1) * s / 2 for n, s in zip(shape, spacing)]  # FOV centred at 0
        xyz = world_grid(shape, affine)
        organ = clean(blob(xyz, o_centre, o_radii, smooth_noise(rng, shape, 6.0, spacing), 0.08))
        labels = organ.astype(np.uint8)
        if l_centre is not None:
            lesion = blob(xyz, l_centre, (5, 5, 7), smooth_noise(rng, shape, 3.0, spacing), 0.15)
            labels[lesion & organ] = 2
        save_nifti(labels, affine, root / "labelsTr" / f"{name}.nii.gz")

    meta = {
        "name": "Toy",
        "description": "Synthetic rwmaps sample; labels only (no imagesTr).",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")


if __name__ == "__main__":
    make_abdomen(HERE / "abdomen_ct_like.nii.gz")
    make_slice_2d(HERE / "slice_2d.png")
    make_toy_dataset(HERE / "Dataset001_Toy")
    print(f"sample data written to {HERE}")
