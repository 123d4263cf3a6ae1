"""Tests for alignlecture.entanglement: exact toy-world gradients, the lecture's first-order terms and cases,
pairwise-normalized descent, bad input, and (slow) per-pair gradients on SmolLM2."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture import entanglement as ge
from alignlecture import per_example
from alignlecture.toy import ToyWorld


@pytest.fixture(scope="module")
def world():
    return ToyWorld(vocab_size=4, max_len=3)


def autograd_gradients(world, pi, responses):
    """Reference: ∂ log π(y)/∂θ by autograd through the world's differentiable sequence log-probs."""
    theta = pi.log_table.clone().requires_grad_(True)
    logp = world.policy_sequence_logprobs(torch.log_softmax(theta, dim=-1))
    idx = [world.index(y) for y in responses]
    return torch.stack([torch.autograd.grad(logp[i], theta, retain_graph=True)[0].reshape(-1) for i in idx])


def test_tabular_gradients_match_autograd_for_every_response(world):
    pi = world.random_policy(seed=3)
    g = ge.tabular_gradients(pi, world.responses)
    assert g.shape == (world.num_responses, world.num_prefixes * world.vocab_size) and g.dtype == torch.float64
    assert torch.allclose(g, autograd_gradients(world, pi, world.responses), atol=1e-13)


def test_tabular_gradient_rows_of_unvisited_prefixes_are_zero_and_visited_rows_sum_to_zero(world):
    pi = world.random_policy(seed=4)
    y = torch.tensor([[0, 0, 0]])  # the empty response: only the root decides (eos)
    g = ge.tabular_gradients(pi, y).reshape(world.num_prefixes, world.vocab_size)
    assert torch.equal(g[1:], torch.zeros_like(g[1:]))
    assert abs(float(g[0].sum())) < 1e-15  # softmax gradient rows sum to 0


def test_first_order_terms_and_margin_identity():
    gen = torch.Generator().manual_seed(0)
    g_w, g_l = torch.randn(50, 7, generator=gen, dtype=torch.float64), torch.randn(50, 7, generator=gen, dtype=torch.float64)
    s = ge.first_order(g_w, g_l)
    inner = (g_w * g_l).sum(1)
    assert torch.allclose(s.delta_chosen, (g_w * g_w).sum(1) - inner)
    assert torch.allclose(s.delta_rejected, inner - (g_l * g_l).sum(1))
    assert torch.allclose(s.margin, ((g_w - g_l) ** 2).sum(1))
    assert torch.allclose(s.cos, torch.nn.functional.cosine_similarity(g_w, g_l, dim=1))


def test_first_order_is_batched_over_leading_dimensions():
    g_w, g_l = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    s = ge.first_order(g_w, g_l)
    assert s.case.shape == (3, 4) and s.case.dtype == torch.long
    assert torch.allclose(s.inner[1, 2], (g_w[1, 2] * g_l[1, 2]).sum())


def test_cases_follow_the_lecture_table():
    e = torch.eye(2, dtype=torch.float64)
    # case 1: orthogonal gradients; case 2: ∇l = 2∇w (‖∇w‖² < ⟨∇w,∇l⟩); case 3: ∇w = 2∇l
    g_w = torch.stack([e[0], e[0], 2 * e[0]])
    g_l = torch.stack([e[1], 2 * e[0], e[0]])
    s = ge.first_order(g_w, g_l)
    assert s.case.tolist() == [1, 2, 3]
    assert s.delta_chosen[1] < 0 and s.delta_rejected[1] < s.delta_chosen[1]
    assert s.delta_rejected[2] > 0 and s.delta_chosen[2] > s.delta_rejected[2]


def test_chosen_down_and_rejected_up_is_case_four_and_a_single_pair_step_never_gives_it():
    assert ge.classify(torch.tensor([-1.0, -1.0, 1.0]), torch.tensor([1.0, -2.0, 2.0])).tolist() == [4, 2, 3]
    g = torch.randn(200, 2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert 4 not in ge.first_order(g[:, 0], g[:, 1]).case.tolist()  # DPO's own step widens its pair's margin


def test_ties_at_zero_count_as_case_one():
    assert ge.classify(torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.0])).tolist() == [1, 1]


def test_zero_gradient_has_zero_cosine_by_convention():
    s = ge.first_order(torch.zeros(1, 3), torch.ones(1, 3))
    assert s.cos.tolist() == [0.0] and s.case.tolist() == [1]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.floats(0.0, 3.0))
def test_exactly_one_case_and_the_cauchy_schwarz_halves(seed, dim, share):
    """The margin is ≥ 0, so the three cases cover everything; in case 2 (3) the norm order is forced."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=gen, dtype=torch.float64)
    g_w = base + torch.randn(dim, generator=gen, dtype=torch.float64)
    g_l = share * base + torch.randn(dim, generator=gen, dtype=torch.float64)
    s = ge.first_order(g_w[None], g_l[None])
    assert float(s.margin) >= -1e-12
    case = int(s.case)
    if case == 2:
        assert s.sq_chosen <= s.sq_rejected + 1e-12 and s.inner <= s.sq_rejected + 1e-12
    if case == 3:
        assert s.sq_rejected <= s.sq_chosen + 1e-12 and s.inner <= s.sq_chosen + 1e-12


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_pairwise_normalized_direction_is_always_case_one(seed, dim):
    gen = torch.Generator().manual_seed(seed)
    g_w, g_l = torch.randn(2, dim, generator=gen, dtype=torch.float64)
    d = ge.pairwise_normalized(g_w, g_l)
    assert float(ge.predicted_change(d, g_w)) >= -1e-12
    assert float(ge.predicted_change(d, g_l)) <= 1e-12
    # ⟨d, ∇w⟩ = ‖∇w‖(1 − cos) exactly
    cos = float(ge.first_order(g_w, g_l).cos)
    assert math.isclose(float(ge.predicted_change(d, g_w)), float(g_w.norm()) * (1 - cos), rel_tol=1e-9, abs_tol=1e-12)


def test_slide_normalized_is_a_rescaled_dpo_direction_and_keeps_its_case():
    g_w = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    g_l = torch.tensor([[2.0, 0.0]], dtype=torch.float64)  # case 2 under DPO
    d = ge.slide_normalized(g_w, g_l)
    assert torch.allclose(d, (g_w - g_l) / 1.0)
    assert float(ge.predicted_change(d[0], g_w)) < 0  # the chosen log-prob still falls
    assert float(ge.predicted_change(ge.pairwise_normalized(g_w, g_l)[0], g_w)) >= 0


def test_predicted_change_broadcasts_one_direction_over_many_gradients():
    d = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert ge.predicted_change(d, g).tolist() == [1.0, 2.0]


def test_tabular_step_is_gradient_descent_on_the_mean_dpo_loss(world):
    from alignlecture.dpo import dpo_loss

    pi_ref, pi = world.random_policy(seed=1), world.random_policy(seed=2)
    chosen, rejected = world.responses[[1, 5, 20]], world.responses[[2, 30, 21]]
    theta = pi.log_table.clone().requires_grad_(True)
    logp = world.policy_sequence_logprobs(torch.log_softmax(theta, dim=-1))
    ci, ri = [world.index(y) for y in chosen], [world.index(y) for y in rejected]
    ref = pi_ref.sequence_logprobs()
    loss = dpo_loss(logp[ci], logp[ri], ref[ci], ref[ri], beta=0.5)[0].mean()
    (grad,) = torch.autograd.grad(loss, theta)
    stepped = ge.tabular_step(pi, pi_ref, chosen, rejected, beta=0.5, learning_rate=0.1)
    expected = torch.log_softmax(pi.log_table - 0.1 * grad, dim=-1)
    assert torch.allclose(stepped.log_table, expected, atol=1e-13)


def test_first_order_prediction_error_shrinks_quadratically(world):
    pi_ref, pi = world.random_policy(seed=5), world.random_policy(seed=6)
    chosen, rejected = world.responses[[3]], world.responses[[17]]
    s = ge.first_order(ge.tabular_gradients(pi, chosen), ge.tabular_gradients(pi, rejected))
    c = ge.dpo_weights(pi, pi_ref, chosen, rejected, beta=1.0)
    errors = []
    for eta in (1e-2, 1e-3):
        new = ge.tabular_step(pi, pi_ref, chosen, rejected, beta=1.0, learning_rate=eta)
        actual = new.logprobs(chosen) - pi.logprobs(chosen)
        errors.append(float((actual - eta * c * s.delta_chosen).abs()))
    assert 50 < errors[0] / errors[1] < 200  # O(η²): 10× smaller η → ~100× smaller error


def test_normalized_descent_raises_chosen_and_lowers_rejected_on_a_single_pair(world):
    pi_ref = world.random_policy(seed=7)
    chosen, rejected = world.responses[[world.index([1, 2, 0])]], world.responses[[world.index([1, 2, 3])]]
    direction = lambda p: ge.dpo_direction(p, pi_ref, chosen, rejected, 0.5, normalized=True)  # noqa: E731
    policies = ge.descend(world, pi_ref.log_table.reshape(-1), direction, 0.05, 20)
    logp_w = torch.stack([p.logprobs(chosen)[0] for p in policies])
    logp_l = torch.stack([p.logprobs(rejected)[0] for p in policies])
    assert len(policies) == 21
    assert bool((logp_w.diff() > 0).all()) and bool((logp_l.diff() < 0).all())


def test_tabular_single_pairs_are_always_case_one_with_the_closed_form(world):
    pi = world.random_policy(seed=8)
    idx = torch.cartesian_prod(torch.arange(world.num_responses), torch.arange(world.num_responses))
    idx = idx[idx[:, 0] != idx[:, 1]]
    y_w, y_l = world.responses[idx[:, 0]], world.responses[idx[:, 1]]
    s = ge.first_order(ge.tabular_gradients(pi, y_w), ge.tabular_gradients(pi, y_l))
    assert torch.allclose(ge.tabular_chosen_change(pi, y_w, y_l), s.delta_chosen, atol=1e-13)
    assert bool((s.case == 1).all())
    with pytest.raises(ValueError, match="must differ"):
        ge.tabular_chosen_change(pi, y_w[:1], y_w[:1])


def test_shared_prefix_length_counts_leading_equal_tokens(world):
    y_w = torch.tensor([[1, 2, 0], [1, 2, 3], [2, 0, 0]])
    y_l = torch.tensor([[1, 3, 0], [1, 2, 0], [1, 0, 0]])
    assert ge.shared_prefix_length(world, y_w, y_l).tolist() == [1, 2, 0]


def test_shared_parameters_entangle_single_pairs_and_gradients_chain_through_features(world):
    a = ge.shared_features(world, "unigram")
    assert a.shape == (world.num_prefixes * world.vocab_size, world.vocab_size)
    theta = torch.randn(world.vocab_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pol = ge.policy_of(world, theta, a)
    y = world.responses
    t = theta.clone().requires_grad_(True)
    logp = world.policy_sequence_logprobs(torch.log_softmax((a @ t).reshape(world.num_prefixes, -1), dim=-1))
    auto = torch.stack([torch.autograd.grad(logp[i], t, retain_graph=True)[0] for i in range(len(y))])
    assert torch.allclose(ge.gradients(pol, y, a), auto, atol=1e-12)
    i, j = torch.triu_indices(len(y), len(y), 1)
    cases = ge.first_order(ge.gradients(pol, y[i], a), ge.gradients(pol, y[j], a)).case
    assert bool((cases != 1).any())  # unlike the tabular world
    for kind in ge.FEATURES[1:]:
        assert ge.shared_features(world, kind).shape[0] == world.num_prefixes * world.vocab_size


def test_population_direction_is_minus_the_gradient_of_the_population_loss(world):
    from alignlecture.preferences import expected_bt_loss

    pi, pi_ref, r = world.random_policy(seed=1), world.random_policy(seed=2), world.random_rewards(seed=3)
    theta = pi.log_table.clone().requires_grad_(True)
    logp = world.policy_sequence_logprobs(torch.log_softmax(theta, dim=-1))
    loss = expected_bt_loss(pi_ref.probs(), r, 0.5 * (logp - pi_ref.sequence_logprobs()), 1.0)
    (grad,) = torch.autograd.grad(loss, theta)
    assert torch.allclose(ge.population_direction(pi, pi_ref, r, 0.5), -grad.reshape(-1), atol=1e-15)
    star = world.optimal_policy(pi_ref, r, 0.5)  # the optimum is a fixed point of both directions
    for normalized in (False, True):
        assert float(ge.population_direction(star, pi_ref, r, 0.5, normalized=normalized).abs().max()) < 1e-12


# ------------------------------------------------------------------------------------------------ bad input
def test_gradients_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        ge.first_order(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same number of parameters"):
        ge.predicted_change(torch.zeros(3), torch.zeros(2, 4))


def test_scalar_or_non_tensor_gradients_are_refused():
    with pytest.raises(ValueError, match=r"Tensor \[\.\.\., D\]"):
        ge.first_order(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(ValueError, match=r"Tensor \[\.\.\., D\]"):
        ge.pairwise_normalized([1.0, 2.0], [3.0, 4.0])


def test_nan_gradients_are_refused():
    with pytest.raises(ValueError, match="g_l must be finite"):
        ge.first_order(torch.ones(2, 3), torch.tensor([[1.0, float("nan"), 0.0], [0.0, 0.0, 1.0]]))


def test_zero_gradient_in_pairwise_normalized_is_a_clear_error():
    with pytest.raises(ValueError, match=r"‖∇ log π\(y_l\|x\)‖ is 0 at index \[1, 0\].*drop that pair"):
        ge.pairwise_normalized(torch.ones(2, 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"y_w"):
        ge.slide_normalized(torch.zeros(1, 3), torch.ones(1, 3))


def test_responses_not_in_the_world_are_refused(world):
    pi = world.random_policy()
    with pytest.raises(ValueError, match="token ids must lie in"):
        ge.tabular_gradients(pi, torch.tensor([[1, 9, 0]]))
    with pytest.raises(ValueError, match="tokens after eos"):
        ge.tabular_gradients(pi, torch.tensor([[1, 0, 2]]))
    with pytest.raises(ValueError, match=r"max_len=3"):
        ge.tabular_gradients(pi, torch.tensor([[1, 2, 3, 0]]))
    with pytest.raises(ValueError, match="LongTensor"):
        ge.tabular_gradients(pi, [[1, 2, 0]])


def test_policies_from_another_world_are_refused(world):
    other = ToyWorld(vocab_size=3, max_len=3).random_policy()
    pi = world.random_policy()
    y = world.responses[[1]]
    with pytest.raises(ValueError, match="belongs to ToyWorld"):
        ge.tabular_step(pi, other, y, world.responses[[2]], beta=1.0, learning_rate=0.1)
    with pytest.raises(TypeError, match="TabularPolicy"):
        ge.tabular_gradients(pi.log_table, y)


def test_bad_beta_learning_rate_and_steps_are_refused(world):
    pi, y, z = world.random_policy(), world.responses[[1]], world.responses[[2]]
    with pytest.raises(ValueError, match="beta"):
        ge.tabular_step(pi, pi, y, z, beta=0.0, learning_rate=0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        ge.tabular_step(pi, pi, y, z, beta=1.0, learning_rate=float("nan"))
    with pytest.raises(ValueError, match="steps"):
        ge.descend(world, pi.log_table.reshape(-1), lambda p: torch.zeros(52, dtype=torch.float64), 0.1, 0)
    with pytest.raises(ValueError, match="unknown kind"):
        ge.shared_features(world, "trigram")
    with pytest.raises(ValueError, match=r"features must be a Tensor \[P·V = 52, K\]"):
        ge.gradients(pi, y, torch.zeros(10, 3))


# ------------------------------------------------------------------------------------------------ trainer option
def test_trainer_pairwise_normalized_step_is_the_normalized_direction():
    """One SGD step of DPOTrainer(pairwise_normalized=True) moves the top blocks by η·mean_i c_i(∇w/‖∇w‖ − ∇l/‖∇l‖)."""
    from dpo_pairs import DATA  # tests/ is on sys.path under pytest

    from alignlecture.models import tiny_policy
    from alignlecture.train import DPOConfig, DPOTrainer

    n, lr, beta = len(DATA["prompt"]), 0.5, 0.1
    reference = tiny_policy(seed=0, num_layers=4, device="cpu")
    pg = ge.PairGradients(reference, DATA["prompt"], DATA["chosen"], DATA["rejected"], top_k=2)
    g_w, g_l, _, _ = pg.gradients(range(n))
    expected = lr * (beta / 2) * ge.pairwise_normalized(g_w, g_l).mean(0)  # at step 1 π = π_ref: c = β σ(0)
    before = torch.cat([p.detach().reshape(-1).clone() for p in pg.params])

    policy = tiny_policy(seed=0, num_layers=4, device="cpu")
    cfg = DPOConfig(pairwise_normalized=True, optimizer="sgd", learning_rate=lr, beta=beta, trainable_layers=2,
                    per_device_train_batch_size=n, max_steps=1, max_grad_norm=None, progress=False)
    history = DPOTrainer(policy, DATA, cfg).train().history
    trained = ge.PairGradients(policy, DATA["prompt"][:1], DATA["chosen"][:1], DATA["rejected"][:1], top_k=2)
    after = torch.cat([p.detach().reshape(-1) for p in trained.params])
    assert torch.allclose((after - before).double(), expected, atol=1e-6, rtol=1e-4)
    assert math.isclose(history[0]["loss"], math.log(2), rel_tol=1e-5)  # the logged loss is still DPO's


def test_trainer_refuses_pairwise_normalized_with_other_losses():
    from alignlecture.train import DPOConfig

    with pytest.raises(ValueError, match="pairwise_normalized applies to the plain sigmoid"):
        DPOConfig(pairwise_normalized=True, loss_type="ipo")


def test_normalized_surrogate_gradient_is_the_normalized_direction():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    a, b = torch.randn(3, 5, generator=gen, dtype=torch.float64), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    logp_w, logp_l = a @ theta + (a @ theta) ** 2, b @ theta  # ∇ log π_w = a(1 + 2 a·θ), ∇ log π_l = b
    g_w, g_l = a * (1 + 2 * (a @ theta.detach()))[:, None], b
    weights = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    loss = ge.normalized_surrogate(logp_w, logp_l, g_w.norm(dim=1), g_l.norm(dim=1), weights)
    (grad,) = torch.autograd.grad(loss, theta)
    assert torch.allclose(-grad, (weights[:, None] * ge.pairwise_normalized(g_w, g_l)).mean(0))
    assert math.isclose(float(per_example.gradient_norm((b @ theta)[0], [theta])), float(b[0].norm()), rel_tol=1e-12)


def test_lm_step_first_order_prediction_matches_the_actual_change_of_a_small_step():
    from dpo_pairs import DATA

    from alignlecture.models import tiny_policy

    n = len(DATA["prompt"])
    pg = ge.PairGradients(tiny_policy(seed=1, num_layers=3, device="cpu"), DATA["prompt"], DATA["chosen"],
                          DATA["rejected"], top_k=2)
    ref_w, ref_l = pg.logps(range(n))
    g_w, g_l, _, _ = pg.gradients(range(n))
    single = ge.first_order(g_w, g_l)
    out = ge.lm_step(pg, range(n), ref_w, ref_l, beta=0.1, learning_rate=0.05)
    assert torch.equal(out["case_single_pair"], single.case)
    assert torch.allclose(out["cos"], single.cos, atol=1e-5)
    scale = float(out["actual_chosen"].abs().max())
    assert scale > 0
    assert float((out["predicted_chosen"] - out["actual_chosen"]).abs().max()) < 0.05 * scale
    assert float((out["predicted_rejected"] - out["actual_rejected"]).abs().max()) < 0.05 * scale
    out2 = ge.lm_step(pg, range(n), ref_w, ref_l, beta=0.1, learning_rate=0.05, normalized=True, step_norm=1e-3)
    assert math.isclose(float(out2["step_norm"]), 1e-3, rel_tol=1e-9)


def test_restored_undoes_every_step_taken_inside_it_bit_for_bit():
    from dpo_pairs import DATA

    from alignlecture.models import tiny_policy

    n = len(DATA["prompt"])
    pg = ge.PairGradients(tiny_policy(seed=1, num_layers=3, device="cpu"), DATA["prompt"], DATA["chosen"],
                          DATA["rejected"], top_k=2)
    before = [p.detach().clone() for p in pg.params]
    ref_w, ref_l = pg.logps(range(n))
    with pg.restored():
        ge.lm_step(pg, range(n), ref_w, ref_l, beta=0.1, learning_rate=0.05)
        assert any(not torch.equal(p, p0) for p, p0 in zip(pg.params, before))  # the step did change them
    assert all(torch.equal(p, p0) for p, p0 in zip(pg.params, before))
    with pytest.raises(RuntimeError, match="inside"), pg.restored():
        pg.apply(torch.ones(sum(p.numel() for p in pg.params)))
        raise RuntimeError("an error inside the block")
    assert all(torch.equal(p, p0) for p, p0 in zip(pg.params, before))  # restored on an error too


def test_gradients_equal_up_to_round_off_are_a_tie_in_case_one():
    """Two responses with the same gradient in exact arithmetic (same tokens, another order, shared parameters)
    come out of floating point an ulp apart: Δw = Δl = 0 must hold, so the pair is case 1 on every CPU."""
    g_w = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e3
    g_l = torch.nextafter(g_w, torch.full_like(g_w, math.inf))  # one ulp away: what summation order leaves
    assert float((g_w * g_w).sum() - (g_w * g_l).sum()) != 0.0  # without the tie rule, round-off decides
    out = ge.first_order(g_w, g_l)
    assert float(out.delta_chosen) == 0.0 and float(out.delta_rejected) == 0.0
    assert int(out.case) == 1
    real = ge.first_order(g_w, g_l * (1 + 1e-9))  # a real difference, far above round-off, keeps its sign
    assert float(real.delta_chosen) != 0.0
