"""Online DPO on a one-prompt bandit: how the sampler of the pairs sets the speed (Shi, Zhou & Du, 2024).

One prompt, K responses with rewards r_i, a uniform reference, a tabular policy π_θ = softmax(θ), float64.
Labels follow Bradley–Terry, p_ij = σ(r_i − r_j). The *population* DPO loss under a pair distribution W
(computed from the current θ, then held fixed for the step) is

    L(θ) = −Σ_ij W_ij [p_ij log σ(βΔ_ij) + (1 − p_ij) log σ(−βΔ_ij)],   Δ_ij = log π_θ(i) − log π_θ(j),

and its minimiser is π* ∝ exp(r/β). Because log π_θ(i) = θ_i − log Σ_k e^{θ_k}, Δ_ij = θ_i − θ_j: the gradient
needs no autograd. Samplers (``SAMPLERS``): uniform pairs, on-policy pairs π_θ ⊗ π_θ, and the two mixtures of
the paper, whose weights 1/(σσ′) divide out the curvature of each pair's loss (a Gauss–Newton step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import finite, one_of, positive_finite, positive_int

SAMPLERS = ("uniform", "on-policy", "mix-r", "mix-p")


@dataclass
class OnlineRun:
    """One run: the logits θ_t [steps+1, K] and the gap to π* [steps+1] at every step t = 0 … steps.

    Attributes:
        logits: float64 [steps+1, K], θ_t after t steps; row 0 is θ_0 = 0 (π_ref uniform), π_θ = softmax(θ).
        gap: float64 [steps+1], ``gap(θ_t)`` = (1/K²) Σ_ij ∣v_i − v_j∣ with v = r − β log π_θ; 0 exactly at π*.
        sampler: the pair sampler, one of ``SAMPLERS``.
        beta: β, the KL coefficient of the DPO loss.
        lr: the learning rate of θ ← θ − lr·∇L(θ).
        num_pairs: pairs drawn per step in a sampled run; None for the exact population gradient.
    """

    logits: torch.Tensor
    gap: torch.Tensor
    sampler: str
    beta: float
    lr: float
    num_pairs: int | None = None


# ---------------------------------------------------------------------------------------------- checks
def check_bandit(rewards, beta) -> tuple[torch.Tensor, float]:
    """The rewards as a finite float64 vector of K ≥ 2 responses, and β > 0."""
    r = finite(rewards, "rewards")
    if r.dim() != 1 or r.numel() < 2:
        raise ValueError(
            f"rewards must be a 1-D tensor with one reward per response, K ≥ 2 of them (a preference needs two "
            f"responses); got shape {tuple(r.shape)}"
        )
    return r, positive_finite(beta, "beta", "the KL coefficient")


def _check_run(rewards, beta, sampler, steps, lr):
    r, beta = check_bandit(rewards, beta)
    one_of(sampler, "sampler", SAMPLERS)
    steps = positive_int(steps, "steps", minimum=0, meaning="number of gradient steps")
    lr = positive_finite(lr, "lr", "the learning rate")
    return r, beta, steps, lr


# ---------------------------------------------------------------------------------------------- the loss
def preference(rewards: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry preference p_ij = σ(r_i − r_j), [K, K]."""
    return torch.sigmoid(rewards[:, None] - rewards[None, :])


def _p_times_1_minus_p(p: torch.Tensor) -> torch.Tensor:
    """p_ij(1 − p_ij) = σ(r_i − r_j)σ(r_j − r_i) = p_ij·p_ji, [K, K]: the product of two sigmoids keeps every
    digit, where 1 − p_ij cancels as p_ij → 1 (relative error 4e-6 at a reward gap of 25, 1 − p_ij = 0 past 37)."""
    return p * p.T


def _weights(sampler: str, logits: torch.Tensor, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Unnormalised pair weights from the logits, p_ij and x_ij = βΔ_ij, [K, K] (symmetric)."""
    if sampler == "uniform":
        return torch.ones_like(x)
    if sampler == "on-policy":
        pi = torch.softmax(logits, dim=-1)
        return pi[:, None] * pi[None, :]
    if sampler == "mix-r":
        return 1 / _p_times_1_minus_p(p)
    if sampler == "mix-p":
        # 1/(σ(x)σ(−x)) = (1 + e^−x)(1 + e^x) = 2 + 2 cosh x: no cancellation, where 1/(s − s²) with s = σ(x)
        # near 1 loses digits (relative error ≈ 1e-16 / (1 − s): 4e-10 at βΔ = 15)
        return 2 + 2 * torch.cosh(x)
    one_of(sampler, "sampler", SAMPLERS)


def pair_weights(logits: torch.Tensor, p: torch.Tensor, beta: float, sampler: str) -> torch.Tensor:
    """The sampler's pair distribution W_ij ∝ 1 (uniform), π_θ(i)π_θ(j) (on-policy), 1/(p_ij(1 − p_ij)) (mix-r)
    or 1/(σ(βΔ_ij)σ(−βΔ_ij)) (mix-p), Tensor [K, K] normalised to sum 1.

    Δ_ij = log π_θ(i) − log π_θ(j) at the current logits; W is held fixed for the gradient step. ``p`` is a
    Bradley–Terry matrix (``preference``: p + pᵀ = 1), which mix-r's weight relies on (p_ij(1 − p_ij) = p_ij·p_ji).
    """
    w = _weights(sampler, logits, p, beta * (logits[:, None] - logits[None, :]))
    return w / w.sum()


def population_loss(logits, p, beta, weights) -> torch.Tensor:
    """L(θ) = −Σ_ij W_ij [p_ij log σ(βΔ_ij) + (1 − p_ij) log σ(−βΔ_ij)], differentiable (autograd reference)."""
    logp = torch.log_softmax(logits, dim=-1)
    delta = logp[:, None] - logp[None, :]
    F = torch.nn.functional
    return -(weights * (p * F.logsigmoid(beta * delta) + (1 - p) * F.logsigmoid(-beta * delta))).sum()


def population_gradient(logits: torch.Tensor, p: torch.Tensor, beta: float, sampler: str) -> torch.Tensor:
    """∇_θ L with W = W(θ) held fixed, in closed form, [K].

    ∂L/∂Δ_ij = G_ij = W_ij·β(σ(βΔ_ij) − p_ij), and Δ_ij = θ_i − θ_j, so ∇_k = Σ_j G_kj − Σ_i G_ik = 2 Σ_j G_kj
    (W is symmetric and σ(βΔ) − p antisymmetric, so G is antisymmetric).
    """
    b = beta * logits
    x = b[:, None] - b[None, :]  # βΔ_ij
    s = torch.sigmoid(x)
    W = _weights(sampler, logits, p, x)  # unnormalised; ΣW below normalises it
    return (2 * beta / W.sum()) * (W * (s - p)).sum(dim=1)


def gap(logits: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """(1/K²) Σ_ij ∣(r_i − β log π(i)) − (r_j − β log π(j))∣ for logits [..., K]; 0 exactly at π* ∝ exp(r/β)."""
    v = rewards - beta * torch.log_softmax(logits, dim=-1)  # [..., K]
    return (v[..., :, None] - v[..., None, :]).abs().mean(dim=(-2, -1))


# ---------------------------------------------------------------------------------------------- runs
def tabular_online_dpo(rewards, beta: float, sampler: str, steps: int, lr: float) -> OnlineRun:
    """Gradient descent θ ← θ − lr·∇L(θ) from θ = 0 (π_ref uniform), the sampler's W recomputed every step."""
    r, beta, steps, lr = _check_run(rewards, beta, sampler, steps, lr)
    p = preference(r)
    logits = torch.zeros(steps + 1, r.numel(), dtype=torch.float64, device=r.device)
    for t in range(steps):
        logits[t + 1] = logits[t] - lr * population_gradient(logits[t], p, beta, sampler)
    return OnlineRun(logits, gap(logits, r, beta), sampler, beta, lr)


def sampled_gradient(logits, beta, i, j, labels) -> torch.Tensor:
    """∇_θ of the mean loss −log σ(β·s·Δ_ij) over drawn pairs (i, j) with labels (1: i preferred, s = ±1)."""
    scale = beta * (torch.sigmoid(beta * (logits[i] - logits[j])) - labels) / i.numel()  # ∂loss/∂Δ per pair
    return torch.zeros_like(logits).index_add_(0, i, scale).index_add_(0, j, -scale)


def sampled_online_dpo(rewards, beta: float, sampler: str, steps: int, lr: float, num_pairs: int,
                       seed: int = 0) -> OnlineRun:
    """The same descent with ``num_pairs`` pairs drawn from W per step and Bernoulli(p_ij) labels (unbiased)."""
    r, beta, steps, lr = _check_run(rewards, beta, sampler, steps, lr)
    num_pairs = positive_int(num_pairs, "num_pairs", meaning="pairs drawn per step")
    gen = torch.Generator().manual_seed(seed)
    K, p = r.numel(), preference(r)
    logits = torch.zeros(steps + 1, K, dtype=torch.float64, device=r.device)
    for t in range(steps):
        theta = logits[t]
        i, j, labels = _draw_pairs(pair_weights(theta, p, beta, sampler), p, num_pairs, gen)
        logits[t + 1] = theta - lr * sampled_gradient(theta, beta, i, j, labels)
    return OnlineRun(logits, gap(logits, r, beta), sampler, beta, lr, num_pairs)


def _draw_pairs(weights: torch.Tensor, p: torch.Tensor, num_pairs: int, gen: torch.Generator):
    """``num_pairs`` pairs (i, j) ~ W with Bernoulli(p_ij) labels, drawn on the CPU ``gen`` (the same draws
    whatever the device), returned on p's device: (i, j, labels), each [num_pairs]."""
    K = p.shape[0]
    flat = torch.multinomial(weights.reshape(-1).cpu(), num_pairs, replacement=True, generator=gen)
    i, j = flat // K, flat % K
    labels = torch.bernoulli(p.cpu()[i, j], generator=gen)
    return i.to(p.device), j.to(p.device), labels.to(p.device)


# ---------------------------------------------------------------------------------------------- rates
def newton_lr(rewards, beta: float) -> float:
    """η* = Σ_ij 1/(p_ij(1 − p_ij)) / (2β²K): the step size at which a Mix step is Newton's step at π*."""
    r, beta = check_bandit(rewards, beta)
    p = preference(r)
    return float((1 / _p_times_1_minus_p(p)).sum() / (2 * beta**2 * r.numel()))


def hessian_at_optimum(rewards, beta: float, sampler: str) -> torch.Tensor:
    """∇²L at θ* = r/β with W held at W(θ*): Σ_ij A_ij (e_i − e_j)(e_i − e_j)ᵀ, A = W·β²σ′(r_i − r_j), [K, K]."""
    r, beta = check_bandit(rewards, beta)
    one_of(sampler, "sampler", SAMPLERS)
    p = preference(r)
    A = pair_weights(r / beta, p, beta, sampler) * beta**2 * _p_times_1_minus_p(p)
    S = A + A.T
    return torch.diag(S.sum(dim=1)) - S


def local_rate(rewards, beta: float, sampler: str, lr: float) -> float:
    """Predicted linear rate near π*: max ∣1 − lr·λ∣ over the Hessian's eigenvalues λ off the constant direction.

    The step map's Jacobian at θ* is I − lr·∇²L (W's own derivative multiplies σ(βΔ) − p = 0 there). A rate
    ≥ 1 means the optimum repels the iteration; a rate of 0 means faster than linear (quadratic).
    """
    lr = positive_finite(lr, "lr", "the learning rate")
    eig = torch.linalg.eigvalsh(hessian_at_optimum(rewards, beta, sampler))[1:]  # [0]: the constant direction
    return float((1 - lr * eig).abs().max())


def measured_rates(gap: torch.Tensor, *, floor: float = 1e-12, window: int = 5) -> tuple[float, float]:
    """(linear rate, order) read off a gap curve above ``floor``: over the last ``window`` steps before the
    floor, the geometric mean of gap_{t+1}/gap_t and the least-squares slope of log gap_{t+1} on log gap_t."""
    g = finite(gap, "gap").reshape(-1)
    above = int((g > floor).long().cumprod(dim=0).sum())  # leading steps above the floor
    if above < 3:
        raise ValueError(f"need ≥ 3 steps with gap > floor={floor:g} to measure a rate; got {above}")
    logs = g[:above].log()[-(window + 1):]
    x, y = logs[:-1], logs[1:]
    rate = float((y - x).mean().exp())
    xc = x - x.mean()
    order = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return rate, order


# ---------------------------------------------------------------------------------------------- a real LM
LM_SAMPLERS = ("reference", "mix-p")


def sample_pairs(policy, ref_policy, prompts: list[str], sampler: str, *, alpha: float = 0.5, seed: int = 0,
                 max_new_tokens: int = 32) -> tuple[list[str], list[str]]:
    """Two responses per prompt: ``"reference"`` draws both from π_ref (the fixed sampler, DPO-Unif's stand-in);
    ``"mix-p"`` draws, for every other prompt, one response from π^{1+α}π_ref^{−α} and one from π^{1−α}π_ref^{α}
    (chapter 3's logit-mixing decoder: away from π_ref along what training changed, and back), and keeps the
    rest on π_ref — the paper's mixture of a uniform part and a policy-dependent part. The default α = 0.5 is the
    authors' generation script's (logit weights (1.5, −0.5) and (0.5, 0.5)); α = 1 would make the second
    response a plain π_ref sample, since π^0 π_ref^1 = π_ref."""
    from .mixing import generate_mixed
    from .models import generate

    one_of(sampler, "sampler", LM_SAMPLERS)
    alpha = positive_finite(alpha, "alpha", "how far the mix-p sampler extrapolates from π_ref")
    kw = dict(max_new_tokens=max_new_tokens, do_sample=True)
    both = generate(ref_policy, [x for x in prompts for _ in range(2)], seed=seed, **kw).texts
    first, second = both[0::2], both[1::2]
    odd = prompts[1::2]
    if sampler == "mix-p" and odd:
        up = generate_mixed([policy, ref_policy], [1 + alpha, -alpha], odd, seed=seed + 1, **kw).texts
        down = generate_mixed([policy, ref_policy], [1 - alpha, alpha], odd, seed=seed + 2, **kw).texts
        first[1::2], second[1::2] = up, down
    return first, second


def lm_online_dpo(policy, ref_policy, gold, prompts: list[str], eval_prompts: list[str], sampler: str, *,
                  rounds: int, config, alpha: float = 0.5, label_scale: float = 10.0, eval_samples: int = 2,
                  max_new_tokens: int = 32, seed: int = 0) -> dict:
    """Online DPO rounds on an LM: sample pairs, label them with ``gold`` (Bradley–Terry, ``label_scale``), one
    ``train.DPOTrainer`` run against the fixed ``ref_policy``; ``policy`` trains in place. With
    ``config.trainable_layers``, ``ref_policy = train.reference_copy(policy, config)`` is that fixed reference at
    the memory of the trained blocks only (it shares the frozen weights with ``policy``): the same run, bit for bit.

    Returns {"eval": Tensor [rounds+1, len(eval_prompts)] (mean gold reward of ``eval_samples`` samples per
    held-out prompt before round 1 and after each round), "pair_rewards": Tensor [rounds, len(prompts), 2]}.
    """
    from .models import generate
    from .preferences import build_preference_dataset
    from .train import DPOTrainer

    rounds = positive_int(rounds, "rounds")
    eval_samples = positive_int(eval_samples, "eval_samples")

    def evaluate(t):
        texts = generate(policy, [x for x in eval_prompts for _ in range(eval_samples)], seed=seed + 1000 + t,
                         max_new_tokens=max_new_tokens).texts
        return gold(texts).view(len(eval_prompts), eval_samples).mean(dim=1)

    scores, pair_rewards = [evaluate(0)], []
    for t in range(rounds):
        first, second = sample_pairs(policy, ref_policy, prompts, sampler, alpha=alpha, seed=seed + 10 * t,
                                     max_new_tokens=max_new_tokens)
        pair_rewards.append(torch.stack([gold(first), gold(second)], dim=1))
        data = build_preference_dataset(prompts, first, second, gold, scale=label_scale, seed=seed + t)
        DPOTrainer(policy, data, config, ref_policy=ref_policy).train()
        scores.append(evaluate(t + 1))
    return {"eval": torch.stack(scores), "pair_rewards": torch.stack(pair_rewards)}
