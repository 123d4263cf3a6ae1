"""Tests for alignlecture.preferences: Bradley–Terry probabilities, simulated labels, preference datasets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture.preferences import (
    PreferenceDataset,
    PreferencePair,
    all_pairs,
    all_pairs_dataset,
    annotator_agreement,
    bt_probability,
    build_preference_dataset,
    expected_bt_loss,
    label_agreement,
    sample_preferences,
    wilson_interval,
)

finite = st.floats(-20, 20, allow_nan=False)
scales = st.floats(0.01, 10.0)


def text_length(texts: list[str]) -> torch.Tensor:
    """A deterministic stand-in gold reward: longer text is better."""
    return torch.tensor([float(len(t)) for t in texts], dtype=torch.float64)


text_length.name = "length"


# ---------------------------------------------------------------------------------------------- Bradley–Terry
@settings(max_examples=50, deadline=None)
@given(finite, finite, scales)
def test_bt_probability_is_complementary_and_a_sigmoid_of_scaled_gap(r1, r2, scale):
    p12, p21 = bt_probability(r1, r2, scale), bt_probability(r2, r1, scale)
    assert float(p12 + p21) == pytest.approx(1.0, abs=1e-12)
    assert float(p12) == pytest.approx(1 / (1 + math.exp(-scale * (r1 - r2))), rel=1e-12, abs=1e-300)
    assert p12.dtype == torch.float64


def test_bt_probability_is_one_half_at_equal_rewards():
    r = torch.tensor([-3.0, 0.0, 2.5, 100.0])
    assert torch.equal(bt_probability(r, r, 3.0), torch.full((4,), 0.5, dtype=torch.float64))


def test_bt_probability_sharpens_with_scale_and_favours_higher_reward():
    ps = [float(bt_probability(1.0, 0.0, s)) for s in (0.1, 0.5, 1.0, 2.0, 10.0)]
    assert all(0.5 < p < 1 for p in ps[:-1])
    assert ps == sorted(ps)
    assert float(bt_probability(1.0, 0.0, 2.0)) == pytest.approx(float(bt_probability(2.0, 0.0, 1.0)), abs=1e-15)
    assert float(bt_probability(0.0, 1.0, 10.0)) < 1e-4


def test_bt_probability_is_elementwise_over_batches():
    r1, r2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])
    torch.testing.assert_close(bt_probability(r1, r2), torch.sigmoid((r1 - r2).double()))


def test_bt_probability_broadcasts_to_a_pairwise_matrix():
    r = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    m = bt_probability(r[:, None], r[None, :])
    assert m.shape == (3, 3)
    torch.testing.assert_close(m + m.T, torch.ones(3, 3, dtype=torch.float64))
    assert float(m[1, 2]) == pytest.approx(1 / (1 + math.exp(-3.0)), rel=1e-12)


def test_sample_preferences_frequency_matches_bt_probability_within_five_sigma():
    n = 200_000
    for gap in (-1.5, 0.0, 0.4, 2.0):
        r1 = torch.full((n,), gap, dtype=torch.float64)
        r2 = torch.zeros(n, dtype=torch.float64)
        labels = sample_preferences(r1, r2, scale=1.0, seed=4)
        p = 1 / (1 + math.exp(-gap))
        se = math.sqrt(p * (1 - p) / n)
        assert labels.dtype == torch.bool and labels.shape == (n,)
        assert abs(labels.double().mean().item() - p) < 5 * se


def test_sample_preferences_is_deterministic_for_a_seed():
    r1, r2 = torch.randn(500, generator=torch.Generator().manual_seed(0)), torch.zeros(500)
    assert torch.equal(sample_preferences(r1, r2, seed=9), sample_preferences(r1, r2, seed=9))
    assert not torch.equal(sample_preferences(r1, r2, seed=9), sample_preferences(r1, r2, seed=10))


def test_sample_preferences_with_huge_gap_always_prefers_the_better():
    r1 = torch.tensor([50.0] * 100)
    assert bool(sample_preferences(r1, torch.zeros(100)).all())
    assert not bool(sample_preferences(torch.zeros(100), r1).any())


# ---------------------------------------------------------------------------------------------- datasets
PROMPTS = [f"prompt {i}" for i in range(40)]
FIRST = ["x" * (i % 7 + 1) for i in range(40)]
SECOND = ["y" * (6 - i % 5) for i in range(40)]


def test_build_dataset_puts_preferred_text_first_with_consistent_gold_scores():
    ds = build_preference_dataset(PROMPTS, FIRST, SECOND, text_length, scale=0.7, seed=3)
    labels = sample_preferences(text_length(FIRST), text_length(SECOND), scale=0.7, seed=3)
    assert len(ds) == len(PROMPTS)
    for i, pair in enumerate(ds):
        assert pair.prompt == PROMPTS[i]
        assert {pair.chosen, pair.rejected} == {FIRST[i], SECOND[i]}
        assert pair.chosen == (FIRST[i] if bool(labels[i]) else SECOND[i])
        assert pair.gold_chosen == float(len(pair.chosen))
        assert pair.gold_rejected == float(len(pair.rejected))
        assert pair.reward_gap == pair.gold_chosen - pair.gold_rejected
    assert ds.gold_name == "length" and ds.scale == 0.7


def test_build_dataset_is_deterministic_for_a_seed():
    a = build_preference_dataset(PROMPTS, FIRST, SECOND, text_length, seed=1)
    b = build_preference_dataset(PROMPTS, FIRST, SECOND, text_length, seed=1)
    assert a.to_dict() == b.to_dict()


def test_build_dataset_with_sharp_annotator_always_prefers_higher_gold():
    ds = build_preference_dataset(PROMPTS, FIRST, SECOND, lambda t: 100 * text_length(t), seed=0)
    for pair in ds:
        if pair.gold_chosen != pair.gold_rejected:
            assert len(pair.chosen) > len(pair.rejected)
    assert ds.gold_name == ""


def _ds():
    return PreferenceDataset(
        [
            PreferencePair("p0", "good", "bad", 1.0, -1.0),
            PreferencePair("p1", "ok", "great", 0.2, 0.9),
            PreferencePair("p2", "same", "same too", 0.5, 0.5),
            PreferencePair("p3", "fine", "awful", 0.3, -2.0),
        ],
        scale=2.0,
        gold_name="demo",
    )


def test_reward_gap_sign_says_whether_label_agrees_with_gold():
    ds = _ds()
    assert [math.copysign(1, g) if g else 0 for g in ds.column("reward_gap")] == [1, -1, 0, 1]
    assert ds.reward_gaps.dtype == torch.float64
    torch.testing.assert_close(ds.reward_gaps, torch.tensor([2.0, -0.7, 0.0, 2.3], dtype=torch.float64))


def test_to_dict_has_the_trl_columns_in_pair_order():
    d = _ds().to_dict()
    assert list(d) == ["prompt", "chosen", "rejected", "gold_chosen", "gold_rejected"]
    assert d["prompt"] == ["p0", "p1", "p2", "p3"]
    assert d["chosen"] == ["good", "ok", "same", "fine"]
    assert d["rejected"] == ["bad", "great", "same too", "awful"]
    assert d["gold_chosen"] == [1.0, 0.2, 0.5, 0.3]


def test_slicing_returns_a_dataset_keeping_scale_and_gold_name():
    ds = _ds()
    part = ds[1:3]
    assert isinstance(part, PreferenceDataset)
    assert len(part) == 2 and part.column("prompt") == ["p1", "p2"]
    assert part.scale == 2.0 and part.gold_name == "demo"
    assert ds[-1].prompt == "p3"
    assert isinstance(ds[0], PreferencePair)
    assert "4 pairs" in repr(ds)


def test_agreement_counts_ties_as_half():
    assert _ds().agreement() == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_pairs_are_immutable():
    with pytest.raises(AttributeError):
        _ds()[0].chosen = "changed"


# ---------------------------------------------------------------------------------------------- label agreement
def test_label_agreement_bins_counts_and_rates_by_hand():
    abs_gap = torch.tensor([0.1, 0.2, 0.4, 0.6, 0.9, 1.2, 1.8])
    agrees = torch.tensor([1, 0, 1, 1, 1, 0, 0])
    bins = label_agreement(abs_gap, agrees, torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(bins.centres, torch.tensor([0.25, 0.75, 1.5, 2.5], dtype=torch.float64))
    assert bins.count.tolist() == [3, 2, 2, 0]
    torch.testing.assert_close(bins.rate[:3], torch.tensor([2 / 3, 1.0, 0.0], dtype=torch.float64))
    assert math.isnan(float(bins.rate[3]))
    low, high = wilson_interval(torch.tensor([2.0, 2.0, 0.0]), torch.tensor([3, 2, 2]))
    torch.testing.assert_close(bins.low[:3], low)
    torch.testing.assert_close(bins.high[:3], high)


@pytest.mark.parametrize(
    "abs_gap, agrees, edges, match",
    [
        ([0.1, 0.2], [1], [0.0, 1.0], "1-D of equal length"),
        ([[0.1]], [[1]], [0.0, 1.0], "1-D of equal length"),
        ([0.1], [1], [0.0], "increasing 1-D tensor with at least two entries"),
        ([0.1], [1], [0.0, 1.0, 1.0], "increasing 1-D tensor"),
        ([0.1], [1], [1.0, 0.0], "increasing 1-D tensor"),
    ],
)
def test_label_agreement_bad_input_is_rejected(abs_gap, agrees, edges, match):
    with pytest.raises(ValueError, match=match):
        label_agreement(torch.tensor(abs_gap), torch.tensor(agrees), torch.tensor(edges))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 500), st.data())
def test_wilson_interval_contains_point_estimate_and_stays_in_unit_interval(n, data):
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(torch.tensor([k]), torch.tensor([n]))
    p = k / n
    lo, hi = float(low), float(high)
    assert lo <= p + 1e-12 and p - 1e-12 <= hi
    assert -1e-12 <= lo <= hi <= 1 + 1e-12
    if 0 < k < n:
        assert 0 < lo < p < hi < 1


def test_wilson_interval_matches_textbook_value():
    # 8 successes out of 10, z = 1.96: (0.4902, 0.9433) (Wilson 1927; standard tables)
    low, high = wilson_interval(torch.tensor([8]), torch.tensor([10]))
    assert float(low) == pytest.approx(0.4902, abs=1e-4)
    assert float(high) == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_is_exactly_zero_or_one_at_all_failures_or_all_successes():
    n = torch.arange(1, 200)
    low0, _ = wilson_interval(torch.zeros_like(n), n)
    _, high1 = wilson_interval(n, n)
    assert bool((low0 >= 0).all())
    assert bool((high1 <= 1).all())


# ---------------------------------------------------------------------------------------------- expected loss
def test_expected_bt_loss_is_minimised_at_scaled_gold_rewards():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    gold = torch.tensor([0.0, 1.0, -0.5, 2.0], dtype=torch.float64)
    best = expected_bt_loss(probs, gold, 1.5 * gold + 3.0, scale=1.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = 1.5 * gold + 0.3 * torch.randn(4, generator=gen, dtype=torch.float64)
        assert float(expected_bt_loss(probs, gold, other, scale=1.5)) > float(best)


# ---------------------------------------------------------------------------------------------- bad input
def test_bt_probability_unbroadcastable_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"r1 and r2 must have the same .*got \(3,\) and \(4,\)"):
        bt_probability(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("scale", [0, -1.0, math.nan, math.inf, "two", None, True])
def test_scale_not_positive_finite_is_rejected(scale):
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        bt_probability(1.0, 0.0, scale)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        PreferenceDataset([PreferencePair("p", "a", "b", 1.0, 0.0)], scale=scale)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rewards_are_rejected(bad):
    with pytest.raises(ValueError, match="rewards must be finite"):
        bt_probability(torch.tensor([0.0, bad]), torch.zeros(2))
    with pytest.raises(ValueError, match="rewards must be finite"):
        sample_preferences(torch.zeros(2), torch.tensor([bad, 0.0]))


def test_build_dataset_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="one entry per pair; got 3, 3, 2"):
        build_preference_dataset(["a", "b", "c"], ["x", "y", "z"], ["u", "v"], text_length)


def test_build_dataset_empty_is_rejected():
    with pytest.raises(ValueError, match="no pairs to label"):
        build_preference_dataset([], [], [], text_length)


def test_empty_dataset_is_rejected():
    with pytest.raises(ValueError, match="needs at least one pair"):
        PreferenceDataset([])


def test_unknown_column_is_rejected():
    with pytest.raises(KeyError, match="unknown column 'winner'"):
        _ds().column("winner")


def test_expected_bt_loss_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="must be 1-D of one length"):
        expected_bt_loss(torch.ones(3) / 3, torch.zeros(3), torch.zeros(4))


# ---------------------------------------------------------------------------------------------- all pairs
def test_all_pairs_lists_every_pair_of_responses_once_per_prompt():
    pairs = all_pairs(3, 4)
    assert len(pairs) == 3 * math.comb(4, 2)
    assert pairs[:6] == [(0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 1, 2), (0, 1, 3), (0, 2, 3)]
    assert {i for i, _, _ in pairs} == {0, 1, 2} and all(a < b for _, a, b in pairs)


def test_all_pairs_dataset_equals_the_zoos_former_inline_construction():
    """Bit-identical to the loop zoo.preference_data used to hold, so zoo cache keys and weights do not change."""
    from itertools import combinations

    prompts = ["p0", "p1", "p2"]
    texts = [[f"{x} answer {'!' * j}{j}" for j in range(4)] for x in prompts]
    pairs = [(i, a, b) for i in range(len(prompts)) for a, b in combinations(range(4), 2)]
    old = build_preference_dataset([prompts[i] for i, _, _ in pairs], [texts[i][a] for i, a, _ in pairs],
                                   [texts[i][b] for i, _, b in pairs], text_length, scale=0.3, seed=5)
    new = all_pairs_dataset(prompts, texts, text_length, scale=0.3, seed=5)
    assert new.to_dict() == old.to_dict()
    assert (new.scale, new.gold_name, len(new)) == (old.scale, old.gold_name, 18)


def test_all_pairs_dataset_rejects_ragged_or_mismatched_responses():
    with pytest.raises(ValueError, match="same number of responses; got sizes \\[2, 3\\]"):
        all_pairs_dataset(["a", "b"], [["x", "y"], ["x", "y", "z"]], text_length)
    with pytest.raises(ValueError, match="one list of responses per prompt; got 2 prompts, 1 lists"):
        all_pairs_dataset(["a", "b"], [["x", "y"]], text_length)
    with pytest.raises(ValueError, match="k must be an integer ≥ 2"):
        all_pairs_dataset(["a"], [["x"]], text_length)


def test_annotator_zero_labels_exactly_like_the_dataset_and_ties_are_dropped():
    r1 = torch.tensor([1.0, 0.2, 0.5, -0.3], dtype=torch.float64)
    r2 = torch.tensor([0.0, 0.2, 0.9, 0.1], dtype=torch.float64)  # the second comparison is a tie
    abs_gap, agrees = annotator_agreement(r1, r2, scale=2.0, annotators=3, seed=7)
    assert abs_gap.shape == agrees.shape == (9,)
    assert torch.allclose(abs_gap[:3], torch.tensor([1.0, 0.4, 0.4], dtype=torch.float64))
    first = sample_preferences(r1, r2, scale=2.0, seed=7)
    keep = torch.tensor([True, False, True, True])
    assert torch.equal(agrees[:3], (first == (r1 > r2))[keep])


def test_annotator_agreement_rate_matches_bradley_terry_within_five_sigma():
    r1 = torch.full((2000,), 0.5, dtype=torch.float64)
    _, agrees = annotator_agreement(r1, torch.zeros(2000, dtype=torch.float64), scale=2.0, annotators=5)
    p = torch.sigmoid(torch.tensor(1.0)).item()
    assert abs(agrees.double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / agrees.numel())
