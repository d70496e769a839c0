"""The manifest: what it records of the parameters and every case, its journal, its schema
(and every map's), and the records of a job array's parts."""

import json

import numpy as np
import pytest
from helpers import blobs, compute_npy, manifest_json, run_rwmaps, write_nifti

from rwmaps_cli import __version__
from rwmaps_cli.manifest import read_folder_manifest


def test_manifest_records_parameters_and_every_case(labels_dir, tmp_path):
    out = tmp_path / "maps"
    compute_npy(labels_dir, out, "--kind", "boundary")
    data = manifest_json(out)
    assert data["tool"] == "rwmaps" and data["version"] == __version__
    assert data["classes"] == [0, 1, 2, 3]
    assert data["parameters"] == {"classes": [0, 1, 2, 3], "kind": "boundary", "spacing": "voxel", "slice_axis": None,
                                  "dtype": "float32", "fmt": "npy", "ignore_label": None, "layout": "full",
                                  "regions": None}
    assert sorted(data["cases"]) == ["case_000.nii.gz", "sub/case_001.nii.gz", "sub/case_002.nii.gz"]
    entry = data["cases"]["sub/case_001.nii.gz"]
    assert entry["status"] == "done" and entry["error"] is None
    assert entry["input"] == str(labels_dir / "sub" / "case_001.nii.gz")
    assert entry["output"] == str(out / "sub" / "case_001.npy")
    assert entry["shape"] == [4, 18, 22, 10]
    assert entry["fingerprint"]["size"] == (labels_dir / "sub" / "case_001.nii.gz").stat().st_size
    assert entry["bytes"] == (out / "sub" / "case_001.npy").stat().st_size
    assert entry["seconds"] >= 0


def test_a_torn_journal_line_is_ignored(tmp_path):
    labels_dir = tmp_path / "labels"
    for i in range(3):
        write_nifti(labels_dir / f"case_{i}.nii.gz", blobs((12, 10, 8), 3, seed=i))
    out = tmp_path / "maps"
    args = ["compute", "--input", labels_dir, "--output", out, "--format", "npy"]
    run_rwmaps(*args, check=0)
    parsed = read_folder_manifest(out)
    # As a kill mid-run leaves it: the manifest with two cases, the journal with the third
    # and a torn line (a write cut short).
    third = "case_2.nii.gz"
    header = {k: v for k, v in parsed.header.items()}
    cases = {name: entry for name, entry in parsed.cases.items() if name != third}
    (out / "rwmaps.json").write_text(json.dumps({**header, "cases": cases}))
    journal = out / "rwmaps.journal"
    journal.write_text(json.dumps({"journal_id": header["journal_id"]}) + "\n"
                       + json.dumps({"name": third, "entry": parsed.cases[third]}) + "\n"
                       + '{"name": "case_9.nii.gz", "entry": {"status": "do')
    again = read_folder_manifest(out)
    assert set(again.cases) == {"case_0.nii.gz", "case_1.nii.gz", third} and again.journaled == 1
    assert "3 skipped" in run_rwmaps(*args, check=0).stderr  # the journal's case counts as done
    assert not journal.exists() and set(json.loads((out / "rwmaps.json").read_text())["cases"]) == set(again.cases)
    # A journal that names another manifest (left by a crash before a rewrite) is not applied.
    journal.write_text(json.dumps({"journal_id": "another"}) + "\n"
                       + json.dumps({"name": "case_9.nii.gz", "entry": {"status": "done"}}) + "\n")
    assert "case_9.nii.gz" not in read_folder_manifest(out).cases


def test_the_manifest_and_every_map_say_their_schema_and_a_newer_one_is_refused(tmp_path):
    from rwmaps_cli.formats import SCHEMA

    labels_dir = tmp_path / "labels"
    write_nifti(labels_dir / "case.nii.gz", blobs((12, 10, 8), 3))
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", labels_dir, "--output", out, check=0)
    run_rwmaps("compute", "--input", labels_dir, "--output", tmp_path / "npz", "--format", "npz", check=0)
    assert manifest_json(out)["schema"] == SCHEMA == 2
    import nibabel as nib

    assert bytes(nib.load(out / "case.nii.gz").header["descrip"]).rstrip(b"\0") == b"rwmaps rrw full 3d schema 2"
    assert int(np.load(tmp_path / "npz" / "case.npz")["schema"]) == SCHEMA
    data = manifest_json(out)
    data["schema"] = SCHEMA + 1  # what a newer rwmaps would write: not to be overwritten
    (out / "rwmaps.json").write_text(json.dumps(data))
    refused = run_rwmaps("compute", "--input", labels_dir, "--output", out, check=2)
    assert f"written by a newer rwmaps (schema {SCHEMA + 1}; this one reads up to schema {SCHEMA})" in refused.stderr


def test_a_plain_run_after_the_parts_of_a_job_array_keeps_every_record(tmp_path):
    labels_dir = tmp_path / "labels"
    for i in range(4):
        write_nifti(labels_dir / f"case_{i}.nii.gz", blobs((12, 10, 8), 3, seed=i))
    out = tmp_path / "maps"
    args = ["compute", "--input", labels_dir, "--output", out, "--format", "npy", "--classes", "0,1,2"]
    for part in ("0", "1"):
        run_rwmaps(*args, "--num-parts", "2", "--part-id", part, check=0)
    assert "0 done, 4 skipped" in run_rwmaps(*args, check=0).stderr  # takes the parts' records over
    assert sorted(p.name for p in out.glob("rwmaps*")) == ["rwmaps.json", "rwmaps.lock", "rwmaps.parts"]
    assert sorted(p.name for p in (out / "rwmaps.parts").iterdir()) == ["rwmaps.part-0-of-2.lock",
                                                                       "rwmaps.part-1-of-2.lock"]
    assert len(manifest_json(out)["cases"]) == 4
    assert "0 done, 4 skipped" in run_rwmaps(*args, check=0).stderr  # and the next run still finds them


def test_a_map_of_a_newer_schema_is_refused_in_one_line(tmp_path):
    from rwmaps_cli import load_map
    from rwmaps_cli.formats import SCHEMA

    labels_dir = tmp_path / "labels"
    write_nifti(labels_dir / "case.nii.gz", blobs((12, 10, 8), 3))
    run_rwmaps("compute", "--input", labels_dir, "--output", tmp_path / "maps", check=0)
    import nibabel as nib

    path = tmp_path / "maps" / "case.nii.gz"
    image = nib.load(path)
    image.header["descrip"] = f"rwmaps rrw full 3d schema {SCHEMA + 1}".encode()
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header), tmp_path / "newer.nii.gz")
    with pytest.raises(Exception, match=f"written by a newer rwmaps \\(schema {SCHEMA + 1}"):
        load_map(tmp_path / "newer.nii.gz")
