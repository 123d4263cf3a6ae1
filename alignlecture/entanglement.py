"""Gradient entanglement in DPO (lecture §Rethinking DPO; Yuan et al. 2024): one SGD step on the DPO loss
moves log π(y_w) and log π(y_l) by amounts that depend on both gradients.

With ∇w = ∇_θ log π_θ(y_w|x), ∇l = ∇_θ log π_θ(y_l|x) and c = ηβσ(r̂_l − r̂_w), the step is
Δθ = c(∇w − ∇l), and to first order Δ log π_w = c(‖∇w‖² − ⟨∇w, ∇l⟩), Δ log π_l = c(⟨∇w, ∇l⟩ − ‖∇l‖²).
Their difference c‖∇w − ∇l‖² is never negative, so every pair falls into one of the lecture's three cases.

Toy world: :func:`tabular_gradients` gives every ∇ log π(y) exactly. Real models: :class:`PairGradients`
gives per-pair gradients over the top k blocks of a Llama-family LM, one forward+backward per response.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import finite, nonzero_norms, one_of, positive_finite, positive_int, same_shape
from .dpo import dpo_weight
from .logprobs import logprobs_from_hidden, pad_rows, pad_states, position_ids_from_mask, tokenize_pairs
from .per_example import RowGradients, only_trainable
from .top_blocks import TopLayers
from .toy import DTYPE, TabularPolicy


# ---------------------------------------------------------------------------------------------- the formulas
def tabular_gradients(pi: TabularPolicy, responses: torch.Tensor) -> torch.Tensor:
    """∂ log π(y)/∂θ for π(·∣s) = softmax(θ[s]) at θ = log table: Σ_t (e_{s_t,y_t} − π(·∣s_t)), Tensor [M, P·V]."""
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
    """First-order Δ log π_w / c and Δ log π_l / c for the DPO step Δθ = c(∇w − ∇l), per pair ([..., D] → [...]);
    a Δ within round-off of zero is an exact tie, set to 0 (case 1) by ``_tie``."""
    g_w, g_l = _gradient_pair(g_w, g_l)
    inner, sq_w, sq_l = (g_w * g_l).sum(-1), (g_w * g_w).sum(-1), (g_l * g_l).sum(-1)
    delta_w, delta_l = _tie(sq_w - inner, sq_w + sq_l), _tie(inner - sq_l, sq_w + sq_l)
    norms = (sq_w * sq_l).sqrt()
    cos = torch.where(norms > 0, inner / torch.where(norms > 0, norms, 1.0), 0.0)
    return FirstOrder(delta_w, delta_l, inner, cos, sq_w, sq_l, classify(delta_w, delta_l))


def _tie(delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``delta`` with round-off-sized values set to exactly 0.

    Two responses can have the same gradient exactly (the same tokens in another order, under parameters shared
    across positions); then Δ = ‖∇w‖² − ⟨∇w, ∇l⟩ is 0, and what floating point leaves of it is a ±1e-17 whose
    sign depends on the CPU's summation order — it would put the pair in case 1 on one machine and case 2 on
    another. Anything within 64 ulps of the terms' size is treated as that tie — a heuristic threshold, far above
    the round-off of the course's sums and far below any real difference in them.
    """
    return torch.where(delta.abs() <= 64 * torch.finfo(delta.dtype).eps * scale, 0.0, delta)


def classify(delta_chosen: torch.Tensor, delta_rejected: torch.Tensor) -> torch.Tensor:
    """The lecture's table: 1 if Δw ≥ 0 ≥ Δl, 2 if both fall, 3 if both rise — and 4 if Δw < 0 < Δl, LongTensor.

    Case 4 (the chosen falls, the rejected rises: the margin itself shrinks) is not in the lecture's table: one
    pair's own DPO step always widens its margin, so a single-pair classification never returns 4; a step taken
    for a whole batch can, on some of its pairs."""
    same_shape(delta_chosen, delta_rejected, ("delta_chosen", "delta_rejected"))
    ideal = (delta_chosen >= 0) & (delta_rejected <= 0)
    worst = (delta_chosen < 0) & (delta_rejected > 0)
    return torch.where(ideal, 1, torch.where(worst, 4, torch.where(delta_chosen < 0, 2, 3))).long()


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
# Parameters θ are a flat vector; the logits are θ itself (tabular, one softmax per prefix) or A·θ for a
# feature matrix A [P·V, K] that shares parameters across prefixes, like a real LM. Then ∇_θ = ∇_logits · A.
def policy_of(world, theta: torch.Tensor, features: torch.Tensor | None = None) -> TabularPolicy:
    """π(·∣s) = softmax(logits[s]) with logits = θ (tabular) or A·θ, as a TabularPolicy."""
    logits = theta if features is None else _features(world, features) @ theta
    return world.policy(torch.log_softmax(logits.reshape(world.num_prefixes, world.vocab_size), dim=-1))


def gradients(pi: TabularPolicy, responses: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """∂ log π(y)/∂θ for each response, Tensor [M, D]: tabular gradients, times A when logits = A·θ."""
    g = tabular_gradients(pi, responses)
    return g if features is None else g @ _features(pi.world, features)


FEATURES = ("tabular", "position_bigram", "bigram", "unigram")


def shared_features(world, kind: str) -> torch.Tensor | None:
    """A [P·V, K] map from shared parameters to logits: logits(s, a) = Σ of the named per-(context, a) weights.

    tabular: None (one free logit per prefix and token); position_bigram: φ[len(s), a] + ψ[last(s), a];
    bigram: ψ[last(s), a] (last = 0 at the root); unigram: ψ[a], the same next-token logits everywhere.
    """
    one_of(kind, "kind", FEATURES)
    if kind == "tabular":
        return None
    T, V = world.max_len, world.vocab_size
    blocks = {"position_bigram": (T, V), "bigram": (0, V), "unigram": (0, 1)}[kind]
    # written entry by entry, so on the CPU; moved to the world's device once at the end
    a = torch.zeros(world.num_prefixes, V, (blocks[0] + blocks[1]) * V, dtype=DTYPE, device="cpu")
    for row, prefix in enumerate(world.prefixes()):
        last = (prefix[-1] if prefix else 0) if blocks[1] > 1 else 0
        for tok in range(V):
            if blocks[0]:
                a[row, tok, len(prefix) * V + tok] = 1.0
            a[row, tok, (blocks[0] + last) * V + tok] = 1.0
    return a.reshape(world.num_prefixes * V, -1).to(world.device)


def dpo_weights(pi, pi_ref, chosen, rejected, beta: float) -> torch.Tensor:
    """c/η = β σ(r̂_l − r̂_w) per pair, with r̂ = β log π/π_ref (exact, toy world), Tensor [M]."""
    beta = positive_finite(beta, "beta", "the KL coefficient")
    pi.world.check_policy(pi_ref, "pi_ref")
    return dpo_weight(pi.logprobs(chosen), pi.logprobs(rejected), pi_ref.logprobs(chosen), pi_ref.logprobs(rejected), beta)


def dpo_direction(pi, pi_ref, chosen, rejected, beta: float, *, features=None, normalized: bool = False):
    """Δθ/η = (1/M) Σ_i c_i d_i with d_i = ∇w − ∇l (DPO: minus the mean loss's gradient) or ∇w/‖∇w‖ − ∇l/‖∇l‖."""
    g_w, g_l = gradients(pi, chosen, features), gradients(pi, rejected, features)
    d = pairwise_normalized(g_w, g_l) if normalized else g_w - g_l  # [M, D]
    return (dpo_weights(pi, pi_ref, chosen, rejected, beta)[:, None] * d).mean(0)


def population_direction(pi, pi_ref, rewards, beta: float, *, features=None, normalized: bool = False):
    """−∇ of the population DPO loss Σ_ij π_ref(i)π_ref(j) CE(σ(r_i − r_j), σ(r̂_i − r̂_j)), or its normalized form.

    Pair (i, j) contributes β(σ(r_i − r_j) − σ(r̂_i − r̂_j))·(∇_i − ∇_j); normalized uses ∇_i/‖∇_i‖ − ∇_j/‖∇_j‖.
    """
    beta = positive_finite(beta, "beta", "the KL coefficient")
    world = pi.world
    world.check_policy(pi_ref, "pi_ref")
    r, p = world.check_values(rewards, "rewards"), pi_ref.probs()
    r_hat = beta * (pi.sequence_logprobs() - pi_ref.sequence_logprobs())
    coef = p[:, None] * p[None, :] * beta * (torch.sigmoid(r[:, None] - r[None, :]) - torch.sigmoid(r_hat[:, None] - r_hat[None, :]))
    g = gradients(pi, world.responses, features)  # [N, D]
    if normalized:
        g = g / nonzero_norms(g.norm(dim=1, keepdim=True), "‖∇ log π(y)‖")
    return (coef.sum(1) - coef.sum(0)) @ g  # Σ_ij coef_ij (g_i − g_j)


def descend(world, theta, direction, learning_rate: float, steps: int, *, features=None) -> list[TabularPolicy]:
    """The policies along θ_{t+1} = θ_t + η·direction(π_t), t < steps (steps + 1 policies, exact)."""
    learning_rate, steps = positive_finite(learning_rate, "learning_rate"), positive_int(steps, "steps")
    theta = finite(theta, "theta").reshape(-1)
    policies = [policy_of(world, theta, features)]
    for _ in range(steps):
        theta = theta + learning_rate * direction(policies[-1])
        policies.append(policy_of(world, theta, features))
    return policies


def tabular_step(pi, pi_ref, chosen, rejected, beta: float, learning_rate: float, *, normalized: bool = False):
    """One full-batch step on θ = log table (for DPO: exactly gradient descent on the mean DPO loss)."""
    learning_rate = positive_finite(learning_rate, "learning_rate")
    step = learning_rate * dpo_direction(pi, pi_ref, chosen, rejected, beta, normalized=normalized)
    return policy_of(pi.world, pi.log_table.reshape(-1) + step)


def tabular_chosen_change(pi, chosen, rejected) -> torch.Tensor:
    """Closed form of Δ log π_w / c for one pair in the tabular world: 1 − π(a∣s) + π(b∣s) + Σ_{t>k} ‖e_{y_t} − π(·∣s_t)‖²,
    where s is the last shared prefix and a, b the tokens where y_w and y_l part (k = len(s)); Tensor [M].
    """
    nodes_w, mask_w = _encoded(pi, chosen)
    nodes_l, mask_l = _encoded(pi, rejected)
    dev = pi.world.device
    probs, y_w, y_l = pi.log_table.exp(), chosen.to(dev, torch.long), rejected.to(dev, torch.long)
    k = shared_prefix_length(pi.world, chosen, rejected).to(dev)
    if bool((k >= pi.world.max_len).any()):
        raise ValueError("a pair has y_w = y_l; chosen and rejected must differ")
    rows = torch.arange(len(k), device=dev)
    s = nodes_w[rows, k]
    part = 1 - probs[s, y_w[rows, k]] + probs[s, y_l[rows, k]]
    own = F.one_hot(y_w, pi.world.vocab_size).to(DTYPE) - probs[nodes_w]  # [M, T, V]
    later = mask_w & (torch.arange(y_w.shape[1], device=dev)[None, :] > k[:, None])
    return part + ((own**2).sum(-1) * later).sum(1)


def shared_prefix_length(world, chosen, rejected) -> torch.Tensor:
    """Number of leading tokens two responses share before they part (eos counts as a token), LongTensor [M]."""
    same_shape(chosen, rejected, ("chosen", "rejected"))
    world.encode(chosen), world.encode(rejected)
    differ = chosen.long() != rejected.long()
    return torch.where(differ.any(1), differ.long().argmax(1), torch.full_like(differ[:, 0], world.max_len, dtype=torch.long))


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


def _features(world, features) -> torch.Tensor:
    """A finite float64 feature matrix [P·V, K] mapping parameters to this world's logits."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != world.num_prefixes * world.vocab_size:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a Tensor [P·V = {world.num_prefixes * world.vocab_size}, K] (one row per "
                         f"logit of this world); got {shape}")
    return finite(features, "features")


def _encoded(pi, responses):
    """The world's encoding of ``responses``, after checking that ``pi`` is a TabularPolicy."""
    if not isinstance(pi, TabularPolicy):
        raise TypeError(f"pi must be a toy TabularPolicy; got {type(pi).__name__}")
    if not isinstance(responses, torch.Tensor):
        raise ValueError(f"responses must be a LongTensor [M, max_len={pi.world.max_len}]; got {type(responses).__name__}")
    return pi.world.encode(responses)


# ---------------------------------------------------------------------------------------------- real models
class PairGradients:
    """Per-pair ∇ log π(y_w|x), ∇ log π(y_l|x) over the top k blocks (+ final norm) of a Llama-family LM.

    The frozen lower blocks run once and their outputs are cached (``top_blocks.TopLayers``); each response
    then costs one forward and one backward through the top k blocks, scored by ``logprobs_from_hidden``.
    Summed completion log-probs with eos appended, like the trainer and TRL. Weights change only in ``apply``.
    """

    def __init__(self, policy, prompts, chosen, rejected, *, top_k: int = 2, chat: bool = True,
                 max_length: int = 256, batch_size: int = 16):
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
        base, first = self.policy.model.model, {}
        for i, row in enumerate(self.rows):  # a response shared by several pairs runs once
            first.setdefault(tuple(row), i)
        distinct, out = list(first.values()), {}
        for start in range(0, len(distinct), batch_size):
            idx = distinct[start : start + batch_size]
            rows = [self.rows[i] for i in idx]
            b = self._padded(idx)
            states = base(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                          position_ids=position_ids_from_mask(b["attention_mask"]), output_hidden_states=True)
            out.update({i: h[: len(r)].clone() for i, h, r in zip(idx, states.hidden_states[self.top.first], rows)})
        return [out[first[tuple(row)]] for row in self.rows]

    def _padded(self, idx) -> dict[str, torch.Tensor]:
        """Rows ``idx`` right-padded (``logprobs.pad_rows``), on the policy's device."""
        b = pad_rows([self.rows[i] for i in idx], [self.masks[i] for i in idx], self.policy.tokenizer.pad_token_id)
        return {k: v.to(self.policy.device) for k, v in b.items()}

    def _row(self, i: int) -> torch.Tensor:
        """log π(row i) through the top blocks (differentiable in ``params``), Tensor []."""
        dev = self.hidden[i].device
        ids, mask = torch.tensor([self.rows[i]], device=dev), torch.tensor([self.masks[i]], device=dev)
        final = self.top(self.hidden[i][None], torch.ones_like(ids))
        return logprobs_from_hidden(final, self.policy.model.lm_head, ids, mask).per_sequence[0]

    def logps(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log π(y_w|x) and log π(y_l|x) of ``pairs`` (indices), each Tensor [k] (no gradient)."""
        done: dict[tuple, torch.Tensor] = {}  # a response shared by pairs runs once
        with torch.no_grad():
            for i in [i for j in pairs for i in (j, j + self.n)]:
                if tuple(self.rows[i]) not in done:
                    done[tuple(self.rows[i])] = self._row(i)
        lp = torch.stack([done[tuple(self.rows[i])] for j in pairs for i in (j, j + self.n)]).reshape(-1, 2)
        return lp[:, 0], lp[:, 1]

    def _distinct(self, pairs) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The row index of each distinct response in ``pairs``, and each pair's chosen and rejected position in
        that list (LongTensors [k])."""
        index: dict[tuple, int] = {}
        first = []
        for i in [i for j in pairs for i in (j, j + self.n)]:
            if tuple(self.rows[i]) not in index:
                index[tuple(self.rows[i])] = len(first)
                first.append(i)
        rows = torch.tensor([index[tuple(self.rows[i])] for j in pairs for i in (j, j + self.n)],
                            device=self.policy.device).reshape(-1, 2)
        return first, rows[:, 0], rows[:, 1]

    def distinct_gradients(self, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G [m, D], log π [m]) of the m distinct responses in ``pairs``, and each pair's chosen and rejected
        row of G (LongTensors [k]) — one forward+backward per distinct response (the reference path)."""
        first, w, l = self._distinct(pairs)
        grads, logps = [], []
        with only_trainable(self.policy.model, self.params):
            for i in first:
                lp = self._row(i)
                grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(lp, self.params)]))
                logps.append(lp.detach())
        return torch.stack(grads), torch.stack(logps), w, l

    def row_gradients(self, pairs) -> tuple[RowGradients, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The distinct responses of ``pairs`` in ONE batched forward: (their :class:`~alignlecture.per_example.RowGradients`, log π [m] with
        gradient, each pair's chosen and rejected position [k]) — Gram matrix and steps without per-row passes."""
        first, w, l = self._distinct(pairs)
        batch = self._padded(first)
        hidden = pad_states([self.hidden[i] for i in first], batch["input_ids"].shape[1])
        with only_trainable(self.policy.model, self.params), RowGradients(self.top, self.params) as rows:
            final = self.top(hidden, batch["attention_mask"])
            logps = logprobs_from_hidden(final, self.policy.model.lm_head, batch["input_ids"],
                                         batch["completion_mask"]).per_sequence
        return rows, logps, w, l

    def gradients(self, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(∇w [k, D], ∇l [k, D], log π_w [k], log π_l [k]) per pair."""
        g, lp, w, l = self.distinct_gradients(pairs)
        return g[w], g[l], lp[w], lp[l]

    @contextmanager
    def restored(self):
        """Within the block, steps (``apply``, ``lm_step``) change the trainable parameters; on leaving it they are
        bit for bit what they were on entering.

        >>> with pg.restored():
        ...     history = [lm_step(pg, pairs, ref_w, ref_l, beta, eta) for _ in range(3)]
        """
        saved = [p.detach().clone() for p in self.params]
        try:
            yield self
        finally:
            with torch.no_grad():
                for p, p0 in zip(self.params, saved):
                    p.copy_(p0)

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
            *, normalized: bool = False, step_norm: float | None = None) -> dict[str, torch.Tensor]:
    """One SGD step on the mean DPO loss of ``pairs`` (or its pairwise-normalized form); first-order vs actual.

    Everything first-order comes from the Gram matrix K = G Gᵀ of the distinct responses' gradients, built
    from one batched backward (:class:`~alignlecture.per_example.RowGradients`, never G itself): the step is Δθ = Σ_r α_r G_r, so ⟨Δθ, ∇ log π(y_s)⟩ = (K α)_s. ``step_norm`` rescales Δθ to that length (to
    compare directions at equal step sizes). Returns per pair: the case by the lecture's single-pair terms,
    the first-order changes under the whole batch's step, the actual changes; and ‖Δθ‖.
    """
    beta = positive_finite(beta, "beta", "the KL coefficient")
    learning_rate = positive_finite(learning_rate, "learning_rate")
    rows, logps, w, l = pg.row_gradients(pairs)  # one batched forward; gradients per response on demand
    gram, lp = rows.gram(logps), logps.detach()  # [m, m], [m]
    before_w, before_l = lp[w].double(), lp[l].double()
    ref_chosen, ref_rejected = (r.to(lp.device) if torch.is_tensor(r) else r for r in (ref_chosen, ref_rejected))
    c = dpo_weight(before_w, before_l, ref_chosen, ref_rejected, beta)  # c/η per pair
    ones = torch.ones(len(lp), dtype=DTYPE, device=lp.device)
    scale = nonzero_norms(gram.diagonal().sqrt(), "‖∇ log π(y|x)‖") if normalized else ones
    alpha = torch.zeros_like(ones).index_add_(0, w, c / scale[w]).index_add_(0, l, -c / scale[l])
    alpha = alpha * learning_rate / len(w)
    if step_norm is not None:
        alpha = alpha * positive_finite(step_norm, "step_norm") / (alpha @ gram @ alpha).sqrt()
    pg.apply(rows.combine(alpha, logps))  # Δθ = Σ_r α_r ∇ log π(y_r)
    after_w, after_l = pg.logps(pairs)
    inner, sq = gram[w, l], gram.diagonal()
    predicted = gram @ alpha
    return {"case_single_pair": classify(sq[w] - inner, inner - sq[l]), "cos": inner / (sq[w] * sq[l]).sqrt(),
            "logp_chosen": before_w, "logp_rejected": before_l,
            "predicted_chosen": predicted[w], "predicted_rejected": predicted[l],
            "actual_chosen": after_w.double() - before_w, "actual_rejected": after_l.double() - before_l,
            "step_norm": (alpha @ gram @ alpha).sqrt()}


def normalized_surrogate(logp_chosen, logp_rejected, norm_chosen, norm_rejected, weights) -> torch.Tensor:
    """A loss whose gradient is minus the pairwise-normalized step: −mean_i c_i (log π_w,i/‖∇w,i‖ − log π_l,i/‖∇l,i‖).

    Norms and weights c_i = βσ(r̂_l − r̂_w) are constants (detached), so one batched backward gives the
    direction once the norms are known — exact with fresh norms, an approximation with stale ones.
    """
    norm_chosen = nonzero_norms(norm_chosen.detach(), "‖∇ log π(y_w|x)‖")
    norm_rejected = nonzero_norms(norm_rejected.detach(), "‖∇ log π(y_l|x)‖")
    return -(weights.detach() * (logp_chosen / norm_chosen - logp_rejected / norm_rejected)).mean()
