"""Chapter 0's exercise: how many responses has a toy world with V tokens (one of them <eos>) and length ≤ T?"""

from __future__ import annotations

from ..exercises import check_exercise
from ..toy import ToyWorld

CASES = [(V, T) for V in range(2, 7) for T in range(1, 5)]


def solution(V, T):
    # k < T non-eos tokens then <eos>, or exactly T non-eos tokens: a geometric sum
    return sum((V - 1) ** k for k in range(T)) + (V - 1) ** T


def wrong(V, T):
    # every one of the T slots holds any of the V tokens: counts "a <eos> b" and repeated <eos> as responses
    return V**T


def check(candidate) -> str:
    """Compare ``num_responses(V, T)`` with the toy world's own enumeration of every response."""
    return check_exercise(candidate, lambda V, T: len(ToyWorld(V, T).responses), CASES, name="num_responses")
