"""Your language model is secretly a Q-function: exact soft Q*/V* of max-entropy RLHF (lecture §More than reward).

Per-token reward (lecture §RLHF in max-entropy RL): r(s, a) = β log π_ref(a|s), plus r(x, y) on the action that
finishes the response (eos, or in a ToyWorld the non-eos token that reaches max_len). Then

    Q*(s, a) = β log π_ref(a|s) + (r(s·a) if s·a is terminal else V*(s·a)),   V*(s) = β log Σ_a exp(Q*(s, a)/β),

and π*(a|s) = exp((Q*(s, a) − V*(s))/β): the optimal policy is the advantage function. On a ToyWorld every
prefix is a row of a [P, V] table, so the backup is one vectorised step per depth; ``world.child_index()`` says
where each action leads (prefix i's child by token a ≥ 1 is node b·i + a, b = V − 1; nodes ≥ P are the truncated
responses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .logprobs import completion_logprobs
from .models import Policy
from ._checks import positive_int, shaped
from .toy import DTYPE, EOS, TabularPolicy, ToyWorld, check_beta


@dataclass
class SoftValues:
    """Q and V of every decision prefix of a ToyWorld: ``q_table`` [P, V], ``v_table`` [P]; β = 0 means hard max."""

    world: ToyWorld
    q_table: torch.Tensor  # [P, V]: Q(s, a) for prefix row s, next token a
    v_table: torch.Tensor  # [P]: V(s) = β logsumexp_a Q(s, a)/β  (max_a Q(s, a) when β = 0)
    beta: float

    def q(self, prefix: Sequence[int] = ()) -> torch.Tensor:
        """Q(prefix, a) for every next token a, Tensor [vocab_size]."""
        return self.q_table[self.world.prefix_index(prefix)].clone()

    def v(self, prefix: Sequence[int] = ()) -> float:
        """V(prefix) = β log Σ_a exp(Q(prefix, a)/β)."""
        return float(self.v_table[self.world.prefix_index(prefix)])

    @property
    def v_root(self) -> float:
        """V*(x), the value of the empty prefix — β log E_{y~π_ref} exp(r(x, y)/β) for ``soft_values``."""
        return float(self.v_table[0])

    def advantages(self) -> torch.Tensor:
        """A(s, a) = Q(s, a) − V(s) = β log π*(a|s), Tensor [P, V] (lecture §secretly an advantage function)."""
        return self.q_table - self.v_table[:, None]

    def policy(self) -> TabularPolicy:
        """The softmax policy log π(a|s) = (Q(s, a) − V(s))/β; for ``soft_values`` it is π* (= optimal_policy)."""
        if self.beta == 0:
            raise ValueError("hard values (beta=0) define no softmax policy; decode with world.greedy(values.q)")
        table = self.advantages() / self.beta
        dead = torch.isinf(self.v_table)  # no finite continuation below (all scores −inf): uniform, as in toy.py
        if bool(dead.any()):
            table[dead] = -math.log(self.world.vocab_size)
        return self.world.policy(table)

    def along(self, response: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Q(s_t, y_t) at each action of one response (eos included), Tensor [number of actions]."""
        return _along(self.world, self.q_table, response)


def soft_backup(
    world: ToyWorld, token_scores: torch.Tensor, final_scores: torch.Tensor | None = None, beta: float = 1.0
) -> SoftValues:
    """Bellman backup Q(s, a) = g(s, a) + (f(s·a) if s·a is terminal else V(s·a)), V(s) = β log Σ_a exp(Q(s, a)/β).

    ``token_scores`` g is a [P, V] table, ``final_scores`` f one value per response (default 0; −inf allowed,
    e.g. log-probs). ``beta`` > 0 is the soft (max-entropy) backup, ``beta=0`` the hard max. With β = 1 the
    softmax policy samples responses ∝ exp(Σ_t g + f) — ``world.policy_from_sequence_logprobs`` of that score.
    """
    g, f, beta = _backup_inputs(world, token_scores, final_scores, beta)
    P, off = world.num_prefixes, world.offsets
    v_below = f[P:]  # the truncated responses (depth max_len) are terminal: their value is f
    q_rows, v_rows = [], []
    for k in reversed(range(world.max_len)):  # deepest prefixes first, one vectorised step per depth
        s = slice(off[k], off[k + 1])
        q = g[s] + torch.cat([f[s, None], v_below.reshape(-1, world.branch)], dim=1)  # eos: f(s·eos); a: V(s·a)
        v_below = beta * torch.logsumexp(q / beta, dim=1) if beta > 0 else q.max(dim=1).values
        q_rows.insert(0, q)
        v_rows.insert(0, v_below)
    return SoftValues(world, torch.cat(q_rows), torch.cat(v_rows), beta)


def _backup_inputs(world: ToyWorld, token_scores, final_scores, beta):
    g = shaped(token_scores, (world.num_prefixes, world.vocab_size), "token_scores", allow_neg_inf=True,
               meaning="one score per prefix row and next token")
    if final_scores is None:
        f = torch.zeros(world.num_responses, dtype=DTYPE, device=world.device)
    else:
        f = world.check_values(final_scores, "final_scores", allow_neg_inf=True)
    return g.to(world.device), f, (0.0 if beta == 0 else check_beta(beta))


def soft_values(world: ToyWorld, pi_ref: TabularPolicy, rewards: torch.Tensor, beta: float) -> SoftValues:
    """Exact soft Q*/V* of RLHF: r(s, a) = β log π_ref(a|s) (+ r(x, y) when s·a is terminal) (lecture §Soft RL)."""
    beta = check_beta(beta)
    world.check_policy(pi_ref, "pi_ref")
    rewards = world.check_values(rewards, "rewards")
    return soft_backup(world, beta * pi_ref.log_table, rewards, beta)


def terminal_mask(world: ToyWorld) -> torch.Tensor:
    """Which (prefix, token) actions finish a response: eos everywhere, every token at depth max_len − 1, [P, V]."""
    mask = torch.zeros(world.num_prefixes, world.vocab_size, dtype=torch.bool, device=world.device)
    mask[:, EOS] = True
    mask[world.offsets[world.max_len - 1] :] = True
    return mask


def soft_bellman_residual(
    world: ToyWorld, q_table: torch.Tensor, pi_ref: TabularPolicy, rewards: torch.Tensor, beta: float
) -> torch.Tensor:
    """Q(s, a) − [β log π_ref(a|s) + (r(s·a) if terminal else β log Σ_a' exp(Q(s·a, a')/β))], Tensor [P, V].

    Zero everywhere exactly when ``q_table`` is Q* (lecture §Q′ exactly estimates Q*: the "Goal").
    """
    beta = check_beta(beta)
    world.check_policy(pi_ref, "pi_ref")
    rewards = world.check_values(rewards, "rewards")
    P, V = world.num_prefixes, world.vocab_size
    q_table = shaped(q_table, (P, V), "q_table", meaning="one Q value per prefix row and next token").to(world.device)
    v = beta * torch.logsumexp(q_table / beta, dim=1)  # [P]: V implied by Q
    node_values = torch.cat([v, rewards[P:]])  # [N]: V of each prefix row, r of each truncated response
    children = node_values[world.child_index()[:, 1:]]  # [P, V−1]: value of s·a for the non-eos tokens
    target = beta * pi_ref.log_table + torch.cat([rewards[:P, None], children], dim=1)
    return q_table - target


# ---------------------------------------------------------------------------------------------- Q′ from a policy
def q_prime_table(pi: TabularPolicy, pi_ref: TabularPolicy, beta: float, v_root: float) -> torch.Tensor:
    """Q′(s, a) = V*(x) + β log π(s·a) − β log π_ref(s) for every prefix s and token a, Tensor [P, V].

    The lecture's recursion, telescoped: Q′(y_1|x) = V*(x) + β log π(y_1|x) and
    Q′(y_t|s_t) = Q′(y_{t−1}|s_{t−1}) + β log π(y_t|s_t)/π_ref(y_{t−1}|s_{t−1}).
    Q′ = Q* when π = π* and v_root = V*(x). For ANY π, Q′ satisfies the non-terminal soft Bellman step; only the
    terminal (reward) step needs π = π* (see ``soft_bellman_residual``). Assumes π and π_ref reach every prefix.
    """
    beta = check_beta(beta)
    w = pi.world
    w.check_policy(pi, "pi")
    w.check_policy(pi_ref, "pi_ref")
    reach = beta * (pi.prefix_logprobs() - pi_ref.prefix_logprobs())  # [P]
    return float(v_root) + reach[:, None] + beta * pi.log_table


def q_prime(
    pi: TabularPolicy, pi_ref: TabularPolicy, beta: float, v_root: float, response: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Q′ by the lecture's recursion Q′(y_t∣x, y_<t) = Q′(y_{t−1}∣x, y_<t−1) + β log π(y_t∣x, y_<t)/π_ref(y_{t−1}∣x,
    y_<t−1) from Q′(y_1∣x) = V*(x) + β log π(y_1∣x) (lecture §RLHF in max-entropy RL, where Q′ is defined).

    Computed step by step along the response (eos included), Tensor [number of actions]; π_ref(y_0∣x) := 1, the
    slide's "/1" in the first step.
    """
    beta = check_beta(beta)
    w = pi.world
    w.check_policy(pi_ref, "pi_ref")
    tokens = _actions(w, response)
    out, prefix, q, prev_ref = [], [], float(v_root), 0.0  # π_ref(y_0|·) := 1: the slide's "/1"
    for tok in tokens:
        q = q + beta * float(pi.next_logprobs(prefix)[tok]) - beta * prev_ref
        out.append(q)
        prev_ref = float(pi_ref.next_logprobs(prefix)[tok])
        prefix.append(tok)
    return torch.tensor(out, dtype=DTYPE, device=w.device)


def _actions(world: ToyWorld, response) -> list[int]:
    """The tokens of a response that are actions: up to and including eos, or all max_len if truncated."""
    y = world.responses[world.index(response)].tolist()
    return y[: y.index(EOS) + 1] if EOS in y else y


def _along(world: ToyWorld, table: torch.Tensor, response) -> torch.Tensor:
    y = world.responses[world.index(response)]
    nodes, mask = world.encode(y[None, :])
    return table[nodes[0], y][mask[0]]


# ---------------------------------------------------------------------------------------------- decoding
def exact_argmax(world: ToyWorld, seq_scores: torch.Tensor) -> torch.Tensor:
    """argmax_y s(y) by greedy decoding on the hard Q: Q(s, a) = max over responses through s·a of s(y), [T].

    The value-corrected decoder: for s(y) = Σ_t g(y_t|y_<t) (e.g. mixed logits w1 log π1 + w2 log π2), token-level
    greedy on g alone is not the argmax; greedy on g(a|s) + V(s·a) is (``soft_backup(world, g, beta=0)``).
    """
    zeros = torch.zeros(world.num_prefixes, world.vocab_size, dtype=DTYPE, device=world.device)
    values = soft_backup(world, zeros, seq_scores, beta=0)
    return world.greedy(values.q)


def value_greedy(world: ToyWorld, token_scores: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """Greedy decoding on Q(s, a) = g(s, a) + V(s·a) from the per-step scores g alone, LongTensor [T].

    ``beta=0``: V is the hard max over continuations — the decoder returns argmax_y Σ_t g(y_t|y_<t).
    ``beta=1``: V is the soft value — greedy on the exact product's next-token marginals, not its argmax.
    """
    return world.greedy(soft_backup(world, token_scores, beta=beta).q)


@dataclass
class MixingErrors:
    """Token-level mixing against the exact product Π_k π_k^{w_k}, one entry per random pair of policies.

    ``single_hits``: greedy decoding of π_1 alone returns π_1's own argmax (the error everyone accepts);
    ``greedy_hits`` / ``gaps``: token-level greedy mixing returns the product's argmax / how many nats of
    log-probability it loses (0 on a hit); ``kl_token_level``: KL(exact product ‖ per-step renormalised mix);
    ``hard_value_hits`` / ``soft_value_hits``: greedy on g + V(s·a) with the hard / soft (β = 1) value finds the
    argmax; ``kl_value_corrected``: KL(exact product ‖ the soft-value-corrected policy exp(Q − V)).
    """

    weights: list[float]
    single_hits: torch.Tensor
    greedy_hits: torch.Tensor
    gaps: torch.Tensor
    kl_token_level: torch.Tensor
    hard_value_hits: torch.Tensor
    soft_value_hits: torch.Tensor
    kl_value_corrected: torch.Tensor

    def rate(self, name: str) -> float:
        """Share of pairs where the boolean field ``name`` holds."""
        return float(getattr(self, name).double().mean())

    def mean_gap_when_missed(self) -> float:
        """Mean log-probability lost by token-level greedy mixing over the pairs where it misses (0 if none)."""
        missed = self.gaps[~self.greedy_hits]
        return float(missed.mean()) if missed.numel() else 0.0


def mixing_errors(world: ToyWorld, weights: Sequence[float], num_pairs: int = 300, seed: int = 0) -> MixingErrors:
    """The exact error of token-level mixing over ``num_pairs`` random policy pairs (seeds 2i, 2i+1 after ``seed``).

    For each pair the target is the normalised sequence-level product log π* = log_softmax(Σ_k w_k log π_k(y));
    the decoders see only the per-step scores g(s, a) = Σ_k w_k log π_k(a|s).
    """
    from .mixing import check_weights, mix_logprobs

    w = check_weights(weights, 2)
    n = positive_int(num_pairs, "num_pairs")
    rows = []
    for i in range(n):
        pi1, pi2 = world.random_policy(seed=seed + 2 * i), world.random_policy(seed=seed + 2 * i + 1)
        logp1 = pi1.sequence_logprobs()
        target = mix_logprobs([logp1, pi2.sequence_logprobs()], w)  # exact, [N]
        best = int(target.argmax())
        hits = lambda y, j=best: torch.equal(y, world.responses[j])  # noqa: E731 (decoded response is y_j)
        g = w[0] * pi1.log_table + w[1] * pi2.log_table  # [P, V] per-step scores
        token_level = world.policy(torch.log_softmax(g, dim=1))  # renormalised at every step
        greedy = world.greedy(token_level.next_logprobs)
        exact = world.policy_from_sequence_logprobs(target)
        rows.append((
            hits(world.greedy(pi1.next_logprobs), int(logp1.argmax())),
            hits(greedy),
            float(target[best] - target[world.index(greedy)]),
            exact.kl(token_level),
            hits(value_greedy(world, g, beta=0)),
            hits(value_greedy(world, g, beta=1.0)),
            exact.kl(soft_backup(world, g, beta=1.0).policy()),
        ))
    cols = list(zip(*rows))
    as_bool = lambda c: torch.tensor(c, dtype=torch.bool)  # noqa: E731
    as_float = lambda c: torch.tensor(c, dtype=DTYPE)  # noqa: E731
    return MixingErrors(w, as_bool(cols[0]), as_bool(cols[1]), as_float(cols[2]), as_float(cols[3]),
                        as_bool(cols[4]), as_bool(cols[5]), as_float(cols[6]))


# ---------------------------------------------------------------------------------------------- real models
def _as_module(model, name: str) -> torch.nn.Module:
    inner = model.model if isinstance(model, Policy) else model  # (an LM module's own .model is its backbone)
    if not isinstance(inner, torch.nn.Module):
        raise TypeError(f"{name} must be an alignlecture Policy or a torch.nn.Module; got {type(model).__name__}")
    return inner


@torch.no_grad()
def token_rewards(
    policy,
    ref,
    beta: float,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """β log π(y_t|x, y_<t)/π_ref(y_t|x, y_<t) per completion token, 0 elsewhere, Tensor [B, S] (no gradient).

    Its row sum is the DPO implicit reward β log π(y|x)/π_ref(y|x). ``policy`` and ``ref`` are Policy objects or
    bare causal-LM modules; each is run on its own device, the result is on ``input_ids``' device.
    """
    beta = check_beta(beta)
    out = []
    for name, model in (("policy", policy), ("ref", ref)):
        module = _as_module(model, name)
        param = next(module.parameters(), None)
        dev = param.device if param is not None else input_ids.device
        lp = completion_logprobs(module, input_ids.to(dev), attention_mask.to(dev), completion_mask.to(dev))
        out.append(lp.per_token.to(input_ids.device))
    return beta * (out[0] - out[1])


def word_credit(tokens: Sequence[str], credit: Sequence[float], special: Sequence[str] = ()) -> list[tuple[str, float]]:
    """Per-token credit summed into words: ``[(word, Σ credit of its tokens), …]``.

    A token that begins with whitespace starts a new word, so " un" + "happy" is the one word "unhappy" (a byte-
    level BPE splits rarer words into pieces; a lexicon looked up per token would miss them). A ``special`` token
    (the tokenizer's end-of-sequence marker, say) is a word of its own and never glued to the word before it.
    Punctuation stays on its word; strip it before a lexicon lookup. Whitespace-only words (a trailing space) are
    left out. ``tokens`` are the decoded tokens of one response.
    """
    if len(tokens) != len(credit):
        raise ValueError(f"need one credit per token; got {len(tokens)} tokens and {len(credit)} credits")
    special = set(special)
    words: list[list] = []
    for text, value in zip(tokens, credit):
        if not words or text[:1].isspace() or text in special or words[-1][0] in special:
            words.append([text, float(value)])
        else:
            words[-1][0] += text
            words[-1][1] += float(value)
    return [(text.strip(), value) for text, value in words if text.strip()]
