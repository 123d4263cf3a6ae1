"""Chapter 3's exercise: multi-objective alignment and β adjustment at once, by mixing alone.

π1, π2 are the RLHF optima of rewards r1, r2 at the same β and π_ref. The optimum of w1·r1 + w2·r2 at a new β' is
π_ref^(1 − (β/β')(w1 + w2)) · π1^((β/β')w1) · π2^((β/β')w2), renormalised — over whole responses, as in the toy world.
"""

from __future__ import annotations

import torch

from ..exercises import check_exercise, random_cases


def _case(gen):
    M = int(torch.randint(3, 12, (), generator=gen))  # responses
    logp_ref = torch.log_softmax(torch.randn(M, generator=gen, dtype=torch.float64), dim=-1)
    beta, beta_new = (0.2 + 2 * float(torch.rand((), generator=gen, dtype=torch.float64)) for _ in range(2))
    r1, r2 = (2 * torch.randn(M, generator=gen, dtype=torch.float64) for _ in range(2))
    logp1, logp2 = (torch.log_softmax(logp_ref + r / beta, dim=-1) for r in (r1, r2))
    w1, w2 = (3 * torch.rand(2, generator=gen, dtype=torch.float64) - 1).tolist()  # any sum, negative weights too
    return logp1, logp2, logp_ref, w1, w2, beta, beta_new


CASES = random_cases(_case, n=20, seed=0)


def _reference(logp1, logp2, logp_ref, w1, w2, beta, beta_new):
    # not by mixing: recover each reward up to its constant, r_k = β log π_k/π_ref, and write the optimum of the
    # combined reward at β' straight from its definition, π_ref · exp((w1 r1 + w2 r2)/β') / Z
    r1, r2 = beta * (logp1 - logp_ref), beta * (logp2 - logp_ref)
    return torch.log_softmax(logp_ref + (w1 * r1 + w2 * r2) / beta_new, dim=-1)


def solution(logp1, logp2, logp_ref, w1, w2, beta, beta_new):
    # β/β' scales both weights; the reference makes up the rest of the exponent so that π_ref's power is 1 again
    s = beta / beta_new
    return torch.log_softmax(s * w1 * logp1 + s * w2 * logp2 + (1 - s * (w1 + w2)) * logp_ref, dim=-1)


def wrong(logp1, logp2, logp_ref, w1, w2, beta, beta_new):
    # the slide's product with the new β but no reference factor: right only when (β/β')(w1 + w2) = 1
    s = beta / beta_new
    return torch.log_softmax(s * w1 * logp1 + s * w2 * logp2, dim=-1)


def check(candidate) -> str:
    """Compare the reader's ``mod_logprobs(logp1, logp2, logp_ref, w1, w2, beta, beta_new)`` with the optimum of
    w1·r1 + w2·r2 at β' computed from the rewards themselves, on random worlds."""
    return check_exercise(candidate, _reference, CASES, name="mod_logprobs")
