"""Worked solutions to the chapters' exercises, one module per chapter (``ch00``, ``ch04``, …).

Each module defines ``solution`` (the worked answer the book shows in a collapsed dropdown), ``wrong`` (a
plausible mistake) and ``check(candidate) -> str``, which the chapter's exercise cell calls on the reader's
function. ``tests/test_exercises.py`` runs every ``check`` on its solution (must pass), on its wrong answer
(must raise) and on a stub (must report "not attempted yet").
"""

from __future__ import annotations

import importlib
import pkgutil


def modules():
    """Every chapter's solutions module, imported, in chapter order."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("ch"))
    return [importlib.import_module(f"{__name__}.{n}") for n in names]
