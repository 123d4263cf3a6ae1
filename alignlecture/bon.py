"""Best-of-n: sample n responses, keep the one the reward likes best (lecture §RLHF is not superior to best-of-n).

Exactly (Beirami et al. 2024), for n i.i.d. draws from a finite π with ties broken uniformly among the tied
draws, the chosen response has distribution

    π_n(y) = [F(y)^n − F⁻(y)^n] · π(y) / π(r = r(y)),    F(y) = P(r ≤ r(y)),  F⁻(y) = P(r < r(y)),

and KL(π_n ‖ π) ≤ log n − (n − 1)/n, with equality in the limit of a continuous reward distribution. Its win
rate against one draw from π (ties counted half) is at most n/(n + 1), with the same limit (``bon_win_rate``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ._checks import outcome_distribution, per_outcome, positive_int, same_shape
from .models import Policy, generate
from .toy import check_beta

PROB_ATOL = 1e-6  # how far from 1 a distribution's total may be


def check_n(n) -> int:
    """n must be an integer ≥ 1 (the number of samples)."""
    return positive_int(n, "n", meaning="the number of samples")


def _check_probs(probs, name: str = "probs") -> torch.Tensor:
    return outcome_distribution(probs, name, atol=PROB_ATOL)


def _check_rewards(rewards, p: torch.Tensor, *, finite: bool = False, name: str = "rewards") -> torch.Tensor:
    return per_outcome(rewards, p, name, finite_only=finite)


def bon_distribution(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """π_n(y) = [F(y)^n − F⁻(y)^n]·π(y)/π(r = r(y)): best of n draws from ``probs`` by ``rewards``, ties uniform.

    ``probs`` [..., K] sums to 1 along the last dim; ``rewards`` [..., K] (or anything broadcasting to it).
    Returns float64 [..., K].
    """
    n, p = check_n(n), _check_probs(probs)
    return bon_from_tie_levels(tie_levels(p, _check_rewards(rewards, p)), n)


def bon_distribution_for_each_n(probs: torch.Tensor, rewards: torch.Tensor, ns: Sequence[int]) -> torch.Tensor:
    """``bon_distribution`` for every n in ``ns`` at once, sorting the rewards once: float64 [len(ns), ..., K]."""
    ns = [check_n(n) for n in ns]
    if not ns:
        raise ValueError("ns is empty; give at least one n ≥ 1")
    p = _check_probs(probs)
    n = torch.tensor(ns, dtype=torch.float64, device=p.device).view(-1, *([1] * p.dim()))  # [L, 1…]
    return bon_from_tie_levels(tie_levels(p, _check_rewards(rewards, p)), n)


class TieLevels(NamedTuple):
    """Outcomes sorted by reward, with what π_n needs of each one's tie level (all [..., K])."""

    order: torch.Tensor  # long: sorted position → outcome index
    sorted_probs: torch.Tensor  # π of each sorted outcome
    F: torch.Tensor  # P(r ≤ r(y)): the mass at or below the outcome's reward
    m: torch.Tensor  # P(r = r(y)): the mass of the outcome's tie level, so F⁻ = F − m


def tie_levels(p: torch.Tensor, r: torch.Tensor) -> TieLevels:
    """Sort by reward once: order, sorted probs, F = P(r ≤ level) and m = mass of the level of each outcome.

    ``p`` and ``r`` as ``bon_distribution`` checks them: float64 [..., K] of one shape, ``p`` summing to 1.
    """
    sorted_r, order = torch.sort(r, dim=-1)
    sorted_p = p.gather(-1, order)
    new_level = torch.ones_like(sorted_r, dtype=torch.long)
    new_level[..., 1:] = (sorted_r[..., 1:] != sorted_r[..., :-1]).long()
    level = new_level.cumsum(-1) - 1  # [..., K] tie level of each sorted outcome, 0 = lowest reward
    level_mass = torch.zeros_like(sorted_p).scatter_add(-1, level, sorted_p)  # [..., K] (unused levels: 0)
    F = level_mass.cumsum(-1).gather(-1, level)  # P(r ≤ level of each outcome)
    m = level_mass.gather(-1, level)  # mass of each outcome's tie level
    return TieLevels(order, sorted_p, F, m)


def bon_from_tie_levels(levels: TieLevels, n) -> torch.Tensor:
    """π_n = [F^n − F⁻^n]·π/m from ``tie_levels``; ``n`` an int or a float64 Tensor [L, 1…] (then [L, ..., K]).

    F^n − F⁻^n with F⁻ = F − m is computed as F^n·(1 − (1 − m/F)^n) through log1p/expm1, so it stays accurate
    for large n and tiny outcome probabilities (no cancellation between two numbers close to 1).
    """
    order, sorted_p, F, m = levels
    safe_F = torch.where(F > 0, F, torch.ones_like(F))
    # F^n − F⁻^n
    top = torch.exp(n * torch.log(safe_F)) * -torch.expm1(n * torch.log1p(-(m / safe_F).clamp(max=1.0)))
    share = torch.where(m > 0, sorted_p / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(m))
    out_sorted = torch.where(m > 0, top * share, torch.zeros_like(top))
    order = order.expand(out_sorted.shape)
    return torch.zeros_like(out_sorted).scatter(-1, order, out_sorted)


def bon_kl_bound(n: int) -> float:
    """The best-of-n KL bound log n − (n − 1)/n (Beirami et al. 2024)."""
    n = check_n(n)
    return math.log(n) - (n - 1) / n


def bon_win_rate(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> float:
    """P(best-of-n beats one draw from π) + ½ P(tie), exactly: Σ_y π_n(y)·[F⁻(y) + ½ π(r = r(y))].

    A tie counts half, so n = 1 gives exactly ½ on any distribution. Summed over a tie level ℓ this is
    (F_ℓ^n − F⁻_ℓ^n)(F_ℓ + F⁻_ℓ)/2, a trapezoid rule for ∫₀¹ u d(uⁿ) = n/(n + 1): the familiar n/(n + 1) is the
    continuous limit, and because d(uⁿ) weighs the upper end of every level more, ties only lower the win rate.
    ``probs`` [K] sums to 1, ``rewards`` [K]; returns a float in [0, 1).
    """
    n, p = check_n(n), _check_probs(probs)
    if p.dim() != 1:
        raise ValueError(f"probs must be one distribution [K]; got shape {tuple(p.shape)}")
    order, sorted_p, F, m = levels = tie_levels(p, _check_rewards(rewards, p, finite=True))
    chosen = bon_from_tie_levels(levels, n).gather(-1, order)  # π_n of each sorted outcome
    return float((chosen * (F - m / 2)).sum())  # F − m/2 = P(r < level) + ½ P(r = level)


def sample_best_of_n(
    probs: torch.Tensor, rewards: torch.Tensor, n: int, trials: int, *, generator: torch.Generator
) -> torch.Tensor:
    """Best-of-n the slow way: ``trials`` times draw n outcomes from ``probs`` [K], keep the highest-reward one
    (ties: uniformly among the tied draws). Returns the chosen outcomes' indices, long [trials], on probs' device.
    """
    n, p = check_n(n), _check_probs(probs)
    r = _check_rewards(rewards, p)
    if p.dim() != 1:
        raise ValueError(f"sample_best_of_n takes one distribution [K]; got shape {tuple(p.shape)}")
    trials = positive_int(trials, "trials")
    at = generator.device  # drawn where the generator is: a CPU generator draws the same whatever probs' device
    draws = torch.multinomial(p.to(at).expand(trials, -1), n, replacement=True, generator=generator)  # [trials, n]
    drawn = r.to(at)[draws]
    is_best = drawn == drawn.max(dim=1, keepdim=True).values
    pick = torch.argmax(torch.rand(trials, n, generator=generator, dtype=torch.float64, device=at) * is_best, dim=1)
    return draws[torch.arange(trials, device=at), pick].to(p.device)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ p log(p/q) over the last dim, with 0·log 0 = 0 and +inf where p > 0 = q, float64 [...]."""
    p, q = _check_probs(p, "p"), _check_probs(q, "q")
    same_shape(p, q, ("p", "q"))
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp(min=0.0)  # KL ≥ 0 (Gibbs); round-off can leave −1e-17 for p = q


# ---------------------------------------------------------------------------------------------- the frontier
def tilted(probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """π_β(y) ∝ π(y)·exp(r(y)/β) on a finite support: the KL-penalised optimum (lecture §RLHF, closed form)."""
    beta = check_beta(beta)
    p = _check_probs(probs)
    return exponential_tilt(p, _check_rewards(rewards, p, finite=True), 1.0 / beta)


def exponential_tilt(p: torch.Tensor, scores: torch.Tensor, lam: float) -> torch.Tensor:
    """π_λ(y) ∝ π(y)·exp(λ·s(y)) = softmax(log π + λ(s − max s)): ``tilted`` is λ = 1/β, ``tilt_to_kl`` solves for λ.

    ``p`` a distribution [..., K] and ``scores`` finite [..., K], as ``tilted`` and ``tilt_to_kl`` check them (this
    runs inside their bisection, so it does not check again); outcomes with π(y) = 0 keep probability 0.
    """
    logits = torch.where(p > 0, torch.log(p) + lam * (scores - scores.max()), torch.full_like(p, -math.inf))
    return torch.softmax(logits, dim=-1)


MAX_DOUBLINGS = 200  # tilt_to_kl's search for an upper end λ ≤ 2^200 before it gives up


def kl_ceiling(probs: torch.Tensor, scores: torch.Tensor) -> float:
    """−log π(argmax score set): the largest KL any tilt π ∝ π·exp(λ·score) approaches (λ → ∞), never reaches."""
    p = _check_probs(probs)
    g = _check_rewards(scores, p, finite=True, name="scores")
    top = (g == g[p > 0].max()) & (p > 0)
    return -math.log(float(p[top].sum()))


def tilt_to_kl(probs: torch.Tensor, scores: torch.Tensor, kl: float, *, tol: float = 1e-12) -> torch.Tensor:
    """The tilt π ∝ π·exp(λ·score) whose KL(· ‖ π) equals ``kl`` (λ ≥ 0 found by bisection; KL grows with λ).

    The largest reachable KL is −log π(argmax score set) (λ → ∞); asking for more is an error.
    """
    p = _check_probs(probs)
    g = _check_rewards(scores, p, finite=True, name="scores")
    if p.dim() != 1:
        raise ValueError(f"tilt_to_kl takes one distribution [K]; got shape {tuple(p.shape)}")
    kl, ceiling = float(kl), kl_ceiling(p, g)
    if not 0 <= kl < ceiling:
        raise ValueError(
            f"kl must lie in [0, {ceiling:.6g}) for these scores (the KL of putting all mass on the best-scoring "
            f"outcomes); got {kl}"
        )
    lo, hi = 0.0, 1.0
    for _ in range(MAX_DOUBLINGS):  # grow λ until the tilt spends at least the budget
        if float(kl_divergence(exponential_tilt(p, g, hi), p)) >= kl:
            break
        lo, hi = hi, 2 * hi
    else:
        raise ValueError(
            f"no tilt with λ ≤ 2^{MAX_DOUBLINGS} reaches kl = {kl} (the ceiling is {ceiling:.6g}: round-off "
            "saturates the KL just below it); ask for a KL further below the ceiling"
        )
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(kl_divergence(exponential_tilt(p, g, mid), p)) < kl:
            lo = mid
        else:
            hi = mid
        if hi - lo <= tol * hi:
            break
    return exponential_tilt(p, g, (lo + hi) / 2)


def random_tilts_at_kl(
    probs: torch.Tensor, kl: float, count: int, *, generator: torch.Generator, max_tries: int | None = None
) -> torch.Tensor:
    """``count`` policies with KL(· ‖ probs) = ``kl``: probs tilted toward random Gaussian scores, [count, K].

    A random direction whose ceiling (``kl_ceiling``) is at or below ``kl`` cannot spend the budget and is
    skipped; after ``max_tries`` directions (default 20·count) without ``count`` usable ones it raises.
    """
    p = _check_probs(probs)
    count = positive_int(count, "count", meaning="how many policies to build")
    max_tries = positive_int(20 * count if max_tries is None else max_tries, "max_tries")
    found = []
    for _ in range(max_tries):
        g = torch.randn(p.shape, generator=generator, dtype=torch.float64, device=generator.device).to(p.device)
        if kl < kl_ceiling(p, g):
            found.append(tilt_to_kl(p, g, kl))
            if len(found) == count:
                return torch.stack(found)
    raise RuntimeError(
        f"only {len(found)} of {count} random directions could reach kl = {kl} in {max_tries} tries (their best "
        "outcome is too likely for that budget); ask for a smaller kl or pass a larger max_tries"
    )


def optimal_reward_at_kl(probs: torch.Tensor, rewards: torch.Tensor, kl: float) -> float:
    """max E_π[r] subject to KL(π ‖ probs) ≤ kl: the tilt toward r that spends the whole budget, or — from the
    ceiling −log π(best outcomes) on — the best reward itself (all mass on the best outcomes)."""
    p = _check_probs(probs)
    r = _check_rewards(rewards, p, finite=True)
    if float(kl) >= kl_ceiling(p, r):
        return float(r[p > 0].max())
    return float(tilt_to_kl(p, r, kl) @ r)


def rlhf_frontier(probs, rewards, betas: Sequence[float]) -> tuple[list[float], list[float]]:
    """(KL(π_β ‖ π), E_{π_β}[r]) for each β: the optimal reward–KL frontier traced by the penalised objective."""
    p = _check_probs(probs)
    r = _check_rewards(rewards, p, finite=True)
    points = [tilted(p, r, b) for b in betas]
    return [float(kl_divergence(q, p)) for q in points], [float(q @ r) for q in points]


def bon_frontier(probs, rewards, ns: Sequence[int]) -> tuple[list[float], list[float]]:
    """(KL(π_n ‖ π), E_{π_n}[r]) for each n: the exact reward–KL curve of best-of-n."""
    p = _check_probs(probs)
    r = _check_rewards(rewards, p)
    points = [bon_distribution(p, r, n) for n in ns]
    return [float(kl_divergence(q, p)) for q in points], [float(q @ r) for q in points]


# ---------------------------------------------------------------------------------------------- real models
@dataclass
class BestOfN:
    """Every sample and score of a best-of-n run, and the chosen (first highest-scoring) response per prompt.

    Attributes:
        prompts: the P prompts, in the order given.
        texts: ``texts[i][j]``, the j-th of the n completions sampled for prompt i (P lists of n).
        completion_ids: the exact sampled token ids of each completion, [P][n] lists of ints.
        scores: float64 [P, n], the reward of each completion.
        best_index: long [P], which completion each prompt keeps: the first maximum of its row of ``scores``.
        best_texts: the kept completion of each prompt, ``texts[i][best_index[i]]``.
        best_scores: float64 [P], the kept completion's reward, the maximum of each row of ``scores``.
    """

    prompts: list[str]
    texts: list[list[str]]
    completion_ids: list[list[list[int]]]
    scores: torch.Tensor
    best_index: torch.Tensor
    best_texts: list[str]
    best_scores: torch.Tensor


def best_of_n(
    policy: Policy,
    reward_fn: Callable[[list[str]], torch.Tensor | Sequence[float]],
    prompts: list[str],
    n: int,
    **sampling,
) -> BestOfN:
    """Best-of-n on a language model: y = argmax_i r(x, y_i) over y_1 … y_n ~ π(·∣x) (lecture §best-of-n).

    The n completions per prompt come from ONE batched ``models.generate``; the highest-reward one is kept.

    ``reward_fn`` maps a list of completion texts to one finite score each (e.g. ``rewards.gold_reward(...)``).
    ``sampling`` goes to ``generate`` (max_new_tokens, temperature, top_p, seed, chat, batch_size); batch_size
    defaults to n·len(prompts), i.e. all samples decoded together. Ties go to the first maximum.
    """
    n = check_n(n)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of str (wrap a single prompt in a list)")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (list[str] -> scores); got {type(reward_fn).__name__}")
    P = len(prompts)
    sampling.setdefault("batch_size", n * P)
    repeated = [p for p in prompts for _ in range(n)]  # prompt i fills rows i·n … i·n + n − 1
    gens = generate(policy, repeated, **sampling)
    scores = torch.as_tensor(reward_fn(list(gens.texts)), dtype=torch.float64, device="cpu").reshape(-1)
    if scores.numel() != n * P:
        raise ValueError(f"reward_fn returned {scores.numel()} scores for {n * P} texts; it must return one per text")
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).nonzero()[0])
        raise ValueError(
            f"reward_fn must return finite scores; text {bad} ({gens.texts[bad]!r}) scored {scores[bad].item()}"
        )
    scores = scores.reshape(P, n)
    best = torch.argmax(scores, dim=1)  # first maximum on ties
    texts = [gens.texts[i * n : (i + 1) * n] for i in range(P)]
    return BestOfN(
        prompts=list(prompts),
        texts=texts,
        completion_ids=[gens.completion_ids[i * n : (i + 1) * n] for i in range(P)],
        scores=scores,
        best_index=best,
        best_texts=[texts[i][int(best[i])] for i in range(P)],
        best_scores=scores[torch.arange(P), best],
    )
