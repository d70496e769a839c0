"""The picture: the label slice and one panel per class map, as a PNG.

matplotlib is imported inside :func:`draw_png` only, so ``import rwmaps_cli`` stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rwmaps_cli.errors import InputError
from rwmaps_cli.formats import atomic_path, read_labels
from rwmaps_cli.mapfile import is_map_file, read_map
from rwmaps_cli.contract import DEFAULT_MAX_CLASSES
from rwmaps_cli.maps import compute_maps, unique_labels

from .describe import class_names, label_affine

# Figure geometry: each panel is PANEL_INCHES, up to MAX_COLUMNS panels a row, plus a
# title band; saved at DPI without tight cropping, so the PNG is exactly figure_pixels().
PANEL_INCHES = (3.2, 3.0)
TITLE_INCHES = 0.4
DPI = 100
MAX_COLUMNS = 5
# Up to this many classes, every class gets a panel and the label panel a legend.  With more,
# an overview panel (each voxel's own-class value, class boundaries outlined) and the
# largest classes present in the slice, up to this many, are drawn instead.
MAX_CLASS_PANELS = 8
# The label panel's colours, one per class in channel order (cycled): the first class
# grey; ignored / unknown voxels are white.
LABEL_PALETTE = ("#d9d9d9", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                 "#17becf", "#bcbd22", "#7f7f7f")


def figure_pixels(n_panels: int) -> tuple[int, int]:
    """The size of the PNG :func:`draw_png` writes.

    Parameters
    ----------
    n_panels : int, >= 1
        Panels in the figure: the label panel, the overview panel if any, and one per
        class map drawn.

    Returns
    -------
    width, height : int
        In pixels: up to :data:`MAX_COLUMNS` panels of :data:`PANEL_INCHES` a row, plus a
        title band of :data:`TITLE_INCHES`, at :data:`DPI`.
    """
    columns = min(n_panels, MAX_COLUMNS)
    rows = math.ceil(n_panels / columns)
    return round(columns * PANEL_INCHES[0] * DPI), round((rows * PANEL_INCHES[1] + TITLE_INCHES) * DPI)


def draw_png(path: str | Path, out: str | Path, axis: int | None = None, index: int | None = None,
             max_classes: int = DEFAULT_MAX_CLASSES) -> dict:
    """Draw the label slice and one panel per class map of a label or map file.

    A map file shows its channels, and the labels of its input file when the manifest
    names one that can be read (else the labels the map implies: the channel each voxel
    is inside).  A label file shows the ``rrw`` maps computed from it (voxel units).
    Maps use a diverging colour map centred at 0 (blue inside, red outside), scaled to
    each channel's range over the whole volume, with the class outline drawn on top.

    With more than :data:`MAX_CLASS_PANELS` classes, an overview panel (each voxel's
    own-class value, class outlines) and the largest classes in the slice are drawn instead.

    Parameters
    ----------
    path : str or Path
        A label file or a map file (any output format).
    out : str or Path
        The PNG to write (atomically: a temporary file renamed into place).
    axis : int, optional
        The array axis of the spatial volume the slice is across (-3 to 2); for 3D data
        only.  Default: a singleton axis (a one-slice volume), else the axis nearest to
        the S-I direction when the file has an affine, else the last axis.
    index : int, optional
        The slice along ``axis``; needs ``axis``.  Default: through the middle of the
        foreground: of the slices that show the most classes other than 0, the one
        nearest to the median, along ``axis``, of the voxels whose label is not 0.
    max_classes : int
        A label file with more distinct values is refused as an image.

    Returns
    -------
    drawn : dict
        ``{"path": str(out), "width": int, "height": int, "axis": int or None, "slice":
        int or None}``; the PNG is ``figure_pixels(n_panels)`` big.  ``axis`` and ``slice``
        are None for 2D data.

    Raises
    ------
    InputError
        The file cannot be read, or holds no usable labels (values that are not integers
        or negative, more than ``max_classes`` of them).
    ValueError
        ``axis`` or ``index`` out of range, or given for 2D data (:func:`check_slice`).
    OSError
        The PNG cannot be written.
    """
    path, out = Path(path), Path(out)
    view = _view(path, max_classes)
    spatial = view.maps.shape[1:]
    axis, index = _choose_slice(view, axis, index)
    channels, overview = _panels(view, axis, index)
    width, height = figure_pixels(1 + overview + len(channels))
    figure = _figure(view, path, axis, index, channels, overview)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    return {"path": str(out), "width": width, "height": height, "axis": axis,
            "slice": index if len(spatial) == 3 else None}


@dataclass(frozen=True)
class View:
    """Everything the figure needs of one file.

    Attributes
    ----------
    maps : (C, *spatial) float32 ndarray
        The full map (a compact one expanded).
    labels : (*spatial) integer ndarray
        The labels to draw: the file's, the map's input file's, or those the map implies
        (-1 where every channel is 0).
    label_source : str
        Where ``labels`` came from (``"labels"`` or ``"implied by the map"``).
    classes : list of int or None
        The label value of each channel; None when the map does not say.
    names : dict of int to str
        Class names from the nnU-Net ``dataset.json`` beside the labels, if any.
    spacing : tuple of float or None
    affine : (4, 4) ndarray or None
    what : str
        What the figure shows, for its title.
    computed : bool
        True when the maps were computed here from a label file.
    """

    maps: np.ndarray
    labels: np.ndarray
    label_source: str
    classes: list[int] | None
    names: dict
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None
    what: str
    computed: bool


def _view(path: Path, max_classes: int) -> View:
    """Everything the figure needs of ``path``.

    A map is read expanded; its labels are its input file's when the manifest names one
    that can be read and has the map's spatial shape, else those the map implies.  A
    label file gets the ``rrw`` maps of its classes (the ``dataset.json`` classes when
    they cover its values), in voxel units.

    Returns
    -------
    view : View

    Raises
    ------
    InputError
        The file cannot be read, or the labels are not usable (not integers, negative,
        more than ``max_classes`` distinct values).
    """
    if is_map_file(path):
        maps, meta = read_map(path)
        classes = meta.classes
        labels, source = None, "implied by the map"
        affine = meta.affine if meta.affine is not None else label_affine(meta.input)
        names = {}
        if meta.input:
            names = class_names(Path(meta.input))
            try:
                volume = read_labels(meta.input)
                if volume.array.shape == maps.shape[1:]:
                    labels, source = volume.array, "labels"
            except InputError:
                pass
        if labels is None:
            labels = _implied_labels(maps, classes)
        kind = meta.kind or "unknown"
        return View(maps=maps, labels=labels, label_source=source, classes=classes, names=names,
                    spacing=meta.spacing, affine=affine, what=f"{kind} map", computed=False)
    volume = read_labels(path)
    names = class_names(path)
    try:
        values = unique_labels(volume.array)
    except ValueError as error:  # fractions, NaN, negative values
        raise InputError(f"cannot compute maps from these labels: {error}") from None
    classes = sorted(names) if names and set(values.tolist()) <= set(names) else values.tolist()
    if len(classes) > max_classes:
        raise InputError(f"{len(classes)} distinct values, more than --max-classes {max_classes} "
                         "(is this an image rather than labels?)")
    try:
        maps = compute_maps(volume.array, classes, kind="rrw")
    except ValueError as error:
        raise InputError(f"cannot compute maps from these labels: {error}") from None
    return View(maps=maps, labels=volume.array, label_source="labels", classes=[int(c) for c in classes],
                names=names, spacing=volume.spacing, affine=label_affine(path),
                what="labels, rrw maps computed from them", computed=True)


def _implied_labels(maps: np.ndarray, classes) -> np.ndarray:
    """The labels a map implies: the class each voxel is inside.

    Parameters
    ----------
    maps : (C, *spatial) float ndarray
    classes : sequence of int, length C, or None
        The label of each channel; None: the channel indices.

    Returns
    -------
    labels : (*spatial) int64 ndarray
        The class of each voxel's lowest channel (the first, on ties); -1 where every
        channel is 0 (the ignore label).
    """
    codes = np.argmin(maps, axis=0).astype(np.int64)
    values = np.asarray(classes if classes is not None else range(maps.shape[0]), dtype=np.int64)
    labels = values[codes]
    labels[np.all(maps == 0, axis=0)] = -1
    return labels


def spatial_shape(info: dict) -> tuple[int, ...]:
    """The spatial shape of what :func:`describe` described.

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s.

    Returns
    -------
    shape : tuple of int
        ``info["shape"]``, without the channel axis for a map.
    """
    return tuple(info["shape"][1:] if info["type"] == "map" else info["shape"])


def check_slice(spatial: tuple[int, ...], axis: int | None, index: int | None) -> None:
    """Check that ``axis`` and ``index`` can select a slice of ``spatial``.

    Parameters
    ----------
    spatial : tuple of int
        The spatial shape (2 or 3 axes).
    axis : int, optional
        ``--axis``: -3 to 2, 3D data only.
    index : int, optional
        ``--slice``: 0 to ``spatial[axis] - 1``; needs ``axis``.

    Raises
    ------
    ValueError
        A usage error, its message naming the option: either given for 2D data, ``axis``
        out of range, ``index`` without ``axis``, or ``index`` out of range.
    """
    if len(spatial) == 2:
        if axis is not None or index is not None:
            raise ValueError("this file is 2D: --axis and --slice do not apply")
        return
    if axis is not None and not -3 <= axis < 3:
        raise ValueError(f"--axis {axis} is out of range for 3D data (0, 1 or 2)")
    if index is not None:
        if axis is None:
            raise ValueError("--slice needs --axis")
        n = spatial[axis % 3]
        if not 0 <= index < n:
            raise ValueError(f"--slice {index} is out of range: axis {axis % 3} has {n} slices (0 to {n - 1})")


def _choose_slice(view: View, axis: int | None, index: int | None) -> tuple[int | None, int | None]:
    """The slice to draw: ``axis`` and ``index`` checked, their defaults filled in.

    Returns
    -------
    axis, index : int or None
        Both None for 2D data; ``axis`` in 0 to 2.

    Raises
    ------
    ValueError
        As :func:`check_slice`.
    """
    spatial = view.maps.shape[1:]
    check_slice(spatial, axis, index)
    if len(spatial) == 2:
        return None, None
    axis = _default_axis(spatial, view.affine) if axis is None else axis % 3
    if index is None:
        index = _foreground_middle(view.labels, axis)
    return axis, index


def _default_axis(spatial: tuple[int, ...], affine) -> int:
    """The axis to slice across: the first singleton axis, else the axis most along S-I
    by ``affine``, else the last (2)."""
    if 1 in spatial:
        return spatial.index(1)
    if affine is not None:
        columns = np.asarray(affine, dtype=np.float64)[:3, :3]
        norms = np.linalg.norm(columns, axis=0)
        norms[norms == 0] = 1
        return int(np.argmax(np.abs(columns[2]) / norms))  # the axis most along S-I
    return 2


def _foreground_middle(labels: np.ndarray, axis: int) -> int:
    """The slice showing the most foreground classes, nearest to the foreground's median.

    Parameters
    ----------
    labels : (X, Y, Z) integer ndarray
    axis : int, 0 to 2

    Returns
    -------
    index : int
        Of the slices along ``axis`` with the most distinct labels > 0, the one nearest to
        the median of the voxels > 0; the middle slice when there are none.
    """
    others = tuple(a for a in range(3) if a != axis)
    present = [np.any(labels == value, axis=others) for value in np.unique(labels) if value > 0]
    if not present:
        return labels.shape[axis] // 2
    per_slice = np.count_nonzero((labels > 0), axis=others)
    median = int(np.searchsorted(np.cumsum(per_slice), (int(per_slice.sum()) + 1) // 2))
    n_classes = np.sum(present, axis=0)
    candidates = np.flatnonzero(n_classes == n_classes.max())
    return int(candidates[np.argmin(np.abs(candidates - median))])


def _panels(view: View, axis: int | None, index: int | None) -> tuple[list[int], bool]:
    """Which panels to draw.

    Returns
    -------
    channels : list of int
        All channels, up to :data:`MAX_CLASS_PANELS` of them; beyond, the channels of the
        classes present in the slice, largest first, up to that many.
    overview : bool
        Whether the overview panel is drawn (more than :data:`MAX_CLASS_PANELS` channels).
    """
    n_channels = view.maps.shape[0]
    if n_channels <= MAX_CLASS_PANELS:
        return list(range(n_channels)), False
    label_plane = view.labels if axis is None else np.take(view.labels, index, axis=axis)
    values = list(view.classes) if view.classes is not None else list(range(n_channels))
    present, counts = np.unique(label_plane, return_counts=True)
    by_size = [int(v) for _, v in sorted(zip(-counts, present.tolist())) if v in values]
    return [values.index(v) for v in by_size[:MAX_CLASS_PANELS]], True


def _own_values_in_map(maps: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each pixel's value in its own class's channel (the compact channel).

    Parameters
    ----------
    maps : (C, *plane) float ndarray
    codes : (*plane) int ndarray
        Each pixel's channel; -1 where unknown.

    Returns
    -------
    own : (*plane) ndarray of ``maps``' dtype
        0 where the code is -1.
    """
    own = np.take_along_axis(maps, np.clip(codes, 0, None)[np.newaxis], axis=0)[0]
    return np.where(codes >= 0, own, 0.0)


def _figure(view: View, path: Path, axis: int | None, index: int | None, channels: list[int], overview: bool):
    """Draw the figure: the label panel, the overview panel if asked, one panel per channel
    of ``channels``; titled with ``path``'s name and the slice.

    Returns
    -------
    figure : matplotlib.figure.Figure
        ``figure_pixels(n_panels)`` big at :data:`DPI`, not yet saved.
    """
    figure, axes = _canvas(1 + overview + len(channels))
    screen = _screen(view, axis, index)
    values = _channel_values(view)
    label_plane = screen.plane(view.labels)
    codes = _label_codes(label_plane, values)
    _labels_panel(figure, axes[0], screen, codes, view, values, overview)
    if overview:
        _overview_panel(figure, axes[1], screen, view.maps, codes)
    for panel, c in enumerate(channels):
        title = _class_title(values[c], view.names, view.classes is not None, channel=c)
        _channel_panel(figure, axes[1 + overview + panel], screen, view.maps[c], label_plane == values[c], title)
    figure.suptitle(_figure_title(view, path, axis, index), fontsize=11)
    return figure


def _canvas(n_panels: int):
    """An empty figure of ``n_panels`` panels, every axes' frame and ticks off.

    Parameters
    ----------
    n_panels : int, >= 1

    Returns
    -------
    figure : matplotlib.figure.Figure
        ``figure_pixels(n_panels)`` big at :data:`DPI`, with constrained layout.
    axes : ndarray of matplotlib.axes.Axes
        Up to :data:`MAX_COLUMNS` a row, flattened row by row; the last row may have
        more axes than panels (they stay blank).
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    columns = min(n_panels, MAX_COLUMNS)
    rows = math.ceil(n_panels / columns)
    width, height = figure_pixels(n_panels)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    return figure, axes


@dataclass(frozen=True)
class Screen:
    """How a plane of the volume is put on screen.

    Attributes
    ----------
    axis : int or None
        The array axis the slice is across; None for 2D data (the plane is the array).
    index : int or None
        The slice along ``axis``.
    transpose : bool
        Whether a plane is transposed before it is drawn (:func:`_screen_axes`).
    origin : {"upper", "lower"}
        ``imshow``'s ``origin``.
    aspect : float
        ``imshow``'s ``aspect``: the height over the width of a pixel on screen.
    """

    axis: int | None
    index: int | None
    transpose: bool
    origin: str
    aspect: float

    def plane(self, volume: np.ndarray) -> np.ndarray:
        """The slice of ``volume`` (spatial axes only) drawn; ``volume`` itself for 2D data."""
        return volume if self.axis is None else np.take(volume, self.index, axis=self.axis)

    def show(self, ax, image: np.ndarray, **kwargs):
        """``ax.imshow`` of a plane, oriented and scaled for the screen, pixels not smoothed;
        ``kwargs`` go to ``imshow``.  Returns the image."""
        image = image.T if self.transpose else image
        return ax.imshow(image, origin=self.origin, aspect=self.aspect, interpolation="nearest", **kwargs)

    def outline(self, ax, mask: np.ndarray) -> None:
        """Draw the outline of ``mask`` (a float plane, 1 inside, 0 outside) in black on ``ax``."""
        ax.contour(mask.T if self.transpose else mask, levels=[0.5], colors="black", linewidths=0.6)


def _screen(view: View, axis: int | None, index: int | None) -> Screen:
    """How the slice ``index`` across ``axis`` of ``view`` is put on screen.

    Parameters
    ----------
    view : View
    axis, index : int or None
        As :func:`_choose_slice` returns them.

    Returns
    -------
    screen : Screen
        Oriented as a viewer would (:func:`_screen_axes`); the pixel aspect from the
        spacing of the two axes left in the slice (1 when the spacing is not known).
    """
    kept = [a for a in range(view.maps.ndim - 1) if a != axis]  # array axes left in the slice
    spacing = view.spacing
    if spacing is not None and len(spacing) == view.maps.ndim - 1:
        steps = [spacing[a] for a in kept]
    else:
        steps = [1.0, 1.0]
    transpose, origin = _screen_axes(view.affine, kept)
    aspect = steps[1] / steps[0] if transpose else steps[0] / steps[1]
    return Screen(axis=axis, index=index, transpose=transpose, origin=origin, aspect=aspect)


def _channel_values(view: View) -> list:
    """The label value of each channel of ``view``: its classes, else the channel indices.

    Returns
    -------
    values : list of int
        One per channel of ``view.maps``.
    """
    return list(view.classes) if view.classes is not None else list(range(view.maps.shape[0]))


def _label_codes(label_plane: np.ndarray, values: list) -> np.ndarray:
    """Each pixel's channel.

    Parameters
    ----------
    label_plane : (H, W) integer ndarray
    values : list of int
        The label value of each channel (:func:`_channel_values`).

    Returns
    -------
    codes : (H, W) int64 ndarray
        The index in ``values`` of each pixel's label; -1 for a label not in ``values``
        (ignored or unknown).
    """
    codes = np.full(label_plane.shape, -1, dtype=np.int64)
    for code, value in enumerate(values):
        codes[label_plane == value] = code
    return codes


def _labels_panel(figure, ax, screen: Screen, codes: np.ndarray, view: View, values: list, overview: bool) -> None:
    """Draw the label panel: one colour per class, ignored / unknown pixels white.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    ax : matplotlib.axes.Axes
    screen : Screen
    codes : (H, W) int ndarray
        Each pixel's channel, -1 for none (:func:`_label_codes`).
    view : View
        For the class names and where the labels came from.
    values : list of int
        The label value of each channel.
    overview : bool
        True: the title gives the number of classes, no legend (dozens of entries cannot
        be read); False: a colour bar with each class's title is the legend.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap

    colours = ListedColormap([LABEL_PALETTE[i % len(LABEL_PALETTE)] for i in range(len(values))]).with_extremes(
        bad="#ffffff")
    image = screen.show(ax, np.ma.masked_less(codes, 0), cmap=colours,
                        norm=BoundaryNorm(np.arange(-0.5, len(values)), len(values)))
    title = "labels" if view.label_source == "labels" else f"labels ({view.label_source})"
    if overview:
        title += f", {len(values)} classes"
    else:
        bar = figure.colorbar(image, ax=ax, shrink=0.8, ticks=range(len(values)))
        known = view.classes is not None
        bar.ax.set_yticklabels([_class_title(v, view.names, known) for v in values], fontsize=7)
    ax.set_title(title, fontsize=10)


def _overview_panel(figure, ax, screen: Screen, maps: np.ndarray, codes: np.ndarray) -> None:
    """Draw the overview panel: each pixel's own-class value, the class outlines on top.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    ax : matplotlib.axes.Axes
    screen : Screen
    maps : (C, *spatial) float ndarray
    codes : (H, W) int ndarray
        Each pixel's channel, -1 for none (:func:`_label_codes`).
    """
    from matplotlib.colors import ListedColormap, TwoSlopeNorm

    own = _own_values_in_map(np.stack([screen.plane(maps[c]) for c in range(maps.shape[0])]), codes)
    bound = max(float(np.abs(own).max()), 1e-6)
    image = screen.show(ax, own, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound))
    figure.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    edges = _label_edges(codes)
    screen.show(ax, np.ma.masked_where(~edges, edges.astype(np.float32)), cmap=ListedColormap(["black"]))
    ax.set_title("own-class value, class outlines", fontsize=10)


def _channel_panel(figure, ax, screen: Screen, channel: np.ndarray, inside: np.ndarray, title: str) -> None:
    """Draw one channel map, centred at 0, its class outlined.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    ax : matplotlib.axes.Axes
    screen : Screen
    channel : (*spatial) float ndarray
        The whole channel: its colours span its range over the volume (:func:`_map_range`).
    inside : (H, W) bool ndarray
        The pixels of the slice in the channel's class; outlined unless none or all are.
    title : str
    """
    from matplotlib.colors import TwoSlopeNorm

    low, high = _map_range(channel)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high)
    image = screen.show(ax, screen.plane(channel), cmap="RdBu_r", norm=norm)
    figure.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    mask = inside.astype(np.float32)
    if 0 < mask.sum() < mask.size:
        screen.outline(ax, mask)
    ax.set_title(title, fontsize=10)


def _map_range(channel: np.ndarray) -> tuple[float, float]:
    """The colour range of a channel map: its range, widened to hold 0 and made symmetric
    around 0 where it is one-sided.

    Parameters
    ----------
    channel : float ndarray
        NaN ignored.

    Returns
    -------
    low, high : float
        ``low <= 0 <= high``; ``(-1, 1)`` for a channel of zeros.
    """
    low, high = float(np.nanmin(channel)), float(np.nanmax(channel))
    low, high = min(low, 0.0), max(high, 0.0)
    if low == 0 and high == 0:
        low, high = -1.0, 1.0
    elif low == 0:
        low = -high
    elif high == 0:
        high = -low
    return low, high


def _figure_title(view: View, path: Path, axis: int | None, index: int | None) -> str:
    """The figure's title: ``path``'s name, what the figure shows and, for 3D data, the slice.

    Returns
    -------
    title : str
        ``"NAME: WHAT"``, plus ``"; axis A, slice I of 0-N"`` for 3D data.
    """
    where = "" if axis is None else f"; axis {axis}, slice {index} of 0-{view.maps.shape[1 + axis] - 1}"
    return f"{path.name}: {view.what}{where}"


def _label_edges(codes: np.ndarray) -> np.ndarray:
    """The class outlines of a label plane.

    Parameters
    ----------
    codes : (H, W) int ndarray

    Returns
    -------
    edges : (H, W) bool ndarray
        True where the next pixel along either axis has another code.
    """
    edges = np.zeros(codes.shape, dtype=bool)
    edges[:-1, :] |= codes[:-1, :] != codes[1:, :]
    edges[:, :-1] |= codes[:, :-1] != codes[:, 1:]
    return edges


def _screen_axes(affine, kept: list[int]) -> tuple[bool, str]:
    """How to put a slice on screen as a viewer would.

    Without an affine: the array as an image (first axis down).  With one: the kept axis
    most along S-I (or, for an axial slice, along A-P) goes up the screen, pointing S (A);
    the other goes across.

    Parameters
    ----------
    affine : (4, 4) ndarray or None
    kept : list of int
        The two array axes left in the slice.

    Returns
    -------
    transpose : bool
        Whether the plane is transposed before ``imshow``.
    origin : {"upper", "lower"}
        ``imshow``'s ``origin``.
    """
    if affine is None:
        return False, "upper"
    columns = np.asarray(affine, dtype=np.float64)[:3, kept]
    columns = columns / np.where(np.linalg.norm(columns, axis=0) == 0, 1, np.linalg.norm(columns, axis=0))
    world = 2 if np.abs(columns[2]).max() > 0.5 else 1  # S-I, else A-P for an axial slice
    vertical = int(np.argmax(np.abs(columns[world])))
    return vertical == 1, "lower" if columns[world, vertical] > 0 else "upper"


def _class_title(value, names: dict, known: bool, channel: int | None = None) -> str:
    """A class's title: ``"VALUE: NAME"``, ``"class VALUE"`` without a name, or ``"channel
    VALUE"`` when the labels of the channels are not ``known``.  ``channel`` is unused."""
    if not known:
        return f"channel {value}"
    name = names.get(value)
    return f"{value}: {name}" if name else f"class {value}"
