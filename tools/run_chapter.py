"""Execute one chapter notebook's code cells in this process — no Jupyter kernel — and report what it cost.

    python tools/run_chapter.py notebooks/03_logit_mixing.ipynb [--json OUT.json]

Used by `make gpu-check` on GPU machines, which have torch but no Jupyter: each chapter runs in a fresh process
(so its peak memory is its own), cells in order in one namespace as a kernel would, figures closed after each
cell. Prints one JSON line: chapter, seconds, peak GPU memory (torch.cuda.max_memory_allocated, GB), peak host
RSS (GB), and the failing cell with its error if one raised (exit status 1).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")


def code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def run(path: Path) -> dict:
    import torch

    path = path.resolve()
    sys.path.insert(0, str(path.parent.parent))  # the repository root: alignlecture importable without install
    os.chdir(path.parent)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    from IPython.display import display

    result = {"chapter": path.stem, "error": None}
    namespace = {"__name__": "__main__", "display": display}  # a kernel's builtin, used bare by chapters
    start = time.perf_counter()
    for i, source in enumerate(code_cells(path)):
        try:
            exec(compile(source, f"{path.name}, code cell {i}", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - reported, then the chapter stops as a kernel would
            result["error"] = f"code cell {i}: {type(exc).__name__}: {exc}"[:500]
            traceback.print_exc()
            break
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None
    result["host_peak_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)  # KB on Linux
    return result


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    out = Path(argv[argv.index("--json") + 1]).resolve() if "--json" in argv else None
    result = run(Path(argv[0]))
    line = json.dumps(result)
    print(line, flush=True)
    if out is not None:
        out.write_text(line + "\n")
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
