"""Chapter 4's exercise: the lecture's case of each pair from the gradients of log π(y_w|x) and log π(y_l|x)."""

from __future__ import annotations

import torch

from ..entanglement import first_order
from ..exercises import check_exercise, random_cases


def _gradients(gen: torch.Generator) -> tuple:
    # a shared direction with random weights on both sides, plus noise: all three cases occur
    n, d = 64, int(torch.randint(2, 9, (), generator=gen))
    shared = torch.randn(n, 1, generator=gen, dtype=torch.float64) * torch.randn(1, d, generator=gen, dtype=torch.float64)
    g_w = 3 * torch.rand(n, 1, generator=gen, dtype=torch.float64) * shared + torch.randn(n, d, generator=gen, dtype=torch.float64)
    g_l = 3 * torch.rand(n, 1, generator=gen, dtype=torch.float64) * shared + torch.randn(n, d, generator=gen, dtype=torch.float64)
    g_l[0] = 2 * g_w[0]  # exact case 2 and case 3 pairs
    g_w[1] = 2 * g_l[1]
    return g_w, g_l


CASES = random_cases(_gradients, n=10, seed=4)


def _reference(g_w, g_l):
    return first_order(g_w, g_l).case


def solution(g_w, g_l):
    # first-order changes per unit step: Δw = ‖∇w‖² − ⟨∇w,∇l⟩, Δl = ⟨∇w,∇l⟩ − ‖∇l‖²; Δw ≥ Δl always
    inner = (g_w * g_l).sum(-1)
    delta_w, delta_l = (g_w * g_w).sum(-1) - inner, inner - (g_l * g_l).sum(-1)
    case = torch.full_like(inner, 3, dtype=torch.long)  # both rise …
    case[delta_w < 0] = 2  # … unless the chosen falls (then the rejected falls more)
    case[(delta_w >= 0) & (delta_l <= 0)] = 1  # the ideal case, ties included
    return case


def wrong(g_w, g_l):
    # reading only the chosen half of the table: "case 1 iff ⟨∇w,∇l⟩ ≤ ‖∇w‖²" misses the pairs where both rise
    inner = (g_w * g_l).sum(-1)
    return torch.where(inner <= (g_w * g_w).sum(-1), 1, 2).long()


def check(candidate) -> str:
    """Compare the reader's ``my_case`` with the package's first-order cases on random gradient batches."""
    return check_exercise(candidate, _reference, CASES, name="my_case", atol=0, rtol=0)
