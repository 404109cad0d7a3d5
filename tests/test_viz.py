"""minimc.viz: a colour for every model the library names; widgets with a static face."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import minimc  # noqa: E402
from minimc import viz  # noqa: E402
from minimc.caching import VARIANTS  # noqa: E402
from minimc.layers import PRESETS  # noqa: E402


def test_every_model_has_one_colour():
    for name in [*minimc.MEMORIES, *VARIANTS, *PRESETS, "attention"]:
        assert viz.color(name).startswith("#"), name
    assert len(set(viz.COLORS.values())) == len(viz.COLORS), "two models share a colour"


def test_static_interact_draws_the_default_view(capsys):
    calls = []

    def fn(n=8, variant="grm"):
        calls.append((n, variant))
        plt.figure()
        plt.plot(range(n), color=viz.color(variant))
        plt.show()

    viz.use_style()
    assert viz.static_interact(fn, n=(2, 64), variant=["grm", "ssc"]) is None
    assert calls == [(8, "grm")]                     # the defaults come from fn's signature
    plt.close("all")
