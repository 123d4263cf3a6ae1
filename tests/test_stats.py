"""Intervals: they contain the mean, shrink with more data, are reproducible, and refuse bad input."""

from __future__ import annotations

import math

import pytest
import torch

from alignlecture.stats import bootstrap_mean, mean_interval


def test_bootstrap_interval_contains_the_mean_and_is_reproducible_with_a_seed():
    x = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = bootstrap_mean(x, generator=torch.Generator().manual_seed(1))
    b = bootstrap_mean(x, generator=torch.Generator().manual_seed(1))
    assert a == b
    mean, low, high = a
    assert low < mean < high and mean == pytest.approx(float(x.mean()))


def test_bootstrap_and_normal_intervals_agree_for_a_large_sample_and_shrink_like_one_over_root_n():
    gen = torch.Generator().manual_seed(2)
    small = torch.randn(100, generator=gen, dtype=torch.float64)
    large = torch.randn(10_000, generator=gen, dtype=torch.float64)
    _, lo_b, hi_b = bootstrap_mean(large, generator=gen)
    _, lo_n, hi_n = mean_interval(large)
    assert hi_b - lo_b == pytest.approx(hi_n - lo_n, rel=0.1)
    width_small = mean_interval(small)[2] - mean_interval(small)[1]
    assert (hi_n - lo_n) / width_small == pytest.approx(0.1, rel=0.25)


def test_normal_interval_uses_z_of_the_level():
    x = torch.tensor([0.0, 2.0], dtype=torch.float64)  # mean 1, std √2, n 2 → half-width 1.96
    mean, low, high = mean_interval(x)
    assert (mean, high - mean) == (1.0, pytest.approx(1.959964, rel=1e-6))


@pytest.mark.parametrize(
    "values, kwargs, message",
    [
        ([1.0], {}, "at least 2 values"),
        ([1.0, float("nan")], {}, "must be finite"),
        ([1.0, 2.0], {"level": 95}, "level must lie in"),
        ([1.0, 2.0], {"num": 10}, "num must be an int"),
    ],
)
def test_bad_input_is_refused_with_the_reason(values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_mean(values, **kwargs)


def test_gap_closed_is_the_ratio_of_gains_and_its_interval_covers_it():
    from alignlecture.stats import gap_closed

    gen = torch.Generator().manual_seed(3)
    untuned = torch.randn(200, generator=gen, dtype=torch.float64)
    tuned = untuned + 1.0 + 0.1 * torch.randn(200, generator=gen, dtype=torch.float64)
    steered = untuned + 0.5 + 0.1 * torch.randn(200, generator=gen, dtype=torch.float64)
    frac, low, high = gap_closed(untuned, steered, tuned, generator=gen)
    want = float((steered.mean() - untuned.mean()) / (tuned.mean() - untuned.mean()))
    assert frac == pytest.approx(want) and low < frac < high and 0.4 < frac < 0.6


def test_gap_closed_refuses_unpaired_scores_and_a_zero_gap():
    from alignlecture.stats import gap_closed

    with pytest.raises(ValueError, match="must be paired"):
        gap_closed([0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no gap to close"):
        gap_closed([0.0, 1.0], [0.5, 0.5], [1.0, 0.0])


def test_verdict_follows_the_interval_not_the_point_estimate():
    from alignlecture.stats import verdict

    assert verdict(0.01, 0.3) == "rises"
    assert verdict(-0.3, -0.01) == "falls"
    assert verdict(-0.01, 0.3) == "is within noise"
    assert verdict(0.0, 0.3, up="closes the gap", flat="is not distinguishable from zero") == (
        "is not distinguishable from zero"
    )
    with pytest.raises(ValueError, match="low ≤ high"):
        verdict(0.3, 0.1)


def test_unpaired_verdict_needs_intervals_that_do_not_overlap():
    from alignlecture.stats import unpaired_verdict

    assert unpaired_verdict(0.5, 0.9, 0.1, 0.4) == "more than"
    assert unpaired_verdict(0.1, 0.4, 0.5, 0.9, less="below") == "below"
    assert unpaired_verdict(0.1, 0.5, 0.4, 0.9) == "not separable from"  # overlap: the point estimates do not count
    assert unpaired_verdict(0.4, 0.9, 0.1, 0.4) == "not separable from"  # touching is overlapping
    with pytest.raises(ValueError, match="low ≤ high"):
        unpaired_verdict(0.1, 0.4, 0.9, 0.5)


def test_signed_never_prints_negative_zero():
    from alignlecture.stats import signed

    assert signed(-1e-9) == "+0.0000"
    assert signed(-0.0) == "+0.0000"
    assert signed(-0.00004, 4) == "+0.0000"
    assert signed(-0.00006, 4) == "-0.0001"
    assert signed(0.0329) == "+0.0329"
    assert signed(1.5, 0) == "+2" and signed(-2.5, 0) == "-2"  # Python's round: halves to even
    with pytest.raises(ValueError, match="digits"):
        signed(0.5, 1.5)
    with pytest.raises(ValueError, match="finite"):
        signed(float("nan"))


def test_at_most_states_the_bound_it_checked():
    from alignlecture.stats import at_most

    assert at_most(0.003, 0.01) == "≤ 1 % ✓"
    assert at_most(0.2, 0.5) == "≤ 50 % ✓"
    assert at_most(3.0, 5) == "≤ 5 ✓"
    with pytest.raises(AssertionError, match="not within"):
        at_most(0.02, 0.01, "first-order error")
    with pytest.raises(AssertionError):
        at_most(float("nan"), 0.01)
    with pytest.raises(ValueError, match="bound"):
        at_most(0.1, 0)


def test_scientific_hides_round_off_digits():
    from alignlecture.stats import scientific

    assert scientific(6.7e-17) == scientific(7.2e-17) == "< 1e-12"
    assert scientific(-3e-18) == "< 1e-12"
    assert scientific(5.8e-06) == "5.8e-06"
    assert scientific(4.5e-16, floor=1e-14) == "< 1e-14"
    with pytest.raises(ValueError, match="floor"):
        scientific(1.0, floor=0)
    assert scientific(3e-12, floor=2.5e-12) == "3.0e-12" and scientific(2e-12, floor=2.5e-12) == "< 2.5e-12"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            scientific(bad)


def test_t_interval_of_three_values_uses_the_t_quantile_with_two_degrees_of_freedom():
    from alignlecture.stats import t_interval

    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert abs((high - mean) - 4.302652729911275 * 1.0 / 3 ** 0.5) < 1e-9  # t_{2, 0.975} · s/√n, s = 1
    assert abs((mean - low) - (high - mean)) < 1e-12
    with pytest.raises(ValueError, match="at least 2 values"):
        t_interval([1.0])


def test_count_below_gives_a_range_where_round_off_could_flip_a_sign():
    from alignlecture.stats import count_below

    assert count_below([-1.0, -0.5, 0.2, 3.0], tol=1e-3) == "2"
    assert count_below([-1.0, -2e-6, 4e-7, 3.0], tol=1e-3) == "1–3"  # two values within round-off of 0
    assert count_below(torch.tensor([0.9, 1.5, 2.0]), 1.0, tol=1e-3) == "1"  # another threshold
    assert count_below([1e-3 + 1e-9, -(1e-3 + 1e-9)], tol=1e-3) == "1"  # beyond tol on either side: sure
    with pytest.raises(ValueError, match="tol"):
        count_below([1.0, 2.0], tol=0)
    with pytest.raises(ValueError, match="finite"):
        count_below([1.0, float("nan")], tol=1e-3)


def test_bootstrap_ratio_resamples_clusters_and_is_wider_than_treating_pairs_as_independent():
    from alignlecture.preferences import wilson_interval
    from alignlecture.stats import bootstrap_ratio

    # 18 prompts × 6 pairs; pairs within a prompt agree (all right or all wrong): 12 prompts right
    hits, sizes = torch.tensor([6.0] * 12 + [0.0] * 6), torch.full((18,), 6.0)
    ratio, low, high = bootstrap_ratio(hits, sizes, generator=torch.Generator().manual_seed(0))
    assert ratio == pytest.approx(72 / 108)
    w_low, w_high = (float(v) for v in wilson_interval(torch.tensor(72), torch.tensor(108)))
    assert high - low > 1.5 * (w_high - w_low)  # 18 independent units, not 108
    with pytest.raises(ValueError, match="positive denominator"):
        bootstrap_ratio([1.0, 2.0], [3.0, 0.0])


def test_prediction_interval_is_wider_than_the_mean_interval_by_sqrt_n_plus_one():
    from alignlecture.stats import prediction_interval, t_interval

    values = [0.15, 0.24, 0.12]
    m, lo, hi = prediction_interval(values)
    tm, tlo, thi = t_interval(values)
    assert m == pytest.approx(tm)
    assert (hi - lo) / (thi - tlo) == pytest.approx(math.sqrt(len(values) + 1))


def test_welch_interval_matches_scipy():
    from scipy.stats import ttest_ind

    from alignlecture.stats import welch_interval

    a, b = [1.2, 0.7, 2.5, 1.9, 0.3], [0.1, 0.2, 0.15, 0.4, 0.05]
    diff, low, high = welch_interval(a, b)
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (diff, low, high) == pytest.approx((sum(a) / 5 - sum(b) / 5, ci.low, ci.high), rel=1e-12)
