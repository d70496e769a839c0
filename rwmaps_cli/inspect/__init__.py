"""``rwmaps inspect``: what a label file or a map file holds, as numbers and as a picture.

- :func:`describe` (``describe.py``): a JSON-ready dict; tells a map from labels.
- :func:`format_table` (``table.py``): that dict for a terminal.
- :func:`draw_png` (``figure.py``): the label slice and one panel per class map.
"""

from .describe import describe
from .figure import check_slice, draw_png, figure_pixels, spatial_shape
from .table import format_table

__all__ = ["check_slice", "describe", "draw_png", "figure_pixels", "format_table", "spatial_shape"]
