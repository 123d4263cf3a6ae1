"""Chapter 8's exercise: the `sft` loss type's population optimum in closed form — the distribution of the chosen
answer, π(y) = P(chosen = y) = 2·μ(y)·P(y ≻ μ), whatever π_ref and β (the page derives IPO's; this one is yours)."""

from __future__ import annotations

import torch

from ..exercises import check_exercise, random_cases
from ..losses import bradley_terry, population_optimum


def _world(gen: torch.Generator) -> tuple:
    # K answers, π_ref and μ with full support, labels from Bradley–Terry, flipped or hard, β of either scale
    k = int(torch.randint(2, 7, (), generator=gen))
    draw = lambda: torch.randn(k, generator=gen, dtype=torch.float64)  # noqa: E731
    pi_ref, mu, r = torch.softmax(draw(), 0), torch.softmax(draw(), 0), 2 * draw()
    kind = int(torch.randint(0, 3, (), generator=gen))
    hard = (r[:, None] > r[None, :]).double().fill_diagonal_(0.5)
    pref = (bradley_terry(r), 0.6 * hard + 0.2, hard)[kind]
    beta = float(torch.tensor([0.2, 0.5, 1.0, 3.0])[torch.randint(0, 4, (), generator=gen)])
    return pi_ref, mu, pref, beta


CASES = random_cases(_world, n=8, seed=8)


def _reference(pi_ref, mu, pref, beta):
    return population_optimum(pi_ref, mu, pref, beta, "sft").policy()  # Newton on the loss itself, no closed form


def solution(pi_ref, mu, pref, beta):
    # a pair (y, y') ~ μ⊗μ names y the chosen one with probability pref[y, y'], and y may sit in either slot:
    # P(chosen = y) = 2 μ(y) Σ_j μ_j P(y ≻ y_j). SFT fits that distribution; π_ref and β never enter.
    return 2 * mu * (pref @ mu)


def wrong(pi_ref, mu, pref, beta):
    # the win rate alone, normalised: forgets that y must first be drawn into a pair, with probability ∝ μ(y)
    win = pref @ mu
    return win / win.sum()


def check(candidate) -> str:
    """Compare the reader's ``sft_optimum`` with the numerically minimised `sft` population loss."""
    return check_exercise(candidate, _reference, CASES, name="sft_optimum", rtol=0, atol=1e-8)
