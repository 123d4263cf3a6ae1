"""Each inline ``<script>`` once per page: Sphinx 8.2's fix of its double registration, applied to Sphinx 7.

The cause. ``app.add_js_file(None, body=...)`` (an inline script) records the script twice: in the extension
registry as ``None`` and, once the HTML builder exists, in the builder's list — also as ``None``. Before writing,
the builder adds every registry entry again as ``filename or ''`` (to catch assets added after its ``init``);
``''`` is not ``None``, so its duplicate check misses and every inline script added after the builder started is
written twice. Jupyter Book 1's extensions do exactly that: sphinx-togglebutton's ``togglebuttonSelector``
(``builder-inited``) and sphinx-thebe's ``const THEBE_JS_URL = …`` (``env-before-read-docs``); the second
``const`` is a SyntaxError in the browser console on every page (found by `make check-html`).

Sphinx fixed it in 8.2 (sphinx-doc/sphinx#13402: the builder gets ``''`` for ``None``), but Jupyter Book 1
requires Sphinx 7 (``sphinx~=7.0``). This extension makes that same one-line change: from ``builder-inited`` on
(before any other extension's handler of that event), the HTML builder's ``add_js_file`` receives ``''`` where
it was given ``None``, so the later re-add finds the script already there. Nothing is rewritten after the build.
With Sphinx ≥ 8.2 it changes nothing; drop it when the book moves to a Jupyter Book on such a Sphinx.
"""

from __future__ import annotations

FIRST = 0  # event priority: before every extension that adds an inline script at builder-inited (default 500)


def inline_scripts_as_empty_filenames(app) -> None:
    """Wrap the HTML builder's ``add_js_file`` so an inline script (filename None) is recorded as ``''``."""
    builder = app.builder
    add = getattr(builder, "add_js_file", None)
    if add is None or getattr(add, "inline_as_empty", False):
        return

    def add_js_file(filename, **kwargs):
        add(filename or "", **kwargs)

    add_js_file.inline_as_empty = True
    builder.add_js_file = add_js_file


def setup(app):
    app.connect("builder-inited", inline_scripts_as_empty_filenames, priority=FIRST)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
