"""What a worker reports about one case: :class:`CaseResult` and the statuses it can have.

The worker side (``case.py``, ``verify.py``'s recomputation), both runners (``run.py``,
``cluster.py``) and the manifest share this record; it imports nothing, so a runner that
only carries results does not depend on how they are stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: A case's map is written (and a manifest entry says so).
DONE = "done"
#: A case could not be done; ``error`` says why in one line (a manifest entry says so too).
FAILED = "failed"
#: A case's label values were listed (``values``), for the class list; nothing written.
SCANNED = "scanned"
#: A case's map was checked by ``verify`` (``problems``); nothing written.
CHECKED = "checked"
#: A case whose worker was stopped before it reported: it never finished.
LOST = "lost"


@dataclass
class CaseResult:
    """What a worker reports for one case; never an exception.

    Attributes
    ----------
    name : str
        The case's name (its key in the manifest).
    status : {DONE, FAILED, SCANNED, CHECKED, LOST}
    error : str or None
        Why it failed, in one line without the file's path.
    seconds : float or None
    shape : list of int or None
        The written map's shape.
    values : list of int or None
        The label values in the case (done and scanned cases).
    problems : list of str
        What ``verify`` found wrong (checked cases).
    traceback : str or None
        For a failure that is a bug in rwmaps, not in the input.
    unknown_labels : bool
        Failed because the labels hold values outside the class list.
    disk_full : bool
        Failed because the output file system is full.
    input_stat, map_stat : dict or None
        The input's fingerprint, taken by the worker before it read it; the written map's,
        taken after the rename.
    """

    name: str
    status: str
    error: str | None = None
    seconds: float | None = None
    shape: list[int] | None = None
    values: list[int] | None = None
    problems: list[str] = field(default_factory=list)
    traceback: str | None = None
    unknown_labels: bool = False
    disk_full: bool = False
    input_stat: dict | None = None
    map_stat: dict | None = None
