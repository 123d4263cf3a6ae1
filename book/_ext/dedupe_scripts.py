"""Drop repeated inline scripts from every page.

Jupyter Book 1 registers sphinx-thebe's and sphinx-togglebutton's inline set-up scripts twice; the second
``const THEBE_JS_URL = …`` is a SyntaxError in the browser console on every page (found by `make check-html`).
Identical script entries (same file, same inline body, same attributes) are kept once, in first position.
"""

from __future__ import annotations


def _key(script) -> tuple:
    attrs = getattr(script, "attributes", {}) or {}
    return (str(script), tuple(sorted((k, str(v)) for k, v in attrs.items())))


def dedupe(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
