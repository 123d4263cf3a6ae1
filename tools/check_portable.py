"""`make check-portable`: re-create every stored output the way a reader's new machine would, then compare.

A new machine has an empty course cache: it converts the model's GGUF, trains every zoo policy and draws every
sample pool itself, and it may run torch with a different number of threads (so float reductions sum in a
different order). This script does exactly that — a fresh cache directory, ``--threads`` torch threads (default
1; `make notebooks` stores outputs with every core) — and runs `make nbval` (strict ``pytest --nbval``) on them. A
stored output that only the machine that wrote it can re-create fails here, before it fails for a reader.

Run it after changing a chapter, the zoo or the trainer, before the change is merged. It takes as long as a
cold `make test`'s notebook half (about 25 minutes on the course's 2-core machine).
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


def unsafe(cache: Path) -> bool:
    """Whether emptying ``cache`` would delete the course cache, the repository, or a directory holding either."""
    sys.path.insert(0, str(ROOT))
    from alignlecture.cache import cache_dir

    env = os.environ.get("ALIGNLECTURE_CACHE")
    own = [cache_dir().resolve(), ROOT, Path.home()] + ([Path(env).expanduser().resolve()] if env else [])
    return any(cache == p or cache in p.parents for p in own)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", help="notebooks to check")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--cache", default=str(ROOT / ".portable-cache"),
                        help="cache directory to empty and use (default .portable-cache)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be a positive number of threads; got {args.threads}")
    cache = Path(args.cache).resolve()
    if unsafe(cache):
        parser.error(f"--cache {cache} is your course cache, or holds it or this repository; name a scratch "
                     "directory of its own (it is emptied first)")
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    threads = str(args.threads)
    env = dict(os.environ, ALIGNLECTURE_CACHE=str(cache), OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    print(f"check-portable: fresh cache {cache}, {threads} torch thread(s), {len(args.notebooks)} notebooks",
          flush=True)
    start = time.perf_counter()
    # the Makefile's own nbval recipe (the one `make test` runs), in this environment
    code = subprocess.call([os.environ.get("MAKE", "make"), "--no-print-directory", "nbval",
                            f"NOTEBOOKS={' '.join(args.notebooks)}"], env=env, cwd=ROOT)
    minutes = (time.perf_counter() - start) / 60
    print(f"check-portable: {'passed' if code == 0 else 'FAILED'} in {minutes:.1f} min "
          f"(fresh cache, {threads} thread(s))", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
