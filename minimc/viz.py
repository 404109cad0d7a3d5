"""The book's shared look: one colour per model, a readable style, widgets with a static face.

Chapter-specific plots live next to these; nothing in minimc imports this module.
"""
import base64
import functools
import io

import matplotlib as mpl
import matplotlib.pyplot as plt

# One colour per model, used by every chapter (the same model is always the same colour).
COLORS = {
    "attention": "#222222",      # the baseline every memory is compared with
    "linear": "#1f77b4",
    "delta": "#ff7f0e",
    "swla": "#2ca02c",
    "dla": "#9467bd",
    "titans": "#8c564b",
    "residual": "#e377c2",       # Memory Caching variants
    "grm": "#d62728",
    "soup": "#17becf",
    "ssc": "#bcbd22",
    "mean": "#ff9896",           # post-training caching: uniform average of the cache
    "log-linear++": "#7f7f7f",
}


def color(name):
    """Colour of a model name; "linear-grm" -> the caching variant's colour, "titans" -> its own."""
    if name in COLORS:
        return COLORS[name]
    for part in reversed(name.split("-")):       # "titans-soup" -> "soup", "linear-ssc" -> "ssc"
        if part in COLORS:
            return COLORS[part]
    raise KeyError(f"no colour for {name!r}; add it to minimc.viz.COLORS")


def use_style():
    """Figure sizes and fonts that read well on a laptop screen and in the built book."""
    mpl.rcParams.update({
        "figure.figsize": (7.0, 4.0), "figure.dpi": 100, "savefig.dpi": 100,
        "font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "figure.constrained_layout.use": True, "image.cmap": "viridis",
    })


def static_interact(fn, **widgets):
    """``ipywidgets.interact`` with a static face: ``fn(**defaults)`` draws the default figure.

    Live in JupyterLab the figure redraws when a control moves (on release, to spare slow CPUs).
    In the built book (no kernel) the default figure is the widget's saved output, and viewers
    that cannot show widgets at all (GitHub, nbviewer) fall back to the same figure as a PNG.
    ``fn`` draws with matplotlib (or prints) and returns None; the keyword widgets follow
    ``interact``'s rules (``n=(1, 64)`` is a slider, ``variant=["grm", "ssc"]`` a dropdown, or a
    widget object). Defaults come from ``fn``'s signature.
    """
    import ipywidgets
    from IPython.display import display

    faces = []

    def snapshot(*args, **kwargs):               # PNG copy of the default view's figure
        if not faces and plt.get_fignums():
            buf = io.BytesIO()
            plt.gcf().savefig(buf, format="png", bbox_inches="tight")
            faces.append(base64.b64encode(buf.getvalue()).decode())

    @functools.wraps(fn)                         # interact reads fn's signature and defaults
    def draw(**kwargs):
        if faces:
            return fn(**kwargs)
        show, plt.show = plt.show, lambda *a, **k: (snapshot(), show(*a, **k))[1]
        try:                                     # first call: catch the figure before show()
            return fn(**kwargs)
        finally:
            plt.show = show
            snapshot()

    w = ipywidgets.interactive(draw, **widgets)  # runs fn once with the defaults
    for control in w.kwargs_widgets:
        control.style.description_width = "initial"       # the whole label, not "segment_..."
        if hasattr(control, "continuous_update"):
            control.continuous_update = False
    bundle = w._repr_mimebundle_()
    if faces:                                    # the static face for widget-less viewers
        bundle["image/png"] = faces[0]
    display(bundle, raw=True)                    # returns None: a cell shows the widget once


def close_all():
    """Close every open figure (call after saving figures in scripts)."""
    plt.close("all")
