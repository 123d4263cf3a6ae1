"""Tests for alignlecture.losses: population optima of every loss type against closed forms and an independent
minimiser, the no-finite-optimum verdicts, bad inputs and the chapter's table row."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignlecture.dpo import dpo_loss
from alignlecture.losses import (
    bradley_terry, first_step_cases, first_step_changes, kl, optimum_row, pair_law, population_loss,
    population_optimum, tilted, win_rate,
)

scipy_optimize = pytest.importorskip("scipy.optimize")


def world(k: int = 4, seed: int = 0):
    """π_ref, μ (both with full support) and gold rewards r over k responses."""
    gen = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randn(k, generator=gen, dtype=torch.float64)  # noqa: E731
    return torch.softmax(draw(), 0), torch.softmax(draw(), 0), draw()


def deterministic(r: torch.Tensor) -> torch.Tensor:
    """pref[i, j] = 1 when r_i > r_j, 0 when r_i < r_j, 1/2 on the diagonal."""
    pref = (r[:, None] > r[None, :]).double()
    return pref.fill_diagonal_(0.5)


def noisy(r: torch.Tensor, flip: float = 0.2) -> torch.Tensor:
    """Deterministic labels flipped with probability ``flip``."""
    return (1 - 2 * flip) * deterministic(r) + flip


# ---------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("loss_type", ["sigmoid", "sigmoid_norm"])
def test_dpo_optimum_under_bradley_terry_labels_is_the_rlhf_optimum(seed, beta, loss_type):
    pi_ref, mu, r = world(5, seed)
    result = population_optimum(pi_ref, mu, bradley_terry(r), beta, loss_type)
    assert result.exists and result.unique
    torch.testing.assert_close(result.probs, tilted(pi_ref, r, beta), rtol=0, atol=1e-10)
    assert result.grad_norm < 1e-9 and result.probs.dtype == torch.float64


@pytest.mark.parametrize("labels", ["bradley_terry", "noisy", "deterministic"])
@pytest.mark.parametrize("beta", [0.2, 1.0])
def test_ipo_optimum_is_reference_tilted_by_the_win_rate_over_beta_for_any_labels(labels, beta):
    """Azar et al. 2024: π ∝ π_ref·exp(P(y ≻ μ)/τ), with TRL's β in the role of τ."""
    pi_ref, mu, r = world(5, 3)
    pref = {"bradley_terry": bradley_terry(r), "noisy": noisy(r), "deterministic": deterministic(r)}[labels]
    result = population_optimum(pi_ref, mu, pref, beta, "ipo")
    assert result.exists
    torch.testing.assert_close(result.probs, tilted(pi_ref, win_rate(mu, pref), beta), rtol=0, atol=1e-10)


def test_sft_optimum_is_the_chosen_marginal():
    pi_ref, mu, r = world(4, 4)
    pref = noisy(r)
    result = population_optimum(pi_ref, mu, pref, 0.5, "sft")
    torch.testing.assert_close(result.probs, pair_law(mu, pref).sum(1), rtol=0, atol=1e-10)


def test_pair_law_is_a_distribution_whose_chosen_marginal_is_twice_mu_times_win_rate():
    _, mu, r = world(4, 5)
    law = pair_law(mu, bradley_terry(r))
    assert float(law.sum()) == pytest.approx(1.0, abs=1e-14)
    torch.testing.assert_close(law.sum(1), 2 * mu * win_rate(mu, bradley_terry(r)), rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------- independent minimiser
def logsig(x):
    return -np.log1p(np.exp(-x))


def sig(x):
    return 1 / (1 + np.exp(-x))


# each loss of one pair from ρ_w, ρ_l, log π_w (one token each), written apart from alignlecture.dpo
NUMPY_LOSSES = {
    "sigmoid": lambda w, l, pc, b, e: -logsig(b * (w - l)),
    "exo_pair": lambda w, l, pc, b, e: sig(b * (w - l)) * (logsig(b * (w - l)) - np.log(1 - e))
    + sig(-b * (w - l)) * (logsig(-b * (w - l)) - np.log(e)),
    "nca_pair": lambda w, l, pc, b, e: -logsig(b * w) - 0.5 * logsig(-b * w) - 0.5 * logsig(-b * l),
    "robust": lambda w, l, pc, b, e: (-(1 - e) * logsig(b * (w - l)) + e * logsig(-b * (w - l))) / (1 - 2 * e),
    "bco_pair": lambda w, l, pc, b, e: -logsig(b * w) - logsig(-b * l),
    "sppo_hard": lambda w, l, pc, b, e: (w - 0.5 / b) ** 2 + (l + 0.5 / b) ** 2,
    "discopop": lambda w, l, pc, b, e: (1 - sig(b * (w - l) / 0.05)) * -logsig(b * (w - l))
    + sig(b * (w - l) / 0.05) * np.exp(-b * (w - l)),
    "sft": lambda w, l, pc, b, e: -pc,
}
EPS = {"exo_pair": 0.1, "robust": 0.1}


def scipy_optimum(pi_ref, mu, pref, beta, loss_type):
    """BFGS with complex-step gradients on the population loss over K − 1 free logits (the last one fixed)."""
    ref, law = np.log(pi_ref.numpy()), pair_law(mu, pref).numpy()
    loss, eps = NUMPY_LOSSES[loss_type], EPS.get(loss_type, 0.0)

    def f(z):
        x = np.concatenate([z, [0.0]])
        logp = x - np.log(np.sum(np.exp(x)))
        rho = logp - ref
        return np.sum(law * loss(rho[:, None], rho[None, :], logp[:, None], beta, eps))

    def grad(z):
        return np.array([f(z + 1e-30j * np.eye(len(z))[k]).imag / 1e-30 for k in range(len(z))])

    z0 = ref[:-1] - ref[-1]
    out = scipy_optimize.minimize(lambda z: f(z).real, z0, jac=grad, method="BFGS", options={"gtol": 1e-12})
    x = np.concatenate([out.x, [0.0]])
    return np.exp(x - np.log(np.sum(np.exp(x)))), out.fun


@pytest.mark.parametrize("labels", ["bradley_terry", "noisy"])
@pytest.mark.parametrize("loss_type", sorted(NUMPY_LOSSES))
def test_optimum_equals_an_independent_scipy_minimiser(loss_type, labels):
    pi_ref, mu, r = world(4, 6)
    pref = bradley_terry(r) if labels == "bradley_terry" else noisy(r, 0.25)
    beta = 0.7
    result = population_optimum(pi_ref, mu, pref, beta, loss_type, EPS.get(loss_type, 0.0))
    assert result.exists, result.message
    theirs, their_loss = scipy_optimum(pi_ref, mu, pref, beta, loss_type)
    np.testing.assert_allclose(result.probs.numpy(), theirs, rtol=0, atol=1e-6)
    assert result.loss == pytest.approx(float(their_loss), rel=1e-9, abs=1e-12)


def test_aot_population_loss_equals_the_mean_loss_of_a_batch_that_holds_the_pair_law_exactly():
    """μ uniform on 3 responses and labels in quarters make P a multiple of 1/18: a batch of 18 pairs is P."""
    pi_ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    mu = torch.full((3,), 1 / 3, dtype=torch.float64)
    pref = torch.tensor([[0.5, 0.75, 1.0], [0.25, 0.5, 0.75], [0.0, 0.25, 0.5]], dtype=torch.float64)
    counts = (pair_law(mu, pref) * 18).round().long()
    assert int(counts.sum()) == 18
    logits = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)
    logp = torch.log_softmax(logits, 0)
    chosen = torch.tensor([i for i in range(3) for j in range(3) for _ in range(int(counts[i, j]))])
    rejected = torch.tensor([j for i in range(3) for j in range(3) for _ in range(int(counts[i, j]))])
    for loss_type, eps in (("aot", 0.0), ("aot", 0.2), ("aot_unpaired", 0.1)):
        batch, _, _ = dpo_loss(logp[chosen], logp[rejected], pi_ref.log()[chosen], pi_ref.log()[rejected], beta=0.9,
                               loss_type=loss_type, label_smoothing=eps)
        ours = population_loss(logits, pi_ref, mu, pref, 0.9, loss_type, eps)
        assert float(ours) == pytest.approx(float(batch.mean()), rel=1e-12)


@pytest.mark.parametrize("loss_type", ["aot", "aot_unpaired"])
def test_aot_optima_are_refused_because_newton_stops_above_the_minima_on_the_kinks(loss_type):
    """On this world Newton from π_ref certified a local minimum of aot's loss (0.5454) while Nelder–Mead finds
    0.5105 on a kink: population_optimum refuses rather than report the wrong one; optimum_row says so."""
    pi_ref, mu, r = world(4, 6)
    with pytest.raises(NotImplementedError, match=f"does not solve '{loss_type}'"):
        population_optimum(pi_ref, mu, bradley_terry(r), 0.7, loss_type)
    row = optimum_row(pi_ref, mu, bradley_terry(r), r, 0.7, loss_type)
    assert row["exists"] is None and "piecewise smooth" in row["message"]


# ------------------------------------------------------------------------------------------ hinge (a linear program)
@pytest.mark.parametrize("p", [0.6, 0.9])
def test_hinge_optimum_on_two_responses_puts_the_margin_exactly_at_one_over_beta(p):
    pi_ref = torch.tensor([0.3, 0.7], dtype=torch.float64)
    pref = torch.tensor([[0.5, p], [1 - p, 0.5]], dtype=torch.float64)
    beta = 0.5
    result = population_optimum(pi_ref, torch.tensor([0.5, 0.5]), pref, beta, "hinge")
    rho = (result.probs / pi_ref).log()
    assert float(rho[0] - rho[1]) == pytest.approx(1 / beta, abs=1e-9)
    assert result.exists and result.unique


def test_hinge_optimum_is_no_worse_than_random_policies_and_its_loss_is_the_population_loss():
    pi_ref, mu, r = world(4, 7)
    pref = bradley_terry(r)
    result = population_optimum(pi_ref, mu, pref, 0.5, "hinge")
    at = float(population_loss(result.probs.log(), pi_ref, mu, pref, 0.5, "hinge"))
    assert at == pytest.approx(result.loss, abs=1e-9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        x = result.probs.log() + 0.5 * torch.randn(4, generator=gen, dtype=torch.float64)
        assert float(population_loss(x, pi_ref, mu, pref, 0.5, "hinge")) >= at - 1e-9


def test_hinge_with_deterministic_labels_has_a_whole_set_of_minimisers():
    pi_ref, mu, r = world(4, 7)
    result = population_optimum(pi_ref, mu, deterministic(r), 0.5, "hinge")
    assert result.exists and result.unique is False and "unbounded optimal set" in result.message


# ---------------------------------------------------------------------------------------------- no finite optimum
@pytest.mark.parametrize("loss_type", ["sigmoid", "sigmoid_norm"])
def test_dpo_with_deterministic_labels_has_no_finite_optimum_and_says_so(loss_type):
    pi_ref, mu, r = world(4, 8)
    result = population_optimum(pi_ref, mu, deterministic(r), 0.5, loss_type)
    assert not result.exists and result.probs is None
    assert "no finite minimiser" in result.message
    with pytest.raises(ValueError, match=f"no finite population optimum for loss_type='{loss_type}'"):
        result.policy()
    if loss_type == "sigmoid":  # the infimum is approached as the best response takes all the mass
        assert float(result.limit[int(r.argmax())]) > 1 - 1e-9


def test_dpo_with_deterministic_but_cyclic_labels_has_a_finite_optimum():
    """Rock–paper–scissors: every response beats another, so no direction lowers the loss for ever."""
    pref = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]], dtype=torch.float64)
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    result = population_optimum(uniform, uniform, pref, 0.5, "sigmoid")
    assert result.exists
    torch.testing.assert_close(result.probs, uniform, rtol=0, atol=1e-10)


def test_robust_loss_is_unbounded_below_when_labels_are_surer_than_one_minus_epsilon():
    pi_ref, mu, r = world(4, 9)
    assert not population_optimum(pi_ref, mu, deterministic(r), 0.5, "robust", 0.1).exists
    assert population_optimum(pi_ref, mu, noisy(r, 0.2), 0.5, "robust", 0.1).exists


def test_apo_zero_sends_responses_rejected_more_often_than_chosen_to_zero():
    pi_ref, mu, r = world(4, 10)
    pref = bradley_terry(r)
    result = population_optimum(pi_ref, mu, pref, 0.5, "apo_zero")
    law = pair_law(mu, pref)
    losers = (law.sum(0) > law.sum(1)).nonzero()[:, 0].tolist()
    assert not result.exists and losers
    assert all(float(result.limit[i]) < 1e-12 for i in losers)


# ---------------------------------------------------------------------------------------------- bad input
PI, MU, R = world(3, 11)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"pi_ref": torch.tensor([0.5, 0.5, 0.0])}, r"pi_ref must be > 0 for every response .* got 0 at \[2\]"),
    ({"mu": torch.tensor([0.0, 0.5, 0.5])}, r"mu must be > 0 for every response"),
    ({"mu": torch.tensor([0.5, 0.5])}, "pi_ref and mu must be 1-D distributions over the same K responses"),
    ({"pi_ref": torch.tensor([0.5, 0.6, 0.2])}, "pi_ref must sum to 1"),
    ({"pref": torch.full((3, 3), 0.7)}, r"pref must satisfy pref\[i, j\] \+ pref\[j, i\] = 1"),
    ({"pref": torch.full((2, 2), 0.5)}, r"pref must be a \[3, 3\] matrix of probabilities"),
    ({"pref": 2 * bradley_terry(R)}, r"pref must be a \[3, 3\] matrix of probabilities"),
    ({"loss_type": "kto"}, "unknown loss_type 'kto'"),
    ({"loss_type": "exo_pair"}, "'exo_pair' loss needs label_smoothing ε > 0"),
    ({"beta": 0.0}, "beta must be a positive finite number"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing is used only by"),
])
def test_bad_inputs_are_refused_with_the_fix(kwargs, fragment):
    args = {"pi_ref": PI, "mu": MU, "pref": bradley_terry(R), "beta": 0.5, "loss_type": "sigmoid", **kwargs}
    with pytest.raises(ValueError, match=fragment):
        population_optimum(**args)


# ---------------------------------------------------------------------------------------------- the chapter's row
def test_optimum_row_of_dpo_under_bradley_terry_labels_is_pi_star():
    pi_ref, mu, r = world(4, 12)
    row = optimum_row(pi_ref, mu, bradley_terry(r), r, 0.5, "sigmoid")
    assert row["exists"] and row["kl_to_star"] < 1e-15
    assert row["gold_reward"] == pytest.approx(row["star_gold_reward"], abs=1e-10)
    assert row["kl_to_ref"] == pytest.approx(kl(tilted(pi_ref, r, 0.5), pi_ref), abs=1e-10)


def test_optimum_row_without_a_finite_optimum_has_nan_numbers():
    pi_ref, mu, r = world(4, 12)
    row = optimum_row(pi_ref, mu, deterministic(r), r, 0.5, "sigmoid")
    assert row["exists"] is False
    assert all(math.isnan(row[key]) for key in ("kl_to_star", "gold_reward", "kl_to_ref"))


def test_apo_zero_is_reported_without_a_finite_optimum_where_its_losers_stall_below_round_off():
    """apo_zero's loss is Σ_y (rejected − chosen mass)·σ(β log π/π_ref) + const: a response rejected more often than
    chosen is pushed to π = 0, but its loss and curvature vanish like e^{β log π/π_ref} on the way, so Newton crawls;
    the solver stops once they are below round-off (chapter 8's world: it used to run out of iterations)."""
    pi_ref = torch.tensor([0.10, 0.20, 0.30, 0.25, 0.15], dtype=torch.float64)
    r = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0], dtype=torch.float64)
    result = population_optimum(pi_ref, pi_ref, bradley_terry(r), 1.0, "apo_zero")
    law = pair_law(pi_ref, bradley_terry(r))
    losers = (law.sum(0) > law.sum(1)).nonzero()[:, 0].tolist()
    assert not result.exists and losers == [3, 4]
    assert f"responses {losers}" in result.message
    assert all(float(result.limit[i]) < 1e-14 for i in losers)


# ---------------------------------------------------------------------------------------------- the first step
def test_first_step_changes_are_the_first_order_change_of_log_probs_after_a_small_step():
    pi_ref, mu, r = world(5, 13)
    pref = noisy(r)
    for loss_type, eps in (("sigmoid", 0.0), ("apo_down", 0.0), ("exo_pair", 0.01), ("sft", 0.0), ("aot", 0.1)):
        delta = first_step_changes(pi_ref, mu, pref, 0.7, loss_type, eps)
        logits = pi_ref.log().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(population_loss(logits, pi_ref, mu, pref, 0.7, loss_type, eps), logits)
        for eta in (1e-4, 1e-5):
            moved = torch.log_softmax(pi_ref.log() - eta * grad, 0) - pi_ref.log()
            assert float((moved / eta - delta).abs().max()) < 50 * eta * float(delta.abs().max()) + 1e-9


def test_first_step_cases_are_a_distribution_over_the_four_cases():
    pi_ref, mu, r = world(5, 14)
    cases = first_step_cases(pi_ref, mu, deterministic(r), 0.5, "sigmoid")
    assert cases.shape == (4,) and float(cases.sum()) == pytest.approx(1.0, abs=1e-14) and bool((cases >= 0).all())


@pytest.mark.parametrize("loss_type", ["hinge", "ipo", "nca_pair", "robust", "bco_pair", "sppo_hard", "apo_zero",
                                       "sigmoid_norm"])
def test_at_the_reference_these_losses_take_dpos_first_step_direction(loss_type):
    """At π = π_ref every margin is 0, so each of these losses weighs every pair alike and pushes ρ_w up, ρ_l down:
    its first step is a positive multiple of DPO's, and the cases are DPO's."""
    pi_ref, mu, r = world(5, 15)
    pref = noisy(r)
    eps = 0.1 if loss_type == "robust" else 0.0
    ours, dpo = first_step_changes(pi_ref, mu, pref, 0.5, loss_type, eps), first_step_changes(pi_ref, mu, pref, 0.5, "sigmoid")
    scale = float(ours @ dpo / (dpo @ dpo))
    assert scale > 0
    torch.testing.assert_close(ours, scale * dpo, rtol=0, atol=1e-12)
    torch.testing.assert_close(first_step_cases(pi_ref, mu, pref, 0.5, loss_type, eps),
                               first_step_cases(pi_ref, mu, pref, 0.5, "sigmoid"), rtol=0, atol=1e-14)


def test_discopop_first_step_is_dpos_reversed_so_its_cases_swap():
    """DiscoPOP's slope at margin 0 is β[(1 − ln 2)/(4τ) − 3/4] > 0 for τ = 0.05: the step lowers every margin."""
    pi_ref, mu, r = world(5, 16)
    pref = bradley_terry(r)
    disco, dpo = first_step_cases(pi_ref, mu, pref, 0.5, "discopop"), first_step_cases(pi_ref, mu, pref, 0.5, "sigmoid")
    torch.testing.assert_close(disco, dpo[[3, 2, 1, 0]], rtol=0, atol=1e-14)


def test_aot_unpaired_has_no_first_step_from_the_reference_and_says_why():
    pi_ref, mu, r = world(4, 17)
    with pytest.raises(ValueError, match="every log π/π_ref is 0 there"):
        first_step_cases(pi_ref, mu, bradley_terry(r), 0.5, "aot_unpaired")
    uniform = torch.full((4,), 0.25, dtype=torch.float64)
    with pytest.raises(ValueError, match="two pairs of responses have the same reference margin"):
        first_step_cases(uniform, mu, bradley_terry(r), 0.5, "aot", 0.1)
