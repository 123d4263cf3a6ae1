"""Chapter 7's exercise: where does Gao's over-optimisation curve peak? d* = argmax_d R(d) for both forms."""

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


def solution(alpha, beta, form):
    if form == "bon":  # R = αd − βd²: R' = α − 2βd = 0
        return alpha / (2 * beta)
    return math.exp(alpha / beta - 1)  # R = αd − βd·log d: R' = α − β(log d + 1) = 0


def wrong(alpha, beta, form):
    if form == "bon":
        return alpha / (2 * beta)
    return math.exp(alpha / beta)  # differentiating d·log d as log d: the product rule's "+1" is lost


def check(candidate) -> str:
    """Compare the reader's peak with a numerical maximisation of the package's gao_bon / gao_rl."""
    return check_exercise(candidate, _numerical_peak, CASES, name="gao_peak", rtol=1e-6, atol=1e-9)
