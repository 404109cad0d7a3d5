"""minimc.viz: a colour for every model the library names; widgets with a static face."""
import base64
import html
import json
import re
from unittest import mock

import matplotlib
import ipywidgets
from ipywidgets import fixed

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import minimc  # noqa: E402
from minimc import viz  # noqa: E402
from minimc.caching import VARIANTS  # noqa: E402
from minimc.layers import PRESETS  # noqa: E402


def test_every_model_has_one_colour():
    for name in [*minimc.MEMORIES, *VARIANTS, *PRESETS, "attention"]:
        assert viz.color(name).startswith("#"), name
    assert len(set(viz.COLORS.values())) == len(viz.COLORS), "two models share a colour"


def draw(n=8, variant="grm", width=2.0):
    """The tiny widget function of these tests: one line plot."""
    if n == 13:
        raise ValueError("13 is unlucky")
    plt.figure(figsize=(3, 2))
    plt.plot(range(n), color=viz.color(variant), lw=width)
    plt.title(f"n = {n}, {variant}")
    plt.show()


def inline_png(**values):
    """The PNG that JupyterLab's inline backend shows for draw(**values)."""
    from IPython.core.pylabtools import print_figure

    with mock.patch.object(plt, "show"):
        draw(**values)
    png = print_figure(plt.gcf(), "png")
    plt.close("all")
    return png


def static_face(monkeypatch, precompute, *args, **kwargs):
    """Call static_interact; return (calls of fn, its output's text/html)."""
    calls, shown = [], []

    def fn(**kw):
        calls.append(kw)
        draw(**kw)

    fn.__signature__ = __import__("inspect").signature(draw)
    monkeypatch.setenv("MINIMC_PRECOMPUTE", "1" if precompute else "0")
    monkeypatch.setattr("IPython.display.display", lambda obj, **k: shown.append((obj, k)))
    viz.use_style()
    assert viz.static_interact(fn, *args, **kwargs) is None
    bundle, options = shown[-1]
    assert "application/vnd.jupyter.widget-view+json" in bundle    # live in JupyterLab
    views = bundle["text/html"].count('class="mc-view"')
    assert options["metadata"]["minimc.viz"]["views"] == views   # what build_book reports
    plt.close("all")
    return calls, bundle["text/html"]


def controls(page):
    """[(labels, disabled)] of the HTML controls, in order."""
    found = re.findall(r'<(select|input type="range")([^>]*)>', page)
    return [(json.loads(html.unescape(m[1])) if (m := re.search(r'data-labels="([^"]*)"', a))
             else None, "disabled" in a) for _, a in found]


def views(page):
    """{key: [PNG bytes]} of the precomputed views; the key holds one index per free control."""
    return {tuple(int(i) for i in key.split(",") if i):
            [base64.b64decode(p) for p in re.findall(r'base64,([^"]+)"', body)]
            for key, body in re.findall(r'data-key="([^"]*)"[^>]*>(.*?)</div>', page)}


def test_static_interact_draws_the_default_view_once(monkeypatch):
    calls, page = static_face(monkeypatch, False, n=(2, 64), variant=["grm", "ssc"],
                              width=fixed(3.0))
    assert calls == [{"n": 8, "variant": "grm", "width": 3.0}]   # defaults from fn's signature
    assert [d for _, d in controls(page)] == [True, True]        # not built: controls disabled
    assert list(views(page)) == [()] and "make lab" in page


def test_every_view_is_the_figure_fn_draws_for_its_values(monkeypatch):
    _, page = static_face(monkeypatch, True, n=(2, 64), variant=["grm", "ssc"], width=fixed(3.0))
    (n_stops, _), (variants, _) = controls(page)
    assert variants == ["grm", "ssc"] and "8" in n_stops and {"2", "64"} <= set(n_stops)
    got = views(page)
    assert len(got) == len(n_stops) * len(variants)              # every combination: a grid
    for (i, j), pngs in got.items():
        expected = inline_png(n=int(n_stops[i]), variant=variants[j], width=3.0)
        assert pngs == [expected], (n_stops[i], variants[j])     # one image, fn's own figure
    assert len(set(map(tuple, got.values()))) == len(got)        # and all of them differ
    assert 'data-key="1,0">' in page                             # n = 8, grm shown first


def test_large_grids_move_one_control_at_a_time(monkeypatch):
    _, page = static_face(monkeypatch, True, n=(2, 64), variant=["grm", "ssc"],
                          width=(1.0, 3.0, 0.5), stops={"n": [4, 13, 16]})
    (n_stops, _), (variants, _), (widths, _) = controls(page)
    assert n_stops == ["4", "8", "13", "16"] and widths == ["1.00", "1.50", "2.00", "2.50", "3.00"]
    keys = set(views(page))
    assert len(keys) == 1 + 3 + 1 + 4 and "data-star" in page and "One control at a time" in page
    assert all(sum(k != d for k, d in zip(key, (1, 0, 2))) <= 1 for key in keys)
    assert "ValueError: 13 is unlucky" in page                   # shown as JupyterLab would


def test_live_only_controls_are_disabled_with_a_note(monkeypatch):
    calls, page = static_face(monkeypatch, True, n=(2, 64), variant=["grm", "ssc"],
                              width=fixed(2.0), live_only=("n",))
    assert [d for _, d in controls(page)] == [True, False] and "Greyed controls" in page
    assert set(views(page)) == {(0,), (1,)} and len(calls) == 2


def test_slider_stops_span_the_range_and_hold_the_default():
    log = ipywidgets.FloatLogSlider(value=8 ** -0.5, min=-1.5, max=1.5, step=0.1)
    assert [t for _, t in viz._stops(log, "tau", {})] == ["0.0316", "0.354", "3.16", "31.6"]
    ints = ipywidgets.IntSlider(value=40, min=1, max=128)                # 43 gives way to 40
    assert [v for v, _ in viz._stops(ints, "T", {})] == [1, 40, 86, 128]
    assert [v for v, _ in viz._stops(ints, "T", {"T": [8, 128]})] == [8, 40, 128]


def test_a_broken_default_view_fails_the_cell(monkeypatch):
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    with pytest.raises(ValueError, match="unlucky"):
        viz.static_interact(lambda n=13: draw(n), n=(1, 20))
