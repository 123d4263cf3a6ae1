"""Tests for alignlecture.online: the exact population gradient of online DPO, its samplers and their rates."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture import online
from alignlecture.online import SAMPLERS

PROPERTY = settings(max_examples=25, deadline=None)


def bandit(K=20, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(K, generator=gen, dtype=torch.float64)


def autograd_gradient(logits, rewards, beta, sampler):
    """Reference: autograd through population_loss with W(θ) computed first and held fixed."""
    p = online.preference(rewards)
    W = online.pair_weights(logits, p, beta, sampler)
    theta = logits.clone().requires_grad_(True)
    online.population_loss(theta, p, beta, W).backward()
    return theta.grad


# ---------------------------------------------------------------------------------------------- the gradient
@PROPERTY
@given(st.integers(2, 12), st.integers(0, 10_000), st.floats(0.1, 5.0), st.sampled_from(SAMPLERS))
def test_closed_form_gradient_equals_autograd_of_population_loss(K, seed, beta, sampler):
    r = bandit(K, seed)
    logits = bandit(K, seed + 1, scale=0.7)
    got = online.population_gradient(logits, online.preference(r), beta, sampler)
    assert torch.allclose(got, autograd_gradient(logits, r, beta, sampler), atol=1e-13, rtol=1e-10)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_pair_weights_are_a_symmetric_distribution(sampler):
    r, logits = bandit(7), bandit(7, 3)
    W = online.pair_weights(logits, online.preference(r), 2.0, sampler)
    assert W.shape == (7, 7) and bool((W > 0).all())
    assert abs(float(W.sum()) - 1) < 1e-14 and torch.allclose(W, W.T, atol=1e-16)


def test_uniform_and_on_policy_weights_match_their_definitions():
    r, logits = bandit(5), bandit(5, 1)
    p = online.preference(r)
    assert torch.allclose(online.pair_weights(logits, p, 1.0, "uniform"), torch.full((5, 5), 1 / 25.0, dtype=torch.float64), atol=1e-16)
    pi = torch.softmax(logits, 0)
    assert torch.allclose(online.pair_weights(logits, p, 1.0, "on-policy"), torch.outer(pi, pi), atol=1e-16)


def test_mix_p_weights_equal_mix_r_weights_at_the_optimum():
    r, beta = bandit(9), 1.5
    p = online.preference(r)
    wp = online.pair_weights(r / beta + 0.3, p, beta, "mix-p")  # shifting θ does not change π
    assert torch.allclose(wp, online.pair_weights(r / beta, p, beta, "mix-r"), atol=1e-15)


def test_mix_r_weights_keep_their_digits_at_large_reward_gaps():
    # 1/(p(1 − p)) = 2 + 2 cosh(r_i − r_j) exactly; with 1 − p computed as a difference it was 1e-3 off at a gap of
    # 30 and infinite past 37. Unnormalised weights: pair_weights divides by a sum dominated by the largest gap.
    r = torch.tensor([0.0, 5.0, 15.0, 30.0, 40.0], dtype=torch.float64)
    p = online.preference(r)
    exact = 2 + 2 * torch.cosh(r[:, None] - r[None, :])
    weights = online._weights("mix-r", torch.zeros(5, dtype=torch.float64), p, torch.zeros(5, 5, dtype=torch.float64))
    assert torch.allclose(weights, exact, rtol=1e-14, atol=0)
    assert online.newton_lr(r, 2.0) == pytest.approx(float(exact.sum()) / (2 * 2.0**2 * 5), rel=1e-14)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_optimum_is_stationary_for_every_sampler(sampler):
    r, beta = bandit(10), 3.0
    grad = online.population_gradient(r / beta, online.preference(r), beta, sampler)
    assert float(grad.abs().max()) < 1e-15


def test_gap_is_zero_exactly_at_optimum_and_matches_its_definition():
    r, beta = bandit(6), 2.0
    assert float(online.gap(r / beta - 4.0, r, beta)) < 1e-15
    logits = bandit(6, 5)
    v = r - beta * torch.log_softmax(logits, 0)
    brute = sum(abs(float(v[i] - v[j])) for i in range(6) for j in range(6)) / 36
    assert abs(float(online.gap(logits, r, beta)) - brute) < 1e-14


# ---------------------------------------------------------------------------------------------- runs
def test_run_starts_at_uniform_reference_and_has_the_documented_shapes():
    r = bandit(8)
    run = online.tabular_online_dpo(r, 3.0, "uniform", 5, 10.0)
    assert run.logits.shape == (6, 8) and run.gap.shape == (6,)
    assert run.logits.dtype == torch.float64 and bool((run.logits[0] == 0).all())
    assert abs(float(run.gap[0]) - float((r[:, None] - r[None, :]).abs().mean())) < 1e-15
    assert (run.sampler, run.beta, run.lr, run.num_pairs) == ("uniform", 3.0, 10.0, None)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_run_steps_are_gradient_steps_of_the_autograd_loss(sampler):
    r = bandit(6)
    run = online.tabular_online_dpo(r, 2.0, sampler, 3, 0.5)
    for t in range(3):
        step = run.logits[t] - 0.5 * autograd_gradient(run.logits[t], r, 2.0, sampler)
        assert torch.allclose(run.logits[t + 1], step, atol=1e-14)


def test_zero_steps_returns_only_the_start():
    run = online.tabular_online_dpo(bandit(4), 1.0, "mix-p", 0, 1.0)
    assert run.logits.shape == (1, 4) and run.gap.shape == (1,)


def test_descent_never_moves_the_mean_logit():
    run = online.tabular_online_dpo(bandit(12), 3.0, "mix-r", 20, 5.0)
    assert float(run.logits.sum(dim=1).abs().max()) < 1e-12  # every gradient sums to zero


# ---------------------------------------------------------------------------------------------- rates
@pytest.mark.parametrize("sampler", ["uniform", "mix-r", "mix-p"])
def test_measured_linear_rate_matches_the_hessian_prediction(sampler):
    r, beta = bandit(20, 1), 3.0
    lr = 0.5 * online.newton_lr(r, beta) if sampler != "uniform" else 10.0
    run = online.tabular_online_dpo(r, beta, sampler, 400, lr)
    rate, order = online.measured_rates(run.gap, floor=1e-11)
    assert abs(rate - online.local_rate(r, beta, sampler, lr)) < 2e-3
    assert abs(order - 1) < 0.02


def test_mix_rate_at_any_lr_is_one_minus_lr_over_newton_lr():
    r, beta = bandit(15, 2), 3.0
    eta = online.newton_lr(r, beta)
    for lr in (0.3 * eta, 0.8 * eta, 1.7 * eta):
        for sampler in ("mix-r", "mix-p"):
            assert abs(online.local_rate(r, beta, sampler, lr) - abs(1 - lr / eta)) < 1e-12


@pytest.mark.parametrize("sampler", ["mix-r", "mix-p"])
def test_mix_samplers_converge_quadratically_at_the_newton_step_size(sampler):
    r, beta = bandit(20, 0), 3.0
    run = online.tabular_online_dpo(r, beta, sampler, 20, online.newton_lr(r, beta))
    assert float(run.gap[-1]) < 1e-13
    _, order = online.measured_rates(run.gap, floor=1e-13, window=2)
    assert order > 1.8


def test_on_policy_with_too_large_a_step_cycles_instead_of_converging():
    r, beta, lr = bandit(20, 0), 3.0, 10.0
    assert online.local_rate(r, beta, "on-policy", lr) > 1  # the optimum repels this step size
    run = online.tabular_online_dpo(r, beta, "on-policy", 300, lr)
    assert float(run.gap[-50:].min()) > 1e-2
    small = online.tabular_online_dpo(r, beta, "on-policy", 300, 3.0)
    assert online.local_rate(r, beta, "on-policy", 3.0) < 1 and float(small.gap[-1]) < 1e-12


def test_measured_rates_of_a_geometric_and_a_quadratic_sequence():
    rate, order = online.measured_rates(0.5 ** torch.arange(30.0, dtype=torch.float64))
    assert abs(rate - 0.5) < 1e-12 and abs(order - 1) < 1e-9
    quad = torch.tensor([10.0 ** -(2**k) for k in range(4)], dtype=torch.float64)  # 1e-1, 1e-2, 1e-4, 1e-8
    _, order = online.measured_rates(quad, floor=1e-12)
    assert abs(order - 2) < 1e-9


# ---------------------------------------------------------------------------------------------- sampled pairs
def test_sampled_gradient_is_unbiased_for_the_population_gradient():
    """E over a pair (i, j) ~ W and a label ~ Bernoulli(p_ij) of the one-pair gradient, summed exactly."""
    r, beta, K = bandit(5), 2.0, 5
    logits, p = bandit(5, 4, scale=0.5), online.preference(r)
    W = online.pair_weights(logits, p, beta, "mix-p")
    expected = torch.zeros(K, dtype=torch.float64)
    for i in range(K):
        for j in range(K):
            for label, prob in ((1.0, p[i, j]), (0.0, 1 - p[i, j])):
                one = online.sampled_gradient(logits, beta, torch.tensor([i]), torch.tensor([j]),
                                              torch.tensor([label], dtype=torch.float64))
                expected += W[i, j] * prob * one
    assert torch.allclose(expected, online.population_gradient(logits, p, beta, "mix-p"), atol=1e-15)


def test_sampled_runs_are_seeded_and_reach_a_noise_floor_that_shrinks_with_more_pairs():
    r = bandit(20, 1)
    a = online.sampled_online_dpo(r, 3.0, "uniform", 30, 5.0, 256, seed=3)
    b = online.sampled_online_dpo(r, 3.0, "uniform", 30, 5.0, 256, seed=3)
    assert torch.equal(a.logits, b.logits) and a.num_pairs == 256
    floors = [float(online.sampled_online_dpo(r, 3.0, "mix-p", 150, 5.0, n, seed=0).gap[-50:].mean())
              for n in (256, 16384)]
    assert floors[1] < floors[0] / 3  # ~1/√n: 64× the pairs, about 8× less noise


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="thompson"), r"unknown sampler 'thompson'; choose one of 'uniform', 'on-policy', 'mix-r', 'mix-p'"),
        (dict(rewards=torch.tensor([1.0])), r"K ≥ 2"),
        (dict(rewards=torch.ones(2, 3)), r"1-D"),
        (dict(beta=0.0), r"beta must be a positive finite number"),
        (dict(beta=-1.0), r"beta must be a positive finite number"),
        (dict(lr=0.0), r"lr must be a positive finite number"),
        (dict(lr=-0.1), r"lr must be a positive finite number"),
        (dict(lr=math.inf), r"lr must be a positive finite number"),
        (dict(rewards=torch.tensor([0.0, math.nan, 1.0])), r"rewards must be finite; got \[nan\]"),
        (dict(rewards=torch.tensor([0.0, math.inf])), r"rewards must be finite"),
        (dict(steps=-1), r"steps must be an integer ≥ 0"),
        (dict(steps=2.5), r"steps must be an integer ≥ 0"),
    ],
)
def test_bad_input_names_the_value_and_the_fix(kwargs, match):
    args = dict(rewards=bandit(4), beta=3.0, sampler="uniform", steps=3, lr=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        online.tabular_online_dpo(**args)


def test_sampled_run_refuses_zero_pairs():
    with pytest.raises(ValueError, match="num_pairs must be an integer ≥ 1"):
        online.sampled_online_dpo(bandit(4), 3.0, "uniform", 3, 1.0, 0)


def test_rates_refuse_an_unknown_sampler_and_a_too_short_curve():
    with pytest.raises(ValueError, match="unknown sampler"):
        online.local_rate(bandit(4), 1.0, "newton", 1.0)
    with pytest.raises(ValueError, match="need ≥ 3 steps"):
        online.measured_rates(torch.tensor([1.0, 1e-20, 1e-30]))


# ---------------------------------------------------------------------------------------------- a real LM (tiny)
def _count_good(texts):
    return torch.tensor([float(t.split().count("good")) for t in texts], dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny_pair():
    from alignlecture.models import tiny_policy

    return tiny_policy(seed=0, device="cpu"), tiny_policy(seed=0, device="cpu")


def test_mix_p_pairs_come_from_the_reference_while_the_policy_equals_it(tiny_pair):
    policy, ref = tiny_pair
    prompts = ["tell me about the day", "describe a dog", "write one sentence", "what about coffee"]
    a = online.sample_pairs(policy, ref, prompts, "reference", seed=3, max_new_tokens=5)
    b = online.sample_pairs(policy, ref, prompts, "mix-p", seed=3, max_new_tokens=5)
    assert len(a[0]) == len(a[1]) == 4
    assert a[0][0::2] == b[0][0::2] and a[1][0::2] == b[1][0::2]  # the uniform half is the same draw
    # with π = π_ref every mix π^{1±α}π_ref^{∓α} is π_ref itself: the mixed decoder samples it
    from alignlecture.mixing import generate_mixed

    same = generate_mixed([ref], [1.0], prompts[1::2], seed=4, max_new_tokens=5, do_sample=True).texts
    assert b[0][1::2] == same


def test_lm_online_dpo_rounds_train_the_policy_and_report_one_row_per_round():
    from alignlecture.models import tiny_policy
    from alignlecture.train import DPOConfig

    policy, ref = tiny_policy(seed=1, device="cpu"), tiny_policy(seed=1, device="cpu")
    before = [p.detach().clone() for p in policy.model.parameters()]
    config = DPOConfig(per_device_train_batch_size=2, learning_rate=1e-3, progress=False)
    out = online.lm_online_dpo(policy, ref, _count_good, ["describe a dog", "tell me about tea"],
                               ["write one sentence", "what about rain", "describe a city"], "mix-p", rounds=2,
                               config=config, eval_samples=2, max_new_tokens=4)
    assert out["eval"].shape == (3, 3) and out["pair_rewards"].shape == (2, 2, 2)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip([p for p in tiny_policy(seed=1).model.parameters()],
                                                 ref.model.parameters()))  # the reference never trains


def test_mix_p_with_a_single_prompt_keeps_it_on_the_reference(tiny_pair):
    policy, ref = tiny_pair
    a = online.sample_pairs(policy, ref, ["describe a dog"], "mix-p", seed=1, max_new_tokens=3)
    assert a == online.sample_pairs(policy, ref, ["describe a dog"], "reference", seed=1, max_new_tokens=3)


def test_lm_samplers_refuse_unknown_names_and_bad_alpha(tiny_pair):
    policy, ref = tiny_pair
    with pytest.raises(ValueError, match="unknown sampler 'uniform'; choose one of 'reference', 'mix-p'"):
        online.sample_pairs(policy, ref, ["a dog"], "uniform")
    with pytest.raises(ValueError, match="alpha must be a positive finite number"):
        online.sample_pairs(policy, ref, ["a dog"], "mix-p", alpha=0)


# ---------------------------------------------------------------------------------------------- a reference that shares
def _run_with(ref_of, *, trainable_layers=1):
    """lm_online_dpo from tiny_policy(seed=1) against ``ref_of(policy, config)``: (output, policy, ref, initial)."""
    from alignlecture.models import tiny_policy
    from alignlecture.train import DPOConfig

    policy = tiny_policy(seed=1, device="cpu")
    initial = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    config = DPOConfig(per_device_train_batch_size=2, learning_rate=1e-2, trainable_layers=trainable_layers,
                       progress=False)
    ref = ref_of(policy, config)
    out = online.lm_online_dpo(policy, ref, _count_good, ["describe a dog", "tell me about tea"],
                               ["write one sentence", "what about rain", "describe a city"], "mix-p", rounds=2,
                               config=config, eval_samples=2, max_new_tokens=4)
    return out, policy, ref, initial


def _scored(policy):
    from alignlecture.logprobs import sequence_logprobs

    prompts, texts = ["describe a dog", "what about rain"], ["the dog is good", "i hate rain and sun"]
    return sequence_logprobs(policy, prompts, texts)


def test_a_reference_sharing_the_frozen_weights_gives_the_same_run_and_stays_the_initial_policy():
    from alignlecture.models import tiny_policy
    from alignlecture.train import reference_copy

    base, policy_a, ref_a, initial = _run_with(lambda policy, config: tiny_policy(seed=1, device="cpu"))
    shared, policy_b, ref_b, _ = _run_with(reference_copy)
    # (2) the run is unchanged: every score, every pair reward and every trained weight, bit for bit
    assert torch.equal(base["eval"], shared["eval"]) and torch.equal(base["pair_rewards"], shared["pair_rewards"])
    assert all(torch.equal(a, b) for a, b in zip(policy_a.model.state_dict().values(),
                                                 policy_b.model.state_dict().values()))
    # the policy did train, and only the top block and final norm moved: exactly the tensors the copy owns
    moved = {n for n, p in policy_b.model.named_parameters() if not torch.equal(p, initial[n])}
    owned = {n for n, p in ref_b.model.named_parameters()
             if p.data_ptr() != policy_b.model.get_parameter(n).data_ptr()}
    assert moved and moved <= owned == {n for n in initial if n.startswith(("model.layers.1.", "model.norm."))}
    # (1) the reference is still the initial policy, bit for bit, after two rounds of training the policy
    assert torch.equal(_scored(ref_b), _scored(tiny_policy(seed=1, device="cpu")))
    assert torch.equal(_scored(ref_b), _scored(ref_a))
    assert all(torch.equal(p, initial[n]) for n, p in ref_b.model.named_parameters())


def test_a_reference_copy_without_trainable_layers_is_a_full_copy():
    from alignlecture.models import tiny_policy
    from alignlecture.train import DPOConfig, reference_copy

    policy = tiny_policy(seed=1, device="cpu")
    ref = reference_copy(policy, DPOConfig())
    ours = {p.data_ptr() for p in policy.model.parameters()}
    assert not ours & {p.data_ptr() for p in ref.model.parameters()}
    shared = reference_copy(policy, DPOConfig(trainable_layers=2))
    embeddings = policy.model.model.embed_tokens.weight.data_ptr()  # the one tensor outside both top blocks + norm
    assert ours & {p.data_ptr() for p in shared.model.parameters()} == {embeddings}
    assert shared.name == policy.name and shared.tokenizer is policy.tokenizer


def test_help_documents_every_field_of_online_run():
    attributes = inspect.getdoc(online.OnlineRun).split("Attributes:")[1]
    assert [f.name for f in dataclasses.fields(online.OnlineRun) if f"    {f.name}: " not in attributes] == []
