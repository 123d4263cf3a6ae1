"""Policies that differ only in their top decoder blocks: run the shared lower blocks once.

A Llama-family model is embeddings → N decoder blocks → final norm → LM head. When only the top k blocks (and
the final norm) change — the trainer's ``trainable_layers = k``, chapter 4's per-pair gradients, zoo policies,
top-block fine-tunes of one base — the input of block N − k is the same for every such policy, so it is
computed once and :class:`TopLayers` runs only the k blocks on it. Exact: frozen blocks' outputs never change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .logprobs import (
    completion_logprobs,
    logprobs_from_hidden,
    pad_rows,
    position_ids_from_mask,
    prompt_token_ids,
    tokenize_pairs,
)


class TopLayers(torch.nn.Module):
    """The top k decoder blocks, final norm and LM head of a Llama-family model, run on cached activations."""

    def __init__(self, model: torch.nn.Module, k: int):
        super().__init__()
        base = getattr(model, "model", None)
        if base is None or not all(hasattr(base, a) for a in ("layers", "norm", "rotary_emb")):
            raise ValueError(
                f"trainable_layers needs a Llama-family decoder (model.model.layers/norm/rotary_emb); "
                f"{type(model).__name__} has none — use peft_config or full fine-tuning instead"
            )
        if k > len(base.layers):
            raise ValueError(f"trainable_layers={k} exceeds the model's {len(base.layers)} decoder blocks")
        self.config = model.config
        self.first = len(base.layers) - k
        self.layers = torch.nn.ModuleList(base.layers[self.first :])
        self.norm, self.rotary_emb, self.lm_head = base.norm, base.rotary_emb, model.lm_head

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None):
        """Final (normed) hidden states [B, S, hidden] from the input of block ``first``; apply ``lm_head`` after.

        ``attention_mask`` is [B, S] (1 = a token; positions then count the tokens), or a ready 4D mask
        [B, 1, S, S] passed with its ``position_ids`` (a prompt shared by two responses: ``prefix_sharing``).
        """
        from transformers.masking_utils import create_causal_mask  # transformers loads only when a model runs

        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None, position_ids=position_ids
        )
        pos = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=pos, position_ids=position_ids)
        return self.norm(hidden)

    def trained(self) -> list[torch.nn.Parameter]:
        """What ``trainable_layers`` trains: the blocks' and the final norm's parameters (never the tied LM head)."""
        return list(self.layers.parameters()) + list(self.norm.parameters())


@torch.no_grad()
def sequence_logprobs_many(
    policies: Sequence,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    chat: bool = True,
    add_eos: bool = True,
    batch_size: int = 16,
    max_length: int | None = None,
) -> torch.Tensor:
    """log π_k(y | x) of several policies on the same pairs, Tensor [policies, n] — the work they share done once.

    Each distinct (prompt, completion) row is scored once. Policies of one Llama-family model that differ only in
    their top decoder blocks (zoo policies, top-block or LoRA-merged fine-tunes of one base) run the shared lower
    blocks once; each policy then runs only its own top blocks and scores only the completion positions. Any
    other set of policies is scored one full forward each. The policies must tokenise every pair alike.
    """
    policies = list(policies)
    if not policies:
        raise ValueError("no policies given; pass a list of one or more policies")
    rows, masks = tokenize_pairs(policies[0], prompts, completions, chat=chat, add_eos=add_eos, max_length=max_length)
    for pol in policies[1:]:
        if tokenize_pairs(pol, prompts, completions, chat=chat, add_eos=add_eos, max_length=max_length) != (rows, masks):
            raise ValueError(f"{pol.name} tokenises the pairs differently from {policies[0].name} (another tokenizer "
                             "or prompt format); score it with sequence_logprobs on its own")
    return rows_logprobs_many(policies, rows, masks, batch_size=batch_size)


@torch.no_grad()
def generation_logprobs_many(policies: Sequence, generations, *, chat: bool = True, batch_size: int = 16) -> torch.Tensor:
    """log π_k(y | x) of several policies on the exact token ids a ``models.generate`` call sampled, Tensor
    [policies, n] (``logprobs.generation_logprobs`` for each policy, the shared lower blocks run once)."""
    policies = list(policies)
    if not policies:
        raise ValueError("no policies given; pass a list of one or more policies")
    if any(len(c) == 0 for c in generations.completion_ids):
        raise ValueError("a generation has no completion tokens to score")
    prompt_ids = [prompt_token_ids(policies[0], p, chat=chat) for p in generations.prompts]
    for pol in policies[1:]:
        if [prompt_token_ids(pol, p, chat=chat) for p in generations.prompts] != prompt_ids:
            raise ValueError(f"{pol.name} formats the prompts differently from {policies[0].name}; score it with "
                             "logprobs.generation_logprobs on its own")
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, generations.completion_ids)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompt_ids, generations.completion_ids)]
    return rows_logprobs_many(policies, rows, masks, batch_size=batch_size)


@torch.no_grad()
def rows_logprobs_many(policies: Sequence, rows, masks, *, batch_size: int = 16) -> torch.Tensor:
    """Summed completion log-probs of token ``rows`` (masks: 1 = scored) under each policy, Tensor [policies, n]:
    each distinct row once, the lower blocks the policies share run once (see ``sequence_logprobs_many``)."""
    policies = list(policies)
    index = {}
    for row, mask in zip(rows, masks):
        index.setdefault((tuple(row), tuple(mask)), len(index))
    distinct = list(index)
    k = _differing_top_blocks([p.model for p in policies])
    model0 = policies[0].model
    out = torch.zeros(len(policies), len(distinct))
    for start in range(0, len(distinct), batch_size):
        part = distinct[start : start + batch_size]
        b = {key: v.to(policies[0].device) for key, v in pad_rows([r for r, _ in part], [m for _, m in part],
                                                                 policies[0].tokenizer.pad_token_id).items()}
        span = slice(start, start + len(part))
        if k is None:  # nothing shared that can be skipped: one full forward per policy
            for j, pol in enumerate(policies):
                out[j, span] = completion_logprobs(pol.model, **b).per_sequence.float().cpu()
            continue
        base = model0.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                            position_ids=position_ids_from_mask(b["attention_mask"]), output_hidden_states=True)
        hidden = base.hidden_states[len(model0.model.layers) - k]  # the input of the first block that differs
        for j, pol in enumerate(policies):
            final = base.last_hidden_state if j == 0 else TopLayers(pol.model, k)(hidden, b["attention_mask"])
            lp = logprobs_from_hidden(final, pol.model.lm_head, b["input_ids"], b["completion_mask"])
            out[j, span] = lp.per_sequence.float().cpu()
    where = torch.tensor([index[(tuple(r), tuple(m))] for r, m in zip(rows, masks)])
    return out[:, where]


def _differing_top_blocks(models) -> int | None:
    """How many top decoder blocks must run per model: all from the lowest block in which any two differ (at least
    1; each model's final norm runs with them); None unless they are one Llama-family architecture with equal
    embeddings and head."""
    def same(a, b) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(sa[n].shape == sb[n].shape and torch.equal(sa[n], sb[n]) for n in sa)

    first = models[0]
    body = getattr(first, "model", None)
    if body is None or not all(hasattr(body, a) for a in ("layers", "norm", "rotary_emb", "embed_tokens")):
        return None
    depth = len(body.layers)
    lowest = depth
    for other in models[1:]:
        ob = getattr(other, "model", None)
        if (type(other) is not type(first) or ob is None or len(ob.layers) != depth
                or not same(body.embed_tokens, ob.embed_tokens) or not same(first.lm_head, other.lm_head)):
            return None
        lowest = min(lowest, next((i for i in range(depth) if not same(body.layers[i], ob.layers[i])), depth))
    return max(depth - lowest, 1)
