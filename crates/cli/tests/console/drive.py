#!/usr/bin/python3
"""Drives the web console of two real sites in Chromium (WebDriver).

Called by crates/cli/tests/console.rs with one JSON argument:
{"a": {"name", "url", "token"}, "b": {...}, "group", "plan", "artifacts",
"spki": [...]} where site a is the group's primary and b its replica; a
site's url may be https:// with a self-signed certificate whose key's
SPKI hash is in "spki" (Chromium trusts those). Logs in at both
sites, watches the group turn healthy, takes an application-consistent PIT
(the quiesce box) and finds it marked in the timeline, runs a test failover (and checks the
clone's NBD export with nbdinfo) and stops it, runs the plan in test mode
and answers its prompt, cleans up, prepares and runs a planned failover,
reverses, visits every page, and logs out. On every page: no JavaScript
error or failed request in the browser log, no serious or critical axe-core
violation, the API token nowhere in the page or the URL; a screenshot of
each page goes to the artifacts directory. Exits non-zero with the reason
on the first failure; prints a JSON summary on success.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (NoSuchElementException,
                                        StaleElementReferenceException,
                                        TimeoutException)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CFG = json.loads(sys.argv[1])
ART = CFG["artifacts"]
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "axe.min.js"), encoding="utf-8") as f:
    AXE = f.read()

summary = {"pages": [], "axe": {}, "screenshots": []}


class Failed(Exception):
    pass


def browser():
    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,800"):
        opts.add_argument(arg)
    if CFG.get("spki"):
        # The sites' self-signed certificates, trusted by their keys as an
        # operator's browser trusts them after the first visit.
        opts.add_argument("--ignore-certificate-errors-spki-list=" + ",".join(CFG["spki"]))
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def wait(driver, what, cond, timeout=90):
    try:
        # Live updates re-render the page: an element found a moment ago
        # may be gone; look again.
        return WebDriverWait(driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(NoSuchElementException,
                                                 StaleElementReferenceException)).until(cond)
    except TimeoutException:
        shot(driver, f"timeout-{what.replace(' ', '-')}")
        raise Failed(f"timed out waiting for {what}; page text:\n{driver.find_element(By.TAG_NAME, 'body').text[:3000]}")


def shot(driver, name):
    """A screenshot of the whole page, beyond the window (DevTools)."""
    import base64
    path = os.path.join(ART, f"{name}.png")
    w, h = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];")
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": w, "height": min(h, 8000), "scale": 1},
    })
    with open(path, "wb") as f:
        f.write(base64.b64decode(png["data"]))
    summary["screenshots"].append(path)


def check_clean(driver, site, page):
    """No JS error or failed request; no serious axe violation; no token."""
    logs = driver.get_log("browser")
    bad = [l for l in logs if l["level"] == "SEVERE"]
    if bad:
        raise Failed(f"{site['name']} {page}: browser errors: {json.dumps(bad, indent=1)}")
    token = site["token"]
    if token in driver.page_source or token in driver.current_url:
        raise Failed(f"{site['name']} {page}: the API token appears in the page or URL")
    driver.execute_script(AXE)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations'], iframes: false})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.html).slice(0, 3)}))))"
        ".catch(e => done({error: String(e)}));")
    if isinstance(result, dict):
        raise Failed(f"axe failed on {page}: {result}")
    serious = [v for v in result if v["impact"] in ("serious", "critical")]
    summary["axe"][f"{site['name']} {page}"] = [v["id"] for v in result]
    if serious:
        raise Failed(f"{site['name']} {page}: accessibility violations: {json.dumps(serious, indent=1)}")
    summary["pages"].append(f"{site['name']} {page}")


def login(driver, site):
    driver.get(site["url"] + "/")
    token = wait(driver, "the login form", lambda d: d.find_element(By.ID, "token"))
    shot(driver, f"{site['name']}-login")
    check_clean(driver, site, "login")
    token.send_keys(site["token"])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(driver, "the overview", lambda d: d.find_element(By.CSS_SELECTOR, "main h1").text == "Overview")
    wait(driver, "the live stream", lambda d: "live" in d.find_element(By.ID, "live").text)
    # The session cookie as the browser holds it: HttpOnly and
    # SameSite=Strict always, Secure exactly when the console is HTTPS.
    cookie = driver.get_cookie(f"offsite_{site['name']}")
    https = site["url"].startswith("https://")
    if (not cookie or not cookie.get("httpOnly") or cookie.get("sameSite") != "Strict"
            or bool(cookie.get("secure")) != https):
        raise Failed(f"{site['name']}: session cookie {cookie} (over {'HTTPS' if https else 'HTTP'})")
    summary.setdefault("cookies", {})[site["name"]] = {
        k: cookie.get(k) for k in ("secure", "httpOnly", "sameSite")}


def go(driver, site, route):
    driver.get(f"{site['url']}/#/{route}")


def group_row(driver, group):
    rows = driver.find_elements(By.CSS_SELECTOR, f"tr[data-group='{group}']")
    return rows[0].text if rows else ""


def click(driver, label):
    def press(d):
        d.find_element(By.XPATH, f"//button[normalize-space()={json.dumps(label, ensure_ascii=False)} and not(@disabled)]").click()
        return True

    wait(driver, f"button {label!r}", press)


def outcome(driver, box, label, timeout):
    """Waits for the outcome of the action just clicked in `box`."""

    def done(d):
        el = d.find_elements(By.CSS_SELECTOR, f"#{box} .result")
        # Read it at once: a re-render may replace it.
        return (el[0].text, el[0].get_attribute("class") or "") if el else False

    text, cls = wait(driver, f"the result of {label!r}", done, timeout)
    if "error" in cls:
        shot(driver, f"failed-{label.replace(' ', '-')}")
        raise Failed(f"{label!r} failed: {text}")
    return json.loads(text) if text.strip().startswith("{") else text


def action_result(driver, label, timeout=180):
    """Clicks a group action and returns its JSON result; fails on an error."""
    click(driver, label)
    return outcome(driver, "action-result", label, timeout)


def plan_result(driver, label, plan, timeout=300):
    def press(d):
        card = d.find_element(By.CSS_SELECTOR, f"[data-plan='{plan}']")
        card.find_element(By.XPATH, f".//button[normalize-space()={json.dumps(label, ensure_ascii=False)}]").click()
        return True

    wait(driver, f"the plan's {label!r} button", press)
    return outcome(driver, "plan-result", f"plan {label}", timeout)


def api_status(site, method, path, cookie=None, csrf=None, body=None):
    req = urllib.request.Request(site["url"] + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if cookie:
        req.add_header("Cookie", cookie)
    if csrf:
        req.add_header("X-CSRF-Token", csrf)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def security_checks(site, group):
    """Actions without the cookie or with a wrong CSRF token are refused."""
    status, headers, body = api_status(site, "POST", "/console/login", body={"token": site["token"]})
    assert status == 200, (status, body)
    cookie = headers["Set-Cookie"].split(";")[0]
    csrf = json.loads(body)["csrf"]
    csp = headers["Content-Security-Policy"]
    if "unsafe-inline" in csp or "script-src 'self'" not in csp:
        raise Failed(f"weak CSP: {csp}")
    checks = {
        "no cookie": api_status(site, "POST", f"/api/v1/groups/{group}/verify"),
        "no csrf": api_status(site, "POST", f"/api/v1/groups/{group}/verify", cookie=cookie),
        "wrong csrf": api_status(site, "POST", f"/api/v1/groups/{group}/verify", cookie=cookie, csrf="0" * 64),
    }
    want = {"no cookie": 401, "no csrf": 403, "wrong csrf": 403}
    for k, (status, headers, body) in checks.items():
        if status != want[k]:
            raise Failed(f"action with {k}: HTTP {status}, want {want[k]}: {body}")
        if "Content-Security-Policy" not in headers:
            raise Failed(f"refusal without CSP: {k}")
    status, _, body = api_status(site, "GET", f"/api/v1/groups/{group}", cookie=cookie)
    if status != 200:
        raise Failed(f"read with the session cookie: HTTP {status}: {body}")
    status, _, _ = api_status(site, "POST", "/console/logout", cookie=cookie, csrf=csrf)
    assert status == 204, status
    status, _, _ = api_status(site, "GET", f"/api/v1/groups/{group}", cookie=cookie)
    if status != 401:
        raise Failed(f"read after logout: HTTP {status}, want 401")
    summary["security"] = {k: v[0] for k, v in checks.items()}


def main():
    a, b, group, plan = CFG["a"], CFG["b"], CFG["group"], CFG["plan"]
    security_checks(a, group)
    da, db = browser(), browser()
    try:
        # Site a, the primary: the group turns healthy on the overview.
        login(da, a)
        wait(da, "the group healthy at site a", lambda d: "normal" in group_row(d, group) and "primary" in group_row(d, group))
        shot(da, "a-overview")
        check_clean(da, a, "overview")
        da.set_window_size(390, 844)
        time.sleep(0.5)
        shot(da, "a-overview-phone")
        check_clean(da, a, "overview (phone)")
        da.set_window_size(1280, 800)

        # The group page at the primary: its history chart and volumes.
        go(da, a, f"groups/{group}")
        wait(da, "the group's chart", lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart polyline.lag")
             and "Cycles in the last" in d.find_element(By.ID, "history-h").find_element(By.XPATH, "..").text)
        shot(da, "a-group")
        check_clean(da, a, "group")

        # An application-consistent PIT: the VM's quiesce hook runs around
        # the cut, and the PIT timeline says so in words.
        wait(da, "the quiesce box", lambda d: d.find_element(By.ID, "pit-quiesce")).click()
        synced = action_result(da, "Sync now")
        if not (synced.get("pit") or {}).get("app_consistent"):
            raise Failed(f"Sync now with the quiesce box ticked: {synced}")
        pit_id = synced["pit"]["id"]
        wait(da, "the app-consistent PIT in the timeline",
             lambda d: any(f"#{pit_id} " in li.text and "app-consistent" in li.text
                           for li in d.find_elements(By.CSS_SELECTOR, "ol.timeline li")))
        shot(da, "a-group-app-consistent")
        check_clean(da, a, "group (app-consistent PIT)")

        # Site b, the replica: test failover from the group page.
        login(db, b)
        wait(db, "the group at site b", lambda d: "replica" in group_row(d, group))
        shot(db, "b-overview")
        check_clean(db, b, "overview")
        go(db, b, f"groups/{group}")
        wait(db, "the group page", lambda d: d.find_element(By.CSS_SELECTOR, "main h1").text.startswith(f"Group {group}"))
        # What runs at the primary links to the same page of a's console.
        link = wait(db, "the link to a's console", lambda d: d.find_element(By.CSS_SELECTOR, "#elsewhere a"))
        href = link.get_attribute("href")
        if not (href.startswith(a["url"]) and href.endswith(f"#/groups/{group}")):
            raise Failed(f"the link to site a's group page is {href}, a is at {a['url']}")
        check_clean(db, b, "group")
        # The time picker resolves a time to the newest PIT at or before it.
        later = db.execute_script(
            "const d = new Date(Date.now() + 60000);"
            "d.setMinutes(d.getMinutes() - d.getTimezoneOffset());"
            "return d.toISOString().slice(0, 19);")
        db.execute_script(
            "const e = document.getElementById('pit-at'); e.value = arguments[0];"
            "e.dispatchEvent(new Event('change'));", later)
        wait(db, "the time picker's PIT", lambda d: d.find_element(By.ID, "pit-at-result").text.startswith("→ PIT #"))
        result = action_result(db, "Test failover")
        if result.get("mode") != "test" or not result.get("volumes"):
            raise Failed(f"test failover result: {result}")
        url = result["volumes"][0]["url"]
        size = subprocess.run(["nbdinfo", "--size", url], capture_output=True, text=True, timeout=60)
        if size.returncode != 0 or int(size.stdout.strip()) <= 0:
            raise Failed(f"the test clone {url} is not served: {size.stderr}")
        summary["test_clone"] = {"url": url, "size": int(size.stdout.strip())}
        shot(db, "b-group-test-failover")
        action_result(db, "Stop test")
        wait(db, "the drill's age on the group page",
             lambda d: "ago" in d.find_element(By.XPATH, "//dt[.='Last test drill']/following-sibling::dd[1]").text)
        check_clean(db, b, "group after stop-test")

        # The plan in test mode at the recovery site: it stops at its
        # prompt, the Continue button answers it, then cleanup.
        go(db, b, "plans")
        wait(db, "the plans page", lambda d: d.find_elements(By.CSS_SELECTOR, f"[data-plan='{plan}']"))
        check_clean(db, b, "plans")
        Select(db.find_element(By.ID, f"mode-{plan}")).select_by_value("test")
        run = plan_result(db, "Run", plan)
        if run.get("status") != "waiting":
            raise Failed(f"the plan's test run should wait at its prompt: {run}")
        wait(db, "the run's steps on the plan's card", lambda d: "waiting" in d.find_element(By.CSS_SELECTOR, f"[data-plan='{plan}'] table").text)
        shot(db, "b-plan-waiting")
        check_clean(db, b, "plans (run waiting)")
        run = plan_result(db, "Continue", plan)
        if run.get("status") != "succeeded":
            raise Failed(f"the continued test run: {run}")
        Select(db.find_element(By.ID, f"mode-{plan}")).select_by_value("cleanup")
        run = plan_result(db, "Run", plan)
        if run.get("status") not in ("succeeded",):
            raise Failed(f"the cleanup run: {run}")
        go(db, b, f"plans/{plan}")
        wait(db, "the plan's history", lambda d: len(d.find_elements(By.CSS_SELECTOR, "tbody tr")) >= 2)
        check_clean(db, b, "plan history")

        def open_report(d):
            d.find_element(By.XPATH, "//button[starts-with(normalize-space(), 'Report ')]").click()
            return True

        wait(db, "a report button", open_report)
        frame = wait(db, "the report inline", lambda d: d.find_element(By.CSS_SELECTOR, "iframe.report"))
        db.switch_to.frame(frame)
        wait(db, "the report's content", lambda d: plan in d.find_element(By.TAG_NAME, "body").text)
        db.switch_to.default_content()
        shot(db, "b-plan-history")
        check_clean(db, b, "plan history with a report")

        # Planned failover: prepare at the primary, run at the replica,
        # then reverse there.
        go(da, a, f"groups/{group}")
        wait(da, "the group page at a", lambda d: d.find_element(By.CSS_SELECTOR, "main h1").text.startswith(f"Group {group}"))
        action_result(da, "Prepare planned failover")
        go(db, b, f"groups/{group}")
        wait(db, "the group page at b", lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Planned failover']"))
        result = action_result(db, "Planned failover")
        if result.get("mode") != "planned":
            raise Failed(f"planned failover result: {result}")
        dry = action_result(db, "Reverse…")
        summary["reverse_dry_run"] = dry
        wait(db, "the reverse's confirmation", lambda d: "No split brain" in d.find_element(By.ID, "reverse").text)
        shot(db, "b-group-reverse-confirm")
        check_clean(db, b, "group (reverse confirmation)")
        reversed_ = action_result(db, "Confirm reverse")
        summary["reverse"] = {"pit": reversed_.get("pit")}
        go(db, b, "")
        wait(db, "site b as the primary", lambda d: "primary" in group_row(d, group))
        shot(db, "b-overview-after-reverse")

        # Every other page, live events included.
        for route, name in (("volumes", "volumes"), ("vms", "VMs"), ("partners", "partners"),
                            ("access", "access"), ("events", "events")):
            go(db, b, route)
            wait(db, f"the {name} page", lambda d: d.find_element(By.CSS_SELECTOR, "main h1").text != "")
            time.sleep(0.3)
            shot(db, f"b-{route}")
            check_clean(db, b, name)
        flt = db.find_element(By.ID, "event-filter")
        flt.send_keys("failover")
        wait(db, "filtered events", lambda d: all("failover" in r.text.lower() for r in d.find_elements(By.CSS_SELECTOR, "tbody tr")) and d.find_elements(By.CSS_SELECTOR, "tbody tr"))

        # Log out at both sites.
        for d, site in ((da, a), (db, b)):
            d.find_element(By.ID, "logout").click()
            wait(d, "the login form after logout", lambda x: x.find_elements(By.ID, "token"))
            check_clean(d, site, "logout")
            d.get(site["url"] + "/")
            wait(d, "the login form after a reload", lambda x: x.find_elements(By.ID, "token"))
    finally:
        for d in (da, db):
            d.quit()
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print(f"console test failed: {e}", file=sys.stderr)
        sys.exit(1)
