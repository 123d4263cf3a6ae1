"""Argument checks shared by every module, so that the math functions stay as short as the equations.

Each check raises ``ValueError`` naming the argument, the bad value and what to pass instead, and returns the
cleaned value (a float, an int, a float64 tensor) so a caller can write ``beta = positive_finite(beta, "beta")``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch


def _why(meaning: str) -> str:
    return f" ({meaning})" if meaning else ""


def positive_finite(value, name: str, meaning: str = "") -> float:
    """A positive finite real number, e.g. β, a temperature, a learning rate."""
    try:
        ok = not isinstance(value, (bool, str, bytes)) and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive finite number{_why(meaning)}; got {value!r}")
    return float(value)


def finite_number(value, name: str, meaning: str = "") -> float:
    """Any finite real number (it may be zero or negative), e.g. a mixing weight α."""
    try:
        ok = not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number{_why(meaning)}; got {value!r}")
    return float(value)


def positive_int(value, name: str, minimum: int = 1, meaning: str = "") -> int:
    """An integer ≥ ``minimum`` (booleans and floats like 2.5 are refused; 3.0 is accepted as 3)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        ok = ok and float(value) == int(value) and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer ≥ {minimum}{_why(meaning)}; got {value!r}")
    return int(value)


def float64_tensor(x, name: str, *, device=None) -> torch.Tensor:
    """``x`` (a tensor, a number or a list of numbers) as a float64 tensor; an object that is none of these —
    a ``toy.TabularPolicy`` passed where its distribution belongs — gets a TypeError that says what to pass."""
    try:
        return torch.as_tensor(x, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError):
        if isinstance(x, (torch.Tensor, numbers.Number, str, bytes, Sequence)) or hasattr(x, "__array__"):
            raise  # torch's own message names the bad entry of a list or array
        hint = (" (a policy's distribution over its responses is policy.probs(): pass that)"
                if callable(getattr(x, "probs", None)) else "")
        raise TypeError(f"{name} must be a tensor or a list of numbers; got {type(x).__name__}{hint}") from None


def finite(x, name: str, *, allow_neg_inf: bool = False) -> torch.Tensor:
    """A float64 tensor with no NaN and no ±inf (−inf allowed for log-probabilities when ``allow_neg_inf``)."""
    t = float64_tensor(x, name)
    bad = torch.isnan(t) | (t == math.inf) if allow_neg_inf else ~torch.isfinite(t)
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{name} must be finite{' (−inf allowed)' if allow_neg_inf else ''}; got {t[bad][:3].tolist()} "
            f"(first at index {where}); remove or replace those entries"
        )
    return t


def same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """Two tensors that must line up entry by entry."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def same_length(sizes: Sequence[int], names: Sequence[str]) -> None:
    """Several sequences that must have one entry each for the same items."""
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{n}: {s}" for n, s in zip(names, sizes))
        raise ValueError(f"{', '.join(names)} must have the same length (one entry per item); got {listed}")


def probability_vector(p, name: str = "probs", atol: float = 1e-9) -> torch.Tensor:
    """A float64 vector of non-negative numbers summing to 1 within ``atol`` (along the last dimension)."""
    t = finite(p, name)
    if bool((t < 0).any()):
        raise ValueError(f"{name} must be non-negative probabilities; got {t[t < 0][:3].tolist()} among them")
    total = t.sum(dim=-1)
    if bool(((total - 1).abs() > atol).any()):
        raise ValueError(
            f"{name} must sum to 1 (within {atol:g}); got sums {total.reshape(-1)[:3].tolist()} — normalise it first"
        )
    return t


def one_of(value, name: str, choices: Iterable[str]) -> str:
    """A name from a fixed list, e.g. a loss type or a sampler."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def nonzero_norms(norms: torch.Tensor, name: str) -> torch.Tensor:
    """Norms that will divide something: every entry must be > 0 (a zero gradient has no direction)."""
    zero = norms <= 0
    if bool(zero.any()):
        where = zero.nonzero()[0].tolist()
        raise ValueError(
            f"{name} is 0 at index {where}: a zero gradient has no direction to normalize. The response's "
            "log-prob is stationary there (e.g. its probability is 1, or the parameters do not reach it); drop "
            "that pair or use the plain DPO direction for it"
        )
    return norms


def outcome_distribution(p, name: str = "probs", atol: float = 1e-6) -> torch.Tensor:
    """A distribution over at least one outcome along the last dim (``probability_vector`` within ``atol``),
    renormalised so that it sums to 1 exactly (a caller's softmax may be off by round-off)."""
    t = float64_tensor(p, name)
    if t.dim() == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one outcome along its last dim; got shape {tuple(t.shape)}")
    t = probability_vector(t, name, atol)
    return t / t.sum(dim=-1, keepdim=True)


def per_outcome(values, like: torch.Tensor, name: str = "rewards", *, finite_only: bool = False) -> torch.Tensor:
    """One value per outcome of ``like`` (broadcasting allowed), never NaN (nor ±inf when ``finite_only``):
    float64 with the shape of ``like``, on its device."""
    v = float64_tensor(values, name, device=like.device)
    try:
        shape = torch.broadcast_shapes(v.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise ValueError(
            f"{name} {tuple(v.shape)} must have the shape of probs {tuple(like.shape)} (or broadcast to it): "
            "one value per outcome"
        )
    if bool(torch.isnan(v).any()):
        raise ValueError(f"{name} must not be NaN; got NaN at {torch.isnan(v).nonzero()[0].tolist()}")
    if finite_only and not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite here (an infinite value has no tilted distribution); replace ±inf")
    return v.expand(like.shape).contiguous()


def shaped(x, shape: Sequence[int], name: str, *, allow_neg_inf: bool = False, meaning: str = "") -> torch.Tensor:
    """A float64 tensor of exactly ``shape`` with no NaN or +inf (−inf allowed when ``allow_neg_inf``)."""
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a Tensor of shape {list(shape)}{_why(meaning)}; got {got}")
    return finite(x, name, allow_neg_inf=allow_neg_inf)


def broadcastable(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> tuple[int, ...]:
    """Two tensors that combine entry by entry with broadcasting (e.g. a column against a row); returns the shape."""
    try:
        return tuple(torch.broadcast_shapes(a.shape, b.shape))
    except RuntimeError:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same (or broadcastable) shapes; got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        ) from None


def float_tensors_alike(tensors: Sequence[torch.Tensor], name: str, *, min_dtype=torch.float32) -> list[torch.Tensor]:
    """K float tensors of one shape (e.g. one next-token distribution per model), moved to the first one's device
    and promoted to at least ``min_dtype``."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{name} is empty; pass one tensor per model")
    shape = tensors[0].shape
    dtype = torch.promote_types(tensors[0].dtype, min_dtype)
    for k, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.shape != shape or not t.is_floating_point():
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"{name}[{k}] is {got} but {name}[0] is {tuple(shape)}; pass float tensors of one shape (the same "
                "vocabulary: cut padded logits to len(tokenizer))"
            )
    return [t.to(device=tensors[0].device, dtype=dtype) for t in tensors]


def mixable(total: torch.Tensor, impossible: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Mixed scores Σ_k w_k log π_k that are finite wherever some entry is possible, with a possible entry per row."""
    bad, empty = ~(torch.isfinite(total) | impossible), impossible.all(dim=-1)
    if bool(bad.any() | empty.any()):  # one check per call (one device sync per decoding step)
        if bool(bad.any()):
            raise ValueError(
                "the weighted sum Σ_k w_k log π_k is NaN or infinite at some entries: an input holds NaN or +inf, "
                f"or |w_k · log π_k| overflows {total.dtype}; check the inputs or use smaller weights (got {list(weights)})"
            )
        rows = empty.reshape(-1).nonzero()[:, 0].tolist()[:5]
        raise ValueError(
            f"the mixed distribution is empty (rows {rows}): every entry is −inf under some model with a "
            f"nonzero weight (weights {list(weights)}); give those models weight 0 or mix models whose supports overlap"
        )
    return total
