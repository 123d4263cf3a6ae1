"""Reward-guided search at decode time: look ahead, score with the reward, choose (after DeAL, Huang et al. 2024).

At a prefix s the decoder takes the k most likely next tokens a under π, extends each s·a by a greedy rollout
of ``depth`` more tokens, and scores the lookahead with the reward of its text plus λ times its log-prob,

    score(s, a) = r(s·a·rollout) + λ [log π(a∣s) + log π(rollout | s·a)],

then keeps the best candidate (temperature 0) or samples one from softmax(score/τ) over the k candidates.
A lookahead that has not ended is scored as the text so far (a text reward reads any string).
DeAL writes its score as log π(s·a) + w·r(lookahead), the weight on the reward; dividing by w ranks the
candidates as λ = 1/w does here, except that this score also counts the rollout's log-prob (which makes λ = β the
bound below). λ = 0 here (reward alone) is w → ∞ there; sampling at τ > 0 is this module's addition.

The ideal guide replaces the rollout by the exact soft value of chapter 5: score(s, a) = Q*(s, a) =
β log π_ref(a∣s) + V*(s·a), over every token, with τ = β — and the same selection rule is then exactly π*.
With λ = β and rollouts that reach the end, the rollout score is one term of the sum whose log is that value:
r(y) + β log π_ref(y_{>t}∣s) ≤ β log Σ_y' π_ref(y'∣s) e^{r(y')/β}, so guided search under-estimates Q*.

Compute is counted in next-token evaluations (one distribution π(·∣prefix) for one row) and reward calls
(one text scored): per generated token 1 + (at most) k·depth evaluations and k reward calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._checks import finite_number, positive_int
from .decoding import CachedDecoder
from .logprobs import prompt_token_ids
from .models import seeded
from .qfunction import SoftValues
from .toy import DTYPE, EOS, TabularPolicy


# ---------------------------------------------------------------------------------------------- the choice
def check_temperature(temperature) -> float:
    """τ ≥ 0: 0 keeps the best candidate, τ > 0 samples from softmax(score/τ)."""
    if temperature == 0 and not isinstance(temperature, bool):
        return 0.0
    try:
        ok = not isinstance(temperature, bool) and math.isfinite(float(temperature)) and float(temperature) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"temperature must be 0 (keep the best candidate) or a positive finite number; got "
                         f"{temperature!r}")
    return float(temperature)


def selection_logprobs(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """log q(a|s) = log softmax(score/τ) over the last dim, or a point mass on the first best when τ = 0."""
    if temperature == 0:
        best = scores.argmax(dim=-1, keepdim=True)  # the first maximum on ties
        return torch.full_like(scores, -math.inf).scatter(-1, best, 0.0)
    return torch.log_softmax(scores / temperature, dim=-1)


def _check_search(k, depth, lam, temperature) -> tuple[int, int, float, float]:
    k = positive_int(k, "k", meaning="the number of candidate next tokens looked ahead from")
    depth = positive_int(depth, "depth", meaning="the number of greedy tokens each lookahead adds")
    lam = finite_number(lam, "lam", meaning="the weight λ of the lookahead's log-prob in its score")
    return k, depth, lam, check_temperature(temperature)


# ---------------------------------------------------------------------------------------------- toy world
@dataclass
class ToySearch:
    """A search decoder on a ToyWorld, exactly: its next-token rule at every prefix and the compute it spends."""

    policy: TabularPolicy  # the decoder's choice q(a|s) at every prefix, a [P, V] table
    scores: torch.Tensor  # [P, V]: score(s, a) of the candidates, −inf for tokens not looked at
    evals: torch.Tensor  # [P]: next-token evaluations spent at each prefix
    reward_calls: torch.Tensor  # [P]: rewards looked up at each prefix

    def cost(self) -> tuple[float, float]:
        """Expected (next-token evaluations, reward calls) per response: Σ_s P_q(reach s) · cost(s)."""
        reach = self.policy.prefix_logprobs().exp()  # [P]
        return float(reach @ self.evals), float(reach @ self.reward_calls)


def lookahead(pi: TabularPolicy, reward_of: dict, prefix: tuple, token: int, depth: int):
    """Greedy rollout from prefix·token: (reward of its text, log π(rollout | prefix·token), evaluations spent).

    ``reward_of`` maps each response of pi's world (its tokens, eos-padded, as a tuple) to its reward.
    """
    T, y, logp, evals = pi.world.max_len, [*prefix, token] if token != EOS else list(prefix), 0.0, 0
    while token != EOS and len(y) < T and evals < depth:
        lp = pi.next_logprobs(y)
        token, evals = int(lp.argmax()), evals + 1
        logp += float(lp[token])
        y += [token] if token != EOS else []
    return reward_of[tuple(y + [EOS] * (T - len(y)))], logp, evals  # an open text is scored as if it ended here


def toy_guided_search(
    pi: TabularPolicy, rewards: torch.Tensor, *, k: int, depth: int, lam: float = 0.0, temperature: float = 0.0
) -> ToySearch:
    """Guided search at every prefix of pi's world: score(s, a) = r(s·a·rollout) + λ log π(a·rollout | s)."""
    k, depth, lam, temperature = _check_search(k, depth, lam, temperature)
    world = pi.world
    rewards = world.check_values(rewards, "rewards")
    reward_of = dict(zip(map(tuple, world.responses.tolist()), rewards.tolist()))  # response tokens (eos-padded) → r
    scores = torch.full((world.num_prefixes, world.vocab_size), -math.inf, dtype=DTYPE)
    evals, calls = torch.ones(world.num_prefixes, dtype=DTYPE), torch.zeros(world.num_prefixes, dtype=DTYPE)
    for row, prefix in enumerate(world.prefixes()):
        lp = pi.next_logprobs(prefix)
        for a in torch.sort(lp, descending=True, stable=True).indices[:k].tolist():  # top k, ties by token id
            if lp[a] == -math.inf:
                break  # a token π never emits is no candidate
            r, rollout_lp, spent = lookahead(pi, reward_of, prefix, a, depth)
            scores[row, a] = r + lam * (float(lp[a]) + rollout_lp)
            evals[row] += spent
            calls[row] += 1
    return ToySearch(world.policy(selection_logprobs(scores, temperature)), scores, evals, calls)


def soft_value_search(values: SoftValues, temperature: float) -> ToySearch:
    """The ideal guide: score(s, a) = Q*(s, a) for every token; τ = β gives π* exactly (chapter 5).

    Its cost is the whole tree: the exact values need π at every prefix and the reward of every response.
    """
    temperature = check_temperature(temperature)
    world = values.world
    evals, calls = torch.zeros(world.num_prefixes, dtype=DTYPE), torch.zeros(world.num_prefixes, dtype=DTYPE)
    evals[0], calls[0] = world.num_prefixes, world.num_responses  # spent once, at the root
    scores = values.q_table.clone()
    return ToySearch(world.policy(selection_logprobs(scores, temperature)), scores, evals, calls)


def matched_n(evals_per_response: float, pi: TabularPolicy) -> int:
    """The best-of-n whose expected next-token evaluations n·E_π[length] come closest to a budget (n ≥ 1)."""
    mean_length = float(pi.probs() @ pi.world.lengths.to(DTYPE))  # one evaluation per action, eos included
    return max(1, round(finite_number(evals_per_response, "evals_per_response") / mean_length))


# ---------------------------------------------------------------------------------------------- real models
@dataclass
class GuidedGenerations:
    """Guided-search completions with the log-probs needed for their KL, and the compute they took.

    ``logprobs [B, T]``: log π(y_t | x, y_<t) of each chosen token (0 past a row's end); ``select_logprobs
    [B, T]``: log q(y_t | x, y_<t), the probability the search gave its choice (0 everywhere when τ = 0).
    """

    prompts: list[str]
    texts: list[str]
    completion_ids: list[list[int]]
    logprobs: torch.Tensor
    select_logprobs: torch.Tensor
    next_token_evals: int
    reward_calls: int
    forwards: int

    @property
    def kl(self) -> torch.Tensor:
        """log q(y∣x) − log π(y∣x) per prompt, [B] — KL(q‖π) exactly when τ = 0 (q is a point mass), else a
        one-sample unbiased estimate of it."""
        return (self.select_logprobs - self.logprobs).sum(dim=1)


def score_texts(reward_fn: Callable, texts: list[str]) -> torch.Tensor:
    """reward_fn(texts) as a float64 CPU vector with one finite score per text, or an error naming the fault."""
    scores = torch.as_tensor(reward_fn(texts), dtype=torch.float64, device="cpu").reshape(-1)
    if scores.numel() != len(texts):
        raise ValueError(f"reward_fn returned {scores.numel()} scores for {len(texts)} texts; it must return one "
                         "score per text")
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).nonzero()[0])
        raise ValueError(f"reward_fn must return finite scores; text {bad} ({texts[bad]!r}) scored "
                         f"{scores[bad].item()}")
    return scores


def _rollouts(model: CachedDecoder, rows: torch.Tensor, tokens: torch.Tensor, lp: torch.Tensor, depth: int, eos: int,
              pad: int):
    """Branch ``rows`` of the cache, feed the candidate ``tokens`` and extend each greedily by ``depth`` tokens.

    Returns the lookahead ids [R, 1 + depth] (pad after eos), log π of the lookahead [R] and evaluations spent.
    """
    branch, fed, real = model.branch(rows), tokens, torch.ones_like(tokens, dtype=torch.bool)
    going, path, logp, evals = tokens != eos, [tokens], lp.clone(), 0
    for _ in range(depth):
        if not bool(going.any()):
            break
        nxt_lp = branch.step(fed, real).cpu()  # [R, vocab]
        evals += int(going.sum())
        nxt = torch.where(going, nxt_lp.argmax(dim=-1), pad)
        logp += torch.where(going, nxt_lp.gather(-1, nxt[:, None])[:, 0], 0.0)
        path.append(nxt)
        fed, real, going = nxt, going, going & (nxt != eos)
    return torch.stack(path, dim=1), logp, evals


@torch.inference_mode()
def guided_search(
    policy, reward_fn: Callable[[list[str]], Sequence[float] | torch.Tensor], prompts: list[str], *, k: int = 2,
    depth: int = 2, lam: float = 0.0, temperature: float = 0.0, max_new_tokens: int = 32, seed: int | None = None,
    chat: bool = True,
) -> GuidedGenerations:
    """Reward-guided lookahead (after DeAL) on an LM: tokens by score(s, a) = r(s·a·rollout) + λ log π(a·rollout ∣ s).

    Batched over prompts, on the cached decoder that chapter 3's mixing uses (``decoding.CachedDecoder``).

    Each step: log π(·∣x, y_<t) from the prompt's KV cache; its top-k tokens; k branches of that cache (no
    prefix recomputed), each rolled out greedily for ``depth`` tokens; one ``reward_fn`` call on the k texts
    y_<t·a·rollout of every live prompt; score = r + λ log π(a·rollout | x, y_<t); choose (τ = 0: the best).
    """
    k, depth, lam, temperature = _check_search(k, depth, lam, temperature)
    positive_int(max_new_tokens, "max_new_tokens")
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of str (wrap a single prompt in a list)")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (list[str] -> one score per text); got {type(reward_fn).__name__}")
    tok = policy.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    model = CachedDecoder(policy)  # vocab_size = len(tokenizer)
    logp = model.start([prompt_token_ids(policy, p, chat=chat) for p in prompts]).cpu()  # [B, vocab]
    B, k = len(prompts), min(k, logp.shape[-1])
    alive, done = torch.ones(B, dtype=torch.bool), [[] for _ in range(B)]
    chosen_lp, chosen_q = torch.zeros(B, max_new_tokens), torch.zeros(B, max_new_tokens)
    evals, calls, forwards = B, 0, 1
    with seeded(seed):
        for t in range(max_new_tokens):
            live = alive.nonzero()[:, 0]  # [A]
            cand_lp, cand = logp[live].topk(k, dim=-1)  # [A, k]
            ids, path_lp, spent = _rollouts(model, live.repeat_interleave(k), cand.reshape(-1), cand_lp.reshape(-1),
                                            depth, eos, pad)
            texts = [_text(tok, done[int(live[i // k])] + row, eos) for i, row in enumerate(ids.tolist())]
            score = (score_texts(reward_fn, texts) + lam * path_lp.double()).view(-1, k)  # [A, k]
            q = selection_logprobs(score, temperature)
            pick = q.argmax(dim=-1) if temperature == 0 else torch.multinomial(q.exp(), 1)[:, 0]
            tokens = torch.full((B,), pad, dtype=torch.long)
            tokens[live] = cand.gather(-1, pick[:, None])[:, 0]
            chosen_lp[live, t] = cand_lp.gather(-1, pick[:, None])[:, 0].float()
            chosen_q[live, t] = q.gather(-1, pick[:, None])[:, 0].float()
            for b in live.tolist():
                done[b].append(int(tokens[b]))
            evals, calls, forwards = evals + spent, calls + len(texts), forwards + ids.shape[1] - 1
            real, alive = alive, alive & (tokens != eos)
            if t + 1 == max_new_tokens or not bool(alive.any()):
                break
            logp = model.step(tokens, real).cpu()
            evals, forwards = evals + int(alive.sum()), forwards + 1
    T = max(len(row) for row in done)
    texts = [_text(tok, row, eos) for row in done]
    return GuidedGenerations(list(prompts), texts, done, chosen_lp[:, :T], chosen_q[:, :T], evals, calls, forwards)


def _text(tok, ids: list[int], eos: int) -> str:
    """The completion text of ids, cut after the first eos (as ``models.generate`` decodes)."""
    ids = ids[: ids.index(eos) + 1] if eos in ids else ids
    return tok.decode(ids, skip_special_tokens=True).strip()
