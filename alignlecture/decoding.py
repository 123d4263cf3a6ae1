"""Incremental, KV-cached decoding of one or several models in lockstep: the one decoding loop that logit
mixing (``mixing.generate_mixed``, ``mixing.MixingLogitsProcessor``) and reward-guided search
(``search.guided_search``) share.

A ``CachedDecoder`` is one model's side of a decode. ``start(rows)`` prefills that model's own prompts (its own
chat template and tokenisation, left-padded in its own batch) and returns log π(·∣x) of the first new token;
``step(tokens, real)`` feeds one token per row and returns log π(·∣x, y_≤t) of the next. Several decoders fed
the same chosen token every step decode in lockstep: their caches hold different prompts but the same
continuation, which is what per-token mixing Σ_k w_k log π_k needs. ``branch(rows)`` copies selected rows of
the cache (repeats allowed), so guided search can look ahead from one prefix along k branches without
recomputing it.

Positions count real tokens only (``logprobs.position_ids_from_mask``); a row that has ended is fed pad tokens
with attention mask 0, so it never changes the other rows. Log-probs are normalised over the model's full
output width, then cut to the tokenizer's ``vocab_size``: ids past the tokenizer (padded embedding rows) can
never be chosen.
"""

from __future__ import annotations

import copy
import inspect

import torch

from .logprobs import accepts_logits_to_keep, position_ids_from_mask


class CachedDecoder:
    """One model's side of an incremental decode: its own left-padded prompts, KV cache, attention mask and positions.

    ``vocab_size`` is the number of token ids the decode may choose from, len(tokenizer) by default (pass the
    shared size when several models decode in lockstep: ``mixing.check_same_vocabulary`` returns it).
    """

    def __init__(self, policy, vocab_size: int | None = None):
        from transformers import DynamicCache

        self.policy = policy
        self.vocab_size = len(policy.tokenizer) if vocab_size is None else vocab_size
        self.cache = DynamicCache(config=policy.model.config)
        self.keep = {"logits_to_keep": 1} if accepts_logits_to_keep(policy.model) else {}
        inner = getattr(policy.model, "get_base_model", lambda: policy.model)()  # peft wraps the model
        params = inspect.signature(inner.forward).parameters  # transformers ≥ 5.2x renamed past_key_values
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = self.policy.model(
            input_ids=input_ids, attention_mask=self.mask, position_ids=position_ids,
            use_cache=True, **{self.cache_kwarg: self.cache}, **self.keep,
        )
        logits = out.logits[:, -1].float()  # [B, vocab of the model]
        if logits.shape[-1] < self.vocab_size:
            raise ValueError(
                f"{self.policy.name!r} has {logits.shape[-1]} logits but its tokenizer has {self.vocab_size} tokens; "
                "resize the model's embeddings to len(tokenizer)"
            )
        # normalised over the model's full width (as logprobs.completion_logprobs), then cut: padded ids never win
        return torch.log_softmax(logits, dim=-1)[:, : self.vocab_size]

    def start(self, rows: list[list[int]]) -> torch.Tensor:
        """Prefill the prompts (left-padded); returns log π(·∣x) for the first new token, [B, vocab]."""
        width, device = max(len(r) for r in rows), self.policy.device
        pad = self.policy.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        self.mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        self.next_position = self.mask.sum(dim=1, keepdim=True)  # [B, 1]
        return self._forward(ids, position_ids_from_mask(self.mask))

    def step(self, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``real`` False: a pad after eos, masked out); returns the next log-probs."""
        device = self.policy.device
        self.mask = torch.cat([self.mask, real.to(device=device, dtype=self.mask.dtype)[:, None]], dim=1)
        logp = self._forward(tokens.to(device)[:, None], self.next_position)
        self.next_position = self.next_position + 1
        return logp

    def branch(self, rows: torch.Tensor) -> "CachedDecoder":
        """A copy holding rows ``rows`` of this batch (repeats allowed), e.g. k lookahead branches per prompt.

        The copy's KV cache starts as the selected rows of this one (the shared prefix is not recomputed) and
        grows on its own: stepping the copy leaves this model's cache, mask and positions untouched.
        """
        twin = copy.copy(self)
        twin.cache = copy.copy(self.cache)
        twin.cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        rows = rows.to(self.mask.device)
        twin.cache.batch_select_indices(rows)  # indexing makes new tensors: the original rows are not written to
        twin.mask, twin.next_position = self.mask[rows], self.next_position[rows]
        return twin
