"""Chapter 2's exercise: the DPO loss of one batch of pairs from the four summed log-probabilities."""

from __future__ import annotations

import torch

from ..dpo import dpo_loss
from ..exercises import check_exercise, random_cases


def _logps(gen: torch.Generator) -> tuple:
    n = int(torch.randint(1, 10, (), generator=gen))
    four = tuple(-20 * torch.rand(n, generator=gen, dtype=torch.float64) for _ in range(4))  # summed log-probs ≤ 0
    beta = 0.05 + float(torch.rand((), generator=gen, dtype=torch.float64))
    return four + (beta,)


CASES = random_cases(_logps, n=20, seed=2)


def _reference(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta):
    return dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta=beta)[0]


def solution(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta):
    # the implicit rewards β log π/π_ref of winner and loser, then Bradley–Terry's −log σ of their difference
    margin = beta * (logp_chosen - ref_chosen) - beta * (logp_rejected - ref_rejected)
    return -torch.nn.functional.logsigmoid(margin)


def wrong(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta):
    # forgetting the reference: the policy's own log-likelihood margin, which pulls toward longer/likelier text
    return -torch.nn.functional.logsigmoid(beta * (logp_chosen - logp_rejected))


def check(candidate) -> str:
    """Compare the reader's per-pair ``my_dpo_loss`` with ``dpo.dpo_loss`` (sigmoid loss) on random batches."""
    return check_exercise(candidate, _reference, CASES, name="my_dpo_loss")
