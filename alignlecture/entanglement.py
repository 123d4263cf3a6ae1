"""Gradient entanglement in DPO (lecture §Rethinking DPO; Yuan et al. 2024): one SGD step on the DPO loss
moves log π(y_w) and log π(y_l) by amounts that depend on both gradients.

With ∇w = ∇_θ log π_θ(y_w|x), ∇l = ∇_θ log π_θ(y_l|x) and c = ηβσ(r̂_l − r̂_w), the step is
Δθ = c(∇w − ∇l), and to first order Δ log π_w = c(‖∇w‖² − ⟨∇w, ∇l⟩), Δ log π_l = c(⟨∇w, ∇l⟩ − ‖∇l‖²).
Their difference c‖∇w − ∇l‖² is never negative, so every pair falls into one of the lecture's three cases.

Toy world: :func:`tabular_gradients` gives every ∇ log π(y) exactly. Real models: :class:`PairGradients`
gives per-pair gradients over the top k blocks of a Llama-family LM, one forward+backward per response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import finite, nonzero_norms, positive_finite, positive_int, same_shape
from .toy import DTYPE, TabularPolicy


# ---------------------------------------------------------------------------------------------- the formulas
def tabular_gradients(pi: TabularPolicy, responses: torch.Tensor) -> torch.Tensor:
    """∂ log π(y)/∂θ for π(·|s) = softmax(θ[s]) at θ = log table: Σ_t (e_{s_t,y_t} − π(·|s_t)), Tensor [M, P·V]."""
    nodes, mask = _encoded(pi, responses)  # [M, T] prefix row of each position, which positions are actions
    y = responses.to(device=pi.world.device, dtype=torch.long)
    per_step = F.one_hot(y, pi.world.vocab_size).to(DTYPE) - pi.log_table.exp()[nodes]  # [M, T, V]
    per_step = per_step * mask[..., None]
    g = torch.zeros(y.shape[0], pi.world.num_prefixes, pi.world.vocab_size, dtype=DTYPE, device=y.device)
    g.scatter_add_(1, nodes[..., None].expand_as(per_step), per_step)  # each prefix row visited at most once
    return g.reshape(y.shape[0], -1)


@dataclass
class FirstOrder:
    """The lecture's first-order terms per pair, per unit step size c (all float64, shape [...])."""

    delta_chosen: torch.Tensor  # ‖∇w‖² − ⟨∇w, ∇l⟩
    delta_rejected: torch.Tensor  # ⟨∇w, ∇l⟩ − ‖∇l‖²
    inner: torch.Tensor  # ⟨∇w, ∇l⟩
    cos: torch.Tensor  # ⟨∇w, ∇l⟩ / (‖∇w‖‖∇l‖); 0 where a gradient is zero (its inner product is 0 too)
    sq_chosen: torch.Tensor  # ‖∇w‖²
    sq_rejected: torch.Tensor  # ‖∇l‖²
    case: torch.Tensor  # LongTensor: 1 (w↑ l↓), 2 (both ↓), 3 (both ↑); ties at 0 count as case 1

    @property
    def margin(self) -> torch.Tensor:
        """Δ log π_w − Δ log π_l per unit c = ‖∇w − ∇l‖² ≥ 0."""
        return self.delta_chosen - self.delta_rejected


def first_order(g_w: torch.Tensor, g_l: torch.Tensor) -> FirstOrder:
    """First-order Δ log π_w / c and Δ log π_l / c for the DPO step Δθ = c(∇w − ∇l), per pair ([..., D] → [...])."""
    g_w, g_l = _gradient_pair(g_w, g_l)
    inner, sq_w, sq_l = (g_w * g_l).sum(-1), (g_w * g_w).sum(-1), (g_l * g_l).sum(-1)
    delta_w, delta_l = sq_w - inner, inner - sq_l
    norms = (sq_w * sq_l).sqrt()
    cos = torch.where(norms > 0, inner / torch.where(norms > 0, norms, 1.0), 0.0)
    return FirstOrder(delta_w, delta_l, inner, cos, sq_w, sq_l, classify(delta_w, delta_l))


def classify(delta_chosen: torch.Tensor, delta_rejected: torch.Tensor) -> torch.Tensor:
    """The lecture's table: 1 if Δw ≥ 0 ≥ Δl, else 2 if Δw < 0 (both fall), else 3 (both rise), LongTensor."""
    same_shape(delta_chosen, delta_rejected, ("delta_chosen", "delta_rejected"))
    ideal = (delta_chosen >= 0) & (delta_rejected <= 0)
    return torch.where(ideal, 1, torch.where(delta_chosen < 0, 2, 3)).long()


def pairwise_normalized(g_w: torch.Tensor, g_l: torch.Tensor) -> torch.Tensor:
    """The corrected slide's direction ∇w/‖∇w‖ − ∇l/‖∇l‖ per pair ([..., D]); a zero gradient is an error."""
    g_w, g_l = _gradient_pair(g_w, g_l)
    n_w = nonzero_norms(g_w.norm(dim=-1, keepdim=True), "‖∇ log π(y_w|x)‖")
    n_l = nonzero_norms(g_l.norm(dim=-1, keepdim=True), "‖∇ log π(y_l|x)‖")
    return g_w / n_w - g_l / n_l


def slide_normalized(g_w: torch.Tensor, g_l: torch.Tensor) -> torch.Tensor:
    """The first slide's version (∇w − ∇l)/‖∇w‖: both terms divided by the CHOSEN norm (a typo; see chapter 4)."""
    g_w, g_l = _gradient_pair(g_w, g_l)
    return (g_w - g_l) / nonzero_norms(g_w.norm(dim=-1, keepdim=True), "‖∇ log π(y_w|x)‖")


def predicted_change(direction: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """First-order change ⟨Δθ, ∇ log π(y)⟩ of log π(y) for an update Δθ = direction ([..., D] → [...])."""
    direction, g = _gradient_pair(direction, g, names=("direction", "g"), broadcast=True)
    return (direction * g).sum(-1)


# ---------------------------------------------------------------------------------------------- toy-world DPO
def dpo_weights(pi, pi_ref, chosen, rejected, beta: float) -> torch.Tensor:
    """c/η = β σ(r̂_l − r̂_w) per pair, with r̂ = β log π/π_ref (exact, toy world), Tensor [M]."""
    beta = positive_finite(beta, "beta", "the KL coefficient")
    pi.world._check_own(pi_ref, "pi_ref")
    r_w = beta * (pi.logprobs(chosen) - pi_ref.logprobs(chosen))
    r_l = beta * (pi.logprobs(rejected) - pi_ref.logprobs(rejected))
    return beta * torch.sigmoid(r_l - r_w)


def tabular_step(pi, pi_ref, chosen, rejected, beta: float, learning_rate: float, *, normalized: bool = False):
    """One full-batch step θ ← θ + (η/M) Σ_i c_i d_i on θ = log table, d_i = ∇w − ∇l (DPO) or its normalized form.

    Returns the new TabularPolicy. For DPO this is exactly gradient descent on the mean DPO loss.
    """
    learning_rate = positive_finite(learning_rate, "learning_rate")
    g_w, g_l = tabular_gradients(pi, chosen), tabular_gradients(pi, rejected)
    d = pairwise_normalized(g_w, g_l) if normalized else g_w - g_l  # [M, P·V]
    step = learning_rate * (dpo_weights(pi, pi_ref, chosen, rejected, beta)[:, None] * d).mean(0)
    theta = pi.log_table + step.reshape(pi.log_table.shape)
    return pi.world.policy(torch.log_softmax(theta, dim=-1))


def tabular_trajectory(pi, pi_ref, chosen, rejected, beta: float, learning_rate: float, steps: int,
                       *, normalized: bool = False, target=None) -> dict[str, torch.Tensor]:
    """log π(y_w), log π(y_l) [steps+1, M] along ``steps`` tabular steps (and KL(π_t ‖ target) if given)."""
    steps = positive_int(steps, "steps")
    out = {"logp_chosen": [pi.logprobs(chosen)], "logp_rejected": [pi.logprobs(rejected)], "kl": []}
    for _ in range(steps):
        pi = tabular_step(pi, pi_ref, chosen, rejected, beta, learning_rate, normalized=normalized)
        out["logp_chosen"].append(pi.logprobs(chosen))
        out["logp_rejected"].append(pi.logprobs(rejected))
    traj = {k: torch.stack(v) for k, v in out.items() if v}
    traj["policy"] = pi
    return traj


# ---------------------------------------------------------------------------------------------- input checks
def _gradient_pair(a, b, names=("g_w", "g_l"), broadcast=False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 gradient tensors [..., D] of the same shape (or broadcastable, if allowed), finite, D ≥ 1."""
    for name, t in zip(names, (a, b)):
        if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[-1] < 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a Tensor [..., D] with D ≥ 1 parameters; got {shape}")
    if not broadcast:
        same_shape(a, b, names)
    elif a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same number of parameters D (last dimension); "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    return finite(a, names[0]), finite(b, names[1])


def _encoded(pi, responses):
    """The world's encoding of ``responses``, after checking that ``pi`` is a TabularPolicy."""
    if not isinstance(pi, TabularPolicy):
        raise TypeError(f"pi must be a toy TabularPolicy; got {type(pi).__name__}")
    if not isinstance(responses, torch.Tensor):
        raise ValueError(f"responses must be a LongTensor [M, max_len={pi.world.max_len}]; got {type(responses).__name__}")
    return pi.world._encode(responses)


# ---------------------------------------------------------------------------------------------- real models
class PairGradients:
    """Per-pair ∇ log π(y_w|x), ∇ log π(y_l|x) over the top k blocks (+ final norm) of a Llama-family LM.

    The frozen lower blocks run once and their outputs are cached (as in ``train.TopLayers``); each response
    then costs one forward and one backward through the top k blocks, scored by ``logprobs_from_hidden``.
    Summed completion log-probs with eos appended, like the trainer and TRL. Weights change only in ``apply``.
    """

    def __init__(self, policy, prompts, chosen, rejected, *, top_k: int = 2, chat: bool = True,
                 max_length: int = 256, batch_size: int = 16):
        from .logprobs import tokenize_pairs
        from .train import TopLayers

        self.policy, self.n = policy, len(prompts)
        if not (len(prompts) == len(chosen) == len(rejected)):
            raise ValueError(f"got {len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected; "
                             "pass one chosen and one rejected response per prompt")
        self.top = TopLayers(policy.model, positive_int(top_k, "top_k", meaning="trainable top blocks"))
        self.params = [p for m in (self.top.layers, self.top.norm) for p in m.parameters()]
        self.rows, self.masks = tokenize_pairs(policy, list(prompts) * 2, list(chosen) + list(rejected), chat=chat,
                                               add_eos=True, max_length=max_length)  # rows n..2n−1: rejected
        self.hidden = self._cache(positive_int(batch_size, "batch_size"))

    @torch.no_grad()
    def _cache(self, batch_size: int) -> list[torch.Tensor]:
        """Input of the first trainable block for every row, [S_i, hidden] each (frozen blocks run once)."""
        from .logprobs import pad_rows, position_ids_from_mask

        base, out = self.policy.model.model, []
        for start in range(0, len(self.rows), batch_size):
            rows = self.rows[start : start + batch_size]
            b = pad_rows(rows, self.masks[start : start + batch_size], self.policy.tokenizer.pad_token_id)
            states = base(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                          position_ids=position_ids_from_mask(b["attention_mask"]), output_hidden_states=True)
            out += [h[: len(r)].clone() for h, r in zip(states.hidden_states[self.top.first], rows)]
        return out

    def _row(self, i: int) -> torch.Tensor:
        """log π(row i) through the top blocks (differentiable in ``params``), Tensor []."""
        from .logprobs import logprobs_from_hidden

        ids, mask = torch.tensor([self.rows[i]]), torch.tensor([self.masks[i]])
        final = self.top(self.hidden[i][None], torch.ones_like(ids))
        return logprobs_from_hidden(final, self.policy.model.lm_head, ids, mask).per_sequence[0]

    def logps(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log π(y_w|x) and log π(y_l|x) of ``pairs`` (indices), each Tensor [k] (no gradient)."""
        with torch.no_grad():
            lp = torch.stack([self._row(i) for j in pairs for i in (j, j + self.n)]).reshape(-1, 2)
        return lp[:, 0], lp[:, 1]

    def gradients(self, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(∇w [k, D], ∇l [k, D], log π_w [k], log π_l [k]) — one forward+backward per response."""
        flags = {p: p.requires_grad for p in self.policy.model.parameters()}
        try:
            for p in flags:
                p.requires_grad_(False)
            for p in self.params:
                p.requires_grad_(True)
            done: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # a response shared by pairs runs once
            for i in [i for j in pairs for i in (j, j + self.n)]:
                key = (tuple(self.rows[i]), tuple(self.masks[i]))
                if key not in done:
                    lp = self._row(i)
                    done[key] = (torch.cat([g.reshape(-1) for g in torch.autograd.grad(lp, self.params)]), lp.detach())
            grads, logps = zip(*(done[(tuple(self.rows[i]), tuple(self.masks[i]))]
                                 for j in pairs for i in (j, j + self.n)))
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
        g, lp = torch.stack(grads), torch.stack(logps)
        return g[0::2], g[1::2], lp[0::2], lp[1::2]

    @torch.no_grad()
    def apply(self, delta: torch.Tensor) -> None:
        """θ ← θ + delta over the trainable parameters (a flat vector [D]), in place."""
        size = sum(p.numel() for p in self.params)
        if not isinstance(delta, torch.Tensor) or delta.shape != (size,):
            raise ValueError(f"delta must be a flat Tensor [{size}] over the trainable parameters; got "
                             f"{tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__}")
        offset = 0
        for p in self.params:
            p.add_(delta[offset : offset + p.numel()].reshape(p.shape).to(p.dtype))
            offset += p.numel()


def lm_step(pg: PairGradients, pairs, ref_chosen, ref_rejected, beta: float, learning_rate: float,
            *, normalized: bool = False) -> dict[str, torch.Tensor]:
    """One SGD step on the mean DPO loss of ``pairs`` (or its pairwise-normalized form); first-order vs actual.

    Returns per pair: the case predicted by the lecture's single-pair terms, the first-order changes of both
    log-probs under the whole batch's step ⟨Δθ, ∇⟩, the actual changes, and the update Δθ's norm.
    """
    g_w, g_l, before_w, before_l = pg.gradients(pairs)
    c = beta * torch.sigmoid(beta * ((before_l - ref_rejected) - (before_w - ref_chosen)))  # c/η per pair
    d = pairwise_normalized(g_w, g_l) if normalized else (g_w - g_l).double()
    delta = positive_finite(learning_rate, "learning_rate") * (c.double()[:, None] * d).mean(0)
    s = first_order(g_w, g_l)
    pg.apply(delta)
    after_w, after_l = pg.logps(pairs)
    return {"case_single_pair": s.case, "cos": s.cos, "logp_chosen": before_w, "logp_rejected": before_l,
            "predicted_chosen": predicted_change(delta, g_w), "predicted_rejected": predicted_change(delta, g_l),
            "actual_chosen": (after_w - before_w).double(), "actual_rejected": (after_l - before_l).double(),
            "step_norm": delta.norm()}
