"""Tests for alignlecture.toy: the exactly enumerable toy world and its tabular policies."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture.toy import EOS, TabularPolicy, ToyWorld, check_beta

worlds = st.tuples(st.integers(2, 5), st.integers(1, 4))
seeds = st.integers(0, 2**31 - 1)
temperatures = st.floats(0.2, 5.0)
PROPERTY = settings(max_examples=25, deadline=None)


def brute_force_logprob(policy: TabularPolicy, response) -> float:
    """log π(y) as a product of next-token probabilities, walking the response token by token."""
    total, prefix = 0.0, []
    for tok in (int(t) for t in response):
        total += float(policy.next_logprobs(tuple(prefix))[tok])
        if tok == EOS:
            break
        prefix.append(tok)
    return total


def step_by_step_greedy(world: ToyWorld, fn) -> list[int]:
    prefix: list[int] = []
    while len(prefix) < world.max_len:
        tok = int(torch.argmax(fn(tuple(prefix))))
        if tok == EOS:
            break
        prefix.append(tok)
    return prefix + [0] * (world.max_len - len(prefix))


# ---------------------------------------------------------------------------------------------- enumeration
@pytest.mark.parametrize(
    "V, T, expected",
    [(2, 1, 2), (2, 5, 6), (3, 1, 3), (3, 2, 7), (4, 3, 40), (5, 2, 21), (8, 6, 137257)],
)
def test_num_responses_is_sum_of_eos_terminated_plus_truncated(V, T, expected):
    w = ToyWorld(V, T)
    formula = sum((V - 1) ** k for k in range(T)) + (V - 1) ** T
    assert formula == expected
    assert w.num_responses == expected
    assert w.responses.shape == (expected, T)
    assert w.num_prefixes == sum((V - 1) ** k for k in range(T))


@pytest.mark.parametrize("V, T", [(2, 3), (3, 3), (4, 3), (5, 2)])
def test_every_response_appears_exactly_once(V, T):
    w = ToyWorld(V, T)
    assert torch.unique(w.responses, dim=0).shape[0] == w.num_responses


@pytest.mark.parametrize("V, T", [(2, 3), (3, 3), (4, 3)])
def test_rows_are_zero_padded_after_eos_and_truncated_rows_have_no_eos(V, T):
    w = ToyWorld(V, T)
    P = w.num_prefixes
    for i, row in enumerate(w.responses.tolist()):
        if i < P:
            k = row.index(EOS)
            assert all(tok != EOS for tok in row[:k])
            assert all(tok == 0 for tok in row[k:])
        else:
            assert EOS not in row
    assert bool((w.responses >= 0).all() and (w.responses < V).all())


def test_eos_terminated_rows_follow_prefix_order():
    w = ToyWorld(4, 3)
    for i, prefix in enumerate(w.prefixes()):
        assert w.prefix_index(prefix) == i
        row = w.responses[i].tolist()
        assert tuple(row[: len(prefix)]) == prefix and row[len(prefix)] == EOS


@pytest.mark.parametrize("V, T", [(2, 2), (3, 3), (4, 3), (5, 2)])
def test_index_inverts_responses(V, T):
    w = ToyWorld(V, T)
    for i in range(w.num_responses):
        assert w.index(w.responses[i]) == i
        assert w.index(w.responses[i].tolist()) == i


def test_index_accepts_an_unpadded_eos_terminated_response():
    w = ToyWorld(4, 3)
    assert w.index([2, 0]) == w.index([2, 0, 0])
    assert w.responses[w.index([2, 0])].tolist() == [2, 0, 0]


def test_lengths_count_scored_tokens_including_eos():
    w = ToyWorld(3, 2)
    expected = [1, 2, 2, 2, 2, 2, 2]  # (eos), (a eos), (b eos), aa, ab, ba, bb
    assert w.lengths.tolist() == expected


def test_text_renders_tokens_and_stops_at_eos():
    w = ToyWorld(4, 3)
    assert w.text([1, 2, 0]) == "a b <eos>"
    assert w.text([3, 3, 3]) == "c c c"
    assert w.text([0, 0, 0]) == "<eos>"


# ---------------------------------------------------------------------------------------------- exact sums
@PROPERTY
@given(worlds, seeds, temperatures)
def test_probs_sum_to_one_and_logprobs_logsumexp_to_zero(vt, seed, temperature):
    w = ToyWorld(*vt)
    pi = w.random_policy(seed=seed, temperature=temperature)
    assert pi.probs().dtype == torch.float64
    assert abs(float(pi.probs().sum()) - 1.0) < 1e-12
    assert abs(float(torch.logsumexp(pi.logprobs(w.responses), 0))) < 1e-12


@PROPERTY
@given(worlds, seeds, temperatures)
def test_gathered_logprobs_equal_top_down_and_brute_force_product(vt, seed, temperature):
    w = ToyWorld(*vt)
    pi = w.random_policy(seed=seed, temperature=temperature)
    gathered = pi.logprobs(w.responses)
    top_down = pi.sequence_logprobs()
    torch.testing.assert_close(gathered, top_down, rtol=1e-12, atol=1e-12)
    brute = torch.tensor([brute_force_logprob(pi, y) for y in w.responses], dtype=torch.float64)
    torch.testing.assert_close(gathered, brute, rtol=1e-12, atol=1e-12)
    copy = w.responses.clone()  # the non-cached path through encode
    torch.testing.assert_close(pi.logprobs(copy), brute, rtol=1e-12, atol=1e-12)


@PROPERTY
@given(worlds, seeds, st.floats(0.5, 5.0))
def test_policy_from_sequence_logprobs_reproduces_softmax_of_logp(vt, seed, scale):
    w = ToyWorld(*vt)
    logp = w.random_rewards(seed=seed, scale=scale)
    pi = w.policy_from_sequence_logprobs(logp)
    torch.testing.assert_close(pi.probs(), torch.softmax(logp, 0), rtol=1e-12, atol=1e-12)


@PROPERTY
@given(worlds, seeds, temperatures)
def test_policy_from_sequence_logprobs_round_trips_a_policy_table(vt, seed, temperature):
    w = ToyWorld(*vt)
    pi = w.random_policy(seed=seed, temperature=temperature)
    back = w.policy_from_sequence_logprobs(pi.sequence_logprobs())
    torch.testing.assert_close(back.log_table, pi.log_table, rtol=1e-10, atol=1e-10)


def test_policy_from_sequence_logprobs_gives_zero_probability_to_minus_inf_responses():
    w = ToyWorld(3, 3)
    logp = w.random_rewards(seed=1)
    dead = torch.tensor([0, 2, 5, w.num_responses - 1])
    logp[dead] = -math.inf
    pi = w.policy_from_sequence_logprobs(logp)
    probs = pi.probs()
    assert bool((probs[dead] == 0).all())
    alive = torch.ones(w.num_responses, dtype=torch.bool)
    alive[dead] = False
    torch.testing.assert_close(probs[alive], torch.softmax(logp[alive], 0), rtol=1e-12, atol=1e-12)
    assert abs(float(probs.sum()) - 1) < 1e-12


def test_policy_from_sequence_logprobs_makes_unreachable_prefixes_uniform():
    w = ToyWorld(3, 2)
    logp = torch.full((w.num_responses,), -math.inf, dtype=torch.float64)
    logp[w.index([1, 0])] = 0.0  # only "a <eos>" is possible: prefix (2,) is unreachable
    pi = w.policy_from_sequence_logprobs(logp)
    torch.testing.assert_close(pi.next_logprobs((2,)), torch.full((3,), -math.log(3), dtype=torch.float64))
    assert float(pi.probs()[w.index([1, 0])]) == pytest.approx(1.0, abs=1e-15)


@PROPERTY
@given(worlds, seeds, st.floats(0.05, 10.0))
def test_optimal_policy_equals_softmax_of_ref_logprobs_plus_reward_over_beta(vt, seed, beta):
    w = ToyWorld(*vt)
    ref = w.random_policy(seed=seed)
    r = w.random_rewards(seed=seed + 1)
    star = w.optimal_policy(ref, r, beta)
    expected = torch.softmax(ref.sequence_logprobs() + r / beta, 0)
    torch.testing.assert_close(star.probs(), expected, rtol=1e-12, atol=1e-12)


def test_optimal_policy_with_zero_rewards_is_the_reference():
    w = ToyWorld(4, 3)
    ref = w.random_policy(seed=3)
    star = w.optimal_policy(ref, torch.zeros(w.num_responses, dtype=torch.float64), 0.7)
    torch.testing.assert_close(star.log_table, ref.log_table, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- greedy
@PROPERTY
@given(worlds, seeds, temperatures)
def test_greedy_equals_step_by_step_argmax(vt, seed, temperature):
    w = ToyWorld(*vt)
    pi = w.random_policy(seed=seed, temperature=temperature)
    out = w.greedy(pi.next_logprobs)
    assert out.dtype == torch.long and out.shape == (w.max_len,)
    assert out.tolist() == step_by_step_greedy(w, pi.next_logprobs)


@pytest.mark.parametrize("V, T", [(2, 3), (3, 2), (4, 3)])
def test_greedy_on_policy_peaked_at_one_response_returns_it(V, T):
    w = ToyWorld(V, T)
    for j in range(w.num_responses):
        logp = torch.full((w.num_responses,), -50.0, dtype=torch.float64)
        logp[j] = 0.0
        pi = w.policy_from_sequence_logprobs(logp)
        assert w.greedy(pi.next_logprobs).tolist() == w.responses[j].tolist()


# ---------------------------------------------------------------------------------------------- KL, expectations, sampling
@PROPERTY
@given(worlds, seeds, seeds, temperatures)
def test_kl_is_zero_to_itself_nonnegative_and_matches_direct_sum(vt, s1, s2, temperature):
    w = ToyWorld(*vt)
    p = w.random_policy(seed=s1, temperature=temperature)
    q = w.random_policy(seed=s2)
    assert abs(p.kl(p)) < 1e-12
    kl = p.kl(q)
    assert kl >= -1e-12
    pp, qq = p.probs(), q.probs()
    direct = float(sum(a * (math.log(a) - math.log(b)) for a, b in zip(pp.tolist(), qq.tolist()) if a > 0))
    assert kl == pytest.approx(direct, rel=1e-9, abs=1e-12)


def test_kl_treats_zero_probability_responses_as_zero_terms():
    w = ToyWorld(3, 2)
    logp = w.random_rewards(seed=0)
    logp[[1, 4]] = -math.inf
    p = w.policy_from_sequence_logprobs(logp)
    q = w.uniform_policy()
    pp = p.probs()
    direct = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pp.tolist(), q.probs().tolist()) if a > 0)
    assert math.isfinite(p.kl(q))
    assert p.kl(q) == pytest.approx(direct, rel=1e-12)
    assert q.kl(p) == math.inf  # q puts mass where p has none


def test_uniform_policy_assigns_v_to_the_minus_length_per_response():
    w = ToyWorld(3, 3)
    expected = torch.tensor([3.0 ** (-int(n)) for n in w.lengths], dtype=torch.float64)
    torch.testing.assert_close(w.uniform_policy().probs(), expected, rtol=1e-12, atol=0)


def test_expected_is_probability_weighted_sum():
    w = ToyWorld(4, 2)
    pi = w.random_policy(seed=5)
    v = w.random_rewards(seed=6)
    assert pi.expected(v) == pytest.approx(float((pi.probs() * v).sum()), rel=1e-12)


def test_sample_frequencies_approach_probabilities():
    w = ToyWorld(3, 2)  # 7 responses
    pi = w.random_policy(seed=2, temperature=0.7)
    n = 200_000
    ys = pi.sample(n, seed=11)
    assert ys.shape == (n, w.max_len)
    lookup = {tuple(r): i for i, r in enumerate(w.responses.tolist())}
    counts = torch.bincount(torch.tensor([lookup[tuple(r)] for r in ys.tolist()]), minlength=w.num_responses)
    expected = n * pi.probs()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40.0  # df = 6; P(χ² > 40) ≈ 5e-7
    sigma = torch.sqrt(expected * (1 - pi.probs()))
    assert bool(((counts - expected).abs() < 5 * sigma).all())


def test_sample_is_deterministic_for_a_seed():
    w = ToyWorld(4, 3)
    pi = w.random_policy(seed=0)
    assert torch.equal(pi.sample(50, seed=3), pi.sample(50, seed=3))


def test_random_policy_is_seeded():
    w = ToyWorld(4, 3)
    assert torch.equal(w.random_policy(seed=7).log_table, w.random_policy(seed=7).log_table)
    assert not torch.equal(w.random_policy(seed=7).log_table, w.random_policy(seed=8).log_table)


def test_check_beta_returns_float():
    assert check_beta(2) == 2.0 and isinstance(check_beta(2), float)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("V", [1, 0, -3, 2.0, True])
def test_vocab_size_below_two_or_not_int_is_rejected(V):
    with pytest.raises(ValueError, match="vocab_size must be an int ≥ 2"):
        ToyWorld(V, 3)


@pytest.mark.parametrize("T", [0, -1, 1.0])
def test_max_len_below_one_is_rejected(T):
    with pytest.raises(ValueError, match="max_len must be an int ≥ 1"):
        ToyWorld(4, T)


def test_too_large_world_is_rejected():
    with pytest.raises(ValueError, match="too many to enumerate"):
        ToyWorld(30, 10)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.zeros(2, 3, 1, dtype=torch.long)],
)
def test_responses_of_wrong_shape_are_rejected(bad):
    pi = ToyWorld(4, 3).uniform_policy()
    with pytest.raises(ValueError, match=r"responses must be a LongTensor \[M, max_len=3\]"):
        pi.logprobs(bad)


def test_float_responses_are_rejected():
    pi = ToyWorld(4, 3).uniform_policy()
    with pytest.raises(ValueError, match="integer token ids"):
        pi.logprobs(torch.zeros(2, 3))


@pytest.mark.parametrize("row", [[4, 0, 0], [1, -1, 0], [1, 2, 9]])
def test_tokens_out_of_range_are_rejected(row):
    pi = ToyWorld(4, 3).uniform_policy()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\)"):
        pi.logprobs(torch.tensor([row]))


@pytest.mark.parametrize("row", [[0, 1, 0], [1, 0, 2], [0, 0, 3]])
def test_tokens_after_eos_are_rejected(row):
    w = ToyWorld(4, 3)
    with pytest.raises(ValueError, match="has tokens after eos"):
        w.uniform_policy().logprobs(torch.tensor([[1, 2, 3], row]))
    with pytest.raises(ValueError, match="has tokens after eos"):
        w.index(row)


def test_prefix_too_long_is_rejected():
    pi = ToyWorld(4, 3).uniform_policy()
    with pytest.raises(ValueError, match="has length 3; a decision prefix has fewer than max_len=3"):
        pi.next_logprobs((1, 2, 3))


@pytest.mark.parametrize("prefix", [(0,), (1, 0), (4,), (1, -2)])
def test_prefix_with_eos_or_out_of_range_token_is_rejected(prefix):
    w = ToyWorld(4, 3)
    with pytest.raises(ValueError, match=r"prefix tokens must be non-eos ids in \[1, 4\)"):
        w.prefix_index(prefix)


def test_non_sequence_prefix_is_rejected():
    with pytest.raises(ValueError, match="prefix must be a sequence of token ids"):
        ToyWorld(4, 3).check_prefix(5)


@pytest.mark.parametrize("beta", [0, -1.0, math.nan, math.inf, "x", None])
def test_beta_not_positive_finite_is_rejected(beta):
    w = ToyWorld(3, 2)
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        w.optimal_policy(w.uniform_policy(), w.random_rewards(), beta)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_rewards_are_rejected(value):
    w = ToyWorld(3, 2)
    r = w.random_rewards()
    r[3] = value
    with pytest.raises(ValueError, match="rewards must be finite; entry 3"):
        w.optimal_policy(w.uniform_policy(), r, 1.0)


@pytest.mark.parametrize("n", [6, 8])
def test_rewards_of_wrong_length_are_rejected(n):
    w = ToyWorld(3, 2)
    with pytest.raises(ValueError, match=r"rewards must have shape \[7\]"):
        w.optimal_policy(w.uniform_policy(), torch.zeros(n, dtype=torch.float64), 1.0)


def test_all_minus_inf_logp_is_rejected():
    w = ToyWorld(3, 2)
    with pytest.raises(ValueError, match="−inf for every response"):
        w.policy_from_sequence_logprobs(torch.full((7,), -math.inf, dtype=torch.float64))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_or_plus_inf_logp_is_rejected(value):
    w = ToyWorld(3, 2)
    logp = torch.zeros(7, dtype=torch.float64)
    logp[2] = value
    with pytest.raises(ValueError, match="logp must be finite; entry 2"):
        w.policy_from_sequence_logprobs(logp)


def test_non_normalised_log_table_is_rejected():
    w = ToyWorld(4, 2)
    table = torch.log_softmax(torch.randn(w.num_prefixes, 4, dtype=torch.float64), -1)
    table[1] += 0.01
    with pytest.raises(ValueError, match="must be a normalised log-distribution"):
        w.policy(table)


def test_log_table_with_nan_or_wrong_shape_is_rejected():
    w = ToyWorld(4, 2)
    table = w.uniform_policy().log_table.clone()
    table[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        w.policy(table)
    with pytest.raises(ValueError, match=r"log_table must be a Tensor \[num_prefixes=4, vocab_size=4\]"):
        w.policy(torch.zeros(4, 3, dtype=torch.float64))


def test_pi_ref_from_another_world_is_rejected():
    w, other = ToyWorld(3, 2), ToyWorld(3, 3)
    with pytest.raises(ValueError, match=r"pi_ref belongs to ToyWorld\(vocab_size=3, max_len=3\)"):
        w.optimal_policy(other.uniform_policy(), w.random_rewards(), 1.0)
    with pytest.raises(TypeError, match="pi_ref must be a TabularPolicy"):
        w.optimal_policy(torch.zeros(3), w.random_rewards(), 1.0)
    with pytest.raises(ValueError, match="other belongs to ToyWorld"):
        w.uniform_policy().kl(other.uniform_policy())


def test_check_policy_returns_a_policy_of_this_world_and_names_the_argument_it_refuses():
    w, other = ToyWorld(3, 2), ToyWorld(3, 3)
    pi = ToyWorld(3, 2).uniform_policy()  # another instance with the same vocabulary and max_len belongs here
    assert w.check_policy(pi, "pi") is pi
    with pytest.raises(ValueError, match=r"target belongs to ToyWorld\(vocab_size=3, max_len=3\)"):
        w.check_policy(other.uniform_policy(), "target")
    with pytest.raises(TypeError, match="target must be a TabularPolicy of this world; got Tensor"):
        w.check_policy(torch.zeros(3), "target")


def test_the_layout_attributes_are_public_and_consistent():
    w = ToyWorld(3, 3)
    assert (w.branch, w.offsets, w.num_prefixes, w.num_responses) == (2, [0, 1, 3, 7], 7, 15)
    nodes, mask = w.encoded
    assert torch.equal(nodes, w.encode(w.responses)[0]) and torch.equal(w.lengths, mask.sum(dim=1))


@pytest.mark.parametrize("ret", [torch.zeros(3), torch.zeros(4, 1), [0.0, 1.0, 0.0, 0.0]])
def test_greedy_fn_returning_wrong_shape_is_rejected(ret):
    w = ToyWorld(4, 3)
    with pytest.raises(ValueError, match=r"must return a Tensor \[vocab_size=4\]"):
        w.greedy(lambda prefix: ret)


def test_greedy_fn_returning_nan_is_rejected():
    w = ToyWorld(4, 3)
    with pytest.raises(ValueError, match="returned NaN scores"):
        w.greedy(lambda prefix: torch.tensor([0.0, math.nan, 0.0, 0.0]))


@pytest.mark.parametrize("temperature", [0, -1.0, math.nan, math.inf])
def test_temperature_not_positive_finite_is_rejected(temperature):
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        ToyWorld(4, 3).random_policy(temperature=temperature)


@pytest.mark.parametrize("n", [0, -5, 2.5])
def test_sample_size_not_positive_int_is_rejected(n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        ToyWorld(4, 3).uniform_policy().sample(n)


def test_along_paths_counts_the_decisions_on_each_response():
    world = ToyWorld(vocab_size=4, max_len=3)
    ones = torch.ones(world.num_prefixes, dtype=torch.float64)
    assert torch.equal(world.along_paths(ones), world.lengths.to(torch.float64))  # one step per scored token
    # every response passes through the root exactly once
    root_only = torch.zeros(world.num_prefixes, dtype=torch.float64)
    root_only[0] = 1.0
    assert torch.equal(world.along_paths(root_only), torch.ones(world.num_responses, dtype=torch.float64))


def test_along_paths_rejects_a_wrong_shape():
    world = ToyWorld(vocab_size=3, max_len=2)
    with pytest.raises(ValueError, match="num_prefixes=3"):
        world.along_paths(torch.zeros(5))


def test_machine_precision_passes_round_off_and_raises_on_a_real_error():
    from alignlecture.toy import machine_precision

    assert machine_precision(3e-16) == "< 1e-12 ✓"
    assert machine_precision(-3e-16) == "< 1e-12 ✓"
    assert machine_precision(1e-7, tol=1e-6) == "< 1e-06 ✓"
    with pytest.raises(AssertionError, match=r"for the DPO optimum.*2\.000e-09.*1e-12"):
        machine_precision(2e-9, what="the DPO optimum")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(AssertionError, match="exceeds the tolerance"):
            machine_precision(bad)


def test_prefix_logprobs_are_the_products_along_each_prefix():
    world = ToyWorld(vocab_size=4, max_len=3)
    pi = world.random_policy(seed=9)
    reach = pi.prefix_logprobs()
    for row, prefix in enumerate(world.prefixes()):
        want = sum(float(pi.next_logprobs(prefix[:t])[tok]) for t, tok in enumerate(prefix))
        assert abs(float(reach[row]) - want) < 1e-12, prefix
