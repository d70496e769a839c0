"""The class list of a run: given, from nnU-Net's ``dataset.json``, or from the data.

The policy of ``rwmaps compute``: a list given (``--classes``, ``dataset.json``) is checked
and used; otherwise the union of the label values of every case, read before computing
(:func:`scan_values`: full maps need the list for their channels), or gathered while
computing and settled at the end (:func:`settle_deferred_classes`: a compact channel does
not depend on the list).  ``--strict`` refuses listed values that occur in no case.
"""

from __future__ import annotations

from collections.abc import Sequence

from .case import scan_case
from .inputs.dataset import Dataset, read_dataset_json, union_of_values
from .errors import UsageError
from .manifest import Manifest, Settings
from .results import DONE, FAILED, SCANNED
from .contract import check_classes


def settle_classes(dataset: Dataset, classes, ignore_label, max_classes, runner, progress, stop, defer: bool):
    """(class list, ignore label, {case name: failed result}, regions or None) from the
    arguments or the data.  Regions come from a region-based ``dataset.json`` only.  With
    ``defer`` and no list given, the list is empty: the run settles it at its end."""
    spec = read_dataset_json(dataset.dataset_json) if dataset.dataset_json is not None else None
    ignore_label = spec.ignore_label if ignore_label is None and spec is not None else ignore_label
    regions = tuple(tuple(r) for r in spec.regions) if spec is not None and spec.has_regions else None
    if classes is None and spec is not None:
        classes = spec.classes
    elif classes is not None:
        regions = None  # an explicit class list: one channel per class
    if classes is None and defer:
        return [], ignore_label, {}, None
    if classes is None:
        return (*scan_values(dataset, ignore_label, max_classes, runner, progress, stop), None)
    try:
        classes = check_classes(classes, ignore_label)
    except ValueError as error:
        raise UsageError(f"the class list {list(classes)}: {error}") from None
    return classes, ignore_label, {}, regions


def scan_values(dataset: Dataset, ignore_label, max_classes, runner, progress, stop):
    """The union of the label values of every case (the cases that cannot be read fail)."""
    values, failed = [], {}
    bar = progress(len(dataset.cases), "scanning labels")
    for result in runner(dataset.cases, scan_case, max_classes=max_classes, stop=stop):
        bar.update()
        if result.status == FAILED:
            failed[result.name] = result
        else:
            values.append(result.values)
    bar.close()
    if stop:  # interrupted while scanning: no class list, nothing computed
        return [0], ignore_label, {}
    classes = [v for v in union_of_values(values) if v != ignore_label]
    if len(classes) > max_classes:
        raise UsageError(f"the inputs hold {len(classes)} distinct label values, more than "
                         f"`max_classes={max_classes}`: are some of them images? Pass `classes`, or raise `max_classes`")
    return classes, ignore_label, failed  # empty when no label file could be read: each failed alone


def settle_deferred_classes(manifest: Manifest, max_classes: int) -> tuple[int, ...]:
    """The class list of a deferred run: every value in a case that is done (this run's or
    an earlier one's), less the ignore label."""
    done = [entry.get("values") or [] for entry in manifest.cases.values() if entry.get("status") == DONE]
    ignore = manifest.settings.ignore_label
    classes = tuple(v for v in union_of_values(done) if v != ignore)
    manifest.set_classes(classes)
    return classes


def refuse_unseen_classes(dataset: Dataset, settings: Settings, max_classes, runner, progress, stop) -> None:
    found = {}
    bar = progress(len(dataset.cases), "scanning labels (`strict=True`)")
    for result in runner(dataset.cases, scan_case, max_classes=max(max_classes, 1 << 16), stop=stop):
        bar.update()
        found[result.name] = result.values if result.status == SCANNED else []
    bar.close()
    unseen = unseen_classes(settings.classes, list(found.values()))
    if unseen and not stop:
        raise UsageError(f"`strict=True`: class values {listing(unseen)} occur in no case under {dataset.labels_dir} "
                         "(their channels would be constant)")


def unseen_classes(classes: Sequence[int], value_lists: Sequence[list | None]) -> list[int]:
    """Classes in none of the value lists; [] when a list is unknown (an old manifest entry)."""
    if any(values is None for values in value_lists):
        return []
    seen = set().union(*map(set, value_lists)) if value_lists else set()
    return [c for c in classes if c not in seen]


def listing(values: Sequence[int], limit: int = 8) -> str:
    """``0, 1, 2`` or, for long lists, ``83 values, 0 to 255``."""
    values = list(values)
    if len(values) <= limit:
        return ", ".join(map(str, values))
    return f"{len(values)} values, {min(values)} to {max(values)}"
