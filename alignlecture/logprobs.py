"""The one way the course scores text: completion log-probs of prompt+completion pairs in one forward pass.

For a batch of token rows ``input_ids [B, S]`` with an ``attention_mask`` (1 = real token, either padding
side) and a ``completion_mask`` (1 = a completion token to score), the per-token log-prob of position t is
log π(x_t | x_<t) taken from the logits at t − 1; the sequence log-prob is their sum over the completion:
log π(y | x) = Σ_t log π(y_t | x, y_<t).

The eos convention (one for the whole package, and TRL's): a completion given as TEXT is a finished response,
so it is scored with the tokenizer's eos appended — ``tokenize_pairs``, ``encode_pairs`` and
``sequence_logprobs`` default to ``add_eos=True``, the DPO trainer, ``dpo.evaluate`` and the reward features use
the same. Token ids that ``models.generate`` sampled are scored exactly as sampled (``generation_logprobs``,
``encode_ids``): they end with eos when the model stopped by itself, and without it when ``max_new_tokens`` cut
them. Pass ``add_eos=False`` to score a text as an unfinished prefix.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class CompletionLogprobs:
    """Per-token log-probs [B, S] (0 outside the completion) and their per-sequence sums [B]."""

    per_token: torch.Tensor
    per_sequence: torch.Tensor


def check_masks(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> None:
    """Shapes equal, masks 0/1, completion inside the attended tokens, never at position 0, never empty."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq]; got shape {tuple(input_ids.shape)}")
    for name, mask in (("attention_mask", attention_mask), ("completion_mask", completion_mask)):
        if mask.shape != input_ids.shape:
            raise ValueError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}; got {tuple(mask.shape)}"
            )
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(f"{name} must hold only 0 and 1")
    if bool((completion_mask.bool() & ~attention_mask.bool()).any()):
        raise ValueError("completion_mask marks padding tokens; a completion token must also have attention_mask 1")
    if bool(completion_mask[:, 0].bool().any()):
        raise ValueError(
            "completion_mask marks position 0, which has no context to be scored from; every row needs a prompt "
            "(at least one token, e.g. BOS) before its completion"
        )
    empty = (completion_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} have an empty completion (no token with completion_mask 1); drop them")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left- and right-padded rows get the same positions."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] = logit of the target − logsumexp of the logits, in float32 at least:
    [..., vocab] and [...] → [...]."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> CompletionLogprobs:
    """Per-token log π(x_t | x_<t) from next-token logits of the LAST S′ ≤ S positions, [B, S′, vocab]."""
    start = input_ids.shape[1] - logits.shape[1]  # logits[:, j] is the prediction made at position start + j
    picked = token_logprobs(logits[:, :-1], input_ids[:, start + 1 :])  # [B, S′-1]: positions start+1 … S-1
    per_token = torch.zeros(input_ids.shape, dtype=picked.dtype, device=picked.device)
    per_token[:, start + 1 :] = picked * completion_mask[:, start + 1 :].to(picked.dtype)  # [B, S]
    return CompletionLogprobs(per_token=per_token, per_sequence=per_token.sum(dim=1))


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether a (possibly wrapped) Hugging Face model's forward takes ``logits_to_keep``."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def logprobs_from_hidden(
    hidden: torch.Tensor, lm_head: torch.nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> CompletionLogprobs:
    """The same log-probs from final hidden states [B, S, D], projecting only the positions that are scored.

    Only the positions t − 1 whose next token t is a completion token go through ``lm_head`` — for a
    49k-token vocabulary that is most of the compute, so this is what makes training on a CPU affordable.
    """
    predicts = completion_mask[:, 1:].bool()  # [B, S-1]: position t-1 predicts a completion token at t
    picked = token_logprobs(lm_head(hidden[:, :-1][predicts]), input_ids[:, 1:][predicts])  # [M]
    per_token = torch.zeros(input_ids.shape, dtype=picked.dtype, device=picked.device)
    per_token[:, 1:][predicts] = picked
    return CompletionLogprobs(per_token=per_token, per_sequence=per_token.sum(dim=1))


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> CompletionLogprobs:
    """log π(y_t | x, y_<t) per completion token and log π(y | x) = their sum, from one forward pass."""
    check_masks(input_ids, attention_mask, completion_mask)
    kwargs = {}
    if accepts_logits_to_keep(model):
        # project only from the first position that predicts a completion token: the prompt part of a
        # batch never goes through the (vocabulary-sized) LM head
        first = int(completion_mask.long().argmax(dim=1).min()) - 1
        kwargs["logits_to_keep"] = input_ids.shape[1] - first
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), **kwargs
    ).logits
    return logprobs_from_logits(logits, input_ids, completion_mask)


def prompt_token_ids(policy, prompt: str, *, chat: bool = True) -> list[int]:
    """The prompt as the model sees it (chat template applied), tokenised without extra specials; never empty."""
    tok = policy.tokenizer
    ids = tok(policy.format_prompt(prompt, chat=chat), add_special_tokens=False)["input_ids"]
    return ids or [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]


def tokenize_pairs(
    policy,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    chat: bool = True,
    add_eos: bool = True,
    max_length: int | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Token rows (prompt then completion, tokenised separately) and their completion masks, unpadded.

    Tokenising the two parts separately makes the completion boundary exact. ``max_length`` truncates the
    completion (never the prompt); a completion left with no token is an error.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    if not prompts:
        raise ValueError("no prompt/completion pairs given")
    tok = policy.tokenizer
    rows, masks = [], []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        p_ids = prompt_token_ids(policy, prompt, chat=chat)
        c_ids = tok(completion, add_special_tokens=False)["input_ids"] if completion else []
        if add_eos:
            c_ids = c_ids + [tok.eos_token_id]
        if max_length is not None:
            if len(p_ids) >= max_length:
                raise ValueError(
                    f"pair {i}: the prompt alone has {len(p_ids)} tokens ≥ max_length={max_length}, so its "
                    "completion would be empty after truncation; raise max_length or shorten the prompt"
                )
            c_ids = c_ids[: max_length - len(p_ids)]
        if not c_ids:
            raise ValueError(f"pair {i}: the completion {completion!r} has no tokens to score")
        rows.append(p_ids + c_ids)
        masks.append([0] * len(p_ids) + [1] * len(c_ids))
    return rows, masks


def encode_pairs(
    policy,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    chat: bool = True,
    add_eos: bool = True,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise prompt and completion separately, concatenate, right-pad: input_ids, attention_mask, completion_mask."""
    rows, masks = tokenize_pairs(policy, prompts, completions, chat=chat, add_eos=add_eos, max_length=max_length)
    return pad_rows(rows, masks, policy.tokenizer.pad_token_id)


def encode_ids(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_token_id: int):
    """The same batch layout from token ids directly (e.g. the exact ids ``models.generate`` sampled)."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(completion_ids)} completions")
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompt_ids, completion_ids)]
    return pad_rows(rows, masks, pad_token_id)


def pad_rows(rows, masks, pad_token_id) -> dict[str, torch.Tensor]:
    """Right-pad token rows and completion masks into input_ids, attention_mask, completion_mask [B, S]."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        completion_mask[i, : len(row)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def pad_states(states: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Right-pad per-row hidden states [S_i, hidden] into one Tensor [rows, width, hidden] (zeros after each row),
    the layout ``pad_rows`` gives the token rows."""
    out = torch.zeros(len(states), width, states[0].shape[-1], dtype=states[0].dtype, device=states[0].device)
    for j, h in enumerate(states):
        out[j, : h.shape[0]] = h
    return out


@torch.no_grad()
def sequence_logprobs(
    policy,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    chat: bool = True,
    add_eos: bool = True,
    batch_size: int = 16,
    max_length: int | None = None,
) -> torch.Tensor:
    """log π(y | x) for every (prompt, completion) pair, Tensor [n] (no gradient; batched; eos appended by default)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_pairs(
            policy, prompts[start : start + batch_size], completions[start : start + batch_size], chat=chat,
            add_eos=add_eos, max_length=max_length,
        )
        batch = {k: v.to(policy.device) for k, v in batch.items()}
        out.append(completion_logprobs(policy.model, **batch).per_sequence.cpu())
    if not out:
        raise ValueError("no prompt/completion pairs given")
    return torch.cat(out)


@torch.no_grad()
def generation_logprobs(policy, generations, *, chat: bool = True, batch_size: int = 16) -> torch.Tensor:
    """log π(y | x) of the exact token ids a ``models.generate`` call sampled (no re-tokenisation), Tensor [n]."""
    tok = policy.tokenizer
    out = []
    for start in range(0, len(generations.prompts), batch_size):
        prompts = generations.prompts[start : start + batch_size]
        completions = generations.completion_ids[start : start + batch_size]
        if any(len(c) == 0 for c in completions):
            raise ValueError("a generation has no completion tokens to score")
        prompt_ids = [prompt_token_ids(policy, p, chat=chat) for p in prompts]
        batch = {k: v.to(policy.device) for k, v in encode_ids(prompt_ids, completions, tok.pad_token_id).items()}
        out.append(completion_logprobs(policy.model, **batch).per_sequence.cpu())
    return torch.cat(out)
