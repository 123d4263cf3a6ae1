"""Prefix sharing: a DPO pair's prompt runs once for both of its responses (Wang et al. 2024, arXiv 2410.20305).

A pair (x, y_w, y_l) is usually scored as two rows, x y_w and x y_l, so the prompt x is computed twice — and
the prompt is often the longest part (a chat template alone adds ~30 tokens). Packed as ONE sequence
x y_w y_l, with

- an attention mask in which each token of y_l sees x and the earlier tokens of y_l, never y_w, and
- position ids that restart after x (y_l's first token gets position len(x), as in its own row),

every token sees exactly the tokens, at exactly the positions, that it sees in its own row. So the log-probs
— and their gradients, which flow through x from both responses — are those of the two rows, up to float
reassociation. The token y_w,1 and y_l,1 are both predicted from x's last position.

    packed = pack_pairs(chosen_rows, chosen_masks, rejected_rows, rejected_masks, pad_token_id)
    logps = pair_logprobs(model, packed)  # [2B]: log π(y_w) of every pair, then log π(y_l)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .logprobs import accepts_logits_to_keep, token_logprobs

SEGMENT_SHARED, SEGMENT_CHOSEN, SEGMENT_REJECTED, SEGMENT_PADDING = 0, 1, 2, 3


@dataclass
class PackedPairs:
    """B pairs, one packed row each: the shared prefix, the rest of the chosen row, the rest of the rejected row.

    Attributes:
        input_ids: LongTensor [B, L], padded after each row with the pad token.
        position_ids: LongTensor [B, L]: 0, 1, … through the chosen row; the rejected tokens restart at the shared
            prefix's length; 0 on padding.
        segments: LongTensor [B, L]: 0 shared prefix, 1 chosen, 2 rejected, 3 padding.
        source: LongTensor [M]: flat index b·L + t of the position whose output predicts each scored token.
        target: LongTensor [M]: the scored token ids.
        owner: LongTensor [M]: which log-prob a scored token adds to, b (chosen of pair b) or B + b (rejected).
        order: LongTensor [M]: the scored token's place among its response's scored tokens (0, 1, …).
        shared: list of B ints, how many leading tokens each pair's two rows share (its prompt, normally).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    owner: torch.Tensor
    order: torch.Tensor
    shared: list[int]

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0]

    def attention_mask(self) -> torch.Tensor:
        """BoolTensor [B, 1, L, L], True where query q may attend to key k: k ≤ q, and k is in the shared prefix or
        in q's own response. A padding position attends only to itself (no row is ever fully masked)."""
        seg = self.segments
        q, k = seg[:, :, None], seg[:, None, :]  # [B, L, 1], [B, 1, L]
        L = seg.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=seg.device).tril()
        allowed = causal & (k != SEGMENT_PADDING) & (q != SEGMENT_PADDING) & ((k == SEGMENT_SHARED) | (k == q))
        allowed |= torch.eye(L, dtype=torch.bool, device=seg.device)
        return allowed[:, None]

    def to(self, device) -> PackedPairs:
        move = {name: getattr(self, name).to(device) for name in
                ("input_ids", "position_ids", "segments", "source", "target", "owner", "order")}
        return PackedPairs(**move, shared=self.shared)


def shared_prefix(row_a: Sequence[int], mask_a: Sequence[int], row_b: Sequence[int], mask_b: Sequence[int]) -> int:
    """How many leading tokens two rows share before either one's completion starts: their common prompt."""
    n = 0
    for ta, ma, tb, mb in zip(row_a, mask_a, row_b, mask_b):
        if ta != tb or ma or mb:
            break
        n += 1
    return n


def pack_pairs(chosen_rows, chosen_masks, rejected_rows, rejected_masks, pad_token_id: int) -> PackedPairs:
    """Pack each pair's chosen row (prompt + y_w) and rejected row (prompt + y_l) into one row x y_w y_l.

    Rows and masks are what ``logprobs.tokenize_pairs`` returns (mask 1 = a completion token to score). Pairs
    whose rows share no prefix still pack (the rejected part then sees nothing of the chosen one), only
    without saving anything.
    """
    if not (len(chosen_rows) == len(chosen_masks) == len(rejected_rows) == len(rejected_masks)) or not chosen_rows:
        raise ValueError(f"pack_pairs needs one chosen and one rejected row (and mask) per pair, at least one pair; got "
                         f"{len(chosen_rows)}, {len(chosen_masks)}, {len(rejected_rows)}, {len(rejected_masks)}")
    shared = [shared_prefix(*rows) for rows in zip(chosen_rows, chosen_masks, rejected_rows, rejected_masks)]
    width = max(len(c) + len(r) - s for c, r, s in zip(chosen_rows, rejected_rows, shared))
    B = len(chosen_rows)
    input_ids = torch.full((B, width), int(pad_token_id), dtype=torch.long)
    position_ids = torch.zeros(B, width, dtype=torch.long)
    segments = torch.full((B, width), SEGMENT_PADDING, dtype=torch.long)
    source, target, owner, order = [], [], [], []
    for b, (c, mc, r, mr, s) in enumerate(zip(chosen_rows, chosen_masks, rejected_rows, rejected_masks, shared)):
        n = len(c) + len(r) - s
        input_ids[b, :n] = torch.tensor(list(c) + list(r[s:]))
        position_ids[b, :n] = torch.tensor(list(range(len(c))) + list(range(s, len(r))))
        segments[b, :s], segments[b, s : len(c)], segments[b, len(c) : n] = (
            SEGMENT_SHARED, SEGMENT_CHOSEN, SEGMENT_REJECTED)
        # where row position t − 1 sits in the packed row: shared prefix as is, the rest of y_l after all of c
        for row, mask, slot, start in ((c, mc, b, None), (r, mr, B + b, len(c) - s)):
            scored = 0
            for t in range(1, len(row)):
                if mask[t]:
                    at = t - 1 if start is None or t - 1 < s else start + t - 1
                    source.append(b * width + at)
                    target.append(row[t])
                    owner.append(slot)
                    order.append(scored)
                    scored += 1
    return PackedPairs(input_ids=input_ids, position_ids=position_ids, segments=segments,
                       source=torch.tensor(source), target=torch.tensor(target), owner=torch.tensor(owner),
                       order=torch.tensor(order), shared=shared)


def mask_for(config, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The boolean mask as the model's attention wants it: as is for SDPA, additive (0 / −max) for eager."""
    if getattr(config, "_attn_implementation", None) == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DDP (``.module``) or peft (``get_base_model``) wrapper."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def supports(model: torch.nn.Module) -> bool:
    """Whether ``model`` (a Hugging Face causal LM, possibly wrapped by peft or DDP) takes a custom 4D attention mask
    with position ids: SDPA or eager attention (flash-attention kernels take no custom mask)."""
    inner = _unwrapped(model)
    config = getattr(inner, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    try:
        return "position_ids" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def sums(picked: torch.Tensor, packed: PackedPairs) -> torch.Tensor:
    """Per-token log-probs [M] summed into each response's log π(y|x): [2B], chosen of every pair, then rejected.

    Each response's tokens are laid out in a row and the rows summed, the order ``logprobs`` sums an unshared
    row in, so a response's sum does not depend on which other pairs share its batch (an ``index_add`` does)."""
    owner, order = packed.owner.to(picked.device), packed.order.to(picked.device)
    table = torch.zeros(2 * packed.num_pairs, int(order.max()) + 1, dtype=picked.dtype, device=picked.device)
    return table.index_put((owner, order), picked).sum(dim=1)


def logprobs_from_hidden(final: torch.Tensor, lm_head: torch.nn.Module, packed: PackedPairs) -> torch.Tensor:
    """log π(y_w|x), log π(y_l|x) of every pair [2B] from final hidden states [B, L, D]; only the scored positions
    go through ``lm_head``."""
    states = final.reshape(-1, final.shape[-1])[packed.source.to(final.device)]  # [M, D]
    return sums(token_logprobs(lm_head(states), packed.target.to(final.device)), packed)


def pair_logprobs(model: torch.nn.Module, packed: PackedPairs) -> torch.Tensor:
    """log π(y_w|x) and log π(y_l|x) of every packed pair from one forward of ``model``, Tensor [2B] (chosen first).

    The vocabulary-sized LM head runs only at positions that predict a scored token (``logits_to_keep``)."""
    dev = packed.input_ids.device
    mask = mask_for(_unwrapped(model).config, packed.attention_mask(), next(model.parameters()).dtype)
    kwargs = {}
    width = packed.input_ids.shape[1]
    if accepts_logits_to_keep(model):
        keep = torch.unique(packed.source % width)  # sorted positions any row predicts from, [U]
        kwargs["logits_to_keep"] = keep
        slot = torch.full((width,), -1, dtype=torch.long, device=dev)
        slot[keep] = torch.arange(len(keep), device=dev)
        rows = packed.source // width
        index = rows * len(keep) + slot[packed.source % width]
    else:
        index = packed.source
    logits = model(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, **kwargs).logits
    logits = logits.reshape(-1, logits.shape[-1])[index]  # [M, vocab]
    return sums(token_logprobs(logits, packed.target), packed)
