"""Chapter 1's exercise: the reward-learning loss L_r(φ) = −(1/N) Σ_i log σ(r_φ(x, y_w) − r_φ(x, y_l))."""

from __future__ import annotations

import torch

from ..exercises import check_exercise, random_cases
from ..rewards import bradley_terry_loss


def _pair_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(torch.randint(1, 12, (), generator=gen))
    scale = 0.5 + 4 * float(torch.rand((), generator=gen, dtype=torch.float64))  # gaps of a few units either way
    return (scale * torch.randn(n, generator=gen, dtype=torch.float64),
            scale * torch.randn(n, generator=gen, dtype=torch.float64))


CASES = random_cases(_pair_batch, n=20, seed=1)


def solution(r_chosen, r_rejected):
    # one binary cross-entropy per pair with "the winner is listed first" as the label, averaged (the 1/N)
    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()


def wrong(r_chosen, r_rejected):
    # the slide calls it "a sum of cross entropy losses": summing drops the 1/N and scales the loss with N
    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).sum()


def check(candidate) -> str:
    """Compare the reader's ``reward_loss(r_chosen, r_rejected)`` with ``rewards.bradley_terry_loss``."""
    return check_exercise(candidate, bradley_terry_loss, CASES, name="reward_loss")
