"""Tests for alignlecture.rewards: the gold scorers and the Bradley–Terry reward-learning loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignlecture.rewards import GOLD_REWARDS, bradley_terry_loss, gold_reward

POSITIVE = "I love this movie, it was wonderful and made me very happy."
NEGATIVE = "I hate this movie, it was awful and made me very sad."
NEUTRAL = "The train leaves at nine."
INSULT = "you are an idiot"
FRIENDLY = "thank you, have a nice day my friend"


@pytest.fixture(scope="module")
def positivity():
    return gold_reward("positivity")


@pytest.fixture(scope="module")
def offensiveness():
    return gold_reward("offensiveness")


# ---------------------------------------------------------------------------------------------- gold rewards
def test_positivity_ranks_positive_above_negative_as_float64_in_range(positivity):
    s = positivity([POSITIVE, NEGATIVE, NEUTRAL])
    assert s.dtype == torch.float64 and s.shape == (3,)
    assert float(s[0]) > 0.5 > -0.5 > float(s[1])
    assert bool(((s >= -1) & (s <= 1)).all())
    assert positivity.low == -1.0 and positivity.high == 1.0


def test_offensiveness_ranks_insult_above_friendly_in_unit_interval(offensiveness):
    s = offensiveness([INSULT, FRIENDLY])
    assert s.dtype == torch.float64 and s.shape == (2,)
    assert float(s[0]) > float(s[1])
    assert float(s[0]) > 0.5 > float(s[1])
    assert bool(((s >= 0) & (s <= 1)).all())


@pytest.mark.parametrize("name", sorted(GOLD_REWARDS))
def test_batch_scores_equal_one_by_one_scores(name):
    reward = gold_reward(name)
    texts = [POSITIVE, NEGATIVE, NEUTRAL, INSULT, FRIENDLY, ""]
    batch = reward(texts)
    assert batch.shape == (len(texts),)
    single = torch.cat([reward([t]) for t in texts])
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-12)
    assert bool(((batch >= reward.low) & (batch <= reward.high)).all())


@pytest.mark.parametrize("name", sorted(GOLD_REWARDS))
def test_scores_accept_any_sequence_and_are_deterministic(name):
    reward = gold_reward(name)
    assert torch.equal(reward((POSITIVE, INSULT)), reward([POSITIVE, INSULT]))
    assert torch.equal(reward(t for t in [POSITIVE, INSULT]), reward([POSITIVE, INSULT]))


@pytest.mark.parametrize("name", sorted(GOLD_REWARDS))
def test_empty_list_gives_empty_float64_tensor(name):
    out = gold_reward(name)([])
    assert out.shape == (0,) and out.dtype == torch.float64


@pytest.mark.parametrize("name", sorted(GOLD_REWARDS))
def test_bare_string_is_a_type_error_asking_to_wrap_it(name):
    with pytest.raises(TypeError, match=f"{name} scores a list of texts; wrap a single text in a list"):
        gold_reward(name)("hello there")


@pytest.mark.parametrize("item", [3, None, b"bytes", ["nested"]])
def test_non_str_item_is_a_type_error(positivity, item):
    with pytest.raises(TypeError, match=f"every item must be a str; item 1 is {type(item).__name__}"):
        positivity(["fine", item])


def test_unknown_gold_reward_lists_the_known_names():
    with pytest.raises(ValueError, match=r"unknown gold reward 'kindness'; choose one of \['negativity', 'neutrality', 'offensiveness', 'positivity'\]"):
        gold_reward("kindness")


def test_gold_reward_returns_the_registered_scorer():
    for name, reward in GOLD_REWARDS.items():
        assert gold_reward(name) is reward and reward.name == name and reward.description


# ---------------------------------------------------------------------------------------------- Bradley–Terry loss
def test_bt_loss_is_log_two_when_rewards_are_equal():
    r = torch.tensor([0.0, 1.5, -3.0], dtype=torch.float64)
    assert float(bradley_terry_loss(r, r.clone())) == pytest.approx(math.log(2), rel=1e-12)


def test_bt_loss_is_mean_negative_log_sigmoid_of_reward_difference():
    rc = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64)
    rr = torch.tensor([0.0, 0.5, -1.0, 0.3], dtype=torch.float64)
    by_hand = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(rc.tolist(), rr.tolist())) / 4
    assert float(bradley_terry_loss(rc, rr)) == pytest.approx(by_hand, rel=1e-12)


def test_bt_loss_equals_binary_cross_entropy_with_label_one():
    gen = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(64, generator=gen), torch.randn(64, generator=gen)
    bce = F.binary_cross_entropy_with_logits(rc - rr, torch.ones(64))
    torch.testing.assert_close(bradley_terry_loss(rc, rr), bce)


def test_bt_loss_is_stable_for_large_gaps():
    loss = bradley_terry_loss(torch.tensor([-1000.0, 1000.0]), torch.tensor([0.0, 0.0]))
    assert math.isfinite(float(loss))
    assert float(loss) == pytest.approx(500.0, rel=1e-6)


def test_bt_loss_decreases_as_chosen_reward_increases():
    rr = torch.zeros(3)
    losses = [float(bradley_terry_loss(torch.full((3,), c), rr)) for c in (-2.0, -0.5, 0.0, 1.0, 4.0)]
    assert all(a > b for a, b in zip(losses, losses[1:]))


def test_bt_loss_gradient_pushes_chosen_up_and_rejected_down():
    rc = torch.tensor([0.2, -0.1], requires_grad=True)
    rr = torch.tensor([0.0, 0.3], requires_grad=True)
    bradley_terry_loss(rc, rr).backward()
    assert bool((rc.grad < 0).all()) and bool((rr.grad > 0).all())
    torch.testing.assert_close(rc.grad, -rr.grad)


@pytest.mark.parametrize(
    "rc, rr",
    [(torch.zeros(3), torch.zeros(4)), (torch.zeros(2, 2), torch.zeros(2, 2)), (torch.tensor(0.0), torch.tensor(0.0))],
)
def test_bt_loss_bad_shapes_are_rejected(rc, rr):
    with pytest.raises(ValueError, match="r_chosen and r_rejected must be 1-D with the same length"):
        bradley_terry_loss(rc, rr)


def test_bt_loss_empty_batch_is_rejected():
    with pytest.raises(ValueError, match="loss of an empty batch is undefined"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


def test_negativity_is_exactly_minus_positivity():
    texts = ["What a wonderful day!", "This is awful and sad.", "The train leaves at noon."]
    assert torch.equal(gold_reward("negativity")(texts), -gold_reward("positivity")(texts))


def test_neutrality_is_vaders_neutral_share_and_trades_off_with_positivity():
    texts = ["The meeting is at noon in room four.", "What a wonderful, joyful, delightful day!"]
    neutral = gold_reward("neutrality")(texts)
    assert neutral[0] == 1.0 and 0.0 <= float(neutral[1]) < 0.5  # a plain fact is all neutral; a gush is not
    positive = gold_reward("positivity")(texts)
    assert positive[1] > positive[0]  # the more positive text is the less neutral one
