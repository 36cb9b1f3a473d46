#!/usr/bin/python3
"""Measures the web console in headless Chromium; see bench/console.sh.

Arguments: URL TOKEN_FILE GROUPS RUNS CHANGES OUTDIR. Prints a Markdown
summary with each target met or missed.
"""

import gzip
import json
import statistics
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, token_file, groups, runs, changes, out = sys.argv[1:7]
groups, runs, changes = int(groups), int(runs), int(changes)
token = open(token_file).read().strip()

opts = Options()
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,800"):
    opts.add_argument(arg)
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
d.set_script_timeout(30)

ROWS = "return [document.querySelectorAll('tr[data-group]').length, performance.now()];"


def until(cond, limit=30.0, every=0.005):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise SystemExit(f"timed out after {limit} s")


def api(method, path):
    req = urllib.request.Request(url + "/api/v1" + path, method=method, data=b"" if method == "POST" else None)
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


# The server's part alone: GET /api/v1/overview from this script, no browser.
server = []
for _ in range(20):
    t0 = time.monotonic()
    api("GET", "/overview")
    server.append((time.monotonic() - t0) * 1000)

# Log in once; the session cookie serves every later load.
d.get(url + "/")
until(lambda: d.find_elements(By.ID, "token"))
d.find_element(By.ID, "token").send_keys(token)
d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
until(lambda: d.execute_script(ROWS)[0] == groups)

renders = []
overview_at = []
for _ in range(runs):
    d.get("about:blank")
    d.get(url + "/")
    n, at = until(lambda: (lambda r: r if r[0] == groups else None)(d.execute_script(ROWS)))
    renders.append(at)
    # When the overview's response had arrived: the rest is the page's own
    # work (and the requests before it).
    overview_at.append(d.execute_script(
        "const e = performance.getEntriesByType('resource').find(e => e.name.endsWith('/api/v1/overview'));"
        "return e ? e.responseEnd : null;") or 0)

# Page weight: what the page itself loaded, plus the first overview snapshot
# (the live stream never completes, so resource timing cannot size it).
entries = d.execute_script(
    "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
    ".map(e => [e.name, e.transferSize, e.encodedBodySize, e.initiatorType]);")
assets = [(n, size) for n, size, body, kind in entries if not n.endswith("/api/v1/stream")]
sent = 0
gz = 0
for name, _ in assets:
    path = name[len(url):] if name.startswith(url) else None
    if path is None:
        continue
    req = urllib.request.Request(url + path)
    if path.startswith("/api/"):
        req.add_header("Authorization", f"Bearer {token}")
    body = urllib.request.urlopen(req, timeout=60).read()
    sent += len(body)
    gz += len(gzip.compress(body, 6))
overview = api("GET", "/overview")
sent += len(overview)
gz += len(gzip.compress(overview, 6))

# A state change reaching the open page.
lat = []
for i in range(changes):
    g = f"g{1 + (i * 37) % groups}"
    api("POST", f"/groups/{g}/pause")
    t0 = time.monotonic()
    until(lambda: "paused" in d.find_element(By.CSS_SELECTOR, f"tr[data-group='{g}']").text, 10.0, 0.01)
    lat.append(time.monotonic() - t0)
    api("POST", f"/groups/{g}/resume")
    until(lambda: "paused" not in d.find_element(By.CSS_SELECTOR, f"tr[data-group='{g}']").text, 10.0, 0.01)
d.quit()


def verdict(ok):
    return "met" if ok else "missed"


med, worst = statistics.median(renders), max(renders)
lat_med, lat_max = statistics.median(lat), max(lat)
print(f"Console with {groups} groups (site-a, the primary of all), headless Chromium on loopback\n")
print("first render per load (ms): " + ", ".join(f"{r:.0f}" for r in renders))
print("overview response in per load (ms): " + ", ".join(f"{r:.0f}" for r in overview_at))
print("GET /api/v1/overview from a script, 20 times (ms): " + ", ".join(f"{r:.0f}" for r in server))
print()
print("| measure | median | worst | target | |")
print("|---|---:|---:|---:|---|")
print(f"| first render of the overview ({runs} loads) | {med:.0f} ms | {worst:.0f} ms | ≤ 300 ms | {verdict(worst <= 300)} |")
print(f"| of which: the overview's response in (from navigation start) | {statistics.median(overview_at):.0f} ms | {max(overview_at):.0f} ms | | |")
print(f"| state change on screen ({changes} pauses) | {lat_med * 1000:.0f} ms | {lat_max * 1000:.0f} ms | ≤ 1 s | {verdict(lat_max <= 1.0)} |")
print(f"\npage weight: {sent / 1024:.0f} KiB as sent, {gz / 1024:.0f} KiB gzip-compressed "
      f"(page, {len(assets) - 1} assets, first overview of {len(overview) / 1024:.0f} KiB); "
      f"target ≤ 300 KB compressed: {verdict(gz <= 300_000)}")
json.dump({"renders_ms": renders, "change_s": lat, "sent": sent, "gzip": gz},
          open(f"{out}/console.json", "w"))
