"""Chapter 6b's exercise: the ideal guide's choice log π*(a|s) from one row of exact soft values Q*(s, ·)."""

from __future__ import annotations

import torch

from ..exercises import check_exercise
from ..qfunction import soft_values
from ..toy import ToyWorld


def _cases():
    """(Q*(s, ·), β) for every prefix s of a small toy world, at three values of β."""
    world = ToyWorld(vocab_size=4, max_len=3)
    ref, reward = world.random_policy(seed=3), world.random_rewards(seed=4, scale=2.0)
    cases = []
    for beta in (0.2, 1.0, 3.0):
        values = soft_values(world, ref, reward, beta)
        cases += [(values.q_table[row].clone(), beta) for row in range(0, world.num_prefixes, 3)]
    return cases


CASES = _cases()


def _reference(q, beta):
    """π*(a|s) ∝ exp(Q*(s, a)/β), computed as the ratio of exponentials with the largest Q factored out."""
    w = torch.exp((q - q.max()) / beta)
    return torch.log(w / w.sum())


def solution(q, beta):
    # log π*(a|s) = (Q*(s, a) − V*(s))/β with V*(s) = β log Σ_a exp(Q*(s, a)/β)
    v = beta * torch.logsumexp(q / beta, dim=-1, keepdim=True)
    return (q - v) / beta


def wrong(q, beta):
    # a softmax of Q itself: right only at β = 1 (it forgets that β sets the temperature of the choice)
    return torch.log_softmax(q, dim=-1)


def check(candidate) -> str:
    """Compare the reader's log π*(·|s) with the normalised exp(Q*/β) on every third prefix of a toy world."""
    return check_exercise(candidate, _reference, CASES, name="ideal_choice", atol=1e-10, rtol=0)
