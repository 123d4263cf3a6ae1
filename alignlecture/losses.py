"""What each preference loss converges to: the population optimum of every TRL loss type on one prompt (chapter 8).

One prompt, K responses. A pair (y_i, y_j) is drawn i.i.d. from μ and labelled y_i ≻ y_j with probability
pref[i, j] (pref[j, i] = 1 − pref[i, j]; a response ties itself, pref[i, i] = 1/2). So (chosen, rejected) = (i, j)
with probability P[i, j] = 2 μ_i μ_j pref[i, j], and the population loss of a tabular policy π is
L(π) = Σ_ij P[i, j] · loss(log π_i, log π_j, log π_ref,i, log π_ref,j), each response one token long, computed by
``dpo.dpo_loss`` itself. ``population_optimum`` minimises L over the logits of π in float64 and says when no
finite minimiser exists. Closed forms (tested against it): DPO under Bradley–Terry labels gives π* = π_ref e^{r/β}/Z,
the RLHF optimum; IPO gives π_ref·exp(P(y ≻ μ)/β)/Z for any labels (Azar et al. 2024); SFT gives the chosen
marginal Σ_j P[i, j].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import finite, one_of, outcome_distribution, positive_finite
from .dpo import LOSS_TYPES, smoothed_logistic, check_dpo_args, dpo_loss

SPREAD_LIMIT = 300.0  # nats: log π/π_ref spread beyond this is read as "the minimiser is at infinity"
BOUNDARY_SPREAD = 50.0  # nats: a search that stalls (loss flat to round-off) with a spread beyond this is too
TOLERANCE = 1e-10  # the Newton step (distance to the minimiser, in logits) at which we stop
MAX_STEP = 10.0  # nats: the longest step taken at once (a trust region for flat directions)
ROUNDOFF_SPREAD = -math.log(torch.finfo(torch.float64).eps)  # 36 nats: e^{-36} is below float64's resolution of 1


@dataclass(frozen=True)
class PopulationOptimum:
    """The answer of ``population_optimum`` for one loss type.

    Fields: ``probs`` the minimising policy [K] float64 (None when ``exists`` is False); ``exists`` whether a
    finite minimiser (every π(y) > 0) exists; ``unique`` whether it is the only one (None: not known); ``loss`` the
    population loss there (without a finite minimiser: the lowest value reached); ``grad_norm`` ‖∇_θ L‖ over the
    logits θ at ``probs`` — the certificate (NaN for the piecewise-linear hinge, certified by its LP instead);
    ``step_norm`` the last Newton step, an estimate of the distance to the exact minimiser in logits;
    ``iterations``; ``message`` how it was solved, or why no finite minimiser exists; ``limit`` (only without a
    finite minimiser) the policy where the search stopped: approximately the boundary point of the simplex that the
    infimum is approached at (probabilities below ~1e-20 of their reference are that limit's zeros).
    """

    loss_type: str
    beta: float
    label_smoothing: float
    exists: bool
    probs: torch.Tensor | None
    loss: float
    grad_norm: float
    step_norm: float
    iterations: int
    message: str
    unique: bool | None = True
    limit: torch.Tensor | None = None

    def policy(self) -> torch.Tensor:
        """``probs``, or a ValueError saying why there is none."""
        if not self.exists:
            raise ValueError(f"no finite population optimum for loss_type={self.loss_type!r}: {self.message}")
        return self.probs


# ---------------------------------------------------------------------------------------------- the world
def bradley_terry(rewards) -> torch.Tensor:
    """pref[i, j] = σ(r_i − r_j): Bradley–Terry labels from rewards r [K] (Bradley and Terry 1952)."""
    r = finite(rewards, "rewards")
    return torch.sigmoid(r[:, None] - r[None, :])


def tilted(pi_ref, scores, beta: float) -> torch.Tensor:
    """π_ref·e^{s/β}/Z: the KL-regularised optimum of E_π[s] − β KL(π ‖ π_ref) (π* when s is the reward)."""
    pi_ref = outcome_distribution(pi_ref, "pi_ref")
    return torch.softmax(pi_ref.log() + finite(scores, "scores") / positive_finite(beta, "beta"), dim=-1)


def check_world(pi_ref, mu, pref) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """π_ref and μ: distributions over the same K responses with every entry > 0; pref: [K, K] probabilities with
    pref + prefᵀ = 1 (so pref[i, i] = 1/2). Returns them as float64."""
    pi_ref, mu = outcome_distribution(pi_ref, "pi_ref"), outcome_distribution(mu, "mu")
    if pi_ref.dim() != 1 or mu.shape != pi_ref.shape:
        raise ValueError(f"pi_ref and mu must be 1-D distributions over the same K responses; got shapes "
                         f"{tuple(pi_ref.shape)} and {tuple(mu.shape)}")
    for name, p in (("pi_ref", pi_ref), ("mu", mu)):
        if bool((p <= 0).any()):
            why = ("log π/π_ref is undefined there" if name == "pi_ref" else
                   "pairs never show those responses, so the loss leaves their probability undetermined")
            raise ValueError(f"{name} must be > 0 for every response ({why}); got 0 at "
                             f"{(p <= 0).nonzero()[:, 0].tolist()}: drop those responses first")
    k = len(mu)
    pref = finite(pref, "pref")
    if pref.shape != (k, k) or bool(((pref < 0) | (pref > 1)).any()):
        raise ValueError(f"pref must be a [{k}, {k}] matrix of probabilities P(y_i ≻ y_j); got shape "
                         f"{tuple(pref.shape)} with values in [{float(pref.min()):g}, {float(pref.max()):g}]")
    bad = (pref + pref.T - 1).abs() > 1e-9
    if bool(bad.any()):
        i, j = bad.nonzero()[0].tolist()
        raise ValueError(f"pref must satisfy pref[i, j] + pref[j, i] = 1 (a pair has one winner; a response ties "
                         f"itself, pref[i, i] = 1/2); got pref[{i}, {j}] = {float(pref[i, j]):g} and pref[{j}, {i}] = "
                         f"{float(pref[j, i]):g}")
    return pi_ref, mu, pref


def pair_law(mu, pref) -> torch.Tensor:
    """P[i, j] = 2 μ_i μ_j pref[i, j]: the probability that (chosen, rejected) = (y_i, y_j); it sums to 1."""
    return 2 * mu[:, None] * mu[None, :] * pref


def win_rate(mu, pref) -> torch.Tensor:
    """P(y_i ≻ μ) = Σ_j μ_j pref[i, j], [K]: how often y_i beats a response drawn from μ."""
    return pref @ mu


# ---------------------------------------------------------------------------------------------- the objective
def _coupled(a, wa, b, wb) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantile coupling of two weighted samples (a, wa), (b, wb): the differences a − b of the atoms that share each
    quantile slice, and the slices' masses — what sorting both halves of a batch does as the batch grows."""
    ia, ib = torch.argsort(a.detach()), torch.argsort(b.detach())
    ca, cb = torch.cumsum(wa[ia], 0), torch.cumsum(wb[ib], 0)
    cuts = torch.cat([torch.zeros(1, dtype=a.dtype), torch.sort(torch.cat([ca, cb])).values.clamp(max=1.0)])
    mass, mid = cuts.diff(), (cuts[1:] + cuts[:-1]) / 2
    ka = torch.searchsorted(ca, mid).clamp(max=len(a) - 1)
    kb = torch.searchsorted(cb, mid).clamp(max=len(b) - 1)
    return a[ia][ka] - b[ib][kb], mass


def population_loss(logits, pi_ref, mu, pref, beta: float, loss_type: str, label_smoothing: float = 0.0,
                    discopop_tau: float = 0.05) -> torch.Tensor:
    """L(π) = E_{(y_w, y_l) ~ P} loss(y_w, y_l) for π = softmax(logits), each response one token (module doc).

    For the batch-level 'aot' losses, the infinite-batch limit: sorting the batch couples quantile with quantile.
    """
    logp, ref = torch.log_softmax(logits, -1), pi_ref.log()
    weights = pair_law(mu, pref)
    k = len(logp)
    i, j = torch.arange(k).repeat_interleave(k), torch.arange(k).repeat(k)  # every ordered pair (i, j)
    if loss_type == "aot":  # sort(log π_w − log π_l) against sort(log π_ref,w − log π_ref,l)
        delta, mass = _coupled(logp[i] - logp[j], weights.reshape(-1), ref[i] - ref[j], weights.reshape(-1))
        return (mass * smoothed_logistic(beta * delta, label_smoothing)).sum()
    if loss_type == "aot_unpaired":  # sort(ρ_w) against sort(ρ_l): the chosen and rejected marginals
        rho = logp - ref
        delta, mass = _coupled(rho, weights.sum(1), rho, weights.sum(0))
        return (mass * smoothed_logistic(beta * delta, label_smoothing)).sum()
    ones = torch.ones(k * k, dtype=logp.dtype)
    losses, _, _ = dpo_loss(logp[i], logp[j], ref[i], ref[j], beta=beta, loss_type=loss_type,
                            label_smoothing=label_smoothing, chosen_tokens=ones, rejected_tokens=ones,
                            discopop_tau=discopop_tau)
    return (weights.reshape(-1) * losses).sum()


# ---------------------------------------------------------------------------------------------- the solvers
def _newton(f, x0: torch.Tensor, ref_logp: torch.Tensor, max_iter: int, beta: float = 1.0) -> dict:
    """Minimise f over logits x (f(x + c) = f(x)) by Newton's method on the complement of the constant direction,
    eigenvalues taken in absolute value (saddle-free), steps at most MAX_STEP long, Armijo backtracking up to
    round-off (so a loss that flattens out below float64's resolution is still followed to infinity). β: the
    scale at which the loss reads log-ratios (σ(β·…)), so that a loss saturated at β·spread > 36 counts as flat."""
    k = len(x0)
    basis = torch.linalg.svd(torch.eye(k, dtype=torch.float64) - 1.0 / k).U[:, : k - 1]  # orthonormal, ⟂ 1
    x, step_norm = x0.clone(), math.inf
    for it in range(1, max_iter + 1):
        xg = x.clone().requires_grad_(True)
        value = f(xg)
        (grad,) = torch.autograd.grad(value, xg)
        value = value.detach()
        hess = torch.autograd.functional.hessian(f, x)
        g, h = basis.T @ grad, basis.T @ hess @ basis
        lam, vec = torch.linalg.eigh(h)
        floor = 1e-14 * max(float(lam.abs().max()), 1e-300)
        d = -(vec @ ((vec.T @ g) / lam.abs().clamp(min=floor)))
        step_norm = float(d.norm())
        if not math.isfinite(step_norm) or step_norm > MAX_STEP:  # a flat direction: walk MAX_STEP along it
            d = torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
            d = d if float(d.norm()) > 0 else -g
            d = d * (MAX_STEP / float(d.norm()))
        spread = float((x - ref_logp).max() - (x - ref_logp).min())
        if step_norm < TOLERANCE and bool((lam > 0).all()):
            return dict(x=x, value=float(value), grad=float(grad.norm()), step=step_norm, it=it, status="converged")
        # the loss is flat to round-off with some π(y)/π_ref(y) already below e^{-36}: those responses are on their
        # way to 0 (the loss and its curvature vanish as they go, so Newton alone would crawl there for ever)
        flat = float(grad.norm()) <= 64 * torch.finfo(torch.float64).eps * max(1.0, abs(float(value)))
        if spread > SPREAD_LIMIT or (flat and spread * max(1.0, beta) > ROUNDOFF_SPREAD):
            return dict(x=x, value=float(value), grad=float(grad.norm()), step=step_norm, it=it, status="diverged")
        t, slope = 1.0, float(g @ d)
        while t > 1e-12:
            with torch.no_grad():
                new = f(x + t * (basis @ d))
            if float(new) <= float(value) + 1e-4 * t * slope + 8 * torch.finfo(torch.float64).eps * abs(float(value)):
                break
            t /= 2
        else:
            return dict(x=x, value=float(value), grad=float(grad.norm()), step=step_norm, it=it, status="stalled")
        x = x + t * (basis @ d)
    return dict(x=x, value=float(value), grad=float(grad.norm()), step=step_norm, it=max_iter, status="max_iter")


def _hinge_lp(pi_ref, weights, beta: float) -> dict:
    """Population hinge loss Σ P_ij max(0, 1 − β(u_i − u_j)), u = log π/π_ref + c, as a linear program (scipy's
    HiGHS); then the range of each u over the optimal face, to tell a unique minimiser from a set of them."""
    import numpy as np
    from scipy.optimize import linprog

    k = len(pi_ref)
    w = weights.numpy()
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j and w[i, j] > 0]
    n = k + len(pairs)  # variables: u (u_0 = 0) then one slack s_ij ≥ 0 per pair
    a_ub = np.zeros((len(pairs), n))
    for row, (i, j) in enumerate(pairs):  # 1 − β(u_i − u_j) ≤ s_ij
        a_ub[row, i], a_ub[row, j], a_ub[row, k + row] = -beta, beta, -1.0
    cost = np.concatenate([np.zeros(k), [w[i, j] for i, j in pairs]])
    bounds = [(0, 0)] + [(None, None)] * (k - 1) + [(0, None)] * len(pairs)
    lp = dict(A_ub=a_ub, b_ub=-np.ones(len(pairs)), bounds=bounds, method="highs")
    best = linprog(cost, **lp)
    if best.status != 0:
        raise RuntimeError(f"the hinge LP failed: {best.message}")
    face = dict(lp, A_ub=np.vstack([a_ub, cost]), b_ub=np.concatenate([lp["b_ub"], [best.fun + 1e-10]]))
    width = 0.0
    for i in range(1, k):
        e = np.zeros(n)
        e[i] = 1.0
        lo, hi = linprog(e, **face), linprog(-e, **face)
        width = math.inf if 3 in (lo.status, hi.status) else max(width, -hi.fun - lo.fun)
    u = torch.as_tensor(best.x[:k], dtype=torch.float64)
    return dict(u=u, value=float(best.fun + torch.diagonal(weights).sum()), width=width)


def population_optimum(pi_ref, mu, pref, beta: float, loss_type: str, label_smoothing: float = 0.0, *,
                       discopop_tau: float = 0.05, max_iter: int = 300) -> PopulationOptimum:
    """argmin_π E_{y, y' ~ μ, label ~ pref} loss_type(π) over tabular policies π on K responses (module doc).

    ``pi_ref``, ``mu``: [K] distributions with every entry > 0; ``pref[i, j]`` = P(y_i ≻ y_j), pref + prefᵀ = 1;
    β, ε (``label_smoothing``) and τ as in ``dpo.dpo_loss`` (β is IPO's τ, so IPO's optimum is
    π_ref·exp(P(y ≻ μ)/β)/Z). Newton's method on the logits of π in float64 from π = π_ref, to a Newton step
    below 1e-10 with a positive definite Hessian: ``probs`` are then exact to ~1e-10 and ``grad_norm`` certifies
    them. When the loss keeps falling as log π/π_ref spreads (past 300 nats, or past 50 nats when the decrease
    falls below float64's resolution before Newton converges), there is no finite minimiser: the result has
    ``exists=False``, ``probs=None``, ``limit`` and a message naming the responses whose probability goes to 0.
    'hinge' is piecewise linear: solved as a linear program (needs scipy), ``unique`` says whether the optimal set
    is one point. The non-convex losses (exo_pair, discopop, apo_*) report the minimiser Newton reaches from
    π_ref, a local one in general. 'aot'/'aot_unpaired' raise NotImplementedError: their infinite-batch loss
    (``population_loss``) is piecewise smooth with lower minima on its kinks, where Newton cannot certify anything.
    """
    one_of(loss_type, "loss_type", LOSS_TYPES)
    if loss_type in ("aot", "aot_unpaired"):
        raise NotImplementedError(
            f"population_optimum does not solve {loss_type!r}: sorting the batch makes its population loss (the "
            "quantile coupling in population_loss) piecewise smooth and non-convex, with its lowest values on the "
            "kinks where two responses' margins tie; minimise population_loss with a derivative-free method instead")
    check_dpo_args(beta, loss_type, label_smoothing, discopop_tau=discopop_tau)
    pi_ref, mu, pref = check_world(pi_ref, mu, pref)
    ref_logp = pi_ref.log()
    common = dict(loss_type=loss_type, beta=float(beta), label_smoothing=float(label_smoothing))
    if loss_type == "hinge":
        lp = _hinge_lp(pi_ref, pair_law(mu, pref), beta)
        probs = torch.softmax(ref_logp + lp["u"], -1)
        unique = lp["width"] < 1e-7
        what = "the only minimiser" if unique else (
            "one vertex of an unbounded optimal set (some margins can grow for free)" if lp["width"] == math.inf
            else f"one vertex of an optimal set (log-ratios vary by up to {lp['width']:.3g} nats across it)")
        return PopulationOptimum(**common, exists=True, probs=probs, loss=lp["value"], grad_norm=math.nan,
                                 step_norm=0.0, iterations=1, unique=unique,
                                 message=f"piecewise-linear loss solved as a linear program (HiGHS): {what}")

    def f(x):
        return population_loss(x, pi_ref, mu, pref, beta, loss_type, label_smoothing, discopop_tau)

    out = _newton(f, ref_logp.clone(), ref_logp, max_iter, beta)
    probs = torch.softmax(out["x"], -1)
    stats = dict(loss=out["value"], grad_norm=out["grad"], step_norm=out["step"], iterations=out["it"])
    if out["status"] == "converged":
        return PopulationOptimum(**common, exists=True, probs=probs, **stats, message=(
            f"Newton converged in {out['it']} steps: Newton step {out['step']:.1e}, gradient norm {out['grad']:.1e}, "
            "Hessian positive definite"))
    rho = out["x"] - ref_logp
    spread = float(rho.max() - rho.min())
    if out["status"] == "diverged" or spread > BOUNDARY_SPREAD:
        vanishing = (rho < rho.max() - BOUNDARY_SPREAD / 2).nonzero()[:, 0].tolist()
        return PopulationOptimum(**common, exists=False, probs=None, **stats, unique=None, limit=probs, message=(
            f"no finite minimiser: the loss keeps decreasing (down to round-off) as log π/π_ref spreads "
            f"({spread:.0f} nats when the search stopped); the infimum is approached as π(y) → 0 for responses "
            f"{vanishing}"))
    raise RuntimeError(f"population_optimum did not converge for loss_type={loss_type!r} ({out['status']} after "
                       f"{out['it']} steps, last Newton step {out['step']:.1e}); raise max_iter or report it")


# ---------------------------------------------------------------------------------------------- the chapter's table
def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p ‖ q) = Σ p log(p/q) in nats (0 log 0 = 0)."""
    p, q = outcome_distribution(p, "p"), outcome_distribution(q, "q")
    return float(torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p)).sum())


def optimum_row(pi_ref, mu, pref, rewards, beta: float, loss_type: str, label_smoothing: float = 0.0,
                **kw) -> dict:
    """One row of chapter 8's table: the population optimum of ``loss_type`` compared with π* = π_ref e^{r/β}/Z
    (``rewards`` r [K] the gold reward): whether a finite optimum exists, KL(π ‖ π*), the expected gold reward
    E_π[r] (and π*'s), KL(π ‖ π_ref), the certificate. Without a finite optimum the numbers are NaN; for the
    'aot' losses, which ``population_optimum`` does not solve, ``exists`` is None and the message says why."""
    r = finite(rewards, "rewards")
    star = tilted(pi_ref, r, beta)
    try:
        result = population_optimum(pi_ref, mu, pref, beta, loss_type, label_smoothing, **kw)
    except NotImplementedError as exc:
        return {"loss_type": loss_type, "exists": None, "unique": None, "kl_to_star": math.nan,
                "gold_reward": math.nan, "star_gold_reward": float(star @ r), "kl_to_ref": math.nan,
                "grad_norm": math.nan, "message": str(exc)}
    p = result.probs
    nan = math.nan
    return {
        "loss_type": loss_type, "exists": result.exists, "unique": result.unique,
        "kl_to_star": kl(p, star) if p is not None else nan,
        "gold_reward": float(p @ r) if p is not None else nan,
        "star_gold_reward": float(star @ r),
        "kl_to_ref": kl(p, pi_ref) if p is not None else nan,
        "grad_norm": result.grad_norm, "message": result.message,
    }


# ---------------------------------------------------------------------------------------------- the first step
CASES = ("1: w↑ l↓", "2: both ↓", "3: both ↑", "4: w↓ l↑")  # chapter 4's three cases, and the one DPO never takes


def first_step_changes(pi_ref, mu, pref, beta: float, loss_type: str, label_smoothing: float = 0.0, *,
                       discopop_tau: float = 0.05) -> torch.Tensor:
    """Δ log π(y) per unit step size, [K] float64, for the first step of gradient descent on the population loss
    from π = π_ref: the logits move by Δθ = −∇_θ L(π_ref) and, to first order, Δ log π(y) = ⟨Δθ, e_y − π_ref⟩ (the
    softmax's ∇_θ log π(y)). The step of a large batch drawn from the pair law: it mixes every pair's push."""
    one_of(loss_type, "loss_type", LOSS_TYPES)
    check_dpo_args(beta, loss_type, label_smoothing, discopop_tau=discopop_tau)
    pi_ref, mu, pref = check_world(pi_ref, mu, pref)
    k = len(pi_ref)
    if loss_type == "aot_unpaired":
        raise ValueError("'aot_unpaired' has no first step from π = π_ref: every log π/π_ref is 0 there, so sorting "
                         "the chosen and the rejected log-ratios ties them all and the loss has a kink, not a gradient")
    if loss_type == "aot":
        margins = (pi_ref.log()[:, None] - pi_ref.log()[None, :])[~torch.eye(k, dtype=torch.bool)]
        if len(torch.unique(margins)) < len(margins):
            raise ValueError("'aot' has no first step from this π_ref: two pairs of responses have the same reference "
                             "margin, so sorting ties them and the loss has a kink there; perturb π_ref")
    logits = pi_ref.log().clone().requires_grad_(True)
    loss = population_loss(logits, pi_ref, mu, pref, beta, loss_type, label_smoothing, discopop_tau)
    (grad,) = torch.autograd.grad(loss, logits)
    step = -grad
    return step - step @ pi_ref  # ⟨Δθ, e_y − π⟩ for every y at once


def first_step_cases(pi_ref, mu, pref, beta: float, loss_type: str, label_smoothing: float = 0.0, *,
                     discopop_tau: float = 0.05) -> torch.Tensor:
    """Chapter 4's case frequencies at the first step (``first_step_changes``): the pair-law mass of the pairs of
    distinct responses (chosen y_w, rejected y_l) whose first-order changes fall in case 1 (Δw ≥ 0 ≥ Δl), 2 (both
    fall), 3 (both rise) or 4 (Δw < 0 < Δl: the margin shrinks, which DPO's step never does), [4] float64 summing
    to 1. A change within round-off of zero (64 ulps of the largest change) counts as zero, so a tie is case 1."""
    delta = first_step_changes(pi_ref, mu, pref, beta, loss_type, label_smoothing, discopop_tau=discopop_tau)
    delta = torch.where(delta.abs() <= 64 * torch.finfo(delta.dtype).eps * float(delta.abs().max()), 0.0, delta)
    w, l = delta[:, None], delta[None, :]  # [K, 1] chosen, [1, K] rejected
    case = torch.where((w >= 0) & (l <= 0), 0, torch.where((w < 0) & (l > 0), 3, torch.where(w < 0, 1, 2)))
    law = pair_law(*check_world(pi_ref, mu, pref)[1:]).clone().fill_diagonal_(0.0)  # distinct responses only
    return torch.zeros(4, dtype=torch.float64).index_add_(0, case.reshape(-1), law.reshape(-1)) / law.sum()
