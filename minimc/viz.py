"""The book's shared look: one colour per model, a readable style, widgets with a static face.

Chapter-specific plots live next to these; nothing in minimc imports this module.
"""
import base64
import contextlib
import functools
import html
import io
import itertools
import json
import math
import os
import time

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


MAX_GRID = 16      # precompute every combination up to this many views, else one control at a time
N_STOPS = 4        # default stops of a slider in the built book (plus its default value)
# The built book's widgets: show the precomputed view that matches the controls (no kernel).
_JS = """document.querySelectorAll(".mc-widget:not([data-ready])").forEach(w => {
  w.dataset.ready = 1;
  const cs = [...w.querySelectorAll("[data-labels]")], start = cs.map(c => c.value);
  const show = moved => {
    cs.forEach((c, i) => {
      if ("star" in w.dataset && c !== moved) c.value = start[i];   // one control at a time
      const out = c.nextElementSibling;                             // a slider's value
      if (out) out.textContent = JSON.parse(c.dataset.labels)[c.value];
    });
    const key = cs.map(c => c.value).join();
    w.querySelectorAll(".mc-view").forEach(v => { v.hidden = v.dataset.key !== key; });
  };
  cs.forEach(c => c.addEventListener("input", () => show(c)));
});"""
_widgets_shown = [0]          # widgets drawn in this kernel: the first one says where it is live


def _view(fn, kwargs):
    """Run ``fn(**kwargs)`` offstage: (printed text, [PNG of each figure it drew], error or None).
    Each PNG is the one JupyterLab's inline backend shows for that figure (its print_figure)."""
    from IPython.core.pylabtools import print_figure

    before, text, error = set(plt.get_fignums()), io.StringIO(), None
    show, plt.show = plt.show, lambda *a, **k: None
    try:
        with contextlib.redirect_stdout(text):
            fn(**kwargs)
    except Exception as e:                       # shown as the view, as JupyterLab would show it
        error = e
    finally:
        plt.show = show
    new = [n for n in plt.get_fignums() if n not in before]
    pngs = [print_figure(plt.figure(n), "png") for n in new]     # None for an empty figure
    for n in new:
        plt.close(n)
    return text.getvalue(), [png for png in pngs if png], error


def _label(control, value):
    fmt = getattr(control, "readout_format", "")
    return format(value, fmt) if fmt and not isinstance(value, bool) else str(value)


def _stops(control, name, stops):
    """[(value, label)] a reader can pick in the built book; None: not precomputable."""
    if hasattr(control, "_options_values"):      # Dropdown, ToggleButtons, RadioButtons, ...
        return list(zip(control._options_values, control._options_labels))
    if isinstance(control.value, bool):          # Checkbox, ToggleButton
        values = [False, True]
    elif name in stops:
        values = sorted({*stops[name], control.value})
    elif hasattr(control, "step") and hasattr(control, "readout_format"):    # a slider
        lo, hi, step, gap = control.min, control.max, control.step or 1, (N_STOPS - 1) or 1
        log = hasattr(control, "base")           # FloatLogSlider: stops in the exponent
        at = math.log(control.value, control.base) if log else control.value
        ticks = [min(hi, lo + round((hi - lo) * i / gap / step) * step) for i in range(N_STOPS)]
        ticks = [t for t in ticks if t in (lo, hi) or abs(t - at) > (hi - lo) / gap / 2]
        values = sorted({type(control.value)(float(f"{control.base ** t if log else t:.12g}"))
                         for t in ticks} | {control.value})   # the default replaces its neighbour
    else:
        return None
    return [(v, _label(control, v)) for v in values]


def _choice(control):
    return hasattr(control, "_options_values") or isinstance(control.value, bool)


def _control_html(control, picks, start):
    """One labelled control: a <select>, or a range over the stops; disabled when live only."""
    label, live = html.escape(control.description or control._kwarg), picks is None
    if live:                                     # live only: the default value, greyed out
        value = control.get_interact_value()
        picks, start = [(value, getattr(control, "label", None) or _label(control, value))], 0
    labels = html.escape(json.dumps([t for _, t in picks]), quote=True)
    attrs = " disabled" if live else f' data-labels="{labels}"'
    if _choice(control):
        opts = "".join(f'<option value="{i}"{" selected" * (i == start)}>{html.escape(t)}</option>'
                       for i, (_, t) in enumerate(picks))
        return f"<label>{label} <select{attrs}>{opts}</select></label>"
    if live:                                     # the thumb where the live slider has it
        at = math.log(picks[0][0], control.base) if hasattr(control, "base") else picks[0][0]
        attrs += f' min="{control.min}" max="{control.max}" step="{control.step}" value="{at}"'
    else:
        attrs += f' min="0" max="{len(picks) - 1}" value="{start}"'
    return (f'<label>{label} <input type="range"{attrs}> '
            f"<output>{html.escape(picks[start][1])}</output></label>")


def _static_html(fn, controls, defaults, default_view, live_only, stops):
    """The built book's face of a widget: HTML controls, precomputed views, and _JS."""
    picks = {c._kwarg: None if c._kwarg in live_only else _stops(c, c._kwarg, stops)
             for c in controls}
    free = [c._kwarg for c in controls if picks[c._kwarg] is not None]
    labels = {c._kwarg: c.description or c._kwarg for c in controls}
    start = tuple([v for v, _ in picks[n]].index(defaults[n]) for n in free)
    grid = math.prod(len(picks[n]) for n in free) <= MAX_GRID
    keys = (itertools.product(*(range(len(picks[n])) for n in free)) if grid else
            [start] + [start[:j] + (i,) + start[j + 1:]             # one control at a time
                       for j, n in enumerate(free) for i in range(len(picks[n])) if i != start[j]])
    views = []
    for key in keys:
        values = {**defaults, **{n: picks[n][i][0] for n, i in zip(free, key)}}
        text, pngs, error = default_view if key == start else _view(fn, values)
        alt = html.escape(", ".join(f"{labels[n]} = {picks[n][i][1]}" for n, i in zip(free, key)))
        body = f"<pre>{html.escape(text)}</pre>" if text else ""
        body += "".join(f'<img alt="{alt}" src="data:image/png;base64,'
                        f'{base64.b64encode(png).decode()}">' for png in pngs)
        body += f"<pre>{type(error).__name__}: {html.escape(str(error))}</pre>" if error else ""
        views.append(f'<div class="mc-view" data-key="{",".join(map(str, key))}"'
                     f'{"" if key == start else " hidden"}>{body}</div>')
    first, greyed = _widgets_shown[0] == 1, len(free) < len(controls)
    notes = ["Live in JupyterLab: <code>make lab</code>."] if first or greyed else []
    if first and free:
        notes.append("Here, each view was drawn when the book was built.")
    if not grid and len(free) > 1:
        notes.append("One control at a time: moving one puts the others back to their defaults.")
    if greyed:
        notes.append("Greyed controls move only there.")
    rows = "".join(_control_html(c, picks[c._kwarg], start[free.index(c._kwarg)]
                                 if c._kwarg in free else 0) for c in controls)
    note = f'<p class="mc-note">{" ".join(notes)}</p>' if notes else ""
    return (f'<div class="mc-widget"{"" if grid else " data-star"}><div class="mc-controls">'
            f'{rows}</div>{note}{"".join(views)}<script>{_JS}</script></div>')


def static_interact(fn, *, live_only=(), stops=None, **controls):
    """``ipywidgets.interact`` that also works in the built book, where there is no kernel.

    Live in JupyterLab the figure redraws when a control moves (on release, to spare slow CPUs;
    "computing…" shows while ``fn`` runs). The output also carries a static face (text/html),
    which the built book shows: its own controls and views drawn by ``fn`` itself. The build
    (``MINIMC_PRECOMPUTE=1``, set by scripts/build_book.py) draws a view for every option of a
    dropdown and a few stops of each slider (every combination up to MAX_GRID views, else one
    control at a time from the defaults); elsewhere only the default view, controls disabled.
    ``live_only=("d",)`` keeps a slow control out of the book (disabled, with a note);
    ``stops={"d": [8, 16]}`` picks a slider's stops. ``fn`` draws with matplotlib (or prints)
    and returns None; the keyword controls follow ``interact``'s rules (``n=(1, 64)`` is a
    slider, ``variant=["grm", "ssc"]`` a dropdown, or a widget object), defaults from ``fn``.
    """
    import ipywidgets
    from IPython.display import Image, display

    calls, busy = [], ipywidgets.Label()

    @functools.wraps(fn)                         # interact reads fn's signature and defaults
    def draw(**kwargs):
        if not calls:                            # the default view is drawn below, once
            return calls.append(kwargs)
        busy.value = "computing…"
        try:
            fn(**kwargs)
        finally:
            busy.value = ""

    w = ipywidgets.interactive(draw, **controls)
    default_view = _view(fn, calls[0])
    if default_view[2] is not None:              # a broken default view fails the cell
        raise default_view[2]
    with w.out:                                  # what fn(**defaults) shows, as the inline backend
        print(default_view[0], end="")
        for png in default_view[1]:
            display(Image(png))
    shown = [c for c in w.kwargs_widgets if isinstance(c, ipywidgets.DOMWidget)]
    for control in shown:
        control.style.description_width = "initial"       # the whole label, not "segment_..."
        if hasattr(control, "continuous_update"):
            control.continuous_update = False
    w.children = (*w.children[:-1], busy, w.children[-1])
    _widgets_shown[0] += 1
    if os.environ.get("MINIMC_PRECOMPUTE") != "1":
        live_only = [c._kwarg for c in shown]
    bundle, start, cpu = w._repr_mimebundle_(), time.perf_counter(), time.process_time()
    bundle["text/html"] = _static_html(fn, shown, calls[0], default_view, live_only, stops or {})
    cost = {"views": bundle["text/html"].count('class="mc-view"'),     # build_book sums these
            "seconds": round(time.perf_counter() - start, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2)}
    display(bundle, raw=True, metadata={"minimc.viz": cost})     # None: the widget shows once


def close_all():
    """Close every open figure (call after saving figures in scripts)."""
    plt.close("all")
