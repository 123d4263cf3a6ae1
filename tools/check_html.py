"""Open every page of the built book in headless Chromium with no network and check what a reader sees.

Fails on: a MathJax error (``mjx-merror``), TeX delimiters left unrendered in the text (``\\(`` or ``\\[``), an
image that did not load, an internal link whose file or anchor does not exist, a console error, a display equation
wider than the text column at the desktop viewport (1300 px: ``_static/alignlecture.css`` makes such an equation
scroll sideways, so its content is wider than its box; break it over ``\\begin{aligned}`` lines). Saves a
full-page screenshot per page under ``_build/screenshots/`` for review (light theme; ``--dark`` adds dark ones).

Usage: ``python tools/check_html.py [_build/html]`` (``make check-html`` builds the book first). Needs Debian's
``chromium`` and ``chromium-driver`` packages; Selenium comes with the book extras.

No network: every host name resolves to nothing (``--host-resolver-rules``) and no proxy is reachable, so a page
that needs the internet to show its math fails here exactly as it would for a reader offline.

Known CDN assets: pages holding saved widget state load require.js and @jupyter-widgets/html-manager from a
CDN (myst-nb's defaults; no PyPI package ships them). Offline those two scripts fail to load and the widget
area stays empty — which is why every widget in the book has a static fallback (a table or a plot) printed
beside it. Their load failures are the only console errors this check tolerates (``ALLOWED_OFFLINE``).
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = (
    "headless Chromium is needed: install Debian's packages with\n"
    "  sudo apt-get update && sudo apt-get install -y chromium chromium-driver\n"
    "then run `make check-html` again"
)
ALLOWED_OFFLINE = ("cdnjs.cloudflare.com/ajax/libs/require.js", "@jupyter-widgets/html-manager")

# Runs in the page after load: waits for MathJax, then reports what a reader would see as broken.
PAGE_REPORT = r"""
const done = arguments[arguments.length - 1];
const WIDE_TOLERANCE_PX = 2;
const finish = () => {
  const errors = [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent);
  const main = document.querySelector('main') || document.body;
  const clone = main.cloneNode(true);
  clone.querySelectorAll('script, style, pre, code, textarea, mjx-container, .highlight').forEach(e => e.remove());
  const text = clone.textContent;
  const raw = [];
  for (const d of ['\\(', '\\[']) { let i = text.indexOf(d); if (i >= 0) raw.push(text.slice(Math.max(0, i - 40), i + 60)); }
  const images = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  const math = document.querySelectorAll('mjx-container').length;
  // A display equation wider than its box: _static/alignlecture.css lets it scroll (overflow-x: auto), so its
  // content width (scrollWidth) exceeds the width it is shown in (clientWidth). MathJax keeps each formula's TeX.
  const wide = [];
  const items = (typeof MathJax !== 'undefined' && MathJax.startup && MathJax.startup.document)
    ? [...MathJax.startup.document.math] : [];
  for (const item of items) {
    const box = item.typesetRoot;
    if (!item.display || !box || !box.isConnected || box.clientWidth === 0) continue;
    if (box.scrollWidth > box.clientWidth + WIDE_TOLERANCE_PX) {
      const cell = box.closest('.cell');
      const cells = [...document.querySelectorAll('.cell')];
      wide.push({tex: item.math.replace(/\s+/g, ' ').trim().slice(0, 90), width: box.scrollWidth, box: box.clientWidth,
                 output: !!box.closest('.cell_output, .output'), cell: cell ? cells.indexOf(cell) : -1});
    }
  }
  done({errors, raw, images, links, ids, math, wide, height: document.documentElement.scrollHeight,
        mathjax: typeof MathJax !== 'undefined' && !!MathJax.startup});
};
if (typeof MathJax !== 'undefined' && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(() => setTimeout(finish, 50), () => finish());
} else { setTimeout(finish, 500); }
"""


def driver(width: int = 1300):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--allow-file-access-from-files", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-quic", f"--window-size={width},1000",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://0.0.0.0:9",
    ):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_script_timeout(60)
    return drv


def internal_link_problems(page: Path, root: Path, links: list[str], ids_by_page: dict[Path, set[str]]) -> list[str]:
    found = []
    for href in links:
        url = urlparse(href)
        if url.scheme in {"http", "https", "mailto", "javascript"} or href.startswith("//"):
            continue
        target = page if not url.path else (page.parent / unquote(url.path)).resolve()
        if url.path and not target.exists():
            found.append(f"link to {href!r}: {target.relative_to(root) if target.is_relative_to(root) else target} does not exist")
            continue
        if url.fragment and target.suffix == ".html" and target in ids_by_page:
            if unquote(url.fragment) not in ids_by_page[target]:
                found.append(f"link to {href!r}: no element with id {url.fragment!r} on that page")
    return found


def wide_problem(wide: dict) -> str:
    """One display equation wider than the text column at the desktop viewport, and where to fix it."""
    where = "a code cell's output (re-execute it with a shorter result)" if wide["output"] else (
        "the text: break it over \\begin{aligned} lines")
    cell = f" (code cell {wide['cell']} on the page)" if wide["cell"] >= 0 else ""
    return f"equation wider than the column, {wide['width']} px in {wide['box']} px, in {where}{cell}: {wide['tex']}"


def screenshot(drv, path: Path, height: int) -> None:
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 1300, "height": min(max(height, 600), 16000), "deviceScaleFactor": 1, "mobile": False})
    data = drv.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
    path.write_bytes(base64.b64decode(data))
    drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("html", nargs="?", default="_build/html")
    parser.add_argument("--screenshots", default="_build/screenshots")
    parser.add_argument("--dark", action="store_true", help="also save dark-theme screenshots")
    args = parser.parse_args(argv)

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    root = Path(args.html).resolve()
    pages = sorted(p for p in root.rglob("*.html") if "_static" not in p.parts and p.name not in {"genindex.html", "search.html"})
    if not pages:
        print(f"no pages under {root}: run `make book` first", file=sys.stderr)
        return 2
    shots = Path(args.screenshots)
    if shots.exists():
        shutil.rmtree(shots)
    shots.mkdir(parents=True)

    start = time.perf_counter()
    drv = driver()
    reports, problems = {}, []
    try:
        for page in pages:
            drv.get(page.as_uri())
            landed = Path(unquote(urlparse(drv.current_url).path))
            if landed != page:  # a redirect page (index.html → the intro): its target is checked on its own
                if not landed.is_file():
                    problems.append(f"{page.relative_to(root)}: redirects to {landed}, which does not exist")
                drv.get_log("browser")
                continue
            rep = drv.execute_async_script(PAGE_REPORT)
            name = str(page.relative_to(root)).replace("/", "__").removesuffix(".html")
            screenshot(drv, shots / f"{name}.png", rep["height"])
            if args.dark:
                drv.execute_script("document.documentElement.dataset.theme = 'dark'; document.documentElement.dataset.mode = 'dark';")
                screenshot(drv, shots / f"{name}.dark.png", rep["height"])
            logs = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
            rep["console"] = [e["message"] for e in logs if not any(a in e["message"] for a in ALLOWED_OFFLINE)]
            reports[page] = rep
    finally:
        drv.quit()
    ids_by_page = {p: set(r["ids"]) for p, r in reports.items()}
    math_total = 0
    for page, rep in reports.items():
        rel = page.relative_to(root)
        math_total += rep["math"]
        mine = [f"MathJax error: {e}" for e in rep["errors"]]
        mine += [f"unrendered TeX: …{r}…" for r in rep["raw"]]
        mine += [f"image did not load: {src}" for src in rep["images"]]
        mine += [f"console error: {m}" for m in rep["console"]]
        mine += [wide_problem(w) for w in rep["wide"]]
        mine += internal_link_problems(page, root, rep["links"], ids_by_page)
        if rep["math"] and not rep["mathjax"]:
            mine.append("formulas present but MathJax did not start")
        problems += [f"{rel}: {m}" for m in mine]
    for p in problems:
        print(p, file=sys.stderr)
    print(f"check-html: {len(pages)} pages, {math_total} formulas rendered, {len(problems)} problems, "
          f"{time.perf_counter() - start:.0f} s; screenshots in {shots}/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
