"""`make colab-check`: every chapter, run the way a Colab reader runs it, on a CPU (the venv comes from PyPI;
the notebooks then run with no network).

1. A fresh virtualenv (.colab-check/venv) holding only what the notebooks' install cell installs — the package
   with no extras — plus the part of Colab's preinstalled image the chapters rely on (COLAB_IMAGE); torch as
   TORCH_SPEC (the CPU build on the course's machines, as Colab brings its own).
2. The gpu profile (`ALIGNLECTURE_PROFILE=gpu`, SmolLM2-1.7B-Instruct and the larger sample counts), with every
   model replaced by a seeded random-init stand-in of SmolLM2's family (6 blocks, 64 wide, its real tokenizer:
   `tools/standin.py tiny`), an empty cache and no network.
3. Every notebook executed top to bottom in that venv's kernel (the stored notebooks are not modified).

It fails if any cell raises. A chapter that asserts an outcome only the real model gives (rather than an identity)
fails here, which is the point: on Colab the reader may choose any model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".colab-check"
# What the chapters use from Colab's image beyond the package's own dependencies (tests/test_colab_imports.py
# keeps the notebooks to this set); nbclient and nbformat only run the notebooks, they are not imported by them.
COLAB_IMAGE = ["pandas", "ipykernel", "nbclient", "nbformat"]
OFFLINE = {"ALIGNLECTURE_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}


def build_venv(torch_spec: str, reuse: bool) -> Path:
    """The Colab stand-in venv (from PyPI); with ``reuse``, an existing one keeps its dependencies. Either way the
    package is reinstalled from this working tree, so the check never runs an old copy."""
    venv = WORK / "venv"
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    if not (reuse and py.is_file()):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *torch_spec.split()], check=True)
        subprocess.run([*pip, str(ROOT)], check=True)  # what the install cell installs: no extras
        subprocess.run([*pip, *COLAB_IMAGE], check=True)
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(ROOT)], check=True)
    return py


# First cell of every run: the kernel must be the stand-in venv's, without the book toolchain (a user kernelspec
# pointing elsewhere would make every import succeed and the check prove nothing).
KERNEL_CHECK = """import sys
assert sys.prefix == {prefix!r}, f"the kernel runs {{sys.prefix}}, not the Colab stand-in venv"
try:
    import myst_nb
except ImportError:
    pass
else:
    raise AssertionError("myst_nb is importable: this is not a Colab-like environment")"""


def execute(paths: list[Path], timeout: int) -> int:
    """Run inside the Colab venv: execute each notebook in a fresh kernel; report time and the first error."""
    import nbformat
    from nbclient import NotebookClient

    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK.format(prefix=sys.prefix)))
        start = time.perf_counter()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            status = "passed"
        except Exception as exc:  # noqa: BLE001 - a failed cell, a timeout or a dead kernel: report, go on
            failed += 1
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            status = f"FAILED ({type(exc).__name__}): " + lines[-1][:300]
        print(f"colab-check {path.name}: {status} ({time.perf_counter() - start:.0f} s)", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--torch", default=os.environ.get("TORCH_SPEC", "torch==2.13.0"))
    parser.add_argument("--reuse-venv", action="store_true",
                        help="keep .colab-check/venv's dependencies if it exists (the package is always reinstalled)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--execute", action="store_true", help=argparse.SUPPRESS)  # the step inside the venv
    args = parser.parse_args(argv)
    standin, cache = WORK / "standin", WORK / "cache"
    if args.execute:
        return 1 if execute([p.resolve() for p in args.notebooks], args.timeout) else 0

    start = time.perf_counter()
    py = build_venv(args.torch, args.reuse_venv)
    shutil.rmtree(standin, ignore_errors=True)
    subprocess.run([sys.executable, str(ROOT / "tools" / "standin.py"), "tiny", str(standin)], check=True,
                   env=dict(os.environ, **OFFLINE))
    shutil.rmtree(cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIGNLECTURE_", "VIRTUAL_ENV"))}
    env.update(OFFLINE, ALIGNLECTURE_PROFILE="gpu", ALIGNLECTURE_STANDIN=str(standin), ALIGNLECTURE_CACHE=str(cache),
               PATH=f"{py.parent}{os.pathsep}{env.get('PATH', '')}")
    code = subprocess.call([str(py), __file__, "--execute", "--timeout", str(args.timeout),
                            *(str(p.resolve()) for p in args.notebooks)], env=env, cwd=WORK)
    print(f"colab-check: {'passed' if code == 0 else 'FAILED'} in {(time.perf_counter() - start) / 60:.1f} min")
    return code


if __name__ == "__main__":
    sys.exit(main())
