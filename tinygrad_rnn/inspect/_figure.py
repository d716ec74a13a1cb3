"""A matplotlib Figure that a notebook draws by itself (imported only when a plot is made)."""

import io

from matplotlib.figure import Figure


class NotebookFigure(Figure):
    """A plain Figure, not registered with pyplot (so a notebook shows it once, not twice),
    with ``_repr_png_`` so that Jupyter draws it even when pyplot was never imported."""

    def _repr_png_(self):
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()
