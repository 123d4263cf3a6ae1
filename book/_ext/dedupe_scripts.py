"""Drop repeated inline scripts from every built page.

Jupyter Book 1 registers sphinx-thebe's and sphinx-togglebutton's inline set-up scripts twice (with different
load priorities); the second ``const THEBE_JS_URL = …`` is a SyntaxError in the browser console on every page
(found by `make check-html`). After the HTML build, an inline ``<script>…</script>`` line that repeats an
earlier one on the same page, character for character, is removed; nothing else is touched.
"""

from __future__ import annotations

import re
from pathlib import Path

INLINE = re.compile(r"^\s*<script>.*</script>\s*$")


def dedupe_page(html: str) -> str:
    seen, kept = set(), []
    for line in html.splitlines(keepends=True):
        if INLINE.match(line):
            if line.strip() in seen:
                continue
            seen.add(line.strip())
        kept.append(line)
    return "".join(kept)


def dedupe(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        fixed = dedupe_page(text)
        if fixed != text:
            page.write_text(fixed, encoding="utf-8")


def setup(app):
    app.connect("build-finished", dedupe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
