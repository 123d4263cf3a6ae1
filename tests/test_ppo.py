"""PPO: the per-token reward bookkeeping, the clipped surrogate, and convergence to π* on the toy world."""

from __future__ import annotations

import math

import pytest
import torch

from alignlecture.ppo import PPOConfig, per_token_rewards, ppo_clip_loss, ppo_lm, ppo_tabular, returns_to_go
from alignlecture.toy import ToyWorld


def test_per_token_rewards_sum_to_reward_minus_beta_log_ratio():
    logp_ref = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]], dtype=torch.float64)
    logp_old = torch.tensor([[-0.5, -1.0, -1.5], [-0.2, -0.9, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    final = torch.tensor([2.0, -1.0], dtype=torch.float64)
    r = per_token_rewards(logp_ref, logp_old, final, mask, beta=0.5)
    expected = final - 0.5 * ((logp_old - logp_ref) * mask).sum(dim=1)
    assert torch.allclose(r.sum(dim=1), expected)
    assert r[1, 2] == 0  # nothing outside the mask
    assert r[1, 1] == pytest.approx(0.5 * (-0.7 + 0.9) - 1.0)  # the final action carries r(x, y)


def test_returns_to_go_are_suffix_sums_inside_the_mask():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert returns_to_go(rewards, mask).tolist() == [[6.0, 5.0, 3.0], [9.0, 5.0, 0.0]]


def test_clip_loss_ignores_ratio_beyond_the_clip_range_for_positive_advantages():
    mask = torch.ones(1, 1)
    adv = torch.ones(1, 1)
    inside = ppo_clip_loss(torch.tensor([[math.log(1.1)]]), torch.zeros(1, 1), adv, mask, clip=0.2)
    beyond = ppo_clip_loss(torch.tensor([[math.log(3.0)]]), torch.zeros(1, 1), adv, mask, clip=0.2)
    assert inside.item() == pytest.approx(-1.1)
    assert beyond.item() == pytest.approx(-1.2)  # clipped at 1 + ε


def test_ppo_on_the_toy_world_converges_to_the_exact_optimum():
    world = ToyWorld(4, 3)
    ref, rewards = world.random_policy(seed=0), world.random_rewards(seed=1)
    star = world.optimal_policy(ref, rewards, 0.5)
    policy, history = ppo_tabular(world, ref, rewards, PPOConfig(beta=0.5, iterations=150, batch_size=512), target=star)
    assert history[0]["kl_to_target"] > 0.5
    assert policy.kl(star) < 0.01


def test_ppo_config_rejects_bad_values():
    with pytest.raises(ValueError, match="beta must be a positive"):
        PPOConfig(beta=0)
    with pytest.raises(ValueError, match="clip must be a positive finite number; got -0.1"):
        PPOConfig(clip=-0.1)
    with pytest.raises(ValueError, match="iterations must be an integer ≥ 1; got 2.5"):
        PPOConfig(iterations=2.5)
    with pytest.raises(ValueError, match="learning_rate must be a positive finite number; got nan"):
        PPOConfig(learning_rate=math.nan)


def test_ppo_lm_updates_a_real_transformer_and_reports_the_reward(tiny):
    from alignlecture.models import tiny_policy

    policy = tiny_policy(seed=3, device="cpu")
    ref = tiny_policy(seed=3, device="cpu")
    before = [p.detach().clone() for p in policy.model.parameters()]
    reward = lambda texts: [t.split().count("good") / 4 for t in texts]  # a stand-in reward for the mechanism
    history = ppo_lm(policy, ref, reward, ["tell me about the movie", "write one sentence"],
                     PPOConfig(beta=0.1, learning_rate=1e-3, iterations=2, ppo_epochs=2), samples_per_prompt=3,
                     max_new_tokens=6, chat=False)
    assert [h["iteration"] for h in history] == [1, 2]
    assert all(math.isfinite(h["reward"]) for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))


def test_ppo_lm_rejects_empty_prompts(tiny):
    with pytest.raises(ValueError, match="prompts is empty"):
        ppo_lm(tiny, tiny, lambda t: [0.0] * len(t), [], PPOConfig(iterations=1))
