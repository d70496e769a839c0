"""The terminal table of what :func:`rwmaps_cli.inspect.describe` found."""

from __future__ import annotations


def format_table(info: dict) -> str:
    """A compact, human-readable table of :func:`~rwmaps_cli.inspect.describe`'s dict."""
    lines = []
    if info["type"] == "map":
        lines.append(f"{info['path']}: rwmaps map, kind {info['kind'] or 'unknown'}, {info['format']}")
        shape = _times(info["shape"])
        if info["stored_shape"] != info["shape"]:
            shape += f" (C × spatial; stored {_times(info['stored_shape'])})"
        else:
            shape += " (C × spatial)"
    else:
        lines.append(f"{info['path']}: label file, {info['format']}")
        shape = _times(info["shape"])
    fields = [("shape", shape), ("dtype", info["dtype"]),
              ("spacing", _times(info["spacing"]) if info["spacing"] else "unknown"),
              ("orientation", info["orientation"] or "none (no affine)")]
    if info["type"] == "map":
        parameters = info["parameters"]
        if parameters:
            fields.append(("parameters", ", ".join(
                f"{key} {_value_text(parameters.get(key))}" for key in ("spacing", "slice_axis", "ignore_label")
            ) + f" (from {info['manifest']})"))
        else:
            fields.append(("parameters", "unknown (no rwmaps.json lists this map)"))
        if info["input"]:
            fields.append(("input", info["input"]))
    else:
        value_range = info["value_range"]
        fields.append(("values", f"{info['distinct_values']} distinct, "
                                 + (f"{value_range[0]} to {value_range[1]}" if value_range else "none")))
    width = max(len(name) for name, _ in fields)
    lines += [f"  {name:<{width}}  {value}" for name, value in fields]
    lines.append("")
    if info["type"] == "map":
        header = ["channel", "label", "name", "inside voxels", "min", "max", "consistent"]
        rows = [[str(c["channel"]), _value_text(c["label"]), c["name"] or "", f"{c['voxels']:,}",
                 _number(c["min"]), _number(c["max"]), _yes_no(c["consistent"])] for c in info["classes"]]
        right = {0, 1, 3, 4, 5}
    else:
        header = ["label", "name", "voxels", "fraction"]
        rows = [[str(c["label"]), c["name"] or "", f"{c['voxels']:,}", f"{100 * c['fraction']:.2f} %"]
                for c in info["classes"]]
        right = {0, 2, 3}
    lines += _columns(header, rows, right)
    if info["type"] == "map":
        lines.append("")
        if info["consistent"] is None:
            lines.append("  consistent with its kind: unknown (kind not known)")
        else:
            lines.append(f"  consistent with {info['kind']}: {_yes_no(info['consistent'])}")
    lines += [f"  problem: {problem}" for problem in info["problems"] if info["type"] == "labels" or
              not problem.startswith("unknown map kind")]
    return "\n".join(lines)


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
