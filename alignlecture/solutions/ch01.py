"""Chapter 1's exercise: reward learning from *labelled* pairs — the slide's Bernoulli label p — as the binary
cross-entropy L = −(1/N) Σ_i [p_i log σ(Δ_i) + (1 − p_i) log σ(−Δ_i)], Δ_i = r(x, y_1) − r(x, y_2)."""

from __future__ import annotations

import torch

from ..exercises import check_exercise, random_cases


def _labelled_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = int(torch.randint(1, 12, (), generator=gen))
    scale = 0.5 + 4 * float(torch.rand((), generator=gen, dtype=torch.float64))  # gaps of a few units either way
    r_first, r_second = (scale * torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(2))
    labels = torch.rand(n, generator=gen, dtype=torch.float64)
    if bool(torch.rand((), generator=gen) < 0.5):  # half the batches: hard 0/1 labels, as one annotator gives
        labels = (labels < 0.5).double()
    return r_first, r_second, labels


CASES = random_cases(_labelled_batch, n=20, seed=1)


def _reference(r_first, r_second, prefers_first):
    # PyTorch's own binary cross-entropy on the logit Δ: the section's claim, "reward learning is cross-entropy"
    return torch.nn.functional.binary_cross_entropy_with_logits(r_first - r_second, prefers_first)


def solution(r_first, r_second, prefers_first):
    # each pair's cross-entropy between the label p and the model's σ(Δ); log σ(−Δ) = log(1 − σ(Δ)), stably
    delta = r_first - r_second
    F = torch.nn.functional
    return -(prefers_first * F.logsigmoid(delta) + (1 - prefers_first) * F.logsigmoid(-delta)).mean()


def wrong(r_first, r_second, prefers_first):
    # treating the first response as the winner whatever the label: the page's winner/loser form on unsorted pairs
    return -torch.nn.functional.logsigmoid(r_first - r_second).mean()


def check(candidate) -> str:
    """Compare the reader's ``reward_loss(r_first, r_second, prefers_first)`` with PyTorch's
    ``binary_cross_entropy_with_logits`` on random batches with hard and soft labels."""
    return check_exercise(candidate, _reference, CASES, name="reward_loss")
