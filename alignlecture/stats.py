"""Uncertainty for the real-model chapters: means with intervals, so that no number is read without its noise."""

from __future__ import annotations

import math

import torch

from ._checks import finite, finite_number, positive_finite, positive_int


def _values(values) -> torch.Tensor:
    """The values as a flat float64 CPU tensor (statistics of a few numbers: a GPU tensor is copied over)."""
    x = torch.as_tensor(values, dtype=torch.float64, device="cpu").reshape(-1)
    if x.numel() < 2:
        raise ValueError(f"need at least 2 values for an interval; got {x.numel()}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"values must be finite; got {x[~torch.isfinite(x)][:3].tolist()} among them")
    return x


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), e.g. 0.95; got {level!r}")
    return float(level)


def bootstrap_mean(
    values, *, level: float = 0.95, num: int = 2000, generator: torch.Generator | None = None
) -> tuple[float, float, float]:
    """The mean of ``values`` and a percentile-bootstrap interval for it: (mean, low, high).

    Resamples the values (e.g. one per prompt) with replacement ``num`` times; pass a seeded ``generator``
    for a reproducible interval.
    """
    x = _values(values)
    low, high = _percentile_bootstrap(lambda idx: x[idx].mean(dim=1), x.numel(), level, num, generator)
    return float(x.mean()), low, high


def bootstrap_ratio(
    numerators, denominators, *, level: float = 0.95, num: int = 2000, generator: torch.Generator | None = None
) -> tuple[float, float, float]:
    """Σ numerators / Σ denominators and a percentile-bootstrap interval that resamples the *clusters*:
    (ratio, low, high).

    One entry per cluster, e.g. per prompt: the hits among its pairs and its number of pairs. Pairs built from the
    same prompt's answers are not independent draws, so an interval that treats every pair as its own trial (a
    binomial or Wilson interval) is too narrow; resampling whole prompts keeps what they share together.
    """
    hits, sizes = _values(numerators), _values(denominators)
    if hits.shape != sizes.shape or bool((sizes <= 0).any()):
        raise ValueError(f"need one positive denominator per numerator; got {sizes.numel()} denominators "
                         f"(smallest {float(sizes.min()):g}) for {hits.numel()} numerators")
    low, high = _percentile_bootstrap(lambda idx: hits[idx].sum(dim=1) / sizes[idx].sum(dim=1), hits.numel(), level,
                                      num, generator)
    return float(hits.sum() / sizes.sum()), low, high


def _percentile_bootstrap(statistic, size: int, level: float, num: int, generator) -> tuple[float, float]:
    """(low, high) percentiles of ``statistic(idx)`` over ``num`` resamples idx [num, size] drawn with replacement."""
    level = _check_level(level)
    if not isinstance(num, int) or num < 100:
        raise ValueError(f"num must be an int ≥ 100 bootstrap resamples; got {num!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    idx = torch.randint(0, size, (num, size), generator=gen, device=gen.device).cpu()  # the values are on the CPU
    stats = statistic(idx)
    stats = stats[torch.isfinite(stats)]  # a resample whose statistic is undefined (e.g. 0/0) has no percentile
    tail = (1 - level) / 2
    low, high = torch.quantile(stats, stats.new_tensor([tail, 1 - tail])).tolist()
    return low, high


def mean_interval(values, *, level: float = 0.95) -> tuple[float, float, float]:
    """The mean and its normal-approximation interval mean ± z·s/√n: (mean, low, high)."""
    x = _values(values)
    level = _check_level(level)
    z = math.sqrt(2) * torch.erfinv(torch.tensor(level, dtype=torch.float64)).item()
    half = z * float(x.std()) / math.sqrt(x.numel())
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half


def _t_quantile(level: float, dof: float) -> float:
    """The two-sided Student-t quantile for ``level`` (0.95 → t_{0.975}) at ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + _check_level(level) / 2, dof))


def t_interval(values, *, level: float = 0.95) -> tuple[float, float, float]:
    """The mean and its Student-t interval mean ± t_{n−1}·s/√n: (mean, low, high) — for a handful of values such
    as one result per training seed, where the normal approximation (``mean_interval``) is too narrow."""
    x = _values(values)
    half = _t_quantile(level, x.numel() - 1) * float(x.std()) / math.sqrt(x.numel())
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half


def welch_interval(a, b, *, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its Welch interval (Student-t with the Welch–Satterthwaite degrees of freedom, no
    equal-variance assumption): (difference, low, high) — for two small independent sets, e.g. five draws each."""
    x, y = _values(a), _values(b)
    level = _check_level(level)
    vx, vy = float(x.var()) / x.numel(), float(y.var()) / y.numel()
    diff = float(x.mean() - y.mean())
    if vx + vy == 0:
        return diff, diff, diff
    dof = (vx + vy) ** 2 / (vx**2 / (x.numel() - 1) + vy**2 / (y.numel() - 1))
    half = _t_quantile(level, dof) * math.sqrt(vx + vy)
    return diff, diff - half, diff + half


def prediction_interval(values, *, level: float = 0.95) -> tuple[float, float, float]:
    """The mean and a Student-t interval for *one more* value from the same source: mean ± t_{n−1}·s·√(1 + 1/n).

    Where ``t_interval`` bounds the mean of the runs, this bounds a single new run (one more training seed): the
    yardstick for asking whether another method's one run falls within the runs' spread.
    """
    x = _values(values)
    half = _t_quantile(level, x.numel() - 1) * float(x.std()) * math.sqrt(1 + 1 / x.numel())
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half


def gap_closed(
    untuned, steered, tuned, *, level: float = 0.95, num: int = 2000, generator: torch.Generator | None = None
) -> tuple[float, float, float]:
    """Fraction of the gain of direct tuning that a decoding-time method reaches: (s − u)/(t − u), with an interval.

    The three arguments hold one score per prompt (or per sample), paired: the same prompts in the same order.
    The interval is a paired percentile bootstrap over prompts; when the direct gain t − u is itself within
    noise the ratio is not meaningful and its interval is wide — read it with ``bootstrap_mean(t − u)``.
    """
    u, s, t = (_values(v) for v in (untuned, steered, tuned))
    if not u.shape == s.shape == t.shape:
        raise ValueError(
            f"untuned, steered and tuned must be paired (one score per prompt each); got {u.numel()}, {s.numel()}, "
            f"{t.numel()} values"
        )
    if float(t.mean() - u.mean()) == 0:
        raise ValueError("tuned and untuned have the same mean: there is no gap to close")
    low, high = _percentile_bootstrap(
        lambda idx: (s[idx] - u[idx]).mean(dim=1) / (t[idx] - u[idx]).mean(dim=1), u.numel(), level, num, generator
    )
    return float((s.mean() - u.mean()) / (t.mean() - u.mean())), low, high


def _interval(low: float, high: float) -> tuple[float, float]:
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"need a finite interval with low ≤ high; got ({low}, {high})")
    return low, high


def verdict(low: float, high: float, *, up: str = "rises", down: str = "falls", flat: str = "is within noise") -> str:
    """The verb an interval supports for an effect: ``up`` if it lies above 0, ``down`` if below, else ``flat``.

    Chapters glue this word into their sentences, so the text can never claim more than the interval shows:
    ``verdict(*bootstrap_mean(gain)[1:])`` → "rises" only when the whole interval is positive.
    """
    low, high = _interval(low, high)
    if low > 0:
        return up
    if high < 0:
        return down
    return flat


def unpaired_verdict(low_a: float, high_a: float, low_b: float, high_b: float, *, more: str = "more than",
                     less: str = "less than", same: str = "not separable from") -> str:
    """What two intervals from independent samples support about A against B: ``more`` only when A's interval
    lies wholly above B's, ``less`` when wholly below, else ``same``.

    For two model cards (different samples, nothing to pair) this is the honest verdict; it is conservative —
    two normal 95 % intervals of equal width that just touch mean p ≈ 0.006 — so ``same`` says "not shown", not "equal".
    Where the samples do pair up, an interval on the paired differences and ``verdict`` see more.
    """
    a, b = _interval(low_a, high_a), _interval(low_b, high_b)
    if a[0] > b[1]:
        return more
    if a[1] < b[0]:
        return less
    return same


def count_below(values, threshold: float = 0.0, *, tol: float) -> str:
    """How many ``values`` lie below ``threshold``, as text that every machine re-creates.

    A count of signs is exact only where no value sits within round-off of the threshold: a summed float32
    log-prob difference of 2e-6 is negative on one CPU and positive on another. Values more than ``tol`` below
    count; values within ``tol`` of the threshold could fall either way, so then the text is the range of
    counts they allow, "37–38", instead of a digit that another machine would not print.
    """
    x = finite(values, "values").reshape(-1)
    threshold = finite_number(threshold, "threshold")
    tol = positive_finite(tol, "tol", "the round-off between machines, e.g. 1e-3 for summed float32 log-probs")
    sure = int((x < threshold - tol).sum())
    unsure = int(((x - threshold).abs() <= tol).sum())
    return f"{sure}" if unsure == 0 else f"{sure}–{sure + unsure}"


def signed(value: float, digits: int = 4) -> str:
    """``value`` with an explicit sign at ``digits`` decimals, never ``-0.0000``.

    A quantity that is zero in exact arithmetic (DPO's margin at step 1, where the policy is its reference)
    comes out of floating point as ±1e-9 or so; its sign depends on the order of the reductions, which differs
    between machines and thread counts. Rounding first and giving every zero a plus sign makes the printed text
    the same wherever it is computed.
    """
    value = finite_number(value, "value")
    digits = positive_int(digits, "digits", minimum=0, meaning="decimals")
    rounded = round(value, digits)
    return f"{(rounded if rounded != 0 else 0.0):+.{digits}f}"


def at_most(value: float, bound: float, what: str = "") -> str:
    """'≤ bound ✓' when ``0 ≤ value ≤ bound``; raises AssertionError otherwise.

    For a measured quantity whose exact digits vary between machines (an approximation error computed from
    trained weights, say): the page states the bound it checked, not digits that another machine would not
    re-create. ``bound`` is a fraction printed as a percentage when below 1 (0.01 → '≤ 1 %').
    """
    value, bound = float(value), positive_finite(bound, "bound")
    if not math.isfinite(value) or not 0 <= value <= bound:
        label = f" {what}" if what else ""
        raise AssertionError(f"the measured{label} {value:.3g} is not within [0, {bound:g}]")
    shown = f"{bound * 100:g} %" if bound < 1 else f"{bound:g}"
    return f"≤ {shown} ✓"


def scientific(value: float, floor: float = 1e-12, digits: int = 1) -> str:
    """``value`` in scientific notation, or ``'< floor'`` once it is down at float64 round-off.

    An error or a KL that is zero in exact arithmetic comes out as 1e-17 on one CPU and 7e-17 on another (the
    vector width changes the order of the sums): those digits are not a result, and a page that prints them
    cannot be re-created elsewhere. Above ``floor`` the number is printed with ``digits`` decimals.
    """
    floor = positive_finite(floor, "floor", "the round-off floor, such as 1e-12")
    value = finite_number(value, "value", "a KL or an error")
    digits = positive_int(digits, "digits", minimum=0, meaning="decimals of the mantissa")
    return f"< {floor:g}" if abs(value) < floor else f"{value:.{digits}e}"
