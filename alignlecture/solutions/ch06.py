"""Chapter 6's exercises: the KL of best-of-n for a continuous reward, and its limit on a finite support."""

from __future__ import annotations

import math

import torch

from ..bon import bon_distribution, kl_divergence
from ..exercises import check_exercise

# ------------------------------------------------------------------ 1. KL(π_n ‖ π) for a continuous reward
CASES = [(n,) for n in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)]
_K = 100_000  # a continuous reward, approximated by 100,000 equally likely outcomes with distinct rewards
_UNIFORM = torch.full((_K,), 1.0 / _K, dtype=torch.float64)
_DISTINCT = torch.arange(_K, dtype=torch.float64)


def _continuous_kl(n):
    """The exact KL of best-of-n on the fine uniform grid (within 1e-4 of the continuous limit for n < 100)."""
    return float(kl_divergence(bon_distribution(_UNIFORM, _DISTINCT, n), _UNIFORM))


def solution(n):
    # E[log(n U^{n-1})] with U ~ Beta(n, 1): E[log U] = −1/n, so log n + (n − 1)·(−1/n)
    return math.log(n) - (n - 1) / n


def wrong(n):
    # "best of n is one choice among n": log n, forgetting that the n draws are not equally likely to win
    return math.log(n)


def check(candidate) -> str:
    """Compare the reader's KL with the exact KL of best-of-n on a 100,000-outcome uniform grid."""
    return check_exercise(candidate, _continuous_kl, CASES, name="my_bon_kl", atol=1e-4, rtol=0)


# ------------------------------------------------------------------ 2. the limit n → ∞ on a finite support
def _limit_cases():
    gen = torch.Generator().manual_seed(6)
    cases = []
    for k in (2, 3, 5, 8):
        p = torch.rand(k, generator=gen, dtype=torch.float64) + 0.05
        r = torch.randint(0, 3, (k,), generator=gen).double()  # few levels: the best reward is often shared
        cases.append((p / p.sum(), r))
    return cases


LIMIT_CASES = _limit_cases()


def _kl_at_huge_n(probs, rewards):
    return float(kl_divergence(bon_distribution(probs, rewards, 10**6), probs))


def limit_solution(probs, rewards):
    # best-of-n ends on the best-reward outcomes, in proportion to π: KL → −log π(r = max r)
    best = rewards == rewards.max()
    return -math.log(float(probs[best].sum()))


def limit_wrong(probs, rewards):
    # the surprise of the single most likely best outcome, forgetting that tied best outcomes share the mass
    return -math.log(float(probs[rewards == rewards.max()].max()))


def check_limit(candidate) -> str:
    """Compare the reader's limit with the exact KL of best-of-n at n = 10^6 on distributions with ties."""
    return check_exercise(candidate, _kl_at_huge_n, LIMIT_CASES, name="bon_kl_limit", atol=1e-9, rtol=0)
