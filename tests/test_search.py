"""Tests for alignlecture.search: reward-guided lookahead decoding (DeAL), exact on toy worlds and cached on LMs."""

from __future__ import annotations

import math

import pytest
import torch

from alignlecture.bon import kl_divergence
from alignlecture.logprobs import completion_logprobs, encode_ids, prompt_token_ids
from alignlecture.mixing import generate_mixed
from alignlecture.qfunction import soft_values
from alignlecture.search import (
    check_temperature,
    guided_search,
    matched_n,
    score_texts,
    selection_logprobs,
    soft_value_search,
    toy_guided_search,
)
from alignlecture.toy import DTYPE, ToyWorld

PROMPTS = ["write one sentence about the dog", "i love tea", "the"]


def likes_good(texts):
    """A toy text reward: +1 per "good", −1 per "bad"."""
    return [t.split().count("good") - t.split().count("bad") for t in texts]


@pytest.fixture(scope="module")
def toy():
    world = ToyWorld(vocab_size=4, max_len=3)
    return world, world.random_policy(seed=1), world.random_rewards(seed=2)


# ---------------------------------------------------------------------------------------------- toy world
def test_soft_value_search_at_temperature_beta_is_the_optimal_policy(toy):
    world, ref, reward = toy
    for beta in (0.3, 1.0, 2.5):
        ideal = soft_value_search(soft_values(world, ref, reward, beta), temperature=beta).policy
        err = (ideal.probs() - world.optimal_policy(ref, reward, beta).probs()).abs().max()
        assert err < 1e-12


def test_full_depth_rollout_score_with_lambda_beta_never_exceeds_the_soft_q(toy):
    world, ref, reward = toy
    beta = 0.7
    search = toy_guided_search(ref, reward, k=world.vocab_size, depth=world.max_len, lam=beta)
    q = soft_values(world, ref, reward, beta).q_table
    looked = torch.isfinite(search.scores)
    assert bool(looked.all())  # k = V: every token is a candidate
    assert float((search.scores - q)[looked].max()) <= 1e-12


def test_toy_search_by_hand_on_a_two_token_world():
    world = ToyWorld(vocab_size=3, max_len=2)  # tokens eos, a, b; responses up to two tokens
    # π prefers a everywhere; the reward pays only for "b a"
    table = torch.log(torch.tensor([[0.1, 0.6, 0.3]] * world.num_prefixes, dtype=DTYPE))
    pi = world.policy(table)
    reward = torch.zeros(world.num_responses, dtype=DTYPE)
    reward[world.index([2, 1])] = 1.0
    # at the root: lookahead of depth 1 from "b" continues greedily with "a" and reaches "b a": choose b
    search = toy_guided_search(pi, reward, k=2, depth=1)
    root = search.policy.next_logprobs(())
    assert int(root.argmax()) == 2 and float(root[2]) == 0.0
    assert search.scores[0, 1] == 0.0 and search.scores[0, 2] == 1.0 and search.scores[0, 0] == -math.inf
    # plain greedy (k = 1) keeps "a"
    assert int(toy_guided_search(pi, reward, k=1, depth=1).policy.next_logprobs(()).argmax()) == 1
    # cost at the root: 1 evaluation for π(·|root) + one per lookahead token; 2 reward lookups
    assert float(search.evals[0]) == 1 + 2 and float(search.reward_calls[0]) == 2


def test_depth_beyond_the_remaining_length_changes_nothing(toy):
    world, ref, reward = toy
    full = toy_guided_search(ref, reward, k=3, depth=world.max_len - 1, lam=0.5)
    deeper = toy_guided_search(ref, reward, k=3, depth=world.max_len + 3, lam=0.5)
    assert torch.equal(full.scores, deeper.scores) and torch.equal(full.evals, deeper.evals)


def test_expected_cost_of_a_greedy_search_is_the_cost_along_its_one_path(toy):
    world, ref, reward = toy
    search = toy_guided_search(ref, reward, k=2, depth=2)
    y, prefix, total, calls = world.greedy(search.policy.next_logprobs), (), 0.0, 0.0
    for tok in y.tolist():
        row = world.prefix_index(prefix)
        total, calls = total + float(search.evals[row]), calls + float(search.reward_calls[row])
        if tok == 0:
            break
        prefix = (*prefix, tok)
        if len(prefix) == world.max_len:
            break
    assert search.cost() == pytest.approx((total, calls), abs=1e-12)
    assert bool((search.evals <= 1 + 2 * 2).all()) and bool((search.reward_calls <= 2).all())


def test_sampled_search_spends_kl_and_moves_reward_the_right_way(toy):
    world, ref, reward = toy
    search = toy_guided_search(ref, reward, k=world.vocab_size, depth=world.max_len, lam=1.0, temperature=1.0)
    assert search.policy.expected(reward) > ref.expected(reward)
    assert search.policy.kl(ref) == pytest.approx(float(kl_divergence(search.policy.probs(), ref.probs())), abs=1e-12)


def test_matched_n_divides_the_budget_by_the_mean_length(toy):
    world, ref, _ = toy
    mean_length = float(ref.probs() @ world.lengths.double())
    assert matched_n(5 * mean_length, ref) == 5
    assert matched_n(0.1, ref) == 1


def test_selection_is_the_first_best_at_temperature_zero_and_a_softmax_otherwise():
    s = torch.tensor([[1.0, 3.0, 3.0, -math.inf]], dtype=DTYPE)
    assert selection_logprobs(s, 0.0).tolist() == [[-math.inf, 0.0, -math.inf, -math.inf]]
    assert torch.allclose(selection_logprobs(s, 2.0), torch.log_softmax(s / 2.0, dim=-1))


@pytest.mark.parametrize("bad", [dict(k=0), dict(depth=0), dict(k=1.5), dict(depth=-1), dict(lam=math.nan),
                                 dict(temperature=-1.0), dict(temperature=math.inf)])
def test_toy_search_refuses_bad_settings(toy, bad):
    world, ref, reward = toy
    kwargs = dict(k=2, depth=1) | bad
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        toy_guided_search(ref, reward, **kwargs)


def test_toy_search_refuses_rewards_of_the_wrong_size(toy):
    world, ref, reward = toy
    with pytest.raises(ValueError, match="one value per response"):
        toy_guided_search(ref, reward[:-1], k=2, depth=1)


def test_check_temperature_accepts_zero_and_positive():
    assert check_temperature(0) == 0.0 and check_temperature(0.5) == 0.5
    with pytest.raises(ValueError, match="temperature"):
        check_temperature(True)


# ---------------------------------------------------------------------------------------------- real models
def test_k_one_is_plain_greedy_decoding(sharp):
    search = guided_search(sharp, likes_good, PROMPTS, k=1, depth=2, max_new_tokens=6, chat=False)
    greedy = generate_mixed([sharp], [1.0], PROMPTS, max_new_tokens=6, do_sample=False, chat=False)
    assert search.completion_ids == greedy.completion_ids and search.texts == greedy.texts
    T = greedy.mixed_logprobs.shape[1]
    assert torch.allclose(search.logprobs[:, :T], greedy.mixed_logprobs, atol=1e-5)
    assert bool((search.kl + search.logprobs.sum(dim=1) == 0).all())  # greedy choice: KL = −log π(y|x)


def test_chosen_token_logprobs_match_a_full_recompute(sharp):
    search = guided_search(sharp, likes_good, PROMPTS, k=3, depth=2, max_new_tokens=6, chat=False)
    prompt_ids = [prompt_token_ids(sharp, p, chat=False) for p in PROMPTS]
    batch = encode_ids(prompt_ids, search.completion_ids, sharp.tokenizer.pad_token_id)
    with torch.no_grad():
        per_token = completion_logprobs(sharp.model, **batch).per_token
    for i, (p, c) in enumerate(zip(prompt_ids, search.completion_ids)):
        assert torch.allclose(search.logprobs[i, : len(c)], per_token[i, len(p) : len(p) + len(c)], atol=1e-4)


def test_search_raises_the_reward_it_is_guided_by(sharp):
    prompts = PROMPTS * 2
    greedy = generate_mixed([sharp], [1.0], prompts, max_new_tokens=8, do_sample=False, chat=False)
    search = guided_search(sharp, likes_good, prompts, k=8, depth=2, max_new_tokens=8, chat=False)
    assert sum(likes_good(search.texts)) >= sum(likes_good(greedy.texts))


def test_compute_counts_follow_the_per_token_budget(sharp):
    k, depth = 3, 2
    s = guided_search(sharp, likes_good, PROMPTS, k=k, depth=depth, max_new_tokens=5, chat=False)
    tokens = sum(len(c) for c in s.completion_ids)
    assert s.reward_calls == k * tokens  # k texts scored per generated token
    # one evaluation per generated token for the decoder itself, at most k·depth more for its lookaheads
    assert tokens < s.next_token_evals <= tokens * (1 + k * depth)


def test_sampled_search_is_reproducible_and_reports_its_choice_probabilities(sharp):
    a = guided_search(sharp, likes_good, PROMPTS, k=3, depth=1, temperature=1.0, seed=3, max_new_tokens=5, chat=False)
    b = guided_search(sharp, likes_good, PROMPTS, k=3, depth=1, temperature=1.0, seed=3, max_new_tokens=5, chat=False)
    assert a.completion_ids == b.completion_ids
    assert bool((a.select_logprobs <= 0).all()) and bool((a.select_logprobs < 0).any())


@pytest.mark.parametrize("bad", [dict(k=0), dict(depth=0), dict(lam=math.inf), dict(max_new_tokens=0)])
def test_guided_search_refuses_bad_settings(sharp, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        guided_search(sharp, likes_good, PROMPTS, **(dict(max_new_tokens=2, chat=False) | bad))


def test_guided_search_refuses_a_reward_with_the_wrong_number_of_scores(sharp):
    with pytest.raises(ValueError, match="returned 1 scores for 6 texts"):
        guided_search(sharp, lambda texts: [0.0], PROMPTS, k=2, depth=1, max_new_tokens=2, chat=False)


def test_guided_search_refuses_non_finite_rewards_and_bad_prompts(sharp):
    with pytest.raises(ValueError, match="finite"):
        guided_search(sharp, lambda texts: [math.nan] * len(texts), PROMPTS, k=2, depth=1, max_new_tokens=2,
                      chat=False)
    with pytest.raises(TypeError, match="list of str"):
        guided_search(sharp, likes_good, "one prompt", max_new_tokens=2)
    with pytest.raises(TypeError, match="callable"):
        guided_search(sharp, "positivity", PROMPTS, max_new_tokens=2)


def test_score_texts_checks_count_and_finiteness():
    assert score_texts(likes_good, ["good good", "bad"]).tolist() == [2.0, -1.0]
    with pytest.raises(ValueError, match="returned 3 scores for 2 texts"):
        score_texts(lambda t: [1, 2, 3], ["a", "b"])
