"""Chapter 4b's exercise: the population DPO gradient under uniform pairs, in closed form (no autograd)."""

from __future__ import annotations

import torch

from ..exercises import check_exercise, random_cases
from ..online import population_gradient, preference


def solution(logits, rewards, beta):
    p = torch.sigmoid(rewards[:, None] - rewards[None, :])  # p_ij = σ(r_i − r_j)
    s = torch.sigmoid(beta * (logits[:, None] - logits[None, :]))  # σ(βΔ_ij), Δ_ij = θ_i − θ_j
    G = beta * (s - p) / logits.numel() ** 2  # G_ij = W_ij β(σ(βΔ_ij) − p_ij) with W_ij = 1/K²
    return G.sum(dim=1) - G.sum(dim=0)  # ∂Δ_ij/∂θ_k = δ_ik − δ_jk


def wrong(logits, rewards, beta):
    # forgets that θ_k also appears as the second response of a pair: only half of the gradient
    p = torch.sigmoid(rewards[:, None] - rewards[None, :])
    s = torch.sigmoid(beta * (logits[:, None] - logits[None, :]))
    return (beta * (s - p) / logits.numel() ** 2).sum(dim=1)


def _case(gen):
    K = int(torch.randint(2, 9, (1,), generator=gen))
    logits = torch.randn(K, generator=gen, dtype=torch.float64)
    rewards = torch.randn(K, generator=gen, dtype=torch.float64)
    return logits, rewards, float(torch.rand(1, generator=gen)) * 4 + 0.1


CASES = random_cases(_case, n=20, seed=4)


def check(candidate) -> str:
    """Compare the reader's uniform-sampler gradient with ``online.population_gradient`` on random bandits."""
    return check_exercise(candidate, lambda th, r, b: population_gradient(th, preference(r), b, "uniform"), CASES,
                          name="my_uniform_gradient")
