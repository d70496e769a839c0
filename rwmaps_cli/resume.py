"""Resuming into an output folder: which manifest a run writes, and which cases are done.

The policy of ``rwmaps compute`` over what earlier runs left: the same parameters reuse the
maps (other parameters are refused, or recomputed with ``--overwrite``); a case is done when
its entry says so for the same input and its map is the file that was written
(:func:`is_done`: two ``stat`` calls); a plain run takes the parts' manifests over; after a
stop, a map a worker renamed into place but could not report is done, not lost
(:func:`written_before_the_stop`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from . import __version__
from .inputs.dataset import Case, Dataset
from .errors import InputError, UsageError
from .manifest import (
    MANIFEST_NAME,
    Manifest,
    Settings,
    changed_parameters,
    entry_is_current,
    journal_path,
    manifest_files,
    part_manifest_name,
)
from .mapfile import map_info, map_is_complete
from .results import DONE, CaseResult
from .inputs.nnunet_preprocessed import plans_fingerprint


def open_manifest(output_dir: Path, settings: Settings, overwrite: bool, selection: dict,
                   part: tuple[int, int] | None, mine: list[Case], source: dict | None, defer: bool) -> Manifest:
    """The manifest this run writes: a plain run takes over every part's file into
    ``rwmaps.json`` (it holds the folder alone); a part writes its own file.  Maps of
    other plans (nnU-Net re-preprocessed the data) are not reused.  A run that settles its
    class list at the end (``defer``) reuses compact maps whatever list they were listed
    under: a compact channel does not depend on it."""
    name = MANIFEST_NAME if part is None else part_manifest_name(*part)
    previous = Manifest.load(output_dir)
    fresh = previous is None or overwrite or not _same_source(previous.header.get("source"), source)
    if fresh and part is not None and previous is not None and (
            previous.settings is None or changed_parameters(previous.settings, settings)):
        raise UsageError(f"{output_dir} holds maps made with other parameters, which other parts may share: "
                         "parts cannot `overwrite=True` them; run once without `num_parts` (with `overwrite=True`), or "
                         "use a new `output_dir`")
    if fresh:
        return _taking_over(Manifest(output_dir, settings, __version__, selection=selection, name=name,
                                     source=source), part)
    if previous.settings is None:
        raise UsageError(f"{output_dir} holds maps whose parameters cannot be read ({previous.settings_error}); "
                         "use another `output_dir`, or `overwrite=True` to recompute them all")
    changed = changed_parameters(previous.settings, settings, ignore=("classes",) if defer else ())
    if changed:
        before, now = previous.settings.to_parameters(), settings.to_parameters()
        named = ", ".join(f"`{key}` {before[key]!r} -> {now[key]!r}" for key in changed)
        raise UsageError(f"{output_dir} holds maps made with other parameters ({named}); "
                         "use another `output_dir`, or `overwrite=True` to recompute them all")
    names = {case.name for case in mine}
    cases = previous.cases if part is None else {n: e for n, e in previous.cases.items() if n in names}
    if defer:
        settings = replace(settings, classes=previous.settings.classes)  # until the end of this run
    manifest = Manifest(output_dir, settings, __version__, cases, selection, name=name, source=source)
    manifest.adopt(previous)
    return _taking_over(manifest, part)


def _taking_over(manifest: Manifest, part: tuple[int, int] | None) -> Manifest:
    """A plain run holds the folder alone: it writes every part's records into rwmaps.json,
    then removes the parts' files."""
    if part is None:
        manifest.write()
        for stale in manifest_files(manifest.folder):
            if stale.name != MANIFEST_NAME:
                stale.unlink()
                journal_path(stale).unlink(missing_ok=True)
    return manifest


def _same_source(before: dict | None, now: dict | None) -> bool:
    """Whether maps were made from the same preprocessing: the plans' content and the
    configuration (however the folder's path was spelled)."""
    if before is None or now is None:
        return before is now
    key = (lambda s: ((s.get("plans_fingerprint") or {}).get("sha256"), s.get("configuration")))
    return key(before) == key(now)


def manifest_source(dataset: Dataset) -> dict | None:
    """What the maps of a preprocessed folder depend on beyond its segs: the plans."""
    pre = dataset.preprocessed
    if pre is None:
        return None
    return {"preprocessed": str(pre.folder), "configuration": pre.configuration, "plans_file": str(pre.plans_file),
            "plans_fingerprint": plans_fingerprint(pre.plans_file), "dataset_json": str(pre.dataset_json)}


def is_done(manifest: Manifest, case: Case) -> bool:
    """Recorded done from the same input, and the map is the file that was written: two
    ``stat`` calls (:func:`~rwmaps_cli.manifest.entry_is_current`)."""
    entry = manifest.cases.get(case.name)
    if isinstance(entry, dict) and entry.get("map") is not None:
        return entry_is_current(entry, case.input, case.output)
    # Entries recorded under schema 1 (carried over when this resumes a 0.1 folder) have no map
    # fingerprint: check the map's header instead.
    entry = manifest.done_entry(case.name, case.input)
    return entry is not None and map_is_complete(case.output, entry.get("shape"), entry.get("bytes"))


def written_before_the_stop(cases: list[Case], reported: set[str], started_ns: int, stop) -> Iterator[CaseResult]:
    """After a stop, the maps that a worker renamed into place but could not report before it
    was killed: a map file is complete once renamed, so it is recorded done, not lost."""
    if not stop:
        return
    for case in cases:
        if case.name in reported:
            continue
        try:
            if case.output.stat().st_mtime_ns >= started_ns:
                yield CaseResult(case.name, DONE, shape=list(map_info(case.output).shape))
        except (OSError, InputError):
            continue  # not written: the case is not finished


