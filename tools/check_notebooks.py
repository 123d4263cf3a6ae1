"""Static checks on the stored notebooks before a build or nbval run.

Every notebook must: start with the generated Colab install cell, ask Colab for a GPU runtime in its metadata, have every code cell executed, hold no
error output, give every figure alt text, and state no measured number in its prose. (That the stored outputs are what the code produces
now is nbval's job.)

A measured number is a decimal (0.12, 1e-4), a percentage (87 %) or a multiple (3×, "250 times") written in a
markdown cell outside math, code and glue roles: such a number must be glued from the cell that computes it
(``{glue:text}`name` ``). Equation constants belong in math (``$\\ln 2$``). A literal that must stay in the
prose (a setting quoted from a paper, say) is listed in the notebook's metadata
``{"alignlecture": {"allowed_numbers": ["0.5"]}}``.

Alt text: a code cell that outputs an image/png must carry, in its cell metadata,
``{"mystnb": {"image": {"alt": "..."}}}`` — one line saying what the figure shows and its message — which
myst-nb writes as the ``alt`` of every image the cell outputs (see :data:`ALT_HOW`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from alignlecture._book import colab_metadata_problems, install_cell  # noqa: E402


# What is not prose: fenced blocks, math, code spans, roles ({glue:text}`x`, {cite}`k`), link targets,
# directive options, HTML comments and tags.
_NOT_PROSE = [
    re.compile(r"^(```|~~~)[\s\S]*?^\1", re.M),
    re.compile(r"\$\$[\s\S]*?\$\$"),
    re.compile(r"\$[^$\n]+\$"),
    re.compile(r"\{[\w:-]+\}`[^`]*`"),
    re.compile(r"`[^`\n]*`"),
    re.compile(r"\]\([^)]*\)"),
    re.compile(r"^:[\w-]+:.*$", re.M),
    re.compile(r"<!--[\s\S]*?-->"),
    re.compile(r"<[^>\n]+>"),
]
_MEASURED = re.compile(
    r"(?<![\w.])(?:\d+\.\d+(?:e[-+]?\d+)?|\d+e[-+]?\d+|\d+(?:\.\d+)?\s?%|\d+(?:\.\d+)?\s?(?:×|x\b|times\b))",
    re.I,
)


def measured_numbers(markdown: str, allowed=()) -> list[str]:
    """The measured-looking numbers in a markdown cell's prose (see the module docstring), minus ``allowed``."""
    text = markdown
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    found = [m.group(0) for m in _MEASURED.finditer(text)]
    return [f for f in found if f.strip() not in set(allowed) and re.match(r"[\d.]+", f).group(0) not in set(allowed)]


ALT_HOW = (
    "add one line saying what the figure shows and its message as the cell's metadata "
    '{"mystnb": {"image": {"alt": "..."}}} (with nbformat: '
    'cell.metadata.setdefault("mystnb", {}).setdefault("image", {})["alt"] = "..."; no re-run needed)'
)


def image_alt(cell) -> str:
    """The alt text myst-nb gives the images a code cell outputs ('' when there is none)."""
    image = cell.metadata.get("mystnb", {}).get("image", {})
    alt = image.get("alt", "") if isinstance(image, dict) else ""
    return alt.strip() if isinstance(alt, str) else ""


def problems(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    found = []
    if not code or code[0].source != install_cell():
        found.append("first code cell is not the generated Colab install cell (run `make sync-notebooks`)")
    found += [f"{p} (run `make sync-notebooks`)" for p in colab_metadata_problems(nb.metadata)]
    allowed = nb.metadata.get("alignlecture", {}).get("allowed_numbers", [])
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "markdown"):
        numbers = measured_numbers(cell.source, allowed)
        if numbers:
            found.append(
                f"markdown cell {i} states {', '.join(map(repr, numbers))} in its prose: glue the number from the cell "
                "that computes it ({glue:text}`name`), put a constant in math, or list it in the notebook metadata "
                "alignlecture.allowed_numbers"
            )
    for i, cell in enumerate(code):
        if cell.execution_count is None and cell.source.strip():
            found.append(f"code cell {i} was never executed (run `make notebooks`)")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"code cell {i} stores an error: {out.get('ename')}: {out.get('evalue')}")
        if any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])) and not image_alt(cell):
            found.append(f"code cell {i} outputs a figure (image/png) with no alt text: {ALT_HOW}")
    return found


def main(paths: list[str]) -> int:
    if not paths:
        print("no notebooks given", file=sys.stderr)
        return 2
    bad = 0
    for p in paths:
        for problem in problems(Path(p)):
            print(f"{p}: {problem}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
