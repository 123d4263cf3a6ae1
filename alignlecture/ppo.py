"""A minimal, readable PPO for the lecture's RLHF, on toy-world tabular policies and on Hugging Face LMs.

Rewards are per token, as in the lecture's max-entropy view (§RLHF in max-entropy RL): every action earns
β·log π_ref(a_t | s_t), the action that ends the response also earns r(x, y), and the entropy bonus β·H(π) is
estimated on the sampled action as −β·log π_old(a_t | s_t). Summed over a response this is
r(x, y) − β·log π(y|x)/π_ref(y|x), whose expectation is the KL-regularised objective; its optimum is
π* ∝ π_ref·exp(r/β). Updates use the clipped surrogate (Schulman et al. 2017) with a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import positive_finite, positive_int
from .toy import TabularPolicy, ToyWorld, check_beta


def per_token_rewards(logp_ref: torch.Tensor, logp_old: torch.Tensor, final_reward: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """β·log π_ref(a_t|s_t) − β·log π_old(a_t|s_t) per action, plus r(x, y) on the last action, [B, T]."""
    mask = mask.to(logp_ref.dtype)
    rewards = beta * (logp_ref - logp_old) * mask
    last = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & mask.bool()  # the final action of each row
    return rewards + last.to(rewards.dtype) * final_reward[:, None]


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{t′ ≥ t} r_t′ (undiscounted, episodic), zero outside the mask, [B, T]."""
    rewards = rewards * mask.to(rewards.dtype)
    return torch.flip(torch.cumsum(torch.flip(rewards, [1]), dim=1), [1]) * mask.to(rewards.dtype)


def ppo_clip_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip: float = 0.2) -> torch.Tensor:
    """Clipped surrogate −E[min(ρA, clip(ρ, 1−ε, 1+ε)A)], ρ = π_θ/π_old, averaged over masked actions."""
    ratio = torch.exp(logp_new - logp_old)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    mask = mask.to(surrogate.dtype)
    return -(surrogate * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class PPOConfig:
    """PPO settings (the same for tabular and LM policies where they apply)."""

    beta: float = 0.1
    learning_rate: float = 0.05
    iterations: int = 300
    batch_size: int = 512  # responses sampled per iteration (tabular); prompts × samples for LMs
    ppo_epochs: int = 4
    clip: float = 0.2
    value_learning_rate: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_beta(self.beta)
        for name in ("learning_rate", "clip", "value_learning_rate"):
            positive_finite(getattr(self, name), name)
        for name in ("iterations", "batch_size", "ppo_epochs"):
            positive_int(getattr(self, name), name)


def ppo_tabular(world: ToyWorld, pi_ref: TabularPolicy, rewards: torch.Tensor, config: PPOConfig,
                target: TabularPolicy | None = None) -> tuple[TabularPolicy, list[dict]]:
    """PPO from π_ref on a toy world toward max_π E_π[r] − β·KL(π‖π_ref) (lecture §RLHF).

    The history records KL(π‖target) each iteration when a target is given.
    """
    world.check_policy(pi_ref, "pi_ref")
    rewards = world.check_values(rewards, "rewards")
    beta = config.beta
    gen = torch.Generator().manual_seed(config.seed)  # draws on the CPU: the same batches whatever the device
    logits = torch.nn.Parameter(pi_ref.log_table.clone())  # start at the reference
    values = torch.nn.Parameter(torch.zeros(world.num_prefixes, dtype=torch.float64, device=world.device))  # V(s)
    opt = torch.optim.Adam([logits], lr=config.learning_rate)
    v_opt = torch.optim.Adam([values], lr=config.value_learning_rate)
    # decay the step size linearly so the sampling noise averages out near the optimum
    schedule = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.05, total_iters=config.iterations)
    history = []
    for it in range(config.iterations):
        with torch.no_grad():
            old = world.policy(torch.log_softmax(logits, dim=-1))
            idx = torch.multinomial(old.probs().cpu(), config.batch_size, replacement=True, generator=gen)
            idx = idx.to(world.device)
            y = world.responses[idx]
            nodes, mask = world.encoded[0][idx], world.encoded[1][idx]
            logp_old = old.log_table[nodes, y]
            logp_ref = pi_ref.log_table[nodes, y]
            returns = returns_to_go(per_token_rewards(logp_ref, logp_old, rewards[idx], mask, beta), mask)
        for _ in range(config.ppo_epochs):
            advantages = (returns - values[nodes]).detach()
            logp_new = torch.log_softmax(logits, dim=-1)[nodes, y]
            loss = ppo_clip_loss(logp_new, logp_old, advantages, mask, config.clip)
            opt.zero_grad()
            loss.backward()
            opt.step()
            v_loss = (((values[nodes] - returns) ** 2) * mask).sum() / mask.sum()
            v_opt.zero_grad()
            v_loss.backward()
            v_opt.step()
        schedule.step()
        row = {"iteration": it + 1, "objective": _objective(old, pi_ref, rewards, beta)}
        if target is not None:
            row["kl_to_target"] = old.kl(target)
        history.append(row)
    return world.policy(torch.log_softmax(logits.detach(), dim=-1)), history


def _objective(pi: TabularPolicy, pi_ref: TabularPolicy, rewards: torch.Tensor, beta: float) -> float:
    """Exact E_π[r] − β·KL(π‖π_ref)."""
    return pi.expected(rewards) - beta * pi.kl(pi_ref)


def kl_regularised_objective(pi: TabularPolicy, pi_ref: TabularPolicy, rewards: torch.Tensor, beta: float) -> float:
    """The RLHF objective E_{y~π}[r(y)] − β·KL(π‖π_ref), exactly, on a toy world (lecture §RLHF)."""
    check_beta(beta)
    return _objective(pi, pi_ref, pi.world.check_values(rewards, "rewards"), beta)


@torch.no_grad()
def _rollout(policy, ref_policy, reward_fn, prompts: list[str], samples: int, max_new_tokens: int, seed: int,
             beta: float, chat: bool):
    """Sample, score and compute returns for one LM PPO batch."""
    from .logprobs import completion_logprobs, encode_ids, prompt_token_ids
    from .models import generate

    repeated = [p for p in prompts for _ in range(samples)]
    gens = generate(policy, repeated, max_new_tokens=max_new_tokens, seed=seed, chat=chat)
    tok = policy.tokenizer
    prompt_ids = [prompt_token_ids(policy, p, chat=chat) for p in repeated]
    batch = encode_ids(prompt_ids, [c or [tok.eos_token_id] for c in gens.completion_ids], tok.pad_token_id)
    batch = {k: v.to(policy.device) for k, v in batch.items()}
    logp_old = completion_logprobs(policy.model, **batch).per_token
    logp_ref = completion_logprobs(ref_policy.model, **batch).per_token
    final = torch.as_tensor(reward_fn(gens.texts), dtype=logp_old.dtype, device=logp_old.device)
    mask = batch["completion_mask"]
    returns = returns_to_go(per_token_rewards(logp_ref, logp_old, final, mask, beta), mask)
    # baseline: the mean return-to-go of the other samples for the same prompt at the same position
    grouped = returns.view(len(prompts), samples, -1)
    counts = mask.view(len(prompts), samples, -1).sum(dim=1, keepdim=True).clamp(min=1)
    baseline = (grouped.sum(dim=1, keepdim=True) / counts).expand_as(grouped).reshape_as(returns)
    return batch, logp_old, (returns - baseline) * mask, final


def ppo_lm(policy, ref_policy, reward_fn, prompts: list[str], config: PPOConfig, *, samples_per_prompt: int = 4,
           max_new_tokens: int = 32, chat: bool = True) -> list[dict]:
    """PPO on a Hugging Face causal LM toward max_π E_π[r] − β·KL(π‖π_ref) (lecture §RLHF), updated in place.

    Returns the mean gold reward per iteration.
    """
    from .logprobs import completion_logprobs

    if not prompts:
        raise ValueError("prompts is empty; PPO needs at least one prompt")
    params = [p for p in policy.model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters (every requires_grad is False)")
    opt = torch.optim.AdamW(params, lr=config.learning_rate)
    history = []
    for it in range(config.iterations):
        policy.model.eval()
        batch, logp_old, advantages, final = _rollout(policy, ref_policy, reward_fn, prompts, samples_per_prompt,
                                                      max_new_tokens, config.seed + it, config.beta, chat)
        for _ in range(config.ppo_epochs):
            logp_new = completion_logprobs(policy.model, **batch).per_token
            loss = ppo_clip_loss(logp_new, logp_old, advantages, batch["completion_mask"], config.clip)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"PPO loss became {loss.item()} at iteration {it + 1}; lower learning_rate")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        history.append({"iteration": it + 1, "reward": final.mean().item()})
    return history
