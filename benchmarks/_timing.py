"""Shared timing helper for the benchmark scripts (run them from the repository root: python benchmarks/X.py)."""

from __future__ import annotations

import argparse
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


def arguments(doc: str, *, repeats: int, threads: int | None = None) -> argparse.ArgumentParser:
    """A parser titled by the first line of ``doc``, with the options every timing takes: ``--repeats`` (best of
    how many runs) and, where ``threads`` is given, ``--threads`` (torch's thread count, set by ``parse``)."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed runs, best kept (default {repeats})")
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The command line's arguments; sets torch's thread count where the parser has ``--threads``."""
    args = parser.parse_args()
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    return args
