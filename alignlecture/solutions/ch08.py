"""Chapter 8's exercise: IPO's population optimum in closed form, π ∝ π_ref·exp(P(y ≻ μ)/β) (Azar et al. 2024)."""

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
    return population_optimum(pi_ref, mu, pref, beta, "ipo").policy()  # Newton on the loss itself, no closed form


def solution(pi_ref, mu, pref, beta):
    win = pref @ mu  # P(y_i ≻ μ) = Σ_j μ_j P(y_i ≻ y_j): how often y_i beats an answer drawn from the data
    return torch.softmax(pi_ref.log() + win / beta, dim=0)  # π_ref · exp(win rate / β), normalised


def wrong(pi_ref, mu, pref, beta):
    # the unweighted win rate: right only when the data draw answers uniformly
    win = pref.mean(dim=1)
    return torch.softmax(pi_ref.log() + win / beta, dim=0)


def check(candidate) -> str:
    """Compare the reader's ``ipo_optimum`` with the numerically minimised IPO population loss."""
    return check_exercise(candidate, _reference, CASES, name="ipo_optimum", rtol=0, atol=1e-8)
