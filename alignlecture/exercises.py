"""Exercise checkers: compare a reader's function with the reference on random inputs (allclose)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def check_function(
    candidate: Callable,
    reference: Callable,
    cases: Sequence[tuple],
    *,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    name: str = "your function",
) -> str:
    """Run both on every case; raise AssertionError showing the first mismatch, else return a summary."""
    if not cases:
        raise ValueError("cases is empty; give at least one input tuple")
    for i, args in enumerate(cases):
        want = torch.as_tensor(reference(*args), dtype=torch.float64)
        try:
            got = torch.as_tensor(candidate(*args), dtype=torch.float64)
        except Exception as exc:  # report the reader's error with the input that caused it
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc} on case {i}") from exc
        if got.shape != want.shape:
            raise AssertionError(f"{name} returned shape {tuple(got.shape)} on case {i}; expected {tuple(want.shape)}")
        if not torch.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
            err = (got - want).abs().max().item()
            raise AssertionError(f"{name} is off by up to {err:.3g} on case {i}: got {got.tolist()}, expected {want.tolist()}")
    return f"✓ {name} matches the reference on all {len(cases)} cases"


def random_cases(make: Callable[[torch.Generator], tuple], n: int = 20, seed: int = 0) -> list[tuple]:
    """n seeded input tuples from ``make(generator)``."""
    gen = torch.Generator().manual_seed(seed)
    return [make(gen) for _ in range(n)]


NOT_ATTEMPTED = "not attempted yet"


def check_exercise(
    candidate: Callable | None,
    reference: Callable,
    cases: Sequence[tuple],
    *,
    name: str = "your function",
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> str:
    """Grade a reader's exercise: "not attempted yet …" for a stub, "✓ …" when it matches, AssertionError else.

    A stub is ``None`` or a function whose body still raises ``NotImplementedError``; the page builds with it,
    and the message says what to do. Any other answer is compared with ``reference`` on every case.
    """
    if candidate is None:
        return f"{NOT_ATTEMPTED}: write {name} in the cell above and run this cell again"
    if not cases:
        raise ValueError("cases is empty; give at least one input tuple")
    try:
        candidate(*cases[0])
    except NotImplementedError:
        return f"{NOT_ATTEMPTED}: replace the `raise NotImplementedError` in {name} and run this cell again"
    except Exception:  # a real error: let check_function report it with its case
        pass
    return check_function(candidate, reference, cases, rtol=rtol, atol=atol, name=name)
