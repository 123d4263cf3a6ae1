"""Chapter 5's exercise: the soft value V(s) = β log Σ_a exp(Q(s, a)/β) of a batch of Q-rows."""

from __future__ import annotations

import torch

from ..exercises import check_exercise, random_cases


def solution(q_rows, beta):
    # logsumexp subtracts the row maximum before exponentiating: no overflow however small β is
    return beta * torch.logsumexp(q_rows / beta, dim=-1)


def wrong(q_rows, beta):
    # the formula typed literally: exp(Q/β) overflows to inf once Q/β passes ~709 (small β, the hard-max limit)
    return beta * torch.log(torch.exp(q_rows / beta).sum(dim=-1))


def _case(gen):
    q = 5 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    beta = float(10 ** (-3 + 3 * torch.rand((), generator=gen, dtype=torch.float64)))  # 0.001 … 1
    return q, beta


CASES = random_cases(_case, n=20, seed=0)


def _reference(q_rows, beta):
    top = q_rows.max(dim=-1).values  # V = max_a Q + β log Σ_a exp((Q − max)/β): every exponent ≤ 0
    return top + beta * torch.log(torch.exp((q_rows - top[..., None]) / beta).sum(dim=-1))


def check(candidate) -> str:
    """Compare ``my_soft_value(q_rows, beta)`` with the max-shifted soft value on rows with β down to 0.001."""
    return check_exercise(candidate, _reference, CASES, name="my_soft_value")
