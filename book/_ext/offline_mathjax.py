"""Serve MathJax 3 from the built book itself, so every formula renders with no network.

The files come from the PyPI wheel ``django-static-mathjax`` (MathJax 3.2.2 as static files; no Django is
needed to install or use them). After the HTML build, the combined TeX+MathML→CHTML component and the parts
it loads on demand (fonts, TeX extensions, the menu and accessibility modules) are copied into
``_static/mathjax/``; ``_config.yml`` points ``mathjax_path`` at that copy. The book's MathJax configuration
(the KL macro and each chapter's macros) is unchanged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# What tex-mml-chtml.js loads: itself, its fonts, and what it fetches lazily (\require'd or autoloaded TeX
# packages, the context menu, the assistive MathML). The speech engine (sre/) is only fetched if a reader
# switches speech on in the menu; it is left out (3.9 MB).
PARTS = ("tex-mml-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions", "ui", "a11y")
TARGET = "mathjax"  # under _static/


def mathjax_es5() -> Path:
    """The es5/ folder of the installed django-static-mathjax wheel."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "MathJax is not installed: the book serves it offline from the wheel django-static-mathjax; "
            "run `make book` (it installs the book extras) or `pip install django-static-mathjax==3.2.2.1`"
        )
    es5 = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if not (es5 / PARTS[0]).is_file():
        raise RuntimeError(f"{es5 / PARTS[0]} is missing: reinstall django-static-mathjax==3.2.2.1")
    return es5


def copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    es5 = mathjax_es5()
    target = Path(app.outdir) / "_static" / TARGET
    for part in PARTS:
        src, dst = es5 / part, target / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def check_path(app, config) -> None:
    expected = f"{TARGET}/{PARTS[0]}"
    if config.mathjax_path != expected:
        raise RuntimeError(
            f"mathjax_path is {config.mathjax_path!r}: set `mathjax_path: {expected}` under sphinx.config in "
            "_config.yml so the pages load the MathJax copied next to them, not a CDN"
        )
    mathjax_es5()  # fail early, before the build, when the wheel is missing


def setup(app):
    app.connect("config-inited", check_path)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
