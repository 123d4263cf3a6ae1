"""Tests for alignlecture.bon: the exact best-of-n distribution, its KL bound, and batched best-of-n on real LMs."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture import bon, models
from alignlecture.bon import bon_distribution, bon_kl_bound, bon_win_rate, kl_divergence

PROPERTY = settings(max_examples=30, deadline=None)


def brute_force_bon(probs, rewards, n):
    """Enumerate every n-tuple of draws; split each tuple's probability evenly among its tied best draws."""
    K = len(probs)
    out = [0.0] * K
    for draws in itertools.product(range(K), repeat=n):
        weight = math.prod(probs[i] for i in draws)
        best = max(rewards[i] for i in draws)
        tied = [i for i in draws if rewards[i] == best]  # draws, not distinct outcomes
        for i in tied:
            out[i] += weight / len(tied)
    return torch.tensor(out, dtype=torch.float64)


def random_dist(gen, K, power=1.0):
    p = torch.rand(K, generator=gen, dtype=torch.float64) ** power
    return p / p.sum()


small_cases = st.tuples(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4).filter(lambda w: sum(w) > 1e-3),
    st.lists(st.integers(0, 2), min_size=4, max_size=4),  # few reward levels: many ties
    st.integers(1, 4),
)


# ---------------------------------------------------------------------------------------------- exact formula
@PROPERTY
@given(small_cases)
def test_bon_distribution_equals_brute_force_over_all_n_tuples_with_uniform_tie_breaking(case):
    weights, levels, n = case
    K = len(weights)
    probs = [w / sum(weights) for w in weights]
    rewards = [float(v) for v in levels[:K]]
    got = bon_distribution(torch.tensor(probs, dtype=torch.float64), torch.tensor(rewards), n)
    assert torch.allclose(got, brute_force_bon(probs, rewards, n), atol=1e-12)


def test_bon_distribution_with_n_equal_1_returns_probs():
    gen = torch.Generator().manual_seed(0)
    p, r = random_dist(gen, 30), torch.randint(0, 5, (30,), generator=gen).double()
    assert torch.allclose(bon_distribution(p, r, 1), p, atol=1e-15)


def test_bon_distribution_of_uniform_distinct_rewards_is_difference_of_powers_of_ranks():
    K, n = 7, 5
    r = torch.randn(K, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rank = (torch.argsort(torch.argsort(r)) + 1).double()  # 1 = lowest reward
    expected = (rank / K) ** n - ((rank - 1) / K) ** n
    assert torch.allclose(bon_distribution(torch.full((K,), 1 / K, dtype=torch.float64), r, n), expected, atol=1e-15)


def test_bon_distribution_gives_tied_outcomes_mass_in_proportion_to_their_probability():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 1.0, 0.0])
    got = bon_distribution(p, r, 3)
    top = 1 - 0.5**3
    expected = [0.1 / 0.5 * (1 - top), 0.2 / 0.5 * top, 0.3 / 0.5 * top, 0.4 / 0.5 * (1 - top)]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-15)


def test_bon_distribution_gives_zero_probability_outcomes_zero_mass():
    p = torch.tensor([0.0, 0.5, 0.0, 0.5], dtype=torch.float64)
    got = bon_distribution(p, torch.tensor([3.0, 1.0, 3.0, 2.0]), 4)
    assert got[0] == 0 and got[2] == 0
    assert torch.allclose(got, torch.tensor([0, 0.5**4, 0, 1 - 0.5**4], dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1024])
def test_bon_distribution_sums_to_one_and_is_non_negative_even_for_large_supports(n):
    gen = torch.Generator().manual_seed(n)
    p = random_dist(gen, 50_000, power=4.0)
    r = torch.randint(0, 1000, (50_000,), generator=gen).double()
    got = bon_distribution(p, r, n)
    assert abs(float(got.sum()) - 1) < 1e-12
    assert bool((got >= 0).all())


def test_bon_distribution_is_accurate_for_tiny_top_mass_at_large_n():
    # top outcome mass 1e-12: 1 − (1 − 1e-12)^1024 ≈ 1024e-12, lost to cancellation in a naive F^n − F⁻^n
    p = torch.tensor([1 - 1e-12, 1e-12], dtype=torch.float64)
    got = bon_distribution(p, torch.tensor([0.0, 1.0]), 1024)
    assert float(got[1]) == pytest.approx(-math.expm1(1024 * math.log1p(-1e-12)), rel=1e-9)


def test_bon_distribution_is_batched_over_leading_dims_like_a_loop():
    gen = torch.Generator().manual_seed(1)
    p = torch.stack([random_dist(gen, 9) for _ in range(6)]).reshape(2, 3, 9)
    r = torch.randint(0, 4, (2, 3, 9), generator=gen).double()
    got = bon_distribution(p, r, 5)
    assert got.shape == p.shape
    for i, j in itertools.product(range(2), range(3)):
        assert torch.allclose(got[i, j], bon_distribution(p[i, j], r[i, j], 5), atol=1e-15)
    shared = bon_distribution(p, r[0, 0], 5)  # one reward vector broadcast over every distribution
    assert torch.allclose(shared[1, 2], bon_distribution(p[1, 2], r[0, 0], 5), atol=1e-15)


def test_expected_reward_of_best_of_n_increases_with_n():
    gen = torch.Generator().manual_seed(2)
    p, r = random_dist(gen, 40), torch.randn(40, generator=gen, dtype=torch.float64)
    means = [float((bon_distribution(p, r, n) * r).sum()) for n in range(1, 65)]
    assert all(b > a for a, b in zip(means, means[1:]))
    assert means[-1] < float(r.max())


def test_bon_distribution_agrees_with_monte_carlo_best_of_n_with_random_tie_breaking():
    gen = torch.Generator().manual_seed(4)
    K, n, trials = 6, 3, 200_000
    p = random_dist(gen, K)
    r = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 0.5])
    chosen = bon.sample_best_of_n(p, r, n, trials, generator=gen)
    assert chosen.shape == (trials,)
    freq = torch.bincount(chosen, minlength=K).double() / trials
    exact = bon_distribution(p, r, n)
    se = (exact * (1 - exact) / trials).sqrt()
    assert bool(((freq - exact).abs() <= 5 * se + 1e-12).all()), (freq, exact)


# ---------------------------------------------------------------------------------------------- KL bound
def test_bon_kl_bound_is_log_n_minus_n_minus_1_over_n():
    assert bon_kl_bound(1) == 0.0
    assert bon_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl_bound(1024) == pytest.approx(math.log(1024) - 1023 / 1024)


def test_exact_bon_kl_never_exceeds_the_bound_for_n_from_1_to_1024_on_random_distributions():
    gen = torch.Generator().manual_seed(5)
    p = torch.stack([random_dist(gen, 60, power=power) for power in (0.5, 1.0, 3.0, 6.0)])  # [4, 60]
    r = torch.stack([torch.randn(60, generator=gen, dtype=torch.float64),
                     torch.randint(0, 3, (60,), generator=gen).double(),
                     torch.randint(0, 20, (60,), generator=gen).double(),
                     torch.randn(60, generator=gen, dtype=torch.float64)])
    for n in range(1, 1025):
        kl = kl_divergence(bon_distribution(p, r, n), p)
        assert bool((kl <= bon_kl_bound(n) + 1e-12).all()), (n, kl.tolist())


@pytest.mark.parametrize("n", [2, 4, 16, 256])
def test_bon_kl_of_uniform_distinct_rewards_increases_to_the_bound_as_the_support_grows(n):
    gaps = []
    for K in (10, 100, 1_000, 10_000, 100_000):
        p = torch.full((K,), 1 / K, dtype=torch.float64)
        kl = float(kl_divergence(bon_distribution(p, torch.arange(K, dtype=torch.float64), n), p))
        gaps.append(bon_kl_bound(n) - kl)
    assert all(g >= -1e-12 for g in gaps)
    assert all(b < a for a, b in zip(gaps, gaps[1:]) if a > 1e-10)
    assert gaps[-1] < 1e-5  # the bound is the continuous limit


def test_bon_kl_with_heavy_ties_is_far_below_the_bound():
    p = torch.full((1000,), 1e-3, dtype=torch.float64)
    r = (torch.arange(1000) >= 500).double()  # two reward levels, half the mass each
    kl = float(kl_divergence(bon_distribution(p, r, 1024), p))
    assert kl == pytest.approx(math.log(2), abs=1e-12)  # at most the top half's log(1/0.5)
    assert kl < bon_kl_bound(1024) / 8


def test_kl_divergence_uses_0_log_0_and_is_inf_off_support():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    assert float(kl_divergence(p, q)) == pytest.approx(math.log(2))
    assert float(kl_divergence(p, p)) == 0.0
    assert float(kl_divergence(q, p)) == math.inf


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("n", [0, -1, 2.5, True, "3", None])
def test_bad_n_raises_a_value_error_naming_it(n):
    with pytest.raises(ValueError, match=r"n must be an integer ≥ 1 \(the number of samples\)"):
        bon_distribution(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), n)
    with pytest.raises(ValueError, match="n must be an integer ≥ 1"):
        bon_kl_bound(n)


@pytest.mark.parametrize(
    "probs, rewards, message",
    [
        ([0.7, 0.5], [0.0, 1.0], r"sum to 1 \(within 1e-06\)"),
        ([1.2, -0.2], [0.0, 1.0], "non-negative"),
        ([0.5, float("nan")], [0.0, 1.0], "probs must be finite"),
        ([0.5, 0.5], [0.0, 1.0, 2.0], "shape of probs"),
        ([0.5, 0.5], [0.0, float("nan")], "must not be NaN"),
        ([], [], "at least one outcome"),
    ],
)
def test_bad_probs_or_rewards_raise_a_value_error_with_the_fix(probs, rewards, message):
    with pytest.raises(ValueError, match=message):
        bon_distribution(torch.tensor(probs, dtype=torch.float64), torch.tensor(rewards), 2)


def test_probs_within_tolerance_of_one_are_accepted_and_renormalised():
    got = bon_distribution(torch.tensor([0.5, 0.5 + 5e-7], dtype=torch.float64), torch.tensor([0.0, 1.0]), 1)
    assert abs(float(got.sum()) - 1) < 1e-15


def test_kl_divergence_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.3, 0.5]))


# ---------------------------------------------------------------------------------------------- real models
def text_length(texts):
    return [float(len(t)) for t in texts]


def test_best_of_n_picks_the_highest_scoring_sample_with_exactly_one_generate_call(tiny, monkeypatch):
    calls = []

    def counting_generate(policy, prompts, **kwargs):
        calls.append((len(prompts), kwargs))
        return models.generate(policy, prompts, **kwargs)

    monkeypatch.setattr(bon, "generate", counting_generate)
    prompts = ["write one sentence about the weather", "tell me what you think of coffee"]
    out = bon.best_of_n(tiny, text_length, prompts, 4, max_new_tokens=6, seed=0)
    assert len(calls) == 1 and calls[0][0] == 8 and calls[0][1]["batch_size"] == 8
    assert out.scores.shape == (2, 4) and out.scores.dtype == torch.float64
    assert [len(t) for t in out.texts] == [4, 4] and [len(c) for c in out.completion_ids] == [4, 4]
    for i in range(2):
        lengths = [len(t) for t in out.texts[i]]
        assert out.scores[i].tolist() == lengths
        assert int(out.best_index[i]) == lengths.index(max(lengths))  # first maximum
        assert out.best_texts[i] == out.texts[i][int(out.best_index[i])]
        assert float(out.best_scores[i]) == max(lengths)


def test_best_of_n_samples_are_the_same_as_one_plain_generate_of_the_repeated_prompts(tiny):
    prompts = ["describe the city"]
    out = bon.best_of_n(tiny, text_length, prompts, 3, max_new_tokens=5, seed=7)
    plain = models.generate(tiny, prompts * 3, max_new_tokens=5, seed=7, batch_size=3)
    assert out.texts[0] == plain.texts and out.completion_ids[0] == plain.completion_ids


def test_best_of_n_breaks_ties_by_the_first_maximum(tiny):
    out = bon.best_of_n(tiny, lambda texts: [1.0] * len(texts), ["hello"], 3, max_new_tokens=3)
    assert int(out.best_index[0]) == 0


@pytest.mark.parametrize(
    "reward_fn, message",
    [(lambda texts: [0.0], "returned 1 scores for 2 texts"), (lambda texts: [0.0, float("nan")], "finite scores")],
)
def test_best_of_n_rejects_reward_fn_output_of_the_wrong_length_or_not_finite(tiny, reward_fn, message):
    with pytest.raises(ValueError, match=message):
        bon.best_of_n(tiny, reward_fn, ["hello"], 2, max_new_tokens=2)


def test_best_of_n_rejects_bad_n_and_prompts(tiny):
    with pytest.raises(ValueError, match="n must be an int"):
        bon.best_of_n(tiny, text_length, ["hello"], 0)
    with pytest.raises(TypeError, match="list of str"):
        bon.best_of_n(tiny, text_length, "hello", 2)
    with pytest.raises(ValueError, match="prompts is empty"):
        bon.best_of_n(tiny, text_length, [], 2)


def test_bon_distribution_for_each_n_equals_bon_distribution_one_n_at_a_time():
    gen = torch.Generator().manual_seed(11)
    p = torch.softmax(torch.randn(3, 30, generator=gen, dtype=torch.float64), dim=-1)
    r = torch.randint(0, 6, (3, 30), generator=gen).double()  # ties
    ns = [1, 2, 7, 64]
    got = bon.bon_distribution_for_each_n(p, r, ns)
    assert got.shape == (4, 3, 30)
    for i, n in enumerate(ns):
        assert torch.equal(got[i], bon_distribution(p, r, n))
    with pytest.raises(ValueError, match="ns is empty"):
        bon.bon_distribution_for_each_n(p, r, [])


def test_tie_levels_give_each_outcome_the_mass_at_or_below_its_reward_and_of_its_level():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    r = torch.tensor([2.0, 1.0, 2.0, 0.0], dtype=torch.float64)
    levels = bon.tie_levels(p, r)
    assert isinstance(levels, bon.TieLevels)
    outcome = levels.order.tolist()  # sorted by reward: 3 (r=0), 1 (r=1), then 0 and 2 (r=2, tied)
    assert outcome[:2] == [3, 1] and sorted(outcome[2:]) == [0, 2]
    assert torch.equal(levels.sorted_probs, p[levels.order])
    F = dict(zip(outcome, levels.F.tolist()))
    m = dict(zip(outcome, levels.m.tolist()))
    assert F == pytest.approx({3: 0.4, 1: 0.6, 0: 1.0, 2: 1.0}) and m == pytest.approx({3: 0.4, 1: 0.2, 0: 0.4, 2: 0.4})
    assert torch.allclose(bon.bon_from_tie_levels(levels, 3), bon_distribution(p, r, 3), atol=0)


def test_exponential_tilt_is_pi_times_exp_lambda_score_normalised_and_tilted_is_lambda_one_over_beta():
    p, g = _dist(8)
    want = p * torch.exp(0.7 * g)
    assert torch.allclose(bon.exponential_tilt(p, g, 0.7), want / want.sum(), atol=1e-15)
    assert torch.equal(bon.exponential_tilt(p, g, 1 / 0.25), bon.tilted(p, g, 0.25))
    zero = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    assert bon.exponential_tilt(zero, torch.tensor([0.0, 9.0, 1.0], dtype=torch.float64), 3.0)[1] == 0


def test_bon_distribution_given_a_tabular_policy_says_to_pass_its_probs():
    from alignlecture.toy import ToyWorld

    world = ToyWorld(3, 2)
    pi, r = world.uniform_policy(), world.random_rewards()
    with pytest.raises(TypeError, match=r"probs must be a tensor or a list of numbers; got TabularPolicy "
                                        r"\(a policy's distribution over its responses is policy.probs\(\)"):
        bon_distribution(pi, r, 4)
    assert torch.allclose(bon_distribution(pi.probs(), r, 4).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_help_documents_every_field_of_best_of_n():
    attributes = inspect.getdoc(bon.BestOfN).split("Attributes:")[1]
    assert [f.name for f in dataclasses.fields(bon.BestOfN) if f"    {f.name}: " not in attributes] == []


# ---------------------------------------------------------------------------------------------- frontier
def _dist(seed, k=40):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), dim=0)
    return p, torch.randn(k, generator=gen, dtype=torch.float64)


def test_tilted_equals_the_toy_worlds_closed_form_optimum():
    from alignlecture.toy import ToyWorld

    world = ToyWorld(vocab_size=3, max_len=3)
    ref, r = world.random_policy(seed=1), world.random_rewards(seed=2)
    want = world.optimal_policy(ref, r, 0.3).probs()
    assert torch.allclose(bon.tilted(ref.probs(), r, 0.3), want, atol=1e-12)


def test_tilt_to_kl_hits_the_requested_kl_and_is_the_tilt_toward_the_scores():
    p, g = _dist(3)
    for target in (1e-4, 0.1, 1.0):
        q = bon.tilt_to_kl(p, g, target)
        assert abs(float(bon.kl_divergence(q, p)) - target) < 1e-9
        log_ratio = torch.log(q / p)
        slope = (log_ratio - log_ratio.mean()) / (g - g.mean())
        assert torch.allclose(slope, slope[0].expand_as(slope), rtol=1e-6)  # log q/p is affine in g


def test_tilt_to_kl_refuses_a_kl_beyond_the_best_outcome():
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"kl must lie in \[0, 1.38"):
        bon.tilt_to_kl(p, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), 2.0)


def test_the_penalised_optimum_beats_every_other_policy_with_the_same_kl():
    p, r = _dist(4)
    (kl,), (best,) = bon.rlhf_frontier(p, r, [0.5])
    gen = torch.Generator().manual_seed(5)
    for _ in range(50):
        other = bon.tilt_to_kl(p, torch.randn(40, generator=gen, dtype=torch.float64), kl)
        assert float(other @ r) <= best + 1e-12


def test_best_of_n_never_beats_the_optimal_frontier_at_its_own_kl():
    p, r = _dist(6)
    kls, rewards = bon.bon_frontier(p, r, [2, 4, 8, 16])
    for kl, reward in zip(kls, rewards):
        assert reward <= float(bon.tilt_to_kl(p, r, kl) @ r) + 1e-12
    assert rewards == sorted(rewards) and kls == sorted(kls)


def test_tilt_to_kl_stops_with_a_clear_error_when_no_lambda_in_range_reaches_the_kl(monkeypatch):
    p, g = _dist(3)
    monkeypatch.setattr(bon, "MAX_DOUBLINGS", 2)  # λ ≤ 4 cannot spend a KL close to the ceiling
    kl = 0.999 * bon.kl_ceiling(p, g)
    with pytest.raises(ValueError, match=r"no tilt with λ ≤ 2\^2 reaches kl"):
        bon.tilt_to_kl(p, g, kl)


def test_random_tilts_at_kl_all_spend_exactly_the_budget_and_differ():
    p, _ = _dist(7)
    others = bon.random_tilts_at_kl(p, 0.3, 20, generator=torch.Generator().manual_seed(0))
    assert others.shape == (20, 40)
    assert bool(((bon.kl_divergence(others, p.expand(20, -1)) - 0.3).abs() < 1e-9).all())
    assert float(torch.cdist(others, others).topk(2, dim=1, largest=False).values[:, 1].min()) > 1e-3


def test_random_tilts_at_kl_gives_up_after_max_tries_instead_of_looping_forever():
    p = torch.tensor([0.98, 0.01, 0.01], dtype=torch.float64)  # no direction reaches KL 5 (ceilings ≤ log 100)
    with pytest.raises(RuntimeError, match=r"only 0 of 3 random directions could reach kl = 5.0 in 30 tries"):
        bon.random_tilts_at_kl(p, 5.0, 3, generator=torch.Generator().manual_seed(0), max_tries=30)


def test_optimal_reward_at_kl_is_the_frontier_and_the_best_reward_past_the_ceiling():
    p, r = _dist(8)
    (kl,), (best,) = bon.rlhf_frontier(p, r, [0.4])
    assert bon.optimal_reward_at_kl(p, r, kl) == pytest.approx(best, abs=1e-9)
    assert bon.optimal_reward_at_kl(p, r, bon.kl_ceiling(p, r) + 1) == float(r.max())
    assert bon.optimal_reward_at_kl(p, r, 0.0) == pytest.approx(float(p @ r), abs=1e-9)


def test_sample_best_of_n_rejects_a_batch_of_distributions_and_bad_trials():
    with pytest.raises(ValueError, match="one distribution"):
        bon.sample_best_of_n(torch.full((2, 3), 1 / 3), torch.zeros(3), 2, 10, generator=torch.Generator())
    with pytest.raises(ValueError, match="trials must be an integer"):
        bon.sample_best_of_n(torch.full((3,), 1 / 3), torch.zeros(3), 2, 0, generator=torch.Generator())


# ---------------------------------------------------------------------------------------------- chapter 6 exercise 2
def test_chapter_6_two_level_exercise_accepts_the_solution_rejects_the_wrong_answer_and_reports_a_stub():
    from alignlecture.exercises import NOT_ATTEMPTED
    from alignlecture.solutions import ch06

    assert "✓" in ch06.check_two_level(ch06.two_level_solution)
    with pytest.raises(AssertionError):
        ch06.check_two_level(ch06.two_level_wrong)

    def stub(q, n):
        raise NotImplementedError

    assert ch06.check_two_level(stub).startswith(NOT_ATTEMPTED)


def brute_force_win_rate(probs, rewards, n):
    """Enumerate every n-tuple and one base draw: best-of-n (ties split) wins 1, ties ½, loses 0."""
    chosen = brute_force_bon(probs, rewards, n)
    K = len(probs)
    return sum(float(chosen[i]) * probs[j] * (1.0 if rewards[i] > rewards[j] else 0.5 if rewards[i] == rewards[j] else 0.0)
               for i in range(K) for j in range(K))


@PROPERTY
@given(small_cases)
def test_bon_win_rate_equals_brute_force_over_all_n_tuples_and_base_draws_with_ties_half(case):
    weights, rewards, n = case
    probs = [w / sum(weights) for w in weights]
    rewards = [float(r) for r in rewards[: len(probs)]]
    got = bon_win_rate(torch.tensor(probs, dtype=torch.float64), torch.tensor(rewards, dtype=torch.float64), n)
    assert got == pytest.approx(brute_force_win_rate(probs, rewards, n), abs=1e-12)


@PROPERTY
@given(small_cases)
def test_bon_win_rate_is_one_half_at_n_1_and_never_above_n_over_n_plus_1(case):
    weights, rewards, n = case
    probs = torch.tensor([w / sum(weights) for w in weights], dtype=torch.float64)
    r = torch.tensor([float(x) for x in rewards[: len(probs)]], dtype=torch.float64)
    assert bon_win_rate(probs, r, 1) == pytest.approx(0.5, abs=1e-12)
    assert bon_win_rate(probs, r, n) <= n / (n + 1) + 1e-12


@pytest.mark.parametrize("n", [2, 4, 16, 256])
def test_bon_win_rate_of_uniform_distinct_rewards_tends_to_n_over_n_plus_1(n):
    K = 1000  # the trapezoid rule's error shrinks like (n/K)²
    got = bon_win_rate(torch.full((K,), 1 / K, dtype=torch.float64), torch.arange(K, dtype=torch.float64), n)
    assert got <= n / (n + 1) and got == pytest.approx(n / (n + 1), abs=(n / K) ** 2)


def test_bon_win_rate_is_one_half_when_every_reward_ties():
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert bon_win_rate(p, torch.zeros(3, dtype=torch.float64), 64) == pytest.approx(0.5, abs=1e-15)


def test_bon_win_rate_refuses_a_batch_of_distributions():
    with pytest.raises(ValueError, match="one distribution"):
        bon_win_rate(torch.full((2, 3), 1 / 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64), 2)
