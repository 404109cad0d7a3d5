"""Load every page of the built book in headless Chromium and fail on any browser console error.

    python scripts/check_pages.py                  # book/_build/html (make book runs this)
    python scripts/check_pages.py /tmp/b/_build/html 05_memory_caching

An error is an uncaught exception, a console.error() call, or a browser log entry of level
error (a file that failed to load, a blocked request). Chromium is driven through its DevTools
protocol over a pipe (--remote-debugging-pipe): Debian's `chromium` and no Python package.
tests/test_book.py uses the same `Chromium` class to move the widgets of a small built book.
Exit status: 0 clean, 1 errors, 2 no Chromium or no built book.
"""
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HTML = Path(__file__).resolve().parent.parent / "book" / "_build" / "html"
# Sphinx's own pages, and index.html: only a <meta http-equiv="Refresh"> to the first chapter
# (tests/test_book.py checks it). Loading it races the redirect: the page can navigate away
# during the MathJax check ("Inspected target navigated or closed").
SKIP = {"genindex", "search", "index"}


def find_chromium():
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)


class Chromium:
    """A headless Chromium and one tab, driven through the DevTools protocol (JSON over a pipe)."""

    def __init__(self, exe=None, width=1280, height=1600):
        exe = exe or find_chromium()
        if exe is None:
            raise FileNotFoundError("chromium not found: apt-get install -y chromium")
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        to_chrome, self._write = os.pipe()           # Chromium reads commands on fd 3 ...
        self._read, from_chrome = os.pipe()          # ... and writes replies and events on fd 4

        def fds():                                   # in the child, before exec
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._id, self.events = b"", 0, []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=self.session)
        self.send("Emulation.setDeviceMetricsOverride", session=self.session, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method, session=None, timeout=60, **params):
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._next(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _next(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._read], [], [], max(0, deadline - time.monotonic()))
            chunk = os.read(self._read, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError("no answer from chromium")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self.events.append(msg)
        return msg

    def eval(self, expression):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        r = self.send("Runtime.evaluate", session=self.session, expression=expression,
                      returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url, settle=1.0):
        """Load a page, wait for its load event and MathJax, then `settle` seconds more."""
        self.events.clear()
        self.send("Page.navigate", session=self.session, url=url)
        deadline = time.monotonic() + 60
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self._next(max(0.1, deadline - time.monotonic()))
        self.eval("window.MathJax && MathJax.startup && MathJax.startup.promise"
                  " ? MathJax.startup.promise.then(() => 1) : 0")
        self.eval(f"new Promise(r => setTimeout(r, {int(settle * 1000)}))")

    def errors(self):
        """The console errors of the page opened last."""
        found = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                found.append(d.get("exception", {}).get("description") or d.get("text"))
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description", "")))
                                      for a in p["args"]))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(f"{p['entry']['text']} {p['entry'].get('url', '')}".strip())
        return found

    def screenshot(self, path):
        import base64
        shot = self.send("Page.captureScreenshot", session=self.session, format="png")
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pages(html_dir, names=()):
    found = [p for p in sorted(Path(html_dir).resolve().glob("*.html")) if p.stem not in SKIP]
    return [p for p in found if not names or p.stem in names]


def main(argv):
    html_dir = Path(argv[0]) if argv else HTML
    if find_chromium() is None:
        print("check_pages: chromium not found (apt-get install -y chromium): pages not checked")
        return 2
    todo = pages(html_dir, argv[1:])
    if not todo:
        print(f"check_pages: no built pages in {html_dir}: run make book first")
        return 2
    bad = 0
    with Chromium() as chrome:
        for page in todo:
            chrome.open(page.as_uri())
            errors = chrome.errors()
            bad += bool(errors)
            print(f"{page.name}: " + ("clean" if not errors else f"{len(errors)} console error(s)"))
            for error in errors:
                print(f"    {error.splitlines()[0][:300]}")
    print(f"{len(todo) - bad} of {len(todo)} pages load without console errors")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
