"""Will the maps fit? The disk estimate ``compute`` checks before it starts.

Options in messages are named as the Python API spells them, in backquotes
(``space_check=False``); the command line shows its flags instead (``cli.in_flags``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .case import HeaderVoxels
from .errors import UsageError
from .formats import output_is_compressed
from .inputs.dataset import Case
from .manifest import Settings

# Compressed size / raw size of a map, by kind and layout, for the disk check (measured: a
# full rrw map is mostly 1s and gzips about 100x; distances and compact maps about 2x).
_COMPRESSION = {("rrw", "full"): 0.02, ("ac", "full"): 0.02}
# Above this many cases, the headers of this many, spread over the list, estimate the whole.
_HEADER_SAMPLE = 1000


def estimated_output_bytes(voxels: int, settings: Settings) -> int:
    """Bytes on disk of maps over ``voxels`` label voxels in all (from the label headers)."""
    raw = voxels * settings.map_channels * np.dtype(settings.dtype).itemsize
    if output_is_compressed(settings.fmt):
        raw = int(raw * _COMPRESSION.get((settings.kind, settings.layout), 0.5))
    return raw


def maps_too_big(output_dir: Path, todo: list[Case], settings: Settings, voxels: HeaderVoxels) -> dict[str, str]:
    """The cases whose map alone would not fit on the output file system, each with why.

    Each such case fails alone: one header never stops the others.  A header's voxels count
    only as far as its file can hold them (``formats.base.check_claim``): a lying header
    counts 0 and fails in its worker.

    Raises
    ------
    UsageError
        When the other maps would not fit together (before anything is recorded).
    """
    free = shutil.disk_usage(output_dir).free
    sampled, step = _header_sample(todo)
    needs = {case.name: estimated_output_bytes(voxels.of(case), settings) for case in sampled}
    too_big = {name: need for name, need in needs.items() if need > free}
    rest = int(sum(need for name, need in needs.items() if name not in too_big) * step)
    if rest > free:
        raise UsageError(f"{output_dir}: the maps need about {size_text(rest)} and the file system has "
                         f"{size_text(free)} free; free some space, choose another `output_dir`, "
                         "or pass `space_check=False`")
    return {name: f"its map needs about {size_text(need)} and the output file system has {size_text(free)} "
                  "free (`space_check=False` tries it)" for name, need in too_big.items()}


def _header_sample(todo: list[Case]) -> tuple[list[Case], float]:
    """(the cases whose headers estimate the whole, the factor to scale their sum by): every
    case up to :data:`_HEADER_SAMPLE`, else that many spread over the sorted list (an
    estimate, as the compression is)."""
    if len(todo) <= _HEADER_SAMPLE:
        return todo, 1.0
    step = len(todo) / _HEADER_SAMPLE
    return [todo[int(i * step)] for i in range(_HEADER_SAMPLE)], step


def size_text(n_bytes: int) -> str:
    """``"1.2 GB"`` or ``"340.0 MB"``."""
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"
