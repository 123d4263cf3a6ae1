"""Cold vs warm load of the offline SmolLM2: GGUF dequantisation against the cached safetensors copy.

Each load runs in a fresh process (imports excluded from the timing) against a temporary cache, so the
cold load really converts and the warm load really reads the cache. Goal (issue 2): warm load ≤ 3 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = r"""
import time, torch
from alignlecture.models import load_policy
start = time.perf_counter()
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.perf_counter()
policy = load_policy("smollm2-135m-instruct", device="cpu")
print(f"{imported - start:.3f} {time.perf_counter() - imported:.3f}")
"""


def timed_load(cache: str) -> tuple[float, float]:
    """(transformers import seconds, load_policy seconds) in a fresh process."""
    env = dict(os.environ, ALIGNLECTURE_CACHE=cache, ALIGNLECTURE_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    imp, load = out.stdout.strip().splitlines()[-1].split()
    return float(imp), float(load)


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        imp, cold = timed_load(cache)
        warm = min(timed_load(cache)[1] for _ in range(3))
    print(f"transformers import (not in the loads)   : {imp:6.2f} s")
    print(f"cold load (GGUF dequantise + write cache): {cold:6.2f} s")
    print(f"warm load (cached safetensors, best of 3): {warm:6.2f} s")
    print(f"warm / cold                              : {warm / cold:6.3f}  ({cold / warm:.0f}x faster)")
    print(f"goal warm ≤ 3 s                          : {'met' if warm <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
