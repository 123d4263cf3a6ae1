"""Chapter 1's exercise: the gradient of the reward-learning loss with labelled pairs (the slide's Bernoulli label
p, hard or soft), L = −(1/N) Σ_i [p_i log σ(Δ_i) + (1 − p_i) log σ(−Δ_i)], with respect to each Δ_i = r(x, y_1) −
r(x, y_2): ∂L/∂Δ_i = (σ(Δ_i) − p_i)/N, zero exactly where the model's probability equals the label's."""

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
    # autograd through PyTorch's own binary cross-entropy on the logit Δ: the section's "reward learning is
    # cross-entropy", differentiated by the machine
    delta = (r_first - r_second).clone().requires_grad_(True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(delta, prefers_first)
    (grad,) = torch.autograd.grad(loss, delta)
    return grad


def solution(r_first, r_second, prefers_first):
    # d/dΔ of −[p log σ(Δ) + (1 − p) log σ(−Δ)] = −p(1 − σ(Δ)) + (1 − p)σ(Δ) = σ(Δ) − p; the mean adds 1/N
    return (torch.sigmoid(r_first - r_second) - prefers_first) / r_first.numel()


def wrong(r_first, r_second, prefers_first):
    # the winner/loser form's gradient, −σ(−Δ)/N: right only where the first response is the chosen one (p = 1)
    return -torch.sigmoid(-(r_first - r_second)) / r_first.numel()


def check(candidate) -> str:
    """Compare the reader's ``reward_loss_grad(r_first, r_second, prefers_first)`` with autograd through PyTorch's
    ``binary_cross_entropy_with_logits`` on random batches with hard and soft labels."""
    return check_exercise(candidate, _reference, CASES, name="reward_loss_grad")
