"""Finding one map's manifest entry costs the same in a folder of 100 maps or 100,000: the
manifest's case lines are sorted and searched (never parsed whole), and the maps' folder is
never listed.  Checked against the full parser on names chosen to be awkward."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import blobs, run_rwmaps, write_nifti
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rwmaps_cli import load_map, manifest_lookup
from rwmaps_cli.manifest import CASES_OPENING, MANIFEST_NAME, SORTED_KEY, Settings, journal_path, manifest_text
from rwmaps_cli.manifest_lookup import manifest_for_map

SETTINGS = Settings(classes=(0, 1, 2), fmt="npy")
HEADER = {"tool": "rwmaps", "schema": 2, "version": "test", "parameters": SETTINGS.to_parameters(),
          "classes": [0, 1, 2], "engine": "edt", "journal_id": "0123456789abcdef"}


def write_manifest(folder: Path, names: list[str], header: dict = HEADER, sort: bool = True) -> dict[str, dict]:
    """A manifest of ``names`` (case names as compute records them), as manifest_text writes it."""
    cases = {name: {"input": f"/labels/{name}", "output": str(folder / map_name(name)), "status": "done",
                    "shape": [3, 4, 4], "case": name} for name in names}
    text = manifest_text(header, cases)
    if not sort:  # as rwmaps 0.1 wrote it: insertion order, and no SORTED_KEY
        text = manifest_text(header, {}).replace(f' "{SORTED_KEY}": true', ' "unsorted": true')
        body = ",\n".join(f"  {json.dumps(n)}: {json.dumps(e)}" for n, e in cases.items())
        text = text.replace(CASES_OPENING + "}", CASES_OPENING + "\n" + body + "\n }")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).write_text(text)
    return cases


def map_name(name: str) -> str:
    """The map a case name becomes: its label suffix (if any) replaced by ``.npy``."""
    for suffix in (".nii.gz", ".png", ".nii", ".npy"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".npy"
    return name + ".npy"  # nnU-Net's preprocessed cases have no suffix


# Path parts that sort around each other: a stem that prefixes others, '-' and ' ' (which
# sort before '.'), '_' (after), unicode (escaped by json.dumps), quotes.
PART = st.text(alphabet=st.sampled_from(list("ab.-_ é\"'") + ["ñ", "日"]), min_size=1, max_size=6).filter(
    lambda s: s.strip(".") == s and s.strip() == s)
NAME = st.builds(lambda parts, suffix: "/".join(parts) + suffix, st.lists(PART, min_size=1, max_size=3),
                 st.sampled_from([".nii.gz", ".png", ".nii", ".npy", ""]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAME, min_size=1, max_size=40, unique_by=map_name), absent=st.lists(NAME, max_size=5))
def test_every_map_finds_its_own_entry_and_no_other(tmp_path_factory, names, absent):
    folder = tmp_path_factory.mktemp("maps")
    cases = write_manifest(folder, names)
    for name in names:
        record = manifest_for_map(folder / map_name(name))
        assert record is not None and record.entry == cases[name], name
        assert record.settings == SETTINGS
    for name in absent:
        if map_name(name) not in {map_name(n) for n in names}:
            assert manifest_for_map(folder / map_name(name)).entry is None, name


def test_a_journal_is_newer_than_the_manifest_lines(tmp_path):
    folder = tmp_path / "maps"
    write_manifest(folder, ["a.png", "b.png"])
    newer = {"input": "/labels/b.png", "output": str(folder / "b.npy"), "status": "failed", "error": "x"}
    journal_path(folder / MANIFEST_NAME).write_text(
        json.dumps({"journal_id": HEADER["journal_id"]}) + "\n" + json.dumps({"name": "b.png", "entry": newer}) + "\n")
    assert manifest_for_map(folder / "b.npy").entry == newer
    assert manifest_for_map(folder / "a.npy").entry["case"] == "a.png"


def test_a_manifest_of_rwmaps_0_1_whose_lines_are_not_sorted_is_still_read(tmp_path):
    folder = tmp_path / "maps"
    cases = write_manifest(folder, ["z.png", "a.png", "sub/m.nii.gz"], sort=False)
    assert SORTED_KEY not in (folder / MANIFEST_NAME).read_text()
    for name, entry in cases.items():
        assert manifest_for_map(folder / map_name(name)).entry == entry


def test_a_rerun_sorts_a_manifest_of_rwmaps_0_1(tmp_path):
    labels = tmp_path / "labels"
    for name in ("b", "a", "c"):
        write_nifti(labels / f"{name}.nii.gz", blobs((8, 8, 4), 3, seed=ord(name)))
    out = tmp_path / "maps"
    args = ["compute", "--input", labels, "--output", out, "--format", "npy", "--classes", "0,1,2"]
    run_rwmaps(*args, check=0)
    data = json.loads((out / MANIFEST_NAME).read_text())
    data.pop(SORTED_KEY)
    data["cases"] = dict(reversed(list(data["cases"].items())))
    (out / MANIFEST_NAME).write_text(json.dumps(data))
    assert "0 done, 3 skipped" in run_rwmaps(*args, check=0).stderr
    text = (out / MANIFEST_NAME).read_text()
    assert json.loads(text)[SORTED_KEY] is True
    assert [line.split('"')[1] for line in text.split(CASES_OPENING)[1].splitlines()[1:-2]] == [
        "a.nii.gz", "b.nii.gz", "c.nii.gz"]


def test_the_parts_of_a_job_array_are_found_without_listing_the_maps_folder(tmp_path, monkeypatch):
    labels = tmp_path / "labels"
    for i in range(4):
        write_nifti(labels / f"case_{i}.nii.gz", blobs((8, 8, 4), 3, seed=i))
    out = tmp_path / "maps"
    for part in ("0", "1"):
        run_rwmaps("compute", "--input", labels, "--output", out, "--format", "npy", "--classes", "0,1,2",
                   "--num-parts", "2", "--part-id", part, check=0)
    assert not (out / MANIFEST_NAME).exists()
    listed = _record_listings(monkeypatch)
    for i in range(4):
        data, meta = load_map(out / f"case_{i}.npy")
        assert meta.classes == [0, 1, 2] and data.shape == (3, 8, 8, 4)
        assert Path(meta.manifest) == out / "rwmaps.parts" / f"rwmaps.part-{i % 2}-of-2.json"  # the one listing it
    assert str(out) not in listed


def _record_listings(monkeypatch) -> list[str]:
    """Every folder listed from now on (os.listdir, os.scandir: what glob and iterdir use)."""
    listed: list[str] = []
    for name in ("listdir", "scandir"):
        real = getattr(os, name)

        def spy(path=".", _real=real):
            listed.append(os.path.abspath(os.fspath(path)))
            return _real(path)

        monkeypatch.setattr(os, name, spy)
    return listed


@pytest.mark.parametrize("n_cases", [100, 100_000])
def test_one_lookup_in_100000_cases_reads_log_n_lines_and_lists_no_folder(tmp_path, monkeypatch, n_cases):
    folder = tmp_path / "maps"
    names = [f"sub_{i % 7}/case_{i:06d}.png" for i in range(n_cases)]
    write_manifest(folder, names)
    read_lines = []
    real = manifest_lookup.scanstring
    monkeypatch.setattr(manifest_lookup, "scanstring", lambda s, end: read_lines.append(s) or real(s, end))
    listed = _record_listings(monkeypatch)
    for name in names[:: max(1, n_cases // 50)]:
        read_lines.clear()
        assert manifest_for_map(folder / map_name(name)).entry["case"] == name
        assert len(read_lines) <= 2 * (math.log2(n_cases) + 3), (name, len(read_lines))  # two bisections
    assert not [path for path in listed if path.startswith(str(folder)) and not path.endswith("rwmaps.parts")]


def test_a_folder_of_maps_is_never_listed_by_load_map_inspect_or_map_info(tmp_path, monkeypatch):
    labels = tmp_path / "labels"
    write_nifti(labels / "case.nii.gz", blobs((8, 8, 4), 3))
    out = tmp_path / "maps"
    run_rwmaps("compute", "--input", labels, "--output", out, "--format", "npy", "--layout", "compact", check=0)
    for i in range(200):  # other maps beside it
        np.save(out / f"other_{i}.npy", np.zeros((2, 2), np.float32))
    listed = _record_listings(monkeypatch)
    data, meta = load_map(out / "case.npy")  # compact: expanded with the labels the manifest names
    assert data.shape == (3, 8, 8, 4) and meta.layout == "compact"
    assert "rwmaps map, kind rrw" in run_rwmaps("inspect", out / "case.npy", check=0).stdout
    assert str(out) not in listed


def test_a_map_is_found_among_names_that_share_its_stem_without_walking_them(tmp_path, monkeypatch):
    """'c-*.png' sort between 'c' and 'c.png': the search jumps over them (two bisections)."""
    folder = tmp_path / "maps"
    names = [f"c-{i:05d}.png" for i in range(2000)] + ["c.png", "c_1.png"]
    cases = write_manifest(folder, names)
    read_lines = []
    real = manifest_lookup.scanstring
    monkeypatch.setattr(manifest_lookup, "scanstring", lambda s, end: read_lines.append(s) or real(s, end))
    assert manifest_for_map(folder / "c.npy").entry == cases["c.png"]
    assert len(read_lines) <= 2 * (math.log2(len(names)) + 3)
    read_lines.clear()
    assert manifest_for_map(folder / "c-.npy").entry is None  # absent, with 2,000 names sharing its stem
    assert len(read_lines) <= 2 * (math.log2(len(names)) + 3)


def test_a_damaged_case_line_reads_the_manifest_as_a_whole_or_as_absent(tmp_path):
    folder = tmp_path / "maps"
    write_manifest(folder, ["a.png", "b.png", "c.png"])
    text = (folder / MANIFEST_NAME).read_text()
    (folder / MANIFEST_NAME).write_text(text.replace('  "b.png": {', '  "b.png": {{', 1))
    assert manifest_for_map(folder / "b.npy").entry is None  # not valid JSON: as if it listed nothing


def test_a_job_array_of_many_parts_stays_searchable(tmp_path):
    """More part manifests than the cache used to hold (64): none is closed under a caller."""
    folder = tmp_path / "maps"
    for part in range(70):
        header = {**HEADER, "journal_id": f"{part:016x}"}
        cases = {f"case_{part}.png": {"input": "/x", "output": str(folder / f"case_{part}.npy"), "status": "done"}}
        path = folder / "rwmaps.parts" / f"rwmaps.part-{part:02d}-of-70.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(manifest_text(header, cases))
    for part in (0, 35, 69):
        assert manifest_for_map(folder / f"case_{part}.npy").entry["output"].endswith(f"case_{part}.npy")
