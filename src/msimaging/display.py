"""Figures that show themselves in Jupyter, without pyplot.

msimaging draws its figures on :class:`matplotlib.figure.Figure` objects created directly,
never through :mod:`matplotlib.pyplot`: no global figure registry, no GUI backend, safe in Dask
workers and servers. The price is that a notebook does not display such a figure on its own
(pyplot's inline backend only shows the figures pyplot made), so a cell ending in
``plot_adjacency(conn)`` would print ``<Figure size 960x800 with 5 Axes>``.

:class:`Figure` is a :class:`matplotlib.figure.Figure` subclass with IPython's rich display
hook ``_repr_png_``: every public ``plot_*`` function of msimaging returns one, so the last
expression of a cell (or ``IPython.display.display(fig)``) renders as an image, like nilearn's
display objects. Everything else is plain matplotlib: ``fig.axes``, ``fig.savefig(...)``,
``isinstance(fig, matplotlib.figure.Figure)``, pickling.

Examples
--------
>>> from msimaging.display import Figure
>>> fig = Figure(figsize=(2, 1))
>>> _ = fig.add_subplot().plot([0, 1], [1, 0])
>>> fig._repr_png_()[:8]
b'\\x89PNG\\r\\n\\x1a\\n'
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure as _MatplotlibFigure

__all__ = ["Figure"]


class Figure(_MatplotlibFigure):
    """A :class:`matplotlib.figure.Figure` that Jupyter displays as a PNG image.

    Created like a matplotlib figure (``Figure(figsize=(w, h), constrained_layout=True)``);
    :meth:`_repr_png_` renders it at the figure's own dpi with a tight bounding box, as
    matplotlib's inline backend does.
    """

    def _repr_png_(self) -> bytes:
        """PNG bytes of the figure, for IPython's display formatter."""
        buffer = io.BytesIO()
        # Fresh canvas per call (savefig attaches an Agg canvas to a figure without one).
        self.savefig(buffer, format="png", dpi="figure", bbox_inches="tight")
        return buffer.getvalue()
