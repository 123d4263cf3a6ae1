"""Shared timing helper for the benchmark scripts (run them from the repository root: python benchmarks/X.py)."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device | None) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int = 5, device: torch.device | None = None) -> float:
    """Fastest wall time of ``repeats`` calls of ``fn`` (seconds), synchronising ``device`` around each."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)
