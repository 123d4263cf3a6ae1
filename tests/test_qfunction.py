"""Tests for alignlecture.qfunction: exact soft Q*/V* on the toy world, the lecture's Q′, and token-level rewards."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture import qfunction as qf
from alignlecture.logprobs import encode_pairs, sequence_logprobs
from alignlecture.models import tiny_policy
from alignlecture.toy import EOS, DTYPE, ToyWorld

worlds = st.tuples(st.integers(2, 5), st.integers(1, 4))
seeds = st.integers(0, 2**31 - 1)
betas = st.floats(0.05, 5.0)
PROPERTY = settings(max_examples=25, deadline=None)


def setup(vt, seed, beta, scale=1.0):
    w = ToyWorld(*vt)
    pi_ref = w.random_policy(seed=seed)
    rewards = w.random_rewards(seed=seed + 1, scale=scale)
    return w, pi_ref, rewards, qf.soft_values(w, pi_ref, rewards, beta)


def loop_soft_values(w, pi_ref, rewards, beta):
    """Q*, V* by plain recursion over prefixes, straight from the slide's definition (dicts, no tables)."""
    V = {}

    def value(prefix):
        if prefix not in V:
            V[prefix] = beta * torch.logsumexp(q(prefix) / beta, 0).item()
        return V[prefix]

    def q(prefix):
        ref = pi_ref.next_logprobs(prefix)
        out = torch.empty(w.vocab_size, dtype=DTYPE)
        for a in range(w.vocab_size):
            child = prefix + (a,)
            if a == EOS or len(child) == w.max_len:
                out[a] = beta * ref[a] + rewards[w.index(list(child))]
            else:
                out[a] = beta * ref[a] + value(child)
        return out

    return q, value


# ---------------------------------------------------------------------------------------------- soft Q*, V*
@PROPERTY
@given(worlds, seeds, betas)
def test_soft_values_policy_equals_the_closed_form_optimal_policy(vt, seed, beta):
    w, pi_ref, rewards, sv = setup(vt, seed, beta)
    assert torch.allclose(sv.policy().log_table, w.optimal_policy(pi_ref, rewards, beta).log_table, atol=1e-12, rtol=0)


@PROPERTY
@given(worlds, seeds, betas)
def test_soft_values_satisfy_the_soft_bellman_equation_everywhere(vt, seed, beta):
    w, pi_ref, rewards, sv = setup(vt, seed, beta)
    residual = qf.soft_bellman_residual(w, sv.q_table, pi_ref, rewards, beta)
    assert float(residual.abs().max()) < 1e-12
    assert torch.allclose(sv.v_table, beta * torch.logsumexp(sv.q_table / beta, dim=1), atol=1e-12, rtol=0)


@PROPERTY
@given(worlds, seeds, betas)
def test_root_value_is_beta_log_reference_expectation_of_exp_reward_over_beta(vt, seed, beta):
    w, pi_ref, rewards, sv = setup(vt, seed, beta)
    expected = beta * torch.logsumexp(pi_ref.sequence_logprobs() + rewards / beta, 0).item()
    assert sv.v_root == pytest.approx(expected, abs=1e-12)
    assert sv.v(()) == sv.v_root


@pytest.mark.parametrize("V, T, beta", [(3, 3, 0.5), (4, 2, 2.0), (2, 4, 0.1)])
def test_q_and_v_match_a_per_prefix_recursion_of_the_slide(V, T, beta):
    w, pi_ref, rewards, sv = setup((V, T), 11, beta)
    q, value = loop_soft_values(w, pi_ref, rewards, beta)
    for prefix in w.prefixes():
        assert torch.allclose(sv.q(prefix), q(prefix), atol=1e-12, rtol=0)
        assert sv.v(prefix) == pytest.approx(value(prefix), abs=1e-12)


@PROPERTY
@given(worlds, seeds, betas)
def test_advantage_is_beta_log_optimal_policy_and_its_log_ratio_telescopes_to_reward_minus_root_value(vt, seed, beta):
    w, pi_ref, rewards, sv = setup(vt, seed, beta)
    pi_star = w.optimal_policy(pi_ref, rewards, beta)
    assert torch.allclose(sv.advantages(), beta * pi_star.log_table, atol=1e-12, rtol=0)
    # β log π*/π_ref(a|s) = Q* − V* − β log π_ref = V*(s·a) − V*(s), or r(s·a) − V*(s) when s·a is terminal
    log_ratio = sv.advantages() - beta * pi_ref.log_table
    assert torch.allclose(log_ratio, beta * (pi_star.log_table - pi_ref.log_table), atol=1e-11, rtol=0)
    assert torch.allclose(log_ratio[:, EOS], rewards[: w.num_prefixes] - sv.v_table, atol=1e-11, rtol=0)
    # Σ_t β log π*/π_ref(y_t|s_t) = r(y) − V*(x): the DPO implicit reward is r up to a per-prompt constant
    implicit = beta * (pi_star.sequence_logprobs() - pi_ref.sequence_logprobs())
    assert torch.allclose(implicit, rewards - sv.v_root, atol=1e-11, rtol=0)


def test_soft_values_on_a_v8_t6_world_match_the_optimal_policy():
    w, pi_ref, rewards, sv = setup((8, 6), 0, 0.5)
    assert sv.q_table.shape == (19_608, 8) and sv.v_table.shape == (19_608,)
    assert torch.allclose(sv.policy().log_table, w.optimal_policy(pi_ref, rewards, 0.5).log_table, atol=1e-12, rtol=0)


def test_along_reads_q_at_each_action_of_a_response():
    w, pi_ref, rewards, sv = setup((4, 3), 3, 0.7)
    assert sv.along([2, 1, 0]).tolist() == [sv.q(())[2].item(), sv.q((2,))[1].item(), sv.q((2, 1))[0].item()]
    assert sv.along([3, 3, 3]).tolist() == [sv.q(())[3].item(), sv.q((3,))[3].item(), sv.q((3, 3))[3].item()]
    assert sv.along([0]).tolist() == [sv.q(())[0].item()]


def test_soft_values_reject_bad_beta_rewards_and_foreign_policies():
    w = ToyWorld(3, 2)
    pi_ref, r = w.random_policy(0), w.random_rewards(0)
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        qf.soft_values(w, pi_ref, r, 0.0)
    with pytest.raises(ValueError, match="rewards must have shape"):
        qf.soft_values(w, pi_ref, r[:-1], 1.0)
    with pytest.raises(ValueError, match="belongs to ToyWorld"):
        qf.soft_values(w, ToyWorld(3, 3).random_policy(0), r, 1.0)
    hard = qf.soft_backup(w, torch.zeros(w.num_prefixes, 3, dtype=DTYPE), r, beta=0)
    with pytest.raises(ValueError, match="no softmax policy"):
        hard.policy()


# ---------------------------------------------------------------------------------------------- Q′ (lecture)
@PROPERTY
@given(worlds, seeds, betas)
def test_q_prime_of_the_optimal_policy_equals_q_star_at_every_prefix(vt, seed, beta):
    w, pi_ref, rewards, sv = setup(vt, seed, beta)
    pi_star = w.optimal_policy(pi_ref, rewards, beta)
    q_prime = qf.q_prime_table(pi_star, pi_ref, beta, sv.v_root)
    assert torch.allclose(q_prime, sv.q_table, atol=1e-12 * max(1.0, sv.q_table.abs().max().item()), rtol=0)


def test_q_prime_recursion_along_responses_equals_the_table_and_q_star_for_the_optimal_policy():
    w, pi_ref, rewards, sv = setup((4, 3), 5, 0.6)
    pi_star = w.optimal_policy(pi_ref, rewards, 0.6)
    table = qf.q_prime_table(pi_star, pi_ref, 0.6, sv.v_root)
    for y in w.responses:
        step = qf.q_prime(pi_star, pi_ref, 0.6, sv.v_root, y)
        assert torch.allclose(step, qf._along(w, table, y), atol=1e-12, rtol=0)
        assert torch.allclose(step, sv.along(y), atol=1e-12, rtol=0)


def test_q_prime_of_any_policy_satisfies_the_non_terminal_bellman_step_but_not_the_terminal_one():
    w, pi_ref, rewards, sv = setup((4, 3), 2, 0.8)
    pi = w.random_policy(seed=99)
    residual = qf.soft_bellman_residual(w, qf.q_prime_table(pi, pi_ref, 0.8, sv.v_root), pi_ref, rewards, 0.8)
    terminal = qf.terminal_mask(w)
    assert float(residual[~terminal].abs().max()) < 1e-12  # the slide's "Therefore": holds for every π
    assert float(residual[terminal].abs().max()) > 0.1  # the "Besides" step needs π = π*


def test_q_prime_of_a_non_optimal_policy_differs_from_q_star():
    w, pi_ref, rewards, sv = setup((4, 3), 2, 0.8)
    q_prime = qf.q_prime_table(w.random_policy(seed=99), pi_ref, 0.8, sv.v_root)
    assert float((q_prime - sv.q_table).abs().max()) > 0.1


def test_q_prime_with_a_wrong_root_value_is_q_star_shifted_by_the_error():
    w, pi_ref, rewards, sv = setup((3, 3), 4, 1.5)
    pi_star = w.optimal_policy(pi_ref, rewards, 1.5)
    q_prime = qf.q_prime_table(pi_star, pi_ref, 1.5, sv.v_root + 0.25)
    assert torch.allclose(q_prime - sv.q_table, torch.full_like(q_prime, 0.25), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------- decoding
@PROPERTY
@given(worlds, seeds)
def test_exact_argmax_equals_the_brute_force_argmax_over_all_responses(vt, seed):
    w = ToyWorld(*vt)
    scores = w.random_rewards(seed=seed)
    assert qf.exact_argmax(w, scores).tolist() == w.responses[int(torch.argmax(scores))].tolist()


def test_value_corrected_mixed_logits_give_the_exact_argmax_where_plain_greedy_does_not():
    w = ToyWorld(4, 4)
    for seed in range(40):
        pi1, pi2 = w.random_policy(seed=seed), w.random_policy(seed=seed + 100)
        g = 0.5 * pi1.log_table + 0.5 * pi2.log_table  # token-level mixed logits
        scores = 0.5 * pi1.sequence_logprobs() + 0.5 * pi2.sequence_logprobs()
        best = w.responses[int(torch.argmax(scores))].tolist()
        hard = qf.soft_backup(w, g, beta=0)
        assert w.greedy(hard.q).tolist() == best
        assert qf.exact_argmax(w, scores).tolist() == best
        if w.greedy(lambda s: g[w.prefix_index(s)]).tolist() != best:
            break
    else:
        pytest.fail("plain greedy on mixed logits found the argmax for every seed; the test shows nothing")


@PROPERTY
@given(worlds, seeds)
def test_soft_backup_with_beta_1_reproduces_policy_from_sequence_logprobs(vt, seed):
    w = ToyWorld(*vt)
    pi1, pi2 = w.random_policy(seed=seed), w.random_policy(seed=seed + 1)
    g = 0.3 * pi1.log_table + 1.2 * pi2.log_table
    seq = 0.3 * pi1.sequence_logprobs() + 1.2 * pi2.sequence_logprobs()
    target = w.policy_from_sequence_logprobs(seq).log_table
    token_level = qf.soft_backup(w, g, beta=1.0).policy().log_table  # logit + V(s·a)
    sequence_level = qf.soft_backup(w, torch.zeros_like(g), seq, beta=1.0).policy().log_table
    assert torch.allclose(token_level, target, atol=1e-12, rtol=0)
    assert torch.allclose(sequence_level, target, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------- real models
PROMPTS = ["write one sentence about the weather", "tell me what you think of coffee", "describe a dog"]
COMPLETIONS = ["it is a nice day", "i love it very much", "good"]


@pytest.fixture(scope="module")
def other():
    return tiny_policy(seed=1, device="cpu")


def test_token_rewards_sum_to_beta_times_the_sequence_log_ratio(tiny, other):
    batch = encode_pairs(other, PROMPTS, COMPLETIONS)
    got = qf.token_rewards(other, tiny, 0.3, **batch)
    expected = 0.3 * (sequence_logprobs(other, PROMPTS, COMPLETIONS) - sequence_logprobs(tiny, PROMPTS, COMPLETIONS))
    assert got.shape == batch["input_ids"].shape
    assert torch.allclose(got.sum(dim=1), expected, atol=1e-5, rtol=0)


def test_token_rewards_are_zero_outside_the_completion_and_nonzero_inside(tiny, other):
    batch = encode_pairs(other, PROMPTS, COMPLETIONS)
    got = qf.token_rewards(other.model, tiny.model, 1.0, **batch)  # bare modules work too
    assert bool((got[batch["completion_mask"] == 0] == 0).all())
    assert bool((got[batch["completion_mask"] == 1] != 0).all())


def test_token_rewards_are_zero_when_the_policy_is_the_reference(tiny):
    batch = encode_pairs(tiny, PROMPTS, COMPLETIONS)
    assert bool((qf.token_rewards(tiny, tiny, 0.5, **batch) == 0).all())


def test_token_rewards_reject_bad_beta_and_non_models(tiny):
    batch = encode_pairs(tiny, PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        qf.token_rewards(tiny, tiny, -1.0, **batch)
    with pytest.raises(TypeError, match="Policy or a torch.nn.Module"):
        qf.token_rewards("gpt", tiny, 1.0, **batch)


# ---------------------------------------------------------------------------------------------- layout, decoders, mixing error
def test_child_index_points_each_action_to_the_prefix_or_response_it_leads_to():
    w = ToyWorld(4, 3)
    children = w.child_index()
    for s in w.prefixes():
        i = w.prefix_index(s)
        assert int(children[i, EOS]) == w.index([*s, EOS])  # eos ends the response "s then eos"
        for a in range(1, w.vocab_size):
            child = (*s, a)
            want = w.prefix_index(child) if len(child) < w.max_len else w.index(list(child))
            assert int(children[i, a]) == want


@PROPERTY
@given(worlds, seeds)
def test_value_greedy_with_the_hard_value_returns_the_argmax_of_the_summed_step_scores(vt, seed):
    w = ToyWorld(*vt)
    g = torch.randn(w.num_prefixes, w.vocab_size, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    summed = w.policy_sequence_logprobs(g)  # Σ_t g(y_t|y_<t) per response, by the enumerator (not by the backup)
    assert qf.value_greedy(w, g, beta=0).tolist() == w.responses[int(summed.argmax())].tolist()


def test_value_greedy_with_the_soft_value_follows_the_exact_marginals_not_the_argmax():
    w = ToyWorld(5, 4)
    misses = 0
    for seed in range(30):
        g = 1.5 * w.random_policy(seed=seed).log_table - 0.5 * w.random_policy(seed=seed + 99).log_table
        exact = w.policy_from_sequence_logprobs(w.policy_sequence_logprobs(g))
        assert qf.value_greedy(w, g, beta=1.0).tolist() == w.greedy(exact.next_logprobs).tolist()
        misses += qf.value_greedy(w, g, beta=1.0).tolist() != qf.value_greedy(w, g, beta=0).tolist()
    assert misses > 0, "soft-value greedy matched the argmax on every seed; the test shows nothing"


def test_mixing_errors_agree_with_a_direct_computation_and_the_value_corrections_are_exact():
    w = ToyWorld(4, 3)
    e = qf.mixing_errors(w, [1.5, -0.5], num_pairs=12, seed=7)
    assert e.hard_value_hits.all() and e.kl_value_corrected.abs().max() < 1e-12
    assert (e.gaps >= -1e-12).all() and (e.gaps[e.greedy_hits].abs() < 1e-12).all()
    pi1, pi2 = w.random_policy(seed=7 + 2 * 3), w.random_policy(seed=7 + 2 * 3 + 1)  # pair 3, by hand
    target = torch.log_softmax(1.5 * pi1.sequence_logprobs() - 0.5 * pi2.sequence_logprobs(), dim=0)
    token_level = w.policy(torch.log_softmax(1.5 * pi1.log_table - 0.5 * pi2.log_table, dim=1))
    kl = float((target.exp() * (target - token_level.sequence_logprobs())).sum())
    assert abs(float(e.kl_token_level[3]) - kl) < 1e-12
    assert bool(e.greedy_hits[3]) == (w.greedy(token_level.next_logprobs).tolist() == w.responses[int(target.argmax())].tolist())


def test_mixing_errors_of_a_single_policy_are_zero_and_match_plain_greedy():
    w = ToyWorld(4, 3)
    e = qf.mixing_errors(w, [1.0, 0.0], num_pairs=10)
    assert e.kl_token_level.abs().max() < 1e-12  # one policy: per-step renormalising changes nothing
    assert torch.equal(e.greedy_hits, e.single_hits)


def test_mixing_errors_refuse_bad_arguments():
    w = ToyWorld(3, 2)
    with pytest.raises(ValueError, match="num_pairs must be an integer ≥ 1"):
        qf.mixing_errors(w, [0.5, 0.5], num_pairs=0)
    with pytest.raises(ValueError, match="got 3 weights for 2 models"):
        qf.mixing_errors(w, [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"token_scores must be a Tensor of shape \[3, 3\]"):
        qf.soft_backup(w, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="token_scores must be finite"):
        qf.soft_backup(w, torch.full((3, 3), float("nan")))


def test_word_credit_sums_the_pieces_of_a_word_and_splits_at_spaces():
    tokens = ["I", " am", " un", "happy", ",", " really", " "]
    got = qf.word_credit(tokens, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert [w for w, _ in got] == ["I", "am", "unhappy,", "really"]
    assert [round(v, 12) for _, v in got] == [0.1, 0.2, 1.2, 0.6]  # the lone space is no word and counts nowhere
    # an end-of-sequence marker is its own word: "happy<eos>" would hide a lexicon word
    assert [w for w, _ in qf.word_credit([" so", " happy", "<eos>"], [1, 2, 3], special=["<eos>"])] == ["so", "happy", "<eos>"]
    with pytest.raises(ValueError, match="one credit per token"):
        qf.word_credit(["a"], [])
