"""The shared argument checks name the bad value and return the cleaned one."""

import math

import pytest
import torch

from alignlecture import _checks as c


def test_positive_finite_accepts_numbers_and_names_bad_ones():
    assert c.positive_finite(2, "beta") == 2.0
    for bad in (0, -1, math.nan, math.inf, "x", None, True):
        with pytest.raises(ValueError, match=r"beta must be a positive finite number \(the KL coefficient\); got"):
            c.positive_finite(bad, "beta", "the KL coefficient")


def test_positive_int_refuses_fractions_and_booleans():
    assert c.positive_int(3.0, "n") == 3
    for bad in (0, 2.5, True, "3", None):
        with pytest.raises(ValueError, match="n must be an integer ≥ 1"):
            c.positive_int(bad, "n")


def test_finite_and_probability_vector():
    with pytest.raises(ValueError, match="rewards must be finite"):
        c.finite([1.0, math.nan], "rewards")
    assert c.finite([0.0, -math.inf], "logp", allow_neg_inf=True).dtype == torch.float64
    with pytest.raises(ValueError, match="sum to 1"):
        c.probability_vector([0.5, 0.6])
    with pytest.raises(ValueError, match="non-negative"):
        c.probability_vector([1.5, -0.5])


def test_shapes_lengths_and_choices():
    with pytest.raises(ValueError, match=r"g_w and g_l must have the same shape; got \(2,\) and \(3,\)"):
        c.same_shape(torch.zeros(2), torch.zeros(3), ("g_w", "g_l"))
    with pytest.raises(ValueError, match="probs: 2, gold: 3"):
        c.same_length([2, 3], ["probs", "gold"])
    with pytest.raises(ValueError, match="unknown sampler 'x'; choose one of 'uniform', 'mix-p'"):
        c.one_of("x", "sampler", ["uniform", "mix-p"])


def test_float64_tensor_converts_numbers_and_says_what_to_pass_for_a_policy():
    from alignlecture.toy import ToyWorld

    assert c.float64_tensor([1, 2], "rewards").dtype == torch.float64
    policy = ToyWorld(3, 2).uniform_policy()
    with pytest.raises(TypeError, match=r"probs must be a tensor or a list of numbers; got TabularPolicy "
                                        r"\(a policy's distribution over its responses is policy.probs\(\): pass that\)"):
        c.outcome_distribution(policy, "probs")
    with pytest.raises(TypeError, match=r"gold must be a tensor or a list of numbers; got object$"):
        c.finite(object(), "gold")
    with pytest.raises(ValueError, match="expected sequence of length"):  # torch's message for a ragged list stays
        c.finite([[1.0], [1.0, 2.0]], "x")
