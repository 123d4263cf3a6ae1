"""Chapter 6b's exercise: the KL from π_ref that the ideal guide's choice spends at one prefix s,
KL(π*(·|s) ‖ π_ref(·|s)), from one row of exact soft values Q*(s, ·), the row of π_ref and β."""

from __future__ import annotations

import torch

from ..bon import kl_divergence
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
        cases += [(values.q_table[row].clone(), ref.log_table[row].clone(), beta) for row in range(0, world.num_prefixes, 3)]
    return cases


CASES = _cases()


def _reference(q, logp_ref, beta):
    """π*(a|s) ∝ exp(Q*(s, a)/β) as a ratio of exponentials (largest Q factored out), then the KL's definition."""
    w = torch.exp((q - q.max()) / beta)
    pi = w / w.sum()
    return kl_divergence(pi, logp_ref.exp())


def solution(q, logp_ref, beta):
    # log π*(a|s) = (Q*(s, a) − V*(s))/β, V*(s) = β log Σ_a exp(Q*(s, a)/β); KL = Σ_a π* (log π* − log π_ref)
    logp = (q - beta * torch.logsumexp(q / beta, dim=-1, keepdim=True)) / beta
    return (logp.exp() * (logp - logp_ref)).sum(dim=-1)


def wrong(q, logp_ref, beta):
    # the other direction, KL(π_ref ‖ π*): the average is taken under the wrong distribution
    logp = (q - beta * torch.logsumexp(q / beta, dim=-1, keepdim=True)) / beta
    return (logp_ref.exp() * (logp_ref - logp)).sum(dim=-1)


def check(candidate) -> str:
    """Compare the reader's per-step KL with the KL of the normalised exp(Q*/β) from π_ref on every third prefix of
    a toy world."""
    return check_exercise(candidate, _reference, CASES, name="ideal_step_kl", atol=1e-10, rtol=1e-9)
