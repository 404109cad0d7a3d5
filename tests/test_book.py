"""The built book in headless Chromium: a small book of light chapters is built (executed, with
every widget's views precomputed), then every page must load without console errors, code cells
up to 100 columns must fit a 1280-px window, and every control of every widget, moved with the
keyboard, must switch the figure to the view drawn for the values the controls now show.
Skips, saying why, without Chromium or node_modules/."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from check_pages import Chromium, find_chromium, pages  # noqa: E402

CHAPTERS = ["02", "05", "06"]        # light chapters with widgets: sliders, dropdowns, both modes
pytestmark = pytest.mark.timeout(900)    # building the small book takes about 2 minutes

# Per widget: its controls (a label, the value shown, enabled or not) and the view on show.
STATE = """Array.from(document.querySelectorAll(".mc-widget"), w => ({
  controls: Array.from(w.querySelectorAll(".mc-controls label"), l => {
    const c = l.querySelector("select, input");
    return {name: l.firstChild.textContent.trim(), disabled: c.disabled, tag: c.tagName,
            shown: c.tagName === "SELECT" ? c.selectedOptions[0].textContent
                                          : l.querySelector("output").textContent};
  }),
  views: Array.from(w.querySelectorAll(".mc-view")).filter(v => !v.hidden)
    .map(v => ({alt: (v.querySelector("img") || {}).alt || v.textContent})),
  note: (w.querySelector(".mc-note") || {}).textContent || "",
}))"""


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    if find_chromium() is None:
        pytest.skip("chromium not found (apt-get install -y chromium): the built book's widgets "
                    "and browser consoles are not tested")
    if not (ROOT / "node_modules" / "mathjax").is_dir():
        pytest.skip("node_modules/ missing (npm ci --ignore-scripts): the book cannot be built")
    out = tmp_path_factory.mktemp("book")
    run = subprocess.run([sys.executable, "scripts/build_book.py", "--chapters", *CHAPTERS,
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, f"the small book did not build:\n{run.stdout[-3000:]}{run.stderr}"
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def chrome(book):
    with Chromium() as browser:
        yield browser


def test_pages_leave_out_sphinx_pages_and_the_redirect_index(tmp_path):
    for name in ("index", "search", "genindex", "00_welcome"):
        (tmp_path / f"{name}.html").write_text("<p>x</p>")
    assert [p.name for p in pages(tmp_path)] == ["00_welcome.html"]


def test_the_index_redirects_to_a_checked_chapter(book):
    """index.html is only a refresh to the first chapter (loading it raced the redirect)."""
    target = re.fullmatch(r'<meta http-equiv="Refresh" content="0; url=([\w.]+)" />\s*',
                          (book / "index.html").read_text())
    assert target, (book / "index.html").read_text()[:300]
    assert target.group(1) in [p.name for p in pages(book)]


def test_every_page_loads_without_console_errors(book, chrome):
    built = pages(book)
    assert len(built) >= len(CHAPTERS)
    for page in built:
        chrome.open(page.as_uri())
        assert chrome.errors() == [], page.name


def test_code_up_to_100_columns_fits_a_1280_px_window(book, chrome):
    checked = 0
    for page in pages(book):
        chrome.open(page.as_uri(), settle=0.2)
        cells = chrome.eval("""Array.from(document.querySelectorAll("div.cell_input pre"), p => [
            Math.max(...p.textContent.split("\\n").map(l => l.length)),
            p.scrollWidth - p.clientWidth])""")
        assert not [c for c in cells if c[0] <= 100 and c[1] > 0], page.name
        checked += len(cells)
    assert checked, "no code cell found on any page"


KEYS = {"Home": 36, "ArrowRight": 39, "ArrowDown": 40}


def press(chrome, key):
    for kind in ("rawKeyDown", "keyUp"):
        chrome.send("Input.dispatchKeyEvent", session=chrome.session, type=kind, key=key,
                    code=key, windowsVirtualKeyCode=KEYS[key])


def test_every_control_switches_its_figure(book, chrome):
    moves = 0
    for page in [p for p in pages(book) if p.stem[:2] in CHAPTERS]:
        chrome.open(page.as_uri(), settle=0.2)
        widgets = chrome.eval(STATE)
        assert widgets, f"{page.name}: no widget"
        assert "make lab" in widgets[0]["note"], f"{page.name}: first widget says nothing of lab"
        for w, widget in enumerate(widgets):
            for c, control in enumerate(widget["controls"]):
                if control["disabled"]:
                    assert "Greyed controls move only" in widget["note"], (page.name, control)
                    continue
                chrome.eval(f'document.querySelectorAll(".mc-widget")[{w}]'
                            f'.querySelectorAll("select, input")[{c}].focus()')
                press(chrome, "Home")                    # the first stop, then every next one
                seen = {}
                for _ in range(50):
                    state = chrome.eval(STATE)[w]
                    assert len(state["views"]) == 1, (page.name, w, state)
                    free = [x for x in state["controls"] if not x["disabled"]]
                    expect = ", ".join(f"{x['name']} = {x['shown']}" for x in free)
                    assert state["views"][0]["alt"] == expect, (page.name, w, "figure and "
                                                                "controls disagree", state)
                    shown = state["controls"][c]["shown"]
                    if shown in seen:                    # the last stop: it moves no further
                        break
                    seen[shown] = state["views"][0]["alt"]
                    press(chrome, "ArrowRight" if control["tag"] == "INPUT" else "ArrowDown")
                    moves += 1
                assert len(seen) > 1, (page.name, w, control["name"], "the control did not move")
                assert len(set(seen.values())) == len(seen), (page.name, w, control["name"],
                                                              "a move did not change the view")
    assert moves >= 10
