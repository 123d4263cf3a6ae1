"""Chapter 2's exercise: how hard DPO pushes each pair — ∂L/∂log π(y_w|x) = −β σ(r̂_l − r̂_w) per pair, from the
four summed log-probabilities (r̂ = β log π/π_ref, the implicit rewards)."""

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
    # autograd through the package's per-pair DPO loss: each pair's loss depends on its own log π(y_w|x) only
    logp = logp_chosen.clone().requires_grad_(True)
    loss = dpo_loss(logp, logp_rejected, ref_chosen, ref_rejected, beta=beta)[0]
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    return grad


def solution(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta):
    # d/dm of −log σ(m) is −σ(−m); m = r̂_w − r̂_l moves by β per nat of log π(y_w|x). The weight σ(−m) is largest
    # where the implicit rewards order the pair wrongly: DPO pushes hardest on the pairs it gets wrong.
    margin = beta * (logp_chosen - ref_chosen) - beta * (logp_rejected - ref_rejected)
    return -beta * torch.sigmoid(-margin)


def wrong(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta):
    # σ(m) instead of σ(−m): a push that grows with the pairs already ordered right, the opposite of DPO's
    margin = beta * (logp_chosen - ref_chosen) - beta * (logp_rejected - ref_rejected)
    return -beta * torch.sigmoid(margin)


def check(candidate) -> str:
    """Compare the reader's ``dpo_push`` with autograd through ``dpo.dpo_loss`` (sigmoid loss) on random batches."""
    return check_exercise(candidate, _reference, CASES, name="dpo_push")
