"""Re-execute chapter notebooks in place and store their outputs (what `make notebooks` runs).

Each notebook's first code cell is rewritten to the generated Colab install cell, the notebook is run
top to bottom in a fresh kernel (widget state saved for the HTML book), and the file is replaced only if
every cell succeeded — a failure leaves the stored notebook untouched.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from alignlecture._book import COLAB_METADATA, install_cell  # noqa: E402

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def sync_install_cell(nb) -> None:
    """Make the first code cell the generated install cell, and ask Colab for a GPU runtime."""
    first = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first is None:
        raise SystemExit("notebook has no code cell; every chapter starts with the Colab install cell")
    first.source = install_cell()
    for key, value in COLAB_METADATA.items():
        nb.metadata[key] = {**nb.metadata.get(key, {}), **value} if isinstance(value, dict) else value


def sync(path: Path) -> None:
    """Rewrite only the install cell and the Colab metadata (outputs untouched: neither changes them)."""
    nb = nbformat.read(path, as_version=4)
    sync_install_cell(nb)
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent)
    os.close(fd)
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    sync_install_cell(nb)
    nb.metadata["kernelspec"] = KERNELSPEC
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
    )
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps would churn every commit
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent)
    os.close(fd)
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return time.perf_counter() - start


def main(paths: list[str]) -> None:
    if paths[:1] == ["--sync-only"]:
        if len(paths) == 1:
            raise SystemExit("usage: execute_notebooks.py --sync-only NOTEBOOK.ipynb ...")
        for p in paths[1:]:
            sync(Path(p))
        return
    if not paths:
        raise SystemExit("usage: execute_notebooks.py [--sync-only] NOTEBOOK.ipynb ...")
    for p in paths:
        seconds = execute(Path(p))
        print(f"executed {p} in {seconds:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
