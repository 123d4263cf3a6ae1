"""Parameter merging — the common baseline chapter 3 contrasts with logit mixing — and the lecture's hack on it.

Merging builds π' from θ' = Σ_k w_k θ_k. Nothing ties π' to Π_k π_k^{w_k}: the lecture's counterexample flips
the signs of one block's query and key projections, which leaves every logit unchanged (q·k = (−q)·(−k), and
rotary embeddings are linear, so they commute with the sign), yet the 50/50 merge of the two equal models has
Q = K = 0 in that block.

Both functions avoid full copies: ``flip_qk``'s twin owns only the flipped projections, and ``merge_parameters``
writes one merged tensor at a time (float64 temporaries of one tensor at a time) and shares, rather than copies,
every tensor that the merge gives back bit for bit. Their results share storage with their inputs; see ``copy_sharing``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch

from .cache import key_hash
from .mixing import check_weights
from .models import Policy


# ---------------------------------------------------------------------------------------------- sharing copies
def _state_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters and persistent buffers of ``model`` (what its state dict holds), each once."""
    seen, out = set(), []
    for module in model.modules():
        named = list(module._parameters.items()) + [
            (n, b) for n, b in module._buffers.items() if n not in module._non_persistent_buffers_set
        ]
        for _, t in named:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A new tensor object over ``t``'s storage: a Parameter with t's requires_grad, or a detached buffer."""
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(t.data, requires_grad=t.requires_grad)
    return t.detach()


def copy_sharing(model: torch.nn.Module, own: Iterable[torch.Tensor] = ()) -> torch.nn.Module:
    """``copy.deepcopy(model)`` that copies only the tensors in ``own`` and shares the storage of every other
    parameter and persistent buffer with ``model``.

    The copy has its own modules and its own Parameter objects (its own ``requires_grad`` flags; moving it
    with ``.to()`` leaves ``model`` where it is), but a shared tensor is the same memory: changing it in place in
    either model — an optimizer step, ``neg_()`` — changes both. Tied weights stay tied. Non-persistent buffers
    (rotary frequencies) and tensors of other Parameter subclasses are copied, as by ``copy.deepcopy``.
    """
    own_ids = {id(t) for t in own}
    memo = {id(t): _alias(t) for t in _state_tensors(model)
            if id(t) not in own_ids and type(t) in (torch.nn.Parameter, torch.Tensor)}
    return copy.deepcopy(model, memo)


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` view the same memory the same way (one tensor, possibly two objects)."""
    return (a.device == b.device and a.dtype == b.dtype and a.data_ptr() == b.data_ptr() and a.shape == b.shape
            and a.stride() == b.stride())


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two float tensors of one dtype (−0.0 ≠ +0.0, a NaN equals the same NaN)."""
    int_type = _INT_OF_SIZE[a.element_size()]
    return torch.equal(a.view(int_type), b.view(int_type))


# ---------------------------------------------------------------------------------------------- merging
def merge_parameters(policies: Sequence[Policy], weights: Sequence[float], *, name: str | None = None) -> Policy:
    """The merged policy with parameters θ' = Σ_k w_k·θ_k (lecture §parameter merging); inputs are not changed.

    Each merged tensor is summed in float64 and cast back to the first policy's dtype, on the first policy's
    device, one tensor at a time. A tensor that is the same memory in every input and whose merge comes back
    bit for bit equal to it (checked, not assumed: weights summing to 1 often round; 0.5/0.5 of a tensor with its
    own memory is exact — the unflipped tensors of a model merged with its ``flip_qk`` twin) is shared with the
    inputs instead of copied: train the merged model only after ``copy.deepcopy(merged.model)``, or its steps change the inputs.
    """
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
    originals = policies[0].model.state_dict(keep_vars=True)  # the tensor objects, to find tied entries
    merged = copy_sharing(policies[0].model)  # every entry shared for now; replaced below unless merged bit for bit
    targets = merged.state_dict(keep_vars=True)
    first_key: dict[int, str] = {}  # id of a tensor of policies[0] → the first key that holds it
    with torch.no_grad():
        for k in keys:
            earlier = first_key.setdefault(id(originals[k]), k)
            if earlier != k and all(_same_tensor(s[k], s[earlier]) for s in states):
                continue  # a tied entry (lm_head = embeddings) in every input: merged once already
            x0 = states[0][k]
            if not x0.is_floating_point():
                targets[k].data = x0.clone()  # as before: the first policy's value, copied
                continue
            home = x0.device  # summed on the first policy's device, whatever the others'
            # Σ_k w_k·x_k in float64 in the order of Python's sum(): ((0 + w_1·x_1) + w_2·x_2) + …, in place
            acc = None
            for w, s in zip(weights, states):
                term = s[k].to(home, torch.float64, copy=True).mul_(w)
                acc = term.add_(0) if acc is None else acc.add_(term)
                del term
            value = torch.empty_like(x0).copy_(acc)  # cast back to the first policy's dtype
            del acc
            if all(_same_tensor(s[k], x0) for s in states[1:]) and _same_bits(value, x0):
                value = x0  # the merge gives this tensor back exactly: share it, drop the copy
            targets[k].data = value
    label = name or " + ".join(f"{w:g}·{p.name}" for w, p in zip(weights, policies))
    return Policy(model=merged.eval(), tokenizer=policies[0].tokenizer, name=label, source="merged",
                  weights=_fingerprint(weights, policies))


def _fingerprint(weights, policies) -> str:
    """A merge's ``Policy.weights``: its parts' names, fingerprints and weights, hashed ("" if no part has one)."""
    if not any(p.weights for p in policies):
        return ""
    return key_hash({"merge": [[float(w), p.name, p.weights] for w, p in zip(weights, policies)]})


def flip_qk(policy: Policy, layers: Sequence[int] | None = None) -> Policy:
    """A twin of ``policy`` with W_Q and W_K negated in ``layers`` (default: the last block) — the same function.

    Only the flipped weights are new memory: every other parameter is shared with ``policy`` (``copy_sharing``),
    so the twin is for reading — evaluating, sampling, merging; changing either model's shared weights in place
    changes both (``copy.deepcopy`` the twin's model first to train it).

    Needs a Llama-style model (``model.model.layers[i].self_attn.q_proj / k_proj``, no biases); raises otherwise.
    """
    blocks = getattr(getattr(policy.model, "model", None), "layers", None)
    if blocks is None:
        raise ValueError(f"{policy.name!r} has no model.layers; flip_qk needs a Llama-style decoder")
    layers = [len(blocks) - 1] if layers is None else list(layers)
    bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {len(blocks)} blocks")
    if len({i % len(blocks) for i in layers}) != len(layers):
        raise ValueError(f"layers {layers} name a block twice (flipping it twice would undo the flip); list each once")
    for i in layers:
        attn = blocks[i].self_attn
        for proj in (attn.q_proj, attn.k_proj):
            if proj.bias is not None:
                raise ValueError(
                    f"block {i} has a bias on {proj}; with a bias, flipping W only is not a symmetry"
                )
    own = [proj.weight for i in layers for proj in (blocks[i].self_attn.q_proj, blocks[i].self_attn.k_proj)]
    flipped = copy_sharing(policy.model, own)
    with torch.no_grad():
        for i in layers:
            attn = flipped.model.layers[i].self_attn
            for proj in (attn.q_proj, attn.k_proj):
                proj.weight.neg_()
    return Policy(model=flipped.eval(), tokenizer=policy.tokenizer, name=f"{policy.name} (Q,K flipped)",
                  source=policy.source, weights=policy.weights)
