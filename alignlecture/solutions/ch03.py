"""Chapter 3's exercise: mix two next-token distributions, log π_mix = log_softmax(w1 log π1 + w2 log π2)."""

from __future__ import annotations

import torch

from ..exercises import check_exercise, random_cases


def solution(logp1, logp2, w1, w2):
    # the product π1^w1 π2^w2, renormalised over the vocabulary; log_softmax subtracts the logsumexp stably
    return torch.log_softmax(w1 * logp1 + w2 * logp2, dim=-1)


def wrong(logp1, logp2, w1, w2):
    # the weighted sum alone: the slide's per-step "logits", never renormalised, so it is not a distribution
    return w1 * logp1 + w2 * logp2


def _case(gen):
    logp = torch.log_softmax(3 * torch.randn(2, 7, generator=gen, dtype=torch.float64), dim=-1)
    w = (3 * torch.rand(2, generator=gen, dtype=torch.float64) - 1).tolist()  # negative weights included
    return logp[0], logp[1], w[0], w[1]


CASES = random_cases(_case, n=20, seed=0)


def check(candidate) -> str:
    """Compare ``my_mix_logprobs(logp1, logp2, w1, w2)`` with ``alignlecture.mixing.mix_logprobs``."""
    from ..mixing import mix_logprobs

    return check_exercise(candidate, lambda a, b, w1, w2: mix_logprobs([a, b], [w1, w2]), CASES,
                          name="my_mix_logprobs")
