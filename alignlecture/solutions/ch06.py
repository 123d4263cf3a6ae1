"""Chapter 6's exercises: the *other* KL of best-of-n for a continuous reward, KL(π ‖ π_n), and the exact KL of
best-of-n for a reward with only two levels."""

from __future__ import annotations

import math

import torch

from ..bon import bon_distribution, kl_divergence
from ..exercises import check_exercise

# ------------------------------------------------------------------ 1. KL(π ‖ π_n) for a continuous reward
CASES = [(n,) for n in (1, 2, 3, 5, 8, 13, 21, 34)]
_K = 100_000  # a continuous reward, approximated by 100,000 equally likely outcomes with distinct rewards
_UNIFORM = torch.full((_K,), 1.0 / _K, dtype=torch.float64)
_DISTINCT = torch.arange(_K, dtype=torch.float64)


def _continuous_reverse_kl(n):
    """The exact KL(π ‖ π_n) on the fine uniform grid: within 2e-5 of the continuous value, relatively, for n ≤ 34
    (the grid's error grows with n, and π_n of its lowest outcome, K^−n, leaves float64's range past n ≈ 61)."""
    return float(kl_divergence(_UNIFORM, bon_distribution(_UNIFORM, _DISTINCT, n)))


def solution(n):
    # E_π[−log(π_n/π)] with π_n/π = n u^(n−1) and u = F(y) uniform: E[log U] = −1, so −log n + (n − 1)
    return n - 1 - math.log(n)


def wrong(n):
    # the page's direction, KL(π_n ‖ π) = log n − (n − 1)/n: the two KLs are not the same number
    return math.log(n) - (n - 1) / n


def check(candidate) -> str:
    """Compare the reader's KL(π ‖ π_n) with the exact value on a 100,000-outcome uniform grid."""
    return check_exercise(candidate, _continuous_reverse_kl, CASES, name="my_bon_reverse_kl", atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ 2. two reward levels
TWO_LEVEL_CASES = [(q, n) for q in (0.05, 0.3, 0.5, 0.9) for n in (1, 2, 7, 50)]


def _two_level_world(q):
    """Seven outcomes: three share the top reward with total mass q, four share the bottom one."""
    top, bottom = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    probs = torch.cat([q * top, (1 - q) * bottom])
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    return probs, rewards


def _exact_two_level_kl(q, n):
    probs, rewards = _two_level_world(q)
    return float(kl_divergence(bon_distribution(probs, rewards, n), probs))


def two_level_solution(q, n):
    # best-of-n reaches the top level unless all n draws miss it: a = 1 − (1 − q)^n. Inside a level it keeps π's
    # proportions, so only the two levels' masses differ: KL = a log(a/q) + (1 − a) log((1 − a)/(1 − q))
    a = 1 - (1 - q) ** n
    return a * math.log(a / q) + (1 - a) * math.log((1 - a) / (1 - q)) if a < 1 else -math.log(q)


def two_level_wrong(q, n):
    # the limit n → ∞ (always the top level), −log q: an upper bound, reached only as n grows
    return -math.log(q)


def check_two_level(candidate) -> str:
    """Compare the reader's two-level KL with the exact KL of best-of-n on a seven-outcome, two-level world."""
    return check_exercise(candidate, _exact_two_level_kl, TWO_LEVEL_CASES, name="two_level_kl", atol=1e-10, rtol=1e-9)
