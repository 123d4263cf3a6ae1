"""Chapter 7's exercise: where does Gao's over-optimisation curve give back everything it gained? The break-even
distance d₀ > 0 with R(d₀) = 0, for both forms: past it, optimising the proxy did worse than not optimising."""

from __future__ import annotations

import math

import torch

from ..exercises import check_exercise
from ..goodhart import gao_bon, gao_rl

CASES = [(a, b, form) for form in ("bon", "rl") for a, b in ((1.0, 0.5), (0.3, 0.2), (2.0, 0.7), (0.8, 1.5), (1.2, 0.15))]


def _numerical_peak(alpha, beta, form):
    """Golden-section search for the maximum of the package's Gao curve (concave for β > 0) — no closed form."""
    curve = gao_bon if form == "bon" else gao_rl
    f = lambda d: float(curve(torch.tensor([d], dtype=torch.float64), alpha, beta)[0])  # noqa: E731
    lo, hi = 0.0, 1.0
    while f(2 * hi) > f(hi):  # bracket the maximum
        hi *= 2
    hi *= 2
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if f(a) < f(b):
            lo = a
        else:
            hi = b
    return (lo + hi) / 2


def _numerical_break_even(alpha, beta, form):
    """Bisection for the root of the package's Gao curve beyond its (numerically found) peak — no closed form."""
    curve = gao_bon if form == "bon" else gao_rl
    f = lambda d: float(curve(torch.tensor([d], dtype=torch.float64), alpha, beta)[0])  # noqa: E731
    lo = hi = _numerical_peak(alpha, beta, form)  # R > 0 there (α, β > 0)
    while f(hi) > 0:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def solution(alpha, beta, form):
    if form == "bon":  # R = d(α − βd) = 0 at d > 0
        return alpha / beta
    return math.exp(alpha / beta)  # R = d(α − β log d) = 0 at d > 0


def wrong(alpha, beta, form):
    # the peak, not the break-even point: d* = α/(2β) and e^(α/β − 1) — the curve is still above zero there
    return alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)


def check(candidate) -> str:
    """Compare the reader's break-even distance with a numerical root of the package's gao_bon / gao_rl."""
    return check_exercise(candidate, _numerical_break_even, CASES, name="gao_break_even", rtol=1e-6, atol=1e-9)
