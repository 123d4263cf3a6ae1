"""Parameter merging — the common baseline chapter 3 contrasts with logit mixing — and the lecture's hack on it.

Merging builds π' from θ' = Σ_k w_k θ_k. Nothing ties π' to Π_k π_k^{w_k}: the lecture's counterexample flips
the signs of one block's query and key projections, which leaves every logit unchanged (q·k = (−q)·(−k), and
rotary embeddings are linear, so they commute with the sign), yet the 50/50 merge of the two equal models has
Q = K = 0 in that block.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from .mixing import check_weights
from .models import Policy


def merge_parameters(policies: Sequence[Policy], weights: Sequence[float], *, name: str | None = None) -> Policy:
    """The merged policy with parameters θ' = Σ_k w_k·θ_k (lecture §parameter merging); inputs are not changed."""
    policies = list(policies)
    if len(policies) < 2:
        raise ValueError(f"merging needs at least 2 policies; got {len(policies)}")
    weights = check_weights(weights, len(policies))
    states = [p.model.state_dict() for p in policies]
    keys = list(states[0])
    for p, state in zip(policies[1:], states[1:]):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise ValueError(
                f"{p.name!r} and {policies[0].name!r} have different architectures (parameter names or shapes "
                "differ); merging needs models of the same architecture"
            )
    merged = copy.deepcopy(policies[0].model)
    with torch.no_grad():
        home = {k: v.device for k, v in states[0].items()}  # summed on the first policy's device, whatever the others'
        new_state = {
            k: sum(w * s[k].to(home[k], torch.float64) for w, s in zip(weights, states)).to(states[0][k].dtype)
            if states[0][k].is_floating_point()
            else states[0][k].clone()
            for k in keys
        }
        merged.load_state_dict(new_state)
    label = name or " + ".join(f"{w:g}·{p.name}" for w, p in zip(weights, policies))
    return Policy(model=merged.eval(), tokenizer=policies[0].tokenizer, name=label, source="merged")


def flip_qk(policy: Policy, layers: Sequence[int] | None = None) -> Policy:
    """A copy of ``policy`` with W_Q and W_K negated in ``layers`` (default: the last block) — the same function.

    Needs a Llama-style model (``model.model.layers[i].self_attn.q_proj / k_proj``, no biases); raises otherwise.
    """
    blocks = getattr(getattr(policy.model, "model", None), "layers", None)
    if blocks is None:
        raise ValueError(f"{policy.name!r} has no model.layers; flip_qk needs a Llama-style decoder")
    layers = [len(blocks) - 1] if layers is None else list(layers)
    bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {len(blocks)} blocks")
    flipped = copy.deepcopy(policy.model)
    with torch.no_grad():
        for i in layers:
            attn = flipped.model.layers[i].self_attn
            for proj in (attn.q_proj, attn.k_proj):
                if proj.bias is not None:
                    raise ValueError(
                        f"block {i} has a bias on {proj}; with a bias, flipping W only is not a symmetry"
                    )
                proj.weight.neg_()
    return Policy(model=flipped.eval(), tokenizer=policy.tokenizer, name=f"{policy.name} (Q,K flipped)",
                  source=policy.source)
