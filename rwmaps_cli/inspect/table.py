"""The terminal table of what :func:`rwmaps_cli.inspect.describe` found."""

from __future__ import annotations


def format_table(info: dict) -> str:
    """A compact, human-readable table of :func:`~rwmaps_cli.inspect.describe`'s dict."""
    lines = [_heading(info), *_field_lines(_fields(info)), ""]
    lines += _columns(*_class_table(info))
    if info["type"] == "map":
        lines += ["", _consistency_line(info)]
    lines += _problem_lines(info)
    return "\n".join(lines)


def _heading(info: dict) -> str:
    """The table's first line: the file and what it is.

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s.

    Returns
    -------
    heading : str
        ``"PATH: rwmaps map, kind KIND, FORMAT"`` or ``"PATH: label file, FORMAT"``.
    """
    if info["type"] == "map":
        return f"{info['path']}: rwmaps map, kind {info['kind'] or 'unknown'}, {info['format']}"
    return f"{info['path']}: label file, {info['format']}"


def _shape_text(info: dict) -> str:
    """The ``shape`` field: a map's says its axes are C × spatial, and its stored shape
    when the file holds another (a NIfTI map stores the channels last).

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s.

    Returns
    -------
    shape : str
    """
    shape = _times(info["shape"])
    if info["type"] != "map":
        return shape
    if info["stored_shape"] != info["shape"]:
        return shape + f" (C × spatial; stored {_times(info['stored_shape'])})"
    return shape + " (C × spatial)"


def _fields(info: dict) -> list[tuple[str, str]]:
    """The fields under the heading: those of every file, then a map's or a label file's.

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s.

    Returns
    -------
    fields : list of (str, str)
        ``(name, value)`` in the table's order.
    """
    fields = [("shape", _shape_text(info)), ("dtype", info["dtype"]),
              ("spacing", _times(info["spacing"]) if info["spacing"] else "unknown"),
              ("orientation", info["orientation"] or "none (no affine)")]
    return fields + (_map_fields(info) if info["type"] == "map" else _label_fields(info))


def _map_fields(info: dict) -> list[tuple[str, str]]:
    """A map's own fields: the parameters it was computed with, and its input file if known.

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s, of a map.

    Returns
    -------
    fields : list of (str, str)
        ``("parameters", ...)`` (from the manifest that lists the map, else unknown), then
        ``("input", ...)`` when the manifest names the input.
    """
    parameters = info["parameters"]
    if parameters:
        fields = [("parameters", ", ".join(
            f"{key} {_value_text(parameters.get(key))}" for key in ("spacing", "slice_axis", "ignore_label")
        ) + f" (from {info['manifest']})")]
    else:
        fields = [("parameters", "unknown (no rwmaps.json lists this map)")]
    if info["input"]:
        fields.append(("input", info["input"]))
    return fields


def _label_fields(info: dict) -> list[tuple[str, str]]:
    """A label file's own field: how many distinct values, and their range.

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s, of a label file.

    Returns
    -------
    fields : list of (str, str)
        ``[("values", "N distinct, LOW to HIGH")]`` (``none`` for the range of an empty file).
    """
    value_range = info["value_range"]
    return [("values", f"{info['distinct_values']} distinct, "
                       + (f"{value_range[0]} to {value_range[1]}" if value_range else "none"))]


def _field_lines(fields: list[tuple[str, str]]) -> list[str]:
    """The fields as lines, indented, their values aligned.

    Parameters
    ----------
    fields : list of (str, str)
        ``(name, value)``; at least one.

    Returns
    -------
    lines : list of str
        ``"  NAME  VALUE"``, the names padded to the longest.
    """
    width = max(len(name) for name, _ in fields)
    return [f"  {name:<{width}}  {value}" for name, value in fields]


def _class_table(info: dict) -> tuple[list[str], list[list[str]], set[int]]:
    """The per-class table: one row per channel of a map, per label value of a label file.

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s.

    Returns
    -------
    header : list of str
    rows : list of list of str
        One cell per column of ``header``.
    right : set of int
        The columns aligned right (the numbers).
    """
    if info["type"] == "map":
        header = ["channel", "label", "name", "inside voxels", "min", "max", "consistent"]
        rows = [[str(c["channel"]), _value_text(c["label"]), c["name"] or "", f"{c['voxels']:,}",
                 _number(c["min"]), _number(c["max"]), _yes_no(c["consistent"])] for c in info["classes"]]
        return header, rows, {0, 1, 3, 4, 5}
    header = ["label", "name", "voxels", "fraction"]
    rows = [[str(c["label"]), c["name"] or "", f"{c['voxels']:,}", f"{100 * c['fraction']:.2f} %"]
            for c in info["classes"]]
    return header, rows, {0, 2, 3}


def _consistency_line(info: dict) -> str:
    """Whether a map's values fit its kind, as the line after its class table.

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s, of a map.

    Returns
    -------
    line : str
        ``"  consistent with KIND: yes"`` (or ``NO``), or ``unknown`` when the kind is not known.
    """
    if info["consistent"] is None:
        return "  consistent with its kind: unknown (kind not known)"
    return f"  consistent with {info['kind']}: {_yes_no(info['consistent'])}"


def _problem_lines(info: dict) -> list[str]:
    """One line per problem :func:`~rwmaps_cli.inspect.describe` found.

    Parameters
    ----------
    info : dict
        :func:`~rwmaps_cli.inspect.describe`'s.

    Returns
    -------
    lines : list of str
        ``"  problem: ..."``; for a map, without the unknown-kind problem (its consistency
        line says so).
    """
    return [f"  problem: {problem}" for problem in info["problems"] if info["type"] == "labels" or
            not problem.startswith("unknown map kind")]


def _columns(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    if not any(row[header.index("name")] for row in rows):  # no names: drop the column
        keep = [i for i, name in enumerate(header) if name != "name"]
    else:
        keep = list(range(len(header)))

    def line(cells):
        return "  " + "  ".join(cells[i].rjust(widths[i]) if i in right else cells[i].ljust(widths[i])
                                for i in keep).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _times(values) -> str:
    return " × ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _value_text(value) -> str:
    return "none" if value is None else str(value)


def _number(value) -> str:
    return "nan" if value is None else f"{value:.4g}"


def _yes_no(flag) -> str:
    return "unknown" if flag is None else ("yes" if flag else "NO")
