"""Chromium for the tests of pages: found on PATH (skipped without it, failed under REQUIRE_CHROMIUM=1) and run
headless over a file:// URL."""

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    message = "Chromium is not installed: apt-get install -y chromium (Debian) to run this test"
    if os.environ.get("REQUIRE_CHROMIUM") == "1":
        pytest.fail(message + " (REQUIRE_CHROMIUM=1)")
    pytest.skip(message)


def browse(browser: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,3000"]  # fmt: skip
        return subprocess.run([browser, *flags, *args, url], capture_output=True, text=True, timeout=120)


# Wrapped around a probe: errors the page raises or logs, caught from the start, then the probe's result.
_CATCH = """<script>window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
const __error = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); __error(...a); };
</script>"""
_REPORT = """<script>window.addEventListener("load", async () => {
  let result; try { result = await (async () => { %s })(); } catch (e) { window.__errors.push("probe: " + e); }
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify({result, errors: window.__errors}); document.body.appendChild(out);
});</script>"""


def probe(browser: str, page: Path, body: str) -> dict:
    """Load a copy of `page` beside it (its relative links still work) with `body`, the text of an async JS
    function, run after load; return {"result": what it returned, "errors": what the page raised or logged}."""
    text = page.read_text(encoding="utf-8")
    copy = page.with_name(f".probe-{page.name}")
    copy.write_text(text.replace("<head>", "<head>" + _CATCH, 1).replace("</body>", _REPORT % body + "</body>"))
    try:
        dom = browse(browser, copy.as_uri(), "--dump-dom", "--virtual-time-budget=10000")
    finally:
        copy.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))
