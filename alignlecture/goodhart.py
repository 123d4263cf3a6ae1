"""Goodhart's law: optimise a proxy reward harder and harder and watch the gold reward (lecture §Goodhart's law).

"When a measure becomes a target, it ceases to be a good measure." Here the measure is a proxy reward r̂ learned
from a limited set of noisy preferences, the target is the optimised policy, and the gold reward r* is what the
preferences were about. Two ways of pushing on the proxy, both exact over a finite set of responses:

- best-of-n chosen by r̂ (``bon.bon_distribution``), pressure growing with n;
- the KL-regularised optimum π_β ∝ π·exp(r̂/β) (``bon.tilted``), pressure growing as β shrinks.

Gao, Schulman & Hilton (2023) measure pressure by d = √KL(π_opt ‖ π) and fit the gold-reward gain with
R_bon(d) = d(α − β·d) and R_RL(d) = d(α − β·log d); ``fit_gao`` fits both by least squares, with standard errors
and the peak d* of the fitted curve. Their β is a fitted coefficient, not the KL coefficient β of ``bon.tilted``:
in this module it is called ``gao_beta``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ._checks import finite, one_of, positive_int, probability_vector, same_shape
from .bon import PROB_ATOL, bon_distribution_for_each_n, kl_divergence, tilted
from .preferences import sample_preferences
from .rewards import train_reward_model

FORMS = ("bon", "rl")


# ------------------------------------------------------------------------------------------- Gao's forms
def gao_bon(d, alpha: float, gao_beta: float) -> torch.Tensor:
    """R_bon(d) = d·(α − β·d), the best-of-n gold-reward gain at distance d = √KL (Gao et al. 2023; β = gao_beta)."""
    d = check_distances(d)
    return d * (alpha - gao_beta * d)


def gao_rl(d, alpha: float, gao_beta: float) -> torch.Tensor:
    """R_RL(d) = d·(α − β·log d), the RL gold-reward gain at d = √KL, 0 at d = 0 (Gao et al. 2023; β = gao_beta)."""
    d = check_distances(d)
    return alpha * d - gao_beta * torch.xlogy(d, d)  # xlogy(0, 0) = 0: the d → 0 limit


def check_distances(d) -> torch.Tensor:
    """d = √KL: a finite float64 tensor with every entry ≥ 0."""
    d = finite(d, "d")
    if bool((d < 0).any()):
        raise ValueError(f"d = √KL must be ≥ 0; got {d[d < 0][:3].tolist()} among them (pass √KL, not a log)")
    return d


@dataclass
class GaoFit:
    """A least-squares fit of R(d) = d(α − β·d) ("bon") or d(α − β·log d) ("rl") to gold-reward gains.

    Calling it, ``fit(d)``, evaluates the fitted curve.

    Attributes:
        form: "bon" or "rl", which of Gao's laws was fitted.
        alpha: α, the initial slope of the gain, dR/dd at d = 0 (gold-reward units per unit of d).
        gao_beta: Gao's β, how fast the curve bends down — a fitted coefficient, not the KL coefficient β.
        alpha_se: the standard error of α, from σ̂²(XᵀX)⁻¹ with σ̂² = RSS/(m − 2); NaN for m = 2 points.
        gao_beta_se: the standard error of ``gao_beta``, likewise.
        peak: d* maximising the fitted curve (inf if it never turns down, 0 if it never rises).
        peak_se: the delta-method standard error of d* (NaN where d* is 0 or inf).
        peak_gold: the fitted gain R(d*) at the peak (inf where d* is inf).
        residuals: float64 [m], the gains minus the fitted curve at each d.
        r_squared: R² = 1 − RSS/TSS of the fit (NaN when every gain is equal).
    """

    form: str
    alpha: float
    gao_beta: float
    alpha_se: float
    gao_beta_se: float
    peak: float
    peak_se: float
    peak_gold: float
    residuals: torch.Tensor = field(repr=False)
    r_squared: float = float("nan")

    def __call__(self, d) -> torch.Tensor:
        """The fitted curve at ``d``."""
        return (gao_bon if self.form == "bon" else gao_rl)(d, self.alpha, self.gao_beta)


def fit_gao(d, gold, form: str) -> GaoFit:
    """Least-squares α, β (``gao_beta``) of Gao's form ("bon" or "rl") through gold-reward *gains* (R(0) = 0:
    subtract the reference policy's gold reward first), with standard errors and the peak d*."""
    form = one_of(form, "form", FORMS)
    d, gold = check_distances(d).reshape(-1), finite(gold, "gold").reshape(-1)
    same_shape(d, gold, ("d", "gold"))
    if d.numel() < 2:
        raise ValueError(f"fitting α and β needs at least 2 points (d, gold); got {d.numel()}")
    second = d * d if form == "bon" else torch.xlogy(d, d)
    X = torch.stack([d, -second], dim=1)  # [m, 2]: gold ≈ α·d − β·(d² or d log d)
    if int(torch.linalg.matrix_rank(X)) < 2:
        raise ValueError(
            f"d must hold at least two distinct values > 0{' other than 1' if form == 'rl' else ''} to fix α and "
            f"β; got {sorted(set(d.tolist()))[:5]}"
        )
    coef = torch.linalg.lstsq(X, gold[:, None]).solution[:, 0]
    alpha, gao_beta = coef.tolist()
    residuals = gold - X @ coef
    dof = d.numel() - 2
    sigma2 = float(residuals @ residuals) / dof if dof > 0 else math.nan
    cov = sigma2 * torch.linalg.inv(X.T @ X)
    peak, grad = _peak(form, alpha, gao_beta, device=cov.device)
    peak_se = math.sqrt(float(grad @ cov @ grad)) if grad is not None else math.nan
    total = float(((gold - gold.mean()) ** 2).sum())
    fit = GaoFit(form, alpha, gao_beta, math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1]), peak, peak_se, math.nan,
                 residuals, 1 - float(residuals @ residuals) / total if total > 0 else math.nan)
    fit.peak_gold = float(fit(torch.tensor([peak], device=d.device))[0]) if math.isfinite(peak) else math.inf
    return fit


def _peak(form: str, alpha: float, gao_beta: float, device=None):
    """argmax_d R(d) on d ≥ 0 and the gradient of d* in (α, β) on ``device`` (None where d* sits at 0 or ∞)."""
    b = gao_beta
    if alpha <= 0 and b >= 0:
        return 0.0, None  # never rises
    if b <= 0:
        return math.inf, None  # never turns down
    if form == "bon":  # R' = α − 2βd = 0
        peak = alpha / (2 * b)
        return peak, torch.tensor([1 / (2 * b), -alpha / (2 * b**2)], dtype=torch.float64, device=device)
    peak = math.exp(alpha / b - 1)  # R' = α − β(log d + 1) = 0
    return peak, peak * torch.tensor([1 / b, -alpha / b**2], dtype=torch.float64, device=device)


# ------------------------------------------------------------------------------------------- exact curves
@dataclass
class Curve:
    """Optimisation pressure against reward: for each n (or β), KL(π_opt ‖ π), d = √KL, E[proxy], E[gold].

    π_opt is best-of-n chosen by the proxy (``bon_curve``) or the tilted π_β ∝ π·exp(proxy/β) (``rl_curve``);
    every tensor is float64 [L], one entry per pressure, in the order given.

    Attributes:
        method: "bon" (pressure = n) or "rl" (pressure = β, the KL coefficient).
        pressure: the ns or the βs.
        kl: KL(π_opt ‖ π) at each pressure.
        d: √KL, Gao's distance.
        proxy: E_{π_opt}[proxy], the reward being optimised.
        gold: E_{π_opt}[gold], the reward the proxy stands for.
    """

    method: str
    pressure: torch.Tensor
    kl: torch.Tensor
    d: torch.Tensor
    proxy: torch.Tensor
    gold: torch.Tensor


def bon_curve(probs, proxy, gold, ns: Sequence[int]) -> Curve:
    """Best-of-n chosen by the PROXY over a finite π, exactly for every n: KL, d, E[proxy], E[gold] of π_n."""
    p, proxy, gold = check_world(probs, proxy, gold)
    ns = [positive_int(n, "n", meaning="the number of samples best-of-n draws") for n in ns]
    chunks = (bon_distribution_for_each_n(p, proxy, ns[i : i + CHUNK]) for i in range(0, len(ns), CHUNK))
    return _curve("bon", ns, p, chunks, proxy, gold)


def rl_curve(probs, proxy, gold, betas: Sequence[float]) -> Curve:
    """π_β ∝ π·exp(proxy/β), the optimum of the KL-penalised proxy objective, exactly for every β."""
    p, proxy, gold = check_world(probs, proxy, gold)
    return _curve("rl", betas, p, (tilted(p, proxy, b)[None] for b in betas), proxy, gold)


CHUNK = 8  # distributions [CHUNK, K] at a time: small enough to stay in cache, large enough to vectorise


def _curve(method, pressure, p, chunks, proxy, gold) -> Curve:
    kl, e_proxy, e_gold = [], [], []
    for q in chunks:  # q [chunk, K]: π_n (or π_β) for a few n (β)
        kl.append(kl_divergence(q, p.expand_as(q)))
        e_proxy.append(q @ proxy)
        e_gold.append(q @ gold)
    if not kl:
        raise ValueError(f"give at least one {'n' if method == 'bon' else 'β'} to trace the curve")
    kl = torch.cat(kl)
    pressure = torch.tensor([float(x) for x in pressure], dtype=torch.float64, device=kl.device)
    return Curve(method, pressure, kl, kl.sqrt(), torch.cat(e_proxy), torch.cat(e_gold))


def check_world(probs, proxy, gold):
    """probs: one distribution [K] (sums to 1 within bon.PROB_ATOL); proxy, gold: one finite value per response."""
    p = probability_vector(probs, "probs", atol=PROB_ATOL)
    if p.dim() != 1 or p.numel() == 0:
        raise ValueError(f"probs must be one distribution over K ≥ 1 responses, shape [K]; got {tuple(p.shape)}")
    proxy, gold = finite(proxy, "proxy"), finite(gold, "gold")
    same_shape(p, proxy, ("probs", "proxy"))
    same_shape(p, gold, ("probs", "gold"))
    return p / p.sum(), proxy, gold


# ------------------------------------------------------------------------------------------- proxies
def word_features(world, pairs: bool = True) -> torch.Tensor:
    """What a small reward model sees of a toy response: its token counts and (if ``pairs``) its adjacent-pair
    counts, float32 [N, (V−1) + (V−1)²] or [N, V−1] (eos excluded)."""
    y, toks = world.responses, range(1, world.vocab_size)
    unigrams = [(y == a).sum(1) for a in toks]
    bigrams = [((y[:, :-1] == a) & (y[:, 1:] == b)).sum(1) for a in toks for b in toks] if pairs else []
    return torch.stack(unigrams + bigrams, dim=1).float()


def preference_pairs(probs, gold, num_pairs: int, *, scale: float = 1.0, seed: int = 0):
    """N pairs y1, y2 ~ π i.i.d., labelled by a Bradley–Terry annotator on the gold reward: (chosen, rejected)
    index tensors [N]."""
    p, gold, _ = check_world(probs, gold, gold)
    num_pairs = positive_int(num_pairs, "num_pairs", meaning="how many labelled comparisons the proxy learns from")
    gen = torch.Generator().manual_seed(int(seed))  # drawn on the CPU: the same pairs whatever p's device
    drawn = torch.multinomial(p.cpu(), 2 * num_pairs, replacement=True, generator=gen).to(p.device)
    y1, y2 = drawn.view(2, num_pairs)
    label_seed = int(torch.randint(2**62, (1,), generator=gen, device="cpu"))  # not `seed`: that stream drew y1, y2
    first = sample_preferences(gold[y1], gold[y2], scale=scale, seed=label_seed)
    return torch.where(first, y1, y2), torch.where(first, y2, y1)


def fit_proxy(features: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, **train) -> torch.Tensor:
    """The proxy r̂ = a ``rewards.RewardModel`` fitted by Bradley–Terry to the pairs, evaluated on every
    response: float64 [N]. ``train`` goes to ``rewards.train_reward_model``."""
    model, _ = train_reward_model(features[chosen], features[rejected], **train)
    with torch.no_grad():
        return model(features).double()


def ensemble(proxies, probs, how: str = "mean") -> torch.Tensor:
    """Combine reward models (Coste et al. 2023): standardise each under π (mean 0, sd 1), then take the
    ``"mean"`` or the conservative ``"min"`` over members. ``proxies`` [members, N] → [N]."""
    how = one_of(how, "how", ("mean", "min"))
    r = finite(proxies, "proxies")
    p = probability_vector(probs, "probs", atol=PROB_ATOL)
    if r.dim() != 2 or r.shape[1] != p.numel():
        raise ValueError(f"proxies must be [members, N={p.numel()}] (one row per reward model); got {tuple(r.shape)}")
    mean = r @ p  # [members]
    sd = (((r - mean[:, None]) ** 2) @ p).sqrt().clamp(min=1e-12)
    z = (r - mean[:, None]) / sd[:, None]
    return z.mean(dim=0) if how == "mean" else z.min(dim=0).values

