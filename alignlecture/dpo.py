"""Direct Preference Optimization: the loss of the lecture and its common variants, in a few visible lines.

With summed completion log-probs, the implicit reward of a response is r̂(x, y) = β·(log π(y|x) − log π_ref(y|x))
and DPO minimises −log σ(r̂(x, y_w) − r̂(x, y_l)) (lecture §DPO, policy learning; Rafailov et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import positive_finite
from .logprobs import sequence_logprobs, tokenize_pairs
from .preferences import expected_bt_loss, preference_columns
from .toy import check_beta

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def check_dpo_args(beta: float, loss_type: str, label_smoothing: float) -> None:
    """β > 0 and finite, a known loss type, label smoothing ε ∈ [0, 0.5)."""
    positive_finite(beta, "beta", "the KL coefficient")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 0.5):
        raise ValueError(
            f"label_smoothing must be in [0, 0.5) (the probability a label is flipped); got {label_smoothing!r}"
        )
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing applies to the 'sigmoid' and 'robust' losses, not {loss_type!r}")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss −log σ(β[log π(y_w)/π_ref(y_w) − log π(y_l)/π_ref(y_l)]) (lecture §DPO, policy learning)
    or a variant below, and the implicit rewards β(log π − log π_ref) of chosen and rejected, each [batch].

    With h = (log π_w − log π_ref,w) − (log π_l − log π_ref,l) and ε = label_smoothing:
      sigmoid  −(1−ε)·log σ(βh) − ε·log σ(−βh)        DPO (Rafailov et al. 2023); ε > 0 is cDPO
      ipo      (h − 1/(2β))²                          IPO (Azar et al. 2024) — pass per-token AVERAGED log-probs
      hinge    max(0, 1 − βh)                          SLiC-style hinge (Zhao et al. 2023)
      robust   [−(1−ε)·log σ(βh) + ε·log σ(−βh)]/(1−2ε) unbiased under flipped labels (Chowdhury et al. 2024)
    """
    check_dpo_args(beta, loss_type, label_smoothing)
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    shape = policy_chosen_logps.shape
    if len(shape) != 1 or any(t.shape != shape for t in logps):
        raise ValueError(
            "the four log-prob tensors must be 1-D with one entry per pair; got shapes "
            f"{[tuple(t.shape) for t in logps]}"
        )
    if shape[0] == 0:
        raise ValueError("empty batch: DPO needs at least one (chosen, rejected) pair")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # robust
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def dpo_weight(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """c/η = β σ(r̂_l − r̂_w) per pair, r̂ = β(log π − log π_ref): minus the DPO loss's derivative in log π_w
    (lecture §Rethinking DPO) — how hard one gradient step pushes the pair; near β while the policy ranks it wrong."""
    return beta * torch.sigmoid(beta * ((logp_rejected - ref_rejected) - (logp_chosen - ref_chosen)))


def dpo_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
) -> dict[str, float]:
    """Batch means under the names TRL logs: rewards/*, logps/* (summed log-probs; accuracies use a strict >)."""
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": policy_chosen_logps.detach().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().mean().item(),
    }


def evaluate(policy, ref_policy, dataset, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chat: bool = True, max_length: int | None = 256,
             batch_size: int = 16) -> dict[str, float]:
    """The mean DPO loss and TRL's metrics of ``policy`` against ``ref_policy`` on every pair of ``dataset``.

    One call, no gradient; the same numbers the trainer logs for a batch holding every pair (eos appended to each
    completion, completions cut at ``max_length`` tokens with the prompt as the trainer does). ``dataset``: any
    form ``train.DPOTrainer`` accepts.
    """
    check_dpo_args(beta, loss_type, label_smoothing)
    prompts, chosen, rejected = preference_columns(dataset)
    kw = dict(chat=chat, max_length=max_length, batch_size=batch_size)
    pc, pr = (sequence_logprobs(policy, prompts, c, **kw) for c in (chosen, rejected))
    rc, rr = (sequence_logprobs(ref_policy, prompts, c, **kw) for c in (chosen, rejected))
    lc = lr = torch.ones(())
    if loss_type == "ipo":  # IPO's loss uses per-token averages (the metrics stay on sums)
        lc, lr = (torch.tensor([sum(m) for m in tokenize_pairs(policy, prompts, c, chat=chat, max_length=max_length)[1]])
                  for c in (chosen, rejected))
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc / lc, pr / lr, rc / lc, rr / lr, beta, loss_type,
                                                        label_smoothing)
    chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
    return {"loss": losses.mean().item(), **dpo_metrics(chosen_rewards, rejected_rewards, pc, pr)}


def tabular_dpo(world, pi_ref, rewards: torch.Tensor, beta: float, *, scale: float = 1.0, steps: int = 500,
                learning_rate: float = 0.05):
    """Exact DPO on a toy world: minimise −E log σ(β log π_θ(y_w)/π_ref(y_w) − β log π_θ(y_l)/π_ref(y_l)) (§DPO).

    The expectation is the population DPO loss over every pair, with exact preferences.

    Pairs (y1, y2) are weighted by π_ref(y1)·π_ref(y2) and labelled with the exact Bradley–Terry probability
    σ(scale·(r1 − r2)); the implicit reward is β·log π_θ/π_ref. Returns (policy, losses).
    """
    check_beta(beta)
    rewards = world.check_values(rewards, "rewards")
    probs_ref, logp_ref = pi_ref.probs(), pi_ref.sequence_logprobs()
    table = torch.nn.Parameter(pi_ref.log_table.clone())
    opt = torch.optim.Adam([table], lr=learning_rate)
    losses = []
    for _ in range(steps):
        logp = world.policy_sequence_logprobs(torch.log_softmax(table, dim=-1))
        loss = expected_bt_loss(probs_ref, rewards, beta * (logp - logp_ref), scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return world.policy(torch.log_softmax(table.detach(), dim=-1)), losses
