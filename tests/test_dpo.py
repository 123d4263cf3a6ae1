"""Tests for alignlecture.dpo: the DPO loss, TRL's 14 other loss types, implicit rewards and metrics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture.dpo import LOSS_TYPES, SMOOTHED, check_dpo_args, dpo_loss, dpo_metrics

LN2 = math.log(2.0)
PROPERTY = settings(max_examples=50, deadline=None)

# four pairs of summed log-probs: policy chosen / rejected, reference chosen / rejected
PC = torch.tensor([-10.0, -12.5, -3.0, -20.0], dtype=torch.float64)
PR = torch.tensor([-11.0, -12.0, -7.5, -19.0], dtype=torch.float64)
RC = torch.tensor([-10.5, -13.0, -4.0, -21.0], dtype=torch.float64)
RR = torch.tensor([-10.0, -12.0, -6.0, -18.0], dtype=torch.float64)
H = (PC - RC) - (PR - RR)  # the margin h of each pair
NC = torch.tensor([3, 5, 1, 8])  # completion tokens of chosen / rejected (eos included)
NR = torch.tensor([2, 5, 4, 9])
TOKENS = {"chosen_tokens": NC, "rejected_tokens": NR}


def logsig(x: float) -> float:
    """log σ(x), computed by hand (stable for both signs)."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------- sigmoid (DPO)
def test_sigmoid_loss_is_ln2_when_policy_equals_reference():
    losses, cr, rr = dpo_loss(PC, PR, PC.clone(), PR.clone(), beta=0.3)
    torch.testing.assert_close(losses, torch.full_like(losses, LN2), rtol=0, atol=1e-12)
    assert bool((cr == 0).all()) and bool((rr == 0).all())


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
def test_sigmoid_loss_equals_minus_log_sigmoid_of_beta_times_margin(beta):
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta)
    expected = torch.tensor([-logsig(beta * h) for h in H.tolist()], dtype=torch.float64)
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)


def test_sigmoid_loss_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    losses, _, _ = dpo_loss(pc, pr, RC, RR, beta=0.5)
    losses.sum().backward()
    assert bool((pc.grad < 0).all()), pc.grad  # descent increases log π(chosen)
    assert bool((pr.grad > 0).all()), pr.grad  # descent decreases log π(rejected)
    # d/dπ_w of −log σ(βh) is −β σ(−βh), and the rejected gradient is its negative
    torch.testing.assert_close(pc.grad, -0.5 * torch.sigmoid(-0.5 * H), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pr.grad, -pc.grad, rtol=0, atol=0)


@pytest.mark.parametrize("eps", [0.1, 0.3, 0.49])
def test_label_smoothing_gives_conservative_dpo_formula(eps):
    beta = 0.2
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    expected = torch.tensor(
        [-(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h) for h in H.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)
    plain, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta)
    assert not torch.allclose(losses, plain)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.45])
def test_label_smoothed_sigmoid_loss_is_still_ln2_at_zero_margin(eps):
    losses, _, _ = dpo_loss(PC, PR, PC.clone(), PR.clone(), beta=0.1, label_smoothing=eps)
    torch.testing.assert_close(losses, torch.full_like(losses, LN2), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- variants
def test_ipo_loss_equals_squared_distance_of_per_token_margin_to_half_inverse_beta():
    beta = 0.25
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="ipo", **TOKENS)
    w, l = ((PC - RC) / NC).tolist(), ((PR - RR) / NR).tolist()
    expected = torch.tensor([(a - b - 1 / (2 * beta)) ** 2 for a, b in zip(w, l)], dtype=torch.float64)
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)


def test_ipo_with_one_token_per_completion_is_the_squared_margin_on_sums():
    one = torch.ones(4)
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.25, loss_type="ipo", chosen_tokens=one, rejected_tokens=one)
    torch.testing.assert_close(losses, (H - 2.0) ** 2, rtol=1e-12, atol=1e-12)


def sig(x: float) -> float:
    return math.exp(logsig(x))


# each loss by hand from ρ_w, ρ_l (log-ratios), n_w, n_l, log π_w (pc), β, ε, τ — pair by pair (not aot: sorted)
BY_HAND = {
    "exo_pair": lambda w, l, nw, nl, pc, b, e: sig(b * (w - l)) * (logsig(b * (w - l)) - math.log(1 - e))
    + sig(-b * (w - l)) * (logsig(-b * (w - l)) - math.log(e)),
    "nca_pair": lambda w, l, nw, nl, pc, b, e: -logsig(b * w) - 0.5 * logsig(-b * w) - 0.5 * logsig(-b * l),
    "bco_pair": lambda w, l, nw, nl, pc, b, e: -logsig(b * w) - logsig(-b * l),
    "sppo_hard": lambda w, l, nw, nl, pc, b, e: (w - 1 / (2 * b)) ** 2 + (l + 1 / (2 * b)) ** 2,
    "apo_zero": lambda w, l, nw, nl, pc, b, e: 1 - sig(b * w) + sig(b * l),
    "apo_down": lambda w, l, nw, nl, pc, b, e: sig(b * w) + 1 - sig(b * (w - l)),
    "discopop": lambda w, l, nw, nl, pc, b, e: (1 - sig(b * (w - l) / 0.05)) * -logsig(b * (w - l))
    + sig(b * (w - l) / 0.05) * math.exp(-b * (w - l)),
    "sigmoid_norm": lambda w, l, nw, nl, pc, b, e: -logsig(b * (w / nw - l / nl)),
    "sft": lambda w, l, nw, nl, pc, b, e: -pc / (sum(NC.tolist()) / 4),
}


@pytest.mark.parametrize("loss_type", sorted(BY_HAND))
def test_loss_type_matches_its_formula_by_hand(loss_type):
    beta, eps = 0.3, (0.1 if loss_type == "exo_pair" else 0.0)
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type=loss_type, label_smoothing=eps, **TOKENS)
    rows = zip((PC - RC).tolist(), (PR - RR).tolist(), NC.tolist(), NR.tolist(), PC.tolist())
    expected = torch.tensor([BY_HAND[loss_type](*row, beta, eps) for row in rows], dtype=torch.float64)
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)


def test_sft_loss_mean_is_the_per_token_nll_of_the_chosen_completions():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, loss_type="sft", **TOKENS)
    assert float(losses.mean()) == pytest.approx(-float(PC.sum()) / float(NC.sum()), rel=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_aot_losses_pair_sorted_quantiles_and_are_permutation_invariant(eps):
    beta = 0.4
    aot, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="aot", label_smoothing=eps)
    delta = torch.sort(PC - PR).values - torch.sort(RC - RR).values
    expected = [-(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d) for d in delta.tolist()]
    torch.testing.assert_close(aot, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    unpaired, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="aot_unpaired", label_smoothing=eps)
    delta = torch.sort(PC - RC).values - torch.sort(PR - RR).values
    expected = [-(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d) for d in delta.tolist()]
    torch.testing.assert_close(unpaired, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    perm = torch.tensor([2, 0, 3, 1])  # shuffling the pairs changes no sorted position
    shuffled, _, _ = dpo_loss(PC[perm], PR[perm], RC[perm], RR[perm], beta=beta, loss_type="aot", label_smoothing=eps)
    torch.testing.assert_close(shuffled, aot, rtol=0, atol=0)


def test_a_list_of_loss_types_is_their_weighted_sum():
    kw = dict(beta=0.2, **TOKENS)
    mixed, cr, rr = dpo_loss(PC, PR, RC, RR, loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0],
                             **kw)
    parts = [dpo_loss(PC, PR, RC, RR, loss_type=t, **kw)[0] for t in ("sigmoid", "bco_pair", "sft")]
    torch.testing.assert_close(mixed, 0.8 * parts[0] + 0.2 * parts[1] + parts[2], rtol=1e-12, atol=1e-12)
    unweighted, _, _ = dpo_loss(PC, PR, RC, RR, loss_type=["sigmoid", "hinge"], **kw)
    torch.testing.assert_close(unweighted, sum(dpo_loss(PC, PR, RC, RR, loss_type=t, **kw)[0]
                                               for t in ("sigmoid", "hinge")), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cr, 0.2 * (PC - RC), rtol=1e-12, atol=1e-12)


def test_hinge_loss_equals_relu_of_one_minus_beta_margin():
    beta = 0.5
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="hinge")
    expected = torch.tensor([max(0.0, 1 - beta * h) for h in H.tolist()], dtype=torch.float64)
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)
    assert bool((losses == 0).any()) and bool((losses > 0).any())  # the data reach both sides of the hinge


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_robust_loss_matches_unbiased_formula(eps):
    beta = 0.3
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="robust", label_smoothing=eps)
    expected = torch.tensor(
        [(-(1 - eps) * logsig(beta * h) + eps * logsig(-beta * h)) / (1 - 2 * eps) for h in H.tolist()],
        dtype=torch.float64,
    )
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)


def test_robust_loss_without_smoothing_equals_sigmoid_loss():
    robust, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.7, loss_type="robust", label_smoothing=0.0)
    sigmoid, sc, sr = dpo_loss(PC, PR, RC, RR, beta=0.7, loss_type="sigmoid")
    torch.testing.assert_close(robust, sigmoid, rtol=0, atol=0)
    torch.testing.assert_close(rc, sc, rtol=0, atol=0)
    torch.testing.assert_close(rr, sr, rtol=0, atol=0)


@pytest.mark.parametrize("tau", [0.02, 0.05, 0.1])
def test_discopop_at_zero_margin_pushes_the_margin_down_when_tau_is_below_a_tenth(tau):
    """dℓ/dh at h = 0 is β[(1 − ln 2)/(4τ) − 3/4]: positive for τ < (1 − ln 2)/3 ≈ 0.102 (TRL's default is 0.05)."""
    beta = 0.5
    pc = PC.clone().requires_grad_(True)
    losses, _, _ = dpo_loss(pc, PR, PC, PR, beta=beta, loss_type="discopop", discopop_tau=tau)
    losses.sum().backward()
    slope = beta * ((1 - LN2) / (4 * tau) - 0.75)
    torch.testing.assert_close(pc.grad, torch.full_like(pc.grad, slope), rtol=1e-10, atol=1e-12)
    assert (slope > 0) == (tau < (1 - LN2) / 3)


def test_loss_types_are_trls_fifteen():
    assert set(LOSS_TYPES) == {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                               "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_returns_one_finite_loss_per_pair(loss_type):
    eps = 0.1 if loss_type == "exo_pair" else 0.0
    losses, cr, rr = dpo_loss(PC.float(), PR.float(), RC.float(), RR.float(), beta=0.1, loss_type=loss_type,
                              label_smoothing=eps, **TOKENS)
    assert losses.shape == cr.shape == rr.shape == (4,)
    assert losses.dtype == torch.float32
    assert bool(torch.isfinite(losses).all())


@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t not in ("sft", "sppo_hard", "ipo", "discopop")])
def test_loss_gradient_raises_the_margin_when_policy_equals_reference(loss_type):
    """At π = π_ref the pairwise losses push chosen up relative to rejected (SFT, SPPO and IPO's per-token form
    are checked elsewhere; DiscoPOP does the opposite, below)."""
    eps = 0.1 if loss_type == "exo_pair" else 0.0
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    losses, _, _ = dpo_loss(pc, pr, PC, PR, beta=0.5, loss_type=loss_type, label_smoothing=eps, **TOKENS)
    losses.sum().backward()
    assert bool((pc.grad - pr.grad < 0).all()), (pc.grad, pr.grad)


# ---------------------------------------------------------------------------------------------- rewards
def test_rewards_are_beta_times_log_ratio_and_carry_no_gradient():
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    _, cr, rr = dpo_loss(pc, pr, RC, RR, beta=0.2)
    torch.testing.assert_close(cr, 0.2 * (PC - RC), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rr, 0.2 * (PR - RR), rtol=1e-12, atol=1e-12)
    assert not cr.requires_grad and not rr.requires_grad
    assert cr.grad_fn is None and rr.grad_fn is None


def test_metrics_have_trl_names_and_batch_mean_values():
    _, cr, rr = dpo_loss(PC, PR, RC, RR, beta=0.2)
    m = dpo_metrics(cr, rr, PC, PR)
    assert set(m) == {
        "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
    }
    assert all(isinstance(v, float) for v in m.values())
    assert m["rewards/chosen"] == pytest.approx(float((0.2 * (PC - RC)).mean()), abs=1e-12)
    assert m["rewards/rejected"] == pytest.approx(float((0.2 * (PR - RR)).mean()), abs=1e-12)
    assert m["rewards/margins"] == pytest.approx(float((0.2 * H).mean()), abs=1e-12)
    assert m["rewards/accuracies"] == pytest.approx(float((H > 0).double().mean()), abs=1e-12)
    assert m["logps/chosen"] == pytest.approx(float(PC.mean()), abs=1e-12)
    assert m["logps/rejected"] == pytest.approx(float(PR.mean()), abs=1e-12)


def test_reward_accuracy_uses_strict_inequality_so_ties_count_as_wrong():
    chosen = torch.tensor([1.0, 0.5, -2.0, 0.0])
    rejected = torch.tensor([0.0, 0.5, -1.0, 0.0])  # one win, two ties, one loss
    m = dpo_metrics(chosen, rejected, chosen, rejected)
    assert m["rewards/accuracies"] == 0.25


def test_metrics_do_not_require_grad_on_log_probs():
    pc = PC.clone().requires_grad_(True)
    m = dpo_metrics(torch.zeros(4), torch.zeros(4), pc, PR)
    assert m["logps/chosen"] == pytest.approx(float(PC.mean()))
    assert m["rewards/accuracies"] == 0.0


# ---------------------------------------------------------------------------------------------- properties
finite = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False)


@PROPERTY
@given(pc=finite, pr=finite, rc=finite, rr=finite, d=st.floats(0.01, 20.0), beta=st.floats(0.01, 2.0))
def test_sigmoid_loss_is_decreasing_in_the_margin(pc, pr, rc, rr, d, beta):
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    base, _, _ = dpo_loss(t(pc), t(pr), t(rc), t(rr), beta=beta)
    wider, _, _ = dpo_loss(t(pc + d), t(pr), t(rc), t(rr), beta=beta)  # margin h grows by d
    narrower, _, _ = dpo_loss(t(pc), t(pr + d), t(rc), t(rr), beta=beta)  # margin h shrinks by d
    assert float(wider) <= float(base) <= float(narrower)
    # strict while the loss is not saturated in float64
    if 1e-12 < float(base) < 30:
        assert float(wider) < float(base) < float(narrower)


@PROPERTY
@given(pc=finite, pr=finite, rc=finite, rr=finite, c=finite, which=st.sampled_from(["chosen", "rejected"]),
       beta=st.floats(0.01, 2.0))
def test_sigmoid_loss_is_invariant_to_a_constant_added_to_policy_and_reference_of_one_response(
    pc, pr, rc, rr, c, which, beta
):
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    base, bc, br = dpo_loss(t(pc), t(pr), t(rc), t(rr), beta=beta)
    if which == "chosen":
        shifted, sc, sr = dpo_loss(t(pc + c), t(pr), t(rc + c), t(rr), beta=beta)
    else:
        shifted, sc, sr = dpo_loss(t(pc), t(pr + c), t(rc), t(rr + c), beta=beta)
    torch.testing.assert_close(shifted, base, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sc, bc, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sr, br, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("beta", [0, 0.0, -0.1, float("nan"), float("inf"), "0.1", None])
def test_beta_must_be_positive_finite_number(beta):
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        dpo_loss(PC, PR, RC, RR, beta=beta)
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        check_dpo_args(beta, "sigmoid", 0.0)


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7, float("nan")])
def test_label_smoothing_must_lie_in_zero_to_half(eps):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=eps)


@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t not in SMOOTHED])
def test_label_smoothing_is_refused_where_the_loss_would_ignore_it(loss_type):
    with pytest.raises(ValueError, match=f"label_smoothing is used only by .*not '{loss_type}'.*set label_smoothing=0"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type=loss_type, label_smoothing=0.1, **TOKENS)


def test_exo_pair_needs_positive_label_smoothing():
    with pytest.raises(ValueError, match="'exo_pair' loss needs label_smoothing ε > 0"):
        dpo_loss(PC, PR, RC, RR, loss_type="exo_pair")


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm", "sft"])
def test_per_token_losses_need_token_counts(loss_type):
    with pytest.raises(ValueError, match=f"loss_type '{loss_type}' averages log-probs per token: pass chosen_tokens"):
        dpo_loss(PC, PR, RC, RR, loss_type=loss_type)


@pytest.mark.parametrize("tokens", [torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3, 4]), [1, 2, 3, 4]])
def test_token_counts_must_be_positive_with_one_per_pair(tokens):
    with pytest.raises(ValueError, match="chosen_tokens must be a tensor of counts ≥ 1 with one entry per pair"):
        dpo_loss(PC, PR, RC, RR, loss_type="ipo", chosen_tokens=tokens, rejected_tokens=NR)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, r"loss_weights must be a list with one weight per loss"),
    ({"loss_type": ["sigmoid"], "loss_weights": [float("nan")]}, r"loss_weights\[0\] must be a finite number"),
    ({"loss_type": []}, "loss_type must be a loss name or a non-empty list"),
    ({"loss_type": ["sigmoid", "dpo"]}, "unknown loss_type 'dpo'; choose one of 'sigmoid'"),
    ({"loss_type": "discopop", "discopop_tau": 0}, "discopop_tau must be a positive finite number"),
])
def test_bad_loss_type_lists_weights_and_tau_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        dpo_loss(PC, PR, RC, RR, **TOKENS, **kwargs)


@pytest.mark.parametrize("loss_type", ["kto", "Sigmoid", ""])
def test_unknown_loss_type_is_refused(loss_type):
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type=loss_type)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="must be 1-D with one entry per pair"):
        dpo_loss(PC, PR[:3], RC, RR)


def test_two_dimensional_log_probs_are_refused():
    with pytest.raises(ValueError, match="must be 1-D with one entry per pair"):
        dpo_loss(PC[None], PR[None], RC[None], RR[None])


def test_empty_batch_is_refused():
    e = torch.zeros(0)
    with pytest.raises(ValueError, match="empty batch"):
        dpo_loss(e, e, e, e)


# ---------------------------------------------------------------------------------------------- one-call evaluation
def test_evaluate_a_policy_against_itself_gives_ln2_and_zero_rewards():
    from alignlecture.dpo import evaluate
    from alignlecture.models import tiny_policy

    from dpo_pairs import DATA

    policy = tiny_policy(seed=0, device="cpu")
    report = evaluate(policy, policy, DATA, chat=False)
    assert report["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert report["rewards/chosen"] == report["rewards/rejected"] == report["rewards/accuracies"] == 0.0
    assert set(report) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                           "logps/chosen", "logps/rejected"}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "sigmoid_norm", "sft", "aot", ["sigmoid", "sft"]])
def test_evaluate_equals_the_trainers_first_step_on_a_batch_of_every_pair(loss_type):
    from alignlecture.dpo import evaluate
    from alignlecture.models import tiny_policy
    from alignlecture.train import DPOConfig, DPOTrainer

    from dpo_pairs import DATA

    ref = tiny_policy(seed=1, device="cpu")
    report = evaluate(tiny_policy(seed=0, device="cpu"), ref, DATA, beta=0.1, loss_type=loss_type, chat=False)
    config = DPOConfig(per_device_train_batch_size=8, max_steps=1, beta=0.1, loss_type=loss_type, chat=False,
                       progress=False)
    first = DPOTrainer(tiny_policy(seed=0, device="cpu"), DATA, config, ref_policy=ref).train().history[0]
    for key, value in report.items():
        assert value == pytest.approx(first[key], rel=1e-6, abs=1e-5), key


def test_evaluate_names_a_record_missing_a_field():
    from alignlecture.dpo import evaluate
    from alignlecture.models import tiny_policy

    policy = tiny_policy(seed=0, device="cpu")
    with pytest.raises(ValueError, match="record 0 has no 'chosen' field"):
        evaluate(policy, policy, [{"prompt": "hi", "rejected": "bad"}], chat=False)
