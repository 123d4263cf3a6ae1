"""Static checks on the stored notebooks before a build or nbval run.

Every notebook must: start with the generated Colab install cell, have every code cell executed, hold no
error output. (That the stored outputs are what the code produces now is nbval's job.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from alignlecture._book import install_cell  # noqa: E402


def problems(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    found = []
    if not code or code[0].source != install_cell():
        found.append("first code cell is not the generated Colab install cell (run `make notebooks`)")
    for i, cell in enumerate(code):
        if cell.execution_count is None and cell.source.strip():
            found.append(f"code cell {i} was never executed (run `make notebooks`)")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"code cell {i} stores an error: {out.get('ename')}: {out.get('evalue')}")
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
