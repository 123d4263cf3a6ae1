"""Decoding from a product of policies Π_k π_k^{w_k} by mixing per-token log-probs (lecture §mixing).

The lecture's question: given policies π_1 … π_K and real weights w_k, decode y that Π_k π_k(y∣x)^{w_k}
favours. Token by token: y_t comes from log_softmax(Σ_k w_k log π_k(·∣x, y_<t)). β-adjustment, proxy tuning,
weak-to-strong extrapolation and multi-objective decoding are all this one decoder with other weights.

Impossible tokens. A token with log π_k = −inf under a model with w_k ≠ 0 is impossible under the mix,
whatever the sign of w_k: the mix lives on the intersection of the supports of the models it uses. So a
negative weight never turns −inf into +inf, and a model with w_k = 0 is left out of the sum (no 0·(−inf) = NaN).

Caches. Every policy formats and tokenises its own prompt (its own chat template), left-padded in its own
batch, so prompts may differ in length per model. After the prompt each model is fed the same chosen token
every step: the caches hold different prompts but the same continuation. Positions count real tokens only
(``logprobs.position_ids_from_mask``); a row that has emitted eos is fed pad tokens with attention mask 0.
Each model's side of that lockstep is a ``decoding.CachedDecoder``, the decoder guided search uses too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from .decoding import CachedDecoder
from .logprobs import prompt_token_ids
from .models import seeded
from ._checks import finite_number, float_tensors_alike, mixable, positive_finite
from .toy import check_beta


# ---------------------------------------------------------------------------------------------- the mix
def check_weights(weights: Sequence[float], num_models: int | None = None) -> list[float]:
    """The weights w_k as floats: one per model, finite, not all zero — or an error naming the fix."""
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise TypeError(f"weights must be a sequence of real numbers; got {weights!r}") from None
    if num_models is not None and len(w) != num_models:
        raise ValueError(f"got {len(w)} weights for {num_models} models; pass exactly one weight per model")
    if not w:
        raise ValueError("weights is empty; pass one weight per model")
    if not all(math.isfinite(x) for x in w):
        raise ValueError(f"weights must be finite; got {w}")
    if all(x == 0 for x in w):
        raise ValueError(f"weights are all zero ({w}): the mix would ignore every model; give one a nonzero weight")
    return w


def mix_logprobs(logprobs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """log π_mix = log_softmax(Σ_k w_k log π_k) over the last dim: the product of experts Π_k π_k^{w_k} (§mixing).

    ``logprobs``: K tensors of one shape [..., vocab] (log-probs, or logits: a per-model constant cancels); the
    same call mixes sequence-level vectors [N]. An entry that is −inf under a model with w_k ≠ 0 stays −inf.
    """
    logprobs = float_tensors_alike(logprobs, "logprobs")  # one shape, float32 or wider
    w = check_weights(weights, len(logprobs))
    used = [(wk, lp) for wk, lp in zip(w, logprobs) if wk != 0]  # a zero weight leaves its model out, −inf included
    impossible = torch.stack([lp.isneginf() for _, lp in used]).any(dim=0)
    total = sum(wk * lp.masked_fill(lp.isneginf(), 0.0) for wk, lp in used)  # w·(−inf) is never formed
    total = mixable(total.masked_fill(impossible, -math.inf), impossible, w)  # NaN, overflow or an empty row: error
    return torch.log_softmax(total, dim=-1)


# ---------------------------------------------------------------------------------------------- decoding
def check_same_vocabulary(policies: Sequence) -> int:
    """Every policy has the same tokenizer vocabulary (``get_vocab()`` equal); returns its size len(tokenizer)."""
    if not policies:
        raise ValueError("policies is empty; pass at least one Policy")
    first = policies[0].tokenizer
    vocab = first.get_vocab()
    for k, policy in enumerate(policies[1:], start=1):
        if policy.tokenizer is not first and policy.tokenizer.get_vocab() != vocab:
            other = policy.tokenizer.get_vocab()
            raise ValueError(
                f"policies[0] ({policies[0].name!r}, {len(vocab)} tokens) and policies[{k}] ({policy.name!r}, "
                f"{len(other)} tokens) have different tokenizers; per-token mixing needs one shared vocabulary: "
                "mix models of the same family (same tokenizer)"
            )
    return len(first)


@torch.inference_mode()
def next_token_logprobs(policy, prompts: list[str], *, chat: bool = True) -> torch.Tensor:
    """log π(· | x) of the first response token for each prompt, [B, len(tokenizer)] (the decoder's prefill step)."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of str (wrap a single prompt in a list)")
    model = CachedDecoder(policy, check_same_vocabulary([policy]))
    return model.start([prompt_token_ids(policy, p, chat=chat) for p in prompts])


@dataclass
class MixedGenerations:
    """Completions of the mix: text, chosen ids (cut after the first eos, eos kept) and their log-probs.

    ``logprobs [K, B, T]``: log π_k(y_t | x, y_<t) of each chosen token under each model (0 past a row's end);
    ``mixed_logprobs [B, T]``: the same under the mix log_softmax(Σ_k w_k log π_k), before temperature/top-p.
    """

    prompts: list[str]
    texts: list[str]
    completion_ids: list[list[int]]
    logprobs: torch.Tensor
    mixed_logprobs: torch.Tensor
    weights: list[float]


def _pick(scores: torch.Tensor, do_sample: bool, temperature: float, top_p: float) -> torch.Tensor:
    """Greedy argmax, or a sample at ``temperature`` from the smallest top set holding ≥ top_p of the mass, [B]."""
    if not do_sample:
        return scores.argmax(dim=-1)
    scores = scores / temperature
    if top_p < 1.0:
        ascending, order = scores.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1.0 - top_p  # the tail outside the top-p set
        drop[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(-1)


@torch.inference_mode()
def generate_mixed(
    policies: Sequence, weights: Sequence[float], prompts: list[str], *, max_new_tokens: int | None = None,
    do_sample: bool | None = None, temperature: float | None = None, top_p: float | None = None,
    seed: int | None = 0, chat: bool = True, min_new_tokens: int = 0,
) -> MixedGenerations:
    """Decode y_t from log_softmax(Σ_k w_k log π_k(·∣x, y_<t)), one KV cache per model, batched (lecture §mixing).

    The first policy's tokenizer gives eos, pad and the decoded text; ``min_new_tokens`` forbids eos before
    that many tokens (as transformers' option of the same name). Each row stops at its own eos. Decoding
    options left out come from ``alignlecture.settings().decoding()``, as for ``models.generate`` (it samples:
    pass ``do_sample=False`` for greedy decoding).
    """
    from . import settings

    d = settings().decoding(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)
    max_new_tokens, do_sample, temperature, top_p = d["max_new_tokens"], d["do_sample"], d["temperature"], d["top_p"]
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of str (wrap a single prompt in a list)")
    if not 0 <= min_new_tokens <= max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"need 1 ≤ max_new_tokens and 0 ≤ min_new_tokens ≤ max_new_tokens; got {max_new_tokens}, "
                         f"{min_new_tokens}")
    if do_sample and not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number when sampling; got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
    w = check_weights(weights, len(policies))
    vocab_size = check_same_vocabulary(policies)
    tok = policies[0].tokenizer
    eos, pad, device = tok.eos_token_id, tok.pad_token_id, policies[0].device
    models = [CachedDecoder(p, vocab_size) for p in policies]
    logps = [m.start([prompt_token_ids(m.policy, p, chat=chat) for p in prompts]).to(device) for m in models]
    alive = torch.ones(len(prompts), dtype=torch.bool, device=device)
    is_eos, chosen, per_model = torch.arange(vocab_size, device=device) == eos, [], []
    with seeded(seed):
        for t in range(max_new_tokens):
            mix = mix_logprobs(logps, w)  # [B, vocab]
            scores = mix.masked_fill(is_eos, -math.inf) if t < min_new_tokens else mix
            tokens = torch.where(alive, _pick(scores, do_sample, temperature, top_p), pad)  # [B]
            chosen.append(tokens)
            picked = torch.stack([lp.gather(-1, tokens[:, None])[:, 0] for lp in [mix, *logps]])  # [1 + K, B]
            per_model.append(torch.where(alive, picked, 0.0))  # where, not ×: a finished row's −inf must not NaN
            real, alive = alive, alive & (tokens != eos)
            if t + 1 == max_new_tokens or not bool(alive.any()):
                break
            logps = [m.step(tokens, real).to(device) for m in models]
    ids = [row[: row.index(eos) + 1] if eos in row else row for row in torch.stack(chosen, dim=1).tolist()]
    picked = torch.stack(per_model, dim=2)  # [1 + K, B, T]
    texts = [tok.decode(row, skip_special_tokens=True).strip() for row in ids]
    return MixedGenerations(list(prompts), texts, ids, logprobs=picked[1:], mixed_logprobs=picked[0], weights=w)


class MixingLogitsProcessor(LogitsProcessor):
    """Σ_k w_k log π_k inside ``policies[0].model.generate``: its scores are the w_0 term (lecture §mixing).

    The other policies format their own prompts and run with their own KV caches on the continuation that
    ``generate`` builds. Returns the mixed log-probs (ids past len(tokenizer) get −inf). One processor serves
    one ``generate`` call. transformers applies its own temperature/top-p warpers BEFORE custom processors,
    i.e. to the primary's logits only: decode greedily here, and sample with ``generate_mixed``. Build the
    inputs with ``generate_inputs()``; rows that are not the prompts, in their order, are refused.
    """

    def __init__(self, policies: Sequence, weights: Sequence[float], prompts: list[str], *, chat: bool = True):
        self.weights = check_weights(weights, len(policies))
        self.vocab_size = check_same_vocabulary(policies)
        self.prompts, self.chat = list(prompts), chat
        self.primary = policies[0]
        self.others = [CachedDecoder(p, self.vocab_size) for p in policies[1:]]
        self.start_length: int | None = None  # the primary's padded prompt length, seen at the first call

    def generate_inputs(self) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` for ``policies[0].model.generate``: the prompts as the processor
        expects them (the primary's chat formatting, left-padded, in the order given), on the primary's device, e.g.::

            proc = MixingLogitsProcessor(policies, weights, prompts)
            out = policies[0].model.generate(**proc.generate_inputs(), logits_processor=[proc], do_sample=False, …)
        """
        rows = [prompt_token_ids(self.primary, p, chat=self.chat) for p in self.prompts]
        width, pad = max(len(r) for r in rows), self.primary.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids.to(self.primary.device), "attention_mask": mask.to(self.primary.device)}

    def _check_rows(self, input_ids: torch.Tensor) -> None:
        """Each row of generate's prompt is prompt i as the primary formats it (left padding allowed)."""
        pad = self.primary.tokenizer.pad_token_id
        for i, (row, prompt) in enumerate(zip(input_ids.tolist(), self.prompts)):
            want = prompt_token_ids(self.primary, prompt, chat=self.chat)
            cut = len(row) - len(want)
            if cut < 0 or row[cut:] != want or any(t != pad for t in row[:cut]):
                raise ValueError(
                    f"row {i} of generate's input_ids is not prompt {i} ({prompt[:40]!r}) as policies[0] formats it; "
                    "build the inputs with processor.generate_inputs() (left-padded, rows in the order of the prompts)"
                )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start_length is None:
            if input_ids.shape[0] != len(self.prompts):
                raise ValueError(
                    f"generate runs {input_ids.shape[0]} rows but the processor was given {len(self.prompts)} "
                    "prompts; use one row per prompt (no beams, num_return_sequences=1)"
                )
            self._check_rows(input_ids)
            self.start_length, self.fed = input_ids.shape[1], 0
            self.logps = [m.start([prompt_token_ids(m.policy, p, chat=self.chat) for p in self.prompts])
                          for m in self.others]
        elif input_ids.shape[1] == self.start_length + self.fed + 1:
            real = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            self.logps = [m.step(input_ids[:, -1], real) for m in self.others]
            self.fed += 1
        else:
            raise RuntimeError("a MixingLogitsProcessor serves one generate call; build a new one for each call")
        primary = torch.log_softmax(scores.float(), dim=-1)[:, : self.vocab_size]
        mix = mix_logprobs([primary, *(lp.to(primary.device) for lp in self.logps)], self.weights)
        out = torch.full_like(scores, -math.inf)
        out[:, : self.vocab_size] = mix.to(scores.dtype)
        return out


# ---------------------------------------------------------------------------------------------- recipes
def beta_adjustment(pi, pi_ref, beta: float, beta_new: float):
    """π_ref^{1−β/β′}·π^{β/β′}: π = π*_β becomes π*_β′ ∝ π_ref·exp(r/β′) on sequences (lecture §β-adjustment).

    Since π*_β ∝ π_ref·exp(r/β), exp(r/β′) ∝ (π/π_ref)^{β/β′}. Per token it is an approximation (the
    per-token normalisers differ); on whole sequences it is exact. Returns ([pi, pi_ref], weights).
    """
    beta, beta_new = check_beta(beta), positive_finite(beta_new, "beta_new", "the new KL coefficient")
    ratio = beta / beta_new
    return [pi, pi_ref], [ratio, 1.0 - ratio]


def _check_alpha(alpha: float) -> float:
    return finite_number(alpha, "alpha", "the strength of the steer")


def proxy_tuning(pi_large, pi_tuned_small, pi_ref_small, alpha: float = 1.0):
    """π′·(π/π_ref)^α: the large model steered by what tuning changed in a small one (lecture §proxy tuning)."""
    alpha = _check_alpha(alpha)
    return [pi_large, pi_tuned_small, pi_ref_small], [1.0, alpha, -alpha]


def weak_to_strong(pi_strong, pi_tuned_small, pi_ref_small, alpha: float = 1.0):
    """π′·(π_ref/π)^α: the strong model moved along the weak pair's log-ratio, reversed (lecture §weak-to-strong)."""
    alpha = _check_alpha(alpha)
    return [pi_strong, pi_tuned_small, pi_ref_small], [1.0, -alpha, alpha]


def multi_objective(policies: Sequence, weights: Sequence[float], *, atol: float = 1e-6):
    """Π_k π_k^{w_k} with Σ_k w_k = 1: multi-objective decoding, MOD (lecture §multi-objective).

    If π_k ∝ π_ref·exp(r_k/β), then Π_k π_k^{w_k} ∝ π_ref^{Σw}·exp(Σ_k w_k r_k/β): the optimum for the
    combined reward Σ_k w_k r_k exactly when Σ_k w_k = 1 (any other sum also rescales the reference).
    Negative weights are allowed (they extrapolate away from an objective). Returns (policies, weights).
    """
    w = check_weights(weights, len(policies))
    if abs(sum(w) - 1.0) > atol:
        raise ValueError(
            f"multi-objective weights must sum to 1; got {w} (sum {sum(w):.6g}); divide them by their sum: "
            f"{[x / sum(w) for x in w] if sum(w) else 'their sum is 0, rescale by hand'}"
        )
    return list(policies), w
