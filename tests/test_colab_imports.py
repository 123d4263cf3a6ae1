"""A chapter opened on Colab imports only what `pip install alignlecture` (no extras) plus Colab's own image
provides — the first thing a reader who clicks "Open in Colab" meets.

The allowed set is derived from pyproject.toml's base dependencies (so adding a dependency there is the one way
to let a chapter import something new) plus the packages Colab preinstalls that the chapters use.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import nbformat
import pytest

tomllib = pytest.importorskip("tomllib", reason="Python ≥ 3.11 reads pyproject.toml with tomllib")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Distribution name → the top-level modules it provides (where the two differ, or it brings more than one).
IMPORT_NAMES = {
    "huggingface-hub": {"huggingface_hub"},
    "scikit-learn": {"sklearn"},
    "alt-profanity-check": {"profanity_check"},
    "vadersentiment": {"vaderSentiment"},
    "ipywidgets": {"ipywidgets", "IPython"},  # ipywidgets requires ipython
    "transformers": {"transformers", "yaml"},  # transformers requires pyyaml
}
# Preinstalled on Colab's runtime image (its package list, read 2026-12): the ones the chapters use.
COLAB_PREINSTALLED = {"numpy", "pandas", "matplotlib", "IPython", "ipykernel", "ipywidgets", "scipy", "sympy",
                      "torch", "transformers", "sklearn", "yaml", "tqdm", "PIL", "google"}
# Only the book's build has these; a chapter must not import them (alignlecture._book.glue stands in for glue).
BOOK_ONLY = {"myst_nb", "jupyter_book", "sphinx", "nbval", "pytest", "trl", "selenium", "datasets", "nbformat"}


def base_modules() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower() for dep in project["dependencies"]}
    return {m for n in names for m in IMPORT_NAMES.get(n, {n.replace("-", "_")})}


ALLOWED = base_modules() | COLAB_PREINSTALLED | set(sys.stdlib_module_names) | {"alignlecture"}


def imported_modules(source: str) -> set[str]:
    """Top-level modules a code cell imports (IPython magics and shell lines are skipped)."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    found = set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_base_modules_come_from_pyproject():
    assert {"torch", "transformers", "vaderSentiment", "profanity_check", "peft"} <= base_modules()
    assert not BOOK_ONLY & ALLOWED


def test_the_checker_sees_a_book_only_import():
    assert imported_modules("import torch\nfrom myst_nb import glue\n%matplotlib inline") == {"torch", "myst_nb"}
    assert "myst_nb" not in ALLOWED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_only_what_a_colab_install_provides(path):
    nb = nbformat.read(path, as_version=4)
    used = set().union(*(imported_modules(c.source) for c in nb.cells if c.cell_type == "code"))
    missing = sorted(used - ALLOWED)
    assert missing == [], (
        f"{path.name} imports {missing}, which neither `pip install alignlecture` nor Colab provides: add it to "
        "pyproject's base dependencies, or use the package's stand-in (alignlecture._book.glue for myst_nb's glue)"
    )


def test_package_imports_only_base_dependencies():
    """The package itself, imported on Colab, needs nothing beyond its base dependencies."""
    used = {}
    for path in (ROOT / "alignlecture").rglob("*.py"):
        tree = ast.parse(path.read_text())
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)  # the try body only, not the handler
                   and any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                           for h in t.handlers) for stmt in t.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module.split(".")[0]]
            else:
                continue
            for name in names:
                used.setdefault(name, path.relative_to(ROOT).as_posix())
    allowed = base_modules() | set(sys.stdlib_module_names) | {"alignlecture", "IPython", "yaml"}
    assert {m: p for m, p in used.items() if m not in allowed} == {}
