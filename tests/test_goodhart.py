"""Tests for alignlecture.goodhart: Gao's forms and fits, exact over-optimisation curves, proxies and ensembles."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture import goodhart as gh
from alignlecture.bon import bon_distribution, kl_divergence, tilted
from alignlecture.toy import ToyWorld

PROPERTY = settings(max_examples=30, deadline=None)


def random_world(seed, K=50, levels=None):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(K, generator=gen, dtype=torch.float64) ** 2
    proxy = torch.randn(K, generator=gen, dtype=torch.float64)
    if levels:
        proxy = torch.randint(0, levels, (K,), generator=gen).double()
    gold = torch.randn(K, generator=gen, dtype=torch.float64)
    return p / p.sum(), proxy, gold


# ---------------------------------------------------------------------------------------------- Gao's forms
@PROPERTY
@given(st.floats(0.0, 50.0), st.floats(-5, 5), st.floats(-5, 5))
def test_gao_forms_match_their_formulas_elementwise(d, alpha, gao_beta):
    t = torch.tensor([d], dtype=torch.float64)
    assert gh.gao_bon(t, alpha, gao_beta).item() == pytest.approx(d * (alpha - gao_beta * d), rel=1e-12, abs=1e-12)
    want = 0.0 if d == 0 else d * (alpha - gao_beta * math.log(d))
    assert gh.gao_rl(t, alpha, gao_beta).item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_gao_rl_is_zero_at_d_zero_and_continuous_there():
    d = torch.tensor([0.0, 1e-12, 1e-8], dtype=torch.float64)
    out = gh.gao_rl(d, 1.0, 2.0)
    assert out[0].item() == 0.0 and not torch.isnan(out).any()
    assert abs(out[1].item()) < 1e-10 and abs(out[2].item()) < 1e-6


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_gao_recovers_the_parameters_and_peak_of_noiseless_curves(form):
    d = torch.linspace(0, 4, 30, dtype=torch.float64)
    f = (gh.gao_bon if form == "bon" else gh.gao_rl)(d, 1.3, 0.4)
    fit = gh.fit_gao(d, f, form)
    assert fit.alpha == pytest.approx(1.3, abs=1e-10) and fit.gao_beta == pytest.approx(0.4, abs=1e-10)
    peak = 1.3 / 0.8 if form == "bon" else math.exp(1.3 / 0.4 - 1)
    assert fit.peak == pytest.approx(peak, rel=1e-9)
    assert fit.alpha_se < 1e-8 and fit.residuals.abs().max() < 1e-10 and fit.r_squared == pytest.approx(1.0)


def test_the_peak_maximises_the_fitted_curve():
    d = torch.linspace(0.1, 3, 12, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for form in ("bon", "rl"):
        y = (gh.gao_bon if form == "bon" else gh.gao_rl)(d, 1.0, 0.5) + 0.02 * torch.randn(12, generator=gen, dtype=torch.float64)
        fit = gh.fit_gao(d, y, form)
        grid = torch.linspace(1e-6, 4 * fit.peak, 20001, dtype=torch.float64)
        best = grid[fit(grid).argmax()].item()
        assert best == pytest.approx(fit.peak, rel=1e-3)
        assert fit.peak_gold == pytest.approx(fit(grid).max().item(), rel=1e-6)


def test_fit_gao_standard_errors_cover_the_truth_at_the_nominal_rate():
    """Simulated noisy curves: |α̂ − α| ≤ 1.96·se in about 95% of 400 fits (OLS standard errors)."""
    d = torch.linspace(0.2, 3, 15, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    hits = 0
    for _ in range(400):
        y = gh.gao_bon(d, 1.0, 0.3) + 0.05 * torch.randn(15, generator=gen, dtype=torch.float64)
        fit = gh.fit_gao(d, y, "bon")
        hits += abs(fit.alpha - 1.0) <= 1.96 * fit.alpha_se
    assert 0.91 <= hits / 400 <= 0.98


def test_fit_gao_reports_no_peak_when_the_curve_never_turns_down():
    d = torch.linspace(0, 2, 10, dtype=torch.float64)
    fit = gh.fit_gao(d, 2 * d + 0.1 * d * d, "bon")
    assert fit.gao_beta < 0 and fit.peak == math.inf and math.isnan(fit.peak_se)


def test_fit_gao_with_exactly_two_points_has_nan_standard_errors():
    fit = gh.fit_gao(torch.tensor([0.5, 1.5]), torch.tensor([0.4, 0.6]), "bon")
    assert math.isnan(fit.alpha_se) and math.isnan(fit.gao_beta_se) and math.isfinite(fit.alpha)


def test_gao_fit_calls_its_bend_coefficient_gao_beta_never_beta_the_kl_coefficient():
    names = [f.name for f in dataclasses.fields(gh.GaoFit)]
    assert "gao_beta" in names and "gao_beta_se" in names and "beta" not in names and "beta_se" not in names
    assert list(inspect.signature(gh.gao_bon).parameters) == list(inspect.signature(gh.gao_rl).parameters) == [
        "d", "alpha", "gao_beta"]


@pytest.mark.parametrize("cls", [gh.GaoFit, gh.Curve])
def test_help_documents_every_field(cls):
    attributes = inspect.getdoc(cls).split("Attributes:")[1]
    assert [f.name for f in dataclasses.fields(cls) if f"    {f.name}: " not in attributes] == []


# ---------------------------------------------------------------------------------------------- exact curves
@PROPERTY
@given(st.integers(0, 10_000), st.sampled_from([None, 3]))
def test_bon_curve_equals_bon_distribution_one_n_at_a_time(seed, levels):
    p, proxy, gold = random_world(seed, levels=levels)
    ns = [1, 2, 3, 5, 8, 13, 21]
    c = gh.bon_curve(p, proxy, gold, ns)
    for i, n in enumerate(ns):
        q = bon_distribution(p, proxy, n)
        assert c.kl[i].item() == pytest.approx(kl_divergence(q, p).item(), abs=1e-12)
        assert c.gold[i].item() == pytest.approx((q @ gold).item(), abs=1e-12)
        assert c.proxy[i].item() == pytest.approx((q @ proxy).item(), abs=1e-12)
    assert torch.equal(c.d, c.kl.sqrt())


@PROPERTY
@given(st.integers(0, 10_000))
def test_rl_curve_equals_tilted_one_beta_at_a_time(seed):
    p, proxy, gold = random_world(seed)
    betas = [5.0, 1.0, 0.3, 0.05]
    c = gh.rl_curve(p, proxy, gold, betas)
    for i, b in enumerate(betas):
        q = tilted(p, proxy, b)
        assert c.kl[i].item() == pytest.approx(kl_divergence(q, p).item(), abs=1e-12)
        assert c.gold[i].item() == pytest.approx((q @ gold).item(), abs=1e-12)


@PROPERTY
@given(st.integers(0, 10_000))
def test_proxy_rises_with_pressure_on_both_curves(seed):
    """E[proxy] is non-decreasing in n (best-of-n) and in 1/β (tilting): the optimiser always gets its target."""
    p, proxy, gold = random_world(seed)
    c = gh.bon_curve(p, proxy, gold, [1, 2, 4, 8, 16, 64, 256])
    assert bool((c.proxy[1:] >= c.proxy[:-1] - 1e-12).all()) and bool((c.kl[1:] >= c.kl[:-1] - 1e-12).all())
    r = gh.rl_curve(p, proxy, gold, [10.0, 1.0, 0.5, 0.1, 0.01])
    assert bool((r.proxy[1:] >= r.proxy[:-1] - 1e-12).all()) and bool((r.kl[1:] >= r.kl[:-1] - 1e-12).all())


def test_gold_equal_to_proxy_never_falls_and_n_1_is_the_reference():
    p, proxy, _ = random_world(3)
    c = gh.bon_curve(p, proxy, proxy, [1, 2, 4, 16, 64])
    assert torch.equal(c.gold, c.proxy) and c.kl[0].item() < 1e-15
    assert c.gold[0].item() == pytest.approx((p @ proxy).item(), abs=1e-14)
    assert bool((c.gold[1:] >= c.gold[:-1]).all())


def test_a_proxy_that_is_wrong_in_the_tail_makes_gold_rise_then_fall():
    """Proxy = gold except on the few best-by-proxy responses, which gold hates: a Goodhart curve by design."""
    K = 200
    p = torch.full((K,), 1.0 / K, dtype=torch.float64)
    proxy = torch.arange(K, dtype=torch.float64)
    gold = proxy.clone()
    gold[-2:] = -100.0
    c = gh.bon_curve(p, proxy, gold, [1, 4, 16, 64, 1024])
    peak = int(c.gold.argmax())
    assert 0 < peak < 4 and c.gold[-1] < c.gold[0]


# ---------------------------------------------------------------------------------------------- proxies
def test_preference_pairs_prefer_the_gold_better_response_with_bradley_terry_frequency():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    gold = torch.tensor([0.0, 1.0], dtype=torch.float64)
    chosen, rejected = gh.preference_pairs(p, gold, 20_000, scale=2.0, seed=0)
    mixed = chosen != rejected
    rate = (chosen[mixed] == 1).double().mean().item()
    assert rate == pytest.approx(1 / (1 + math.exp(-2.0)), abs=0.015)


def test_fit_proxy_on_many_clean_pairs_orders_responses_like_gold():
    world = ToyWorld(vocab_size=3, max_len=3)
    feats = gh.word_features(world)
    assert feats.shape == (world.num_responses, 2 + 4)
    assert torch.equal(gh.word_features(world, pairs=False), feats[:, :2])
    gold = feats.double() @ torch.tensor([1.0, -1.0, 0.5, 0.0, 0.0, -0.5], dtype=torch.float64)
    p = world.uniform_policy().probs()
    chosen, rejected = gh.preference_pairs(p, gold, 4000, scale=5.0, seed=1)
    proxy = gh.fit_proxy(feats, chosen, rejected, steps=300)
    agree = ((proxy[:, None] > proxy[None, :]) == (gold[:, None] > gold[None, :]))[gold[:, None] != gold[None, :]]
    assert agree.double().mean().item() > 0.95


def test_ensemble_mean_and_min_of_standardised_members():
    p = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    a = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    members = torch.stack([a, 10 * a + 3, -a])  # the same model rescaled, and its mirror image
    z = gh.ensemble(members, p, "mean")
    za = (a - p @ a) / ((a - p @ a) ** 2 @ p).sqrt()
    assert torch.allclose(z, za / 3, atol=1e-12)
    assert torch.allclose(gh.ensemble(members, p, "min"), -za.abs(), atol=1e-12)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    p, proxy, gold = random_world(0)
    with pytest.raises(ValueError, match="same shape"):
        gh.bon_curve(p, proxy[:-1], gold, [1, 2])
    with pytest.raises(ValueError, match="same shape"):
        gh.rl_curve(p, proxy, gold[:-1], [1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        gh.bon_curve(p * 1.01, proxy, gold, [1])
    with pytest.raises(ValueError, match="n must be an integer ≥ 1"):
        gh.bon_curve(p, proxy, gold, [1, 0])
    with pytest.raises(ValueError, match="beta"):
        gh.rl_curve(p, proxy, gold, [1.0, 0.0])
    with pytest.raises(ValueError, match="beta"):
        gh.rl_curve(p, proxy, gold, [-0.5])
    nan_proxy = proxy.clone()
    nan_proxy[3] = math.nan
    with pytest.raises(ValueError, match="proxy must be finite"):
        gh.bon_curve(p, nan_proxy, gold, [2])
    with pytest.raises(ValueError, match="gold must be finite"):
        gh.rl_curve(p, proxy, nan_proxy, [2.0])
    with pytest.raises(ValueError, match="at least one"):
        gh.bon_curve(p, proxy, gold, [])
    with pytest.raises(ValueError, match="at least 2 points"):
        gh.fit_gao(torch.tensor([1.0]), torch.tensor([0.5]), "bon")
    with pytest.raises(ValueError, match="≥ 0"):
        gh.fit_gao(torch.tensor([-1.0, 1.0, 2.0]), torch.tensor([0.0, 0.5, 0.6]), "rl")
    with pytest.raises(ValueError, match="≥ 0"):
        gh.gao_bon(torch.tensor([-0.1]), 1.0, 1.0)
    with pytest.raises(ValueError, match="distinct"):
        gh.fit_gao(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.1, 0.2, 0.0]), "bon")
    with pytest.raises(ValueError, match="unknown form"):
        gh.fit_gao(torch.tensor([1.0, 2.0]), torch.tensor([0.1, 0.2]), "ppo")
    with pytest.raises(ValueError, match="members"):
        gh.ensemble(torch.zeros(3), p, "mean")
