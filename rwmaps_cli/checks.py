"""What a valid map of each kind looks like: the definitions of ``maps.py`` as checks.

:func:`channel_statistics` reads a map one channel at a time (it may be a memory map)
and says, per channel and across channels, where the values do not fit their kind:
``rrw`` is in [-1, 0) inside and 1 outside, reaching -1; ``ac`` is 0 or 1; ``sdf`` is in
[-1, 1], negative inside and positive outside, 0 on the inner boundary; every voxel
is inside exactly one class (0 in every channel marks the ignore label).  ``inspect``
prints what it finds.
"""

from __future__ import annotations

import math

import numpy as np

# An rrw channel reaches -1 inside (-EDT / max EDT); float16 stores -1 exactly, float32
# products may miss it by an ulp.
RRW_MIN_TOLERANCE = 1e-3


def channel_statistics(maps, kind: str | None, slice_axis: int | None,
                       exclusive: bool = True) -> tuple[list[dict], list[str]]:
    """Per channel: inside voxels, value range, whether the values fit ``kind``; and the
    problems of the channels taken together (every voxel inside exactly one class...).

    Reads one channel at a time (``maps`` may be a memory map, or any sequence of
    channels).  ``exclusive=False`` (region maps) skips the checks of the channels taken
    together: regions overlap, and no channel is the background.

    "Inside" voxels, by kind: ``rrw``, ``boundary``: value < 0; ``ac``: value 0;
    ``kervadec``, ``sdf``: value < 0, or 0 on the inner boundary (0 in a channel that is
    not 0 everywhere in its field).  Voxels that are 0 in every channel (the ignore label)
    are inside no class.  A class that fills a whole field is all 0 in ``boundary``,
    ``kervadec`` and ``sdf`` maps, like an empty one, and is not counted.
    """
    n_channels = maps.shape[0]
    spatial = maps.shape[1:]
    count_dtype = np.uint8 if n_channels < 255 else np.uint16
    zero_count = np.zeros(spatial, dtype=count_dtype)
    neg_count = np.zeros(spatial, dtype=count_dtype)
    stats = []
    for c in range(n_channels):
        channel = np.asarray(maps[c], dtype=np.float32)
        finite = np.isfinite(channel)
        all_finite = bool(finite.all())
        shown = channel if all_finite else channel[finite]
        low = float(shown.min()) if shown.size else math.nan
        high = float(shown.max()) if shown.size else math.nan
        zeros = channel == 0
        negative = channel < 0
        zero_count += zeros
        neg_count += negative
        problem = _channel_problem(channel, kind, low, all_finite, negative)
        stats.append({"voxels": int(np.count_nonzero(zeros if kind == "ac" else negative)),
                      "min": None if math.isnan(low) else low, "max": None if math.isnan(high) else high,
                      "consistent": None if kind is None else problem is None, "problem": problem})
    ignored = zero_count == n_channels
    n_ignored = int(np.count_nonzero(ignored))
    if kind == "ac":
        for stat in stats:
            stat["voxels"] -= n_ignored  # 0 in every channel: the ignore label
    elif kind in ("kervadec", "sdf"):
        for c, stat in enumerate(stats):
            channel = np.asarray(maps[c], dtype=np.float32)
            inner = (channel == 0) & ~ignored & _field_not_zero(channel, slice_axis)
            stat["voxels"] += int(np.count_nonzero(inner))
    if not exclusive:  # region maps: regions overlap and leave the background out
        return stats, []
    return stats, _cross_channel_problems(kind, n_channels, zero_count, neg_count, ignored)


def _channel_problem(channel, kind, low, all_finite, negative) -> str | None:
    """Why one channel's values do not fit ``kind``, or None."""
    if not all_finite:
        return f"{int(np.count_nonzero(~np.isfinite(channel)))} values are NaN or infinite"
    if kind == "rrw":
        bad = ~((channel >= -1) & negative | (channel == 1) | (channel == 0))
        if bad.any():
            example = float(channel[bad].flat[0])
            return (f"{int(np.count_nonzero(bad))} values are neither in [-1, 0) nor 1 (e.g. {example:.4g}); "
                    "an rrw map is -EDT/max(EDT) inside and 1 outside")
        if negative.any() and low > -1 + RRW_MIN_TOLERANCE:
            return f"the minimum is {low:.4g}, not -1: an rrw map reaches -1 deepest inside its class"
    elif kind == "sdf":
        bad = (channel < -1) | (channel > 1)
        if bad.any():
            example = float(channel[bad].flat[0])
            return (f"{int(np.count_nonzero(bad))} values are outside [-1, 1] (e.g. {example:.4g}); an sdf map is "
                    "EDT(not M)/max outside and -EDT(M)/max inside")
    elif kind == "ac":
        bad = (channel != 0) & (channel != 1)
        if bad.any():
            example = float(channel[bad].flat[0])
            return f"{int(np.count_nonzero(bad))} values are neither 0 nor 1 (e.g. {example:.4g}); an ac map is 0 or 1"
    return None


def _cross_channel_problems(kind, n_channels, zero_count, neg_count, ignored) -> list[str]:
    """Problems of the channels taken together: which classes each voxel is inside."""
    problems = []
    counted = ~ignored
    if kind == "rrw":
        stray = np.count_nonzero((zero_count > 0) & counted)
        if stray:
            problems.append(f"{stray} voxels are 0 in some channels but not in all "
                            "(0 marks ignored voxels, in every channel)")
        wrong = np.count_nonzero((neg_count != 1) & counted & (zero_count == 0))
        if wrong:
            problems.append(f"{wrong} voxels are inside no class or several (negative in a number of channels "
                            "other than 1); an rrw map puts every voxel inside exactly one class")
    elif kind == "ac" and n_channels > 1:
        wrong = np.count_nonzero((zero_count != 1) & counted)
        if wrong:
            problems.append(f"{wrong} voxels are 0 in a number of channels other than 1; "
                            "an ac map puts every voxel inside exactly one class")
    elif kind in ("boundary", "kervadec", "sdf"):
        several = np.count_nonzero(neg_count > 1)
        if several:
            problems.append(f"{several} voxels are negative (inside) in several channels")
    return problems


def _field_not_zero(channel: np.ndarray, slice_axis: int | None) -> np.ndarray | bool:
    """Whether each voxel's field (the volume, or its slice) has a non-zero value in ``channel``."""
    if slice_axis is None or not -channel.ndim <= slice_axis < channel.ndim:
        return bool(channel.any())
    axis = slice_axis % channel.ndim
    others = tuple(a for a in range(channel.ndim) if a != axis)
    per_slice = np.any(channel != 0, axis=others)
    return np.expand_dims(per_slice, others)
