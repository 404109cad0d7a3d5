#!/usr/bin/env bash
# Screenshot every page of the built book (make book first) with headless Chromium, offline, to
# see what a learner sees: text, rendered math (no raw TeX), figures, widgets.
#
#   scripts/screenshots.sh                 # every page -> screenshots/<page>-<n>.png
#   scripts/screenshots.sh 01_linear_memory 05_memory_caching     # some pages
#
# Each page is shot in a tall window, then cut into 1280x1600 tiles (blank bottom dropped).
# Chromium's network log of each page is checked: any http(s) request (a CDN) is reported and
# makes the script exit 1. Needs chromium (`apt-get install -y chromium`).
set -euo pipefail
cd "$(dirname "$0")/.."
HTML=book/_build/html
OUT=screenshots
PY=${PY:-.venv/bin/python}
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROME" ]; then
  echo "chromium not found: apt-get install -y chromium" >&2; exit 2
fi
[ -f "$HTML/index.html" ] || { echo "no built book: run make book first" >&2; exit 2; }
mkdir -p "$OUT"
if [ $# -gt 0 ]; then pages=("$@"); else
  pages=(); for f in "$HTML"/*.html; do
    n=$(basename "$f" .html); case $n in index|genindex|search) continue;; esac; pages+=("$n"); done
fi
profile=$(mktemp -d); trap 'rm -rf "$profile"' EXIT
status=0
for page in "${pages[@]}"; do
  rm -f "$OUT/$page"-*.png
  "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --virtual-time-budget=10000 --hide-scrollbars \
    --window-size=1280,${HEIGHT:-16000} --log-net-log="$profile/net.json" \
    --screenshot="$OUT/$page-full.png" "file://$PWD/$HTML/$page.html" >/dev/null 2>&1 || true
  # Chromium's own background traffic (google.com) is not the page's; anything else is.
  remote=$(grep -oE '"https?://[^"]+' "$profile/net.json" 2>/dev/null | tr -d '"' |
           grep -vE '^https?://([a-z0-9-]+\.)*(google|googleapis)\.com' | sort -u || true)
  if [ -n "$remote" ]; then echo "$page: requests from the internet:"; echo "$remote"; status=1; fi
  "$PY" - "$OUT/$page-full.png" <<'EOF'
import sys
from PIL import Image
path = sys.argv[1]
img = Image.open(path).convert("L")
w, h = img.size
px = img.load()
# The theme stretches every page to the window: cut at the first long blank stretch of the
# content column (right of the sidebar), which is where the page's content ends.
blank = [all(px[x, y] > 250 for x in range(300, w, 6)) for y in range(h)]
bottom, run = h, 0
for y in range(h):
    run = run + 1 if blank[y] else 0
    if run >= 500:
        bottom = y - run + 41
        break
tiles = max(1, -(-bottom // 1600))
full = Image.open(path)
for i in range(tiles):
    full.crop((0, i * 1600, w, min(bottom, (i + 1) * 1600))).save(path.replace("-full.png", f"-{i + 1}.png"))
print(f"{path.replace('-full.png', '')}-[1..{tiles}].png  ({bottom} px of content)")
if bottom == h:
    print("  (the page may be taller than the window: rerun with HEIGHT=30000)")
EOF
  rm -f "$OUT/$page-full.png"
done
exit $status
