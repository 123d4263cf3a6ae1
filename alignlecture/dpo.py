"""Direct Preference Optimization: the loss of the lecture and the whole family TRL 1.16 offers, each a few lines.

With summed completion log-probs, the implicit reward of a response is r̂(x, y) = β·(log π(y|x) − log π_ref(y|x))
and DPO minimises −log σ(r̂(x, y_w) − r̂(x, y_l)) (lecture §DPO, policy learning; Rafailov et al. 2023). The other
14 loss types of TRL's ``DPOTrainer`` are functions of the same four log-probs (and, for three of them, of the
completion lengths); ``dpo_loss`` computes any of them, or a weighted sum of several, and its mean equals TRL's loss
on the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import finite_number, one_of, positive_finite
from .logprobs import sequence_logprobs, tokenize_pairs
from .preferences import expected_bt_loss, preference_columns
from .toy import check_beta


@dataclass(frozen=True)
class Pairs:
    """One batch of pairs as the losses see it: summed log-probs [batch], completion token counts [batch] (or
    None), and the hyper-parameters β, ε (label smoothing) and DiscoPOP's τ."""

    pc: torch.Tensor  # log π(y_w): policy, chosen
    pr: torch.Tensor  # log π(y_l): policy, rejected
    rc: torch.Tensor  # log π_ref(y_w)
    rr: torch.Tensor  # log π_ref(y_l)
    nc: torch.Tensor | None  # completion tokens of y_w (eos included)
    nr: torch.Tensor | None  # completion tokens of y_l
    beta: float
    eps: float = 0.0
    tau: float = 0.05

    @property
    def w(self) -> torch.Tensor:
        """ρ_w = log π(y_w) − log π_ref(y_w), the chosen log-ratio."""
        return self.pc - self.rc

    @property
    def l(self) -> torch.Tensor:  # noqa: E743
        """ρ_l = log π(y_l) − log π_ref(y_l), the rejected log-ratio."""
        return self.pr - self.rr

    @property
    def h(self) -> torch.Tensor:
        """The margin h = ρ_w − ρ_l."""
        return self.w - self.l


def smoothed_logistic(z: torch.Tensor, eps: float) -> torch.Tensor:
    """−(1−ε) log σ(z) − ε log σ(−z): the logistic loss with labels flipped with probability ε."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


# ---------------------------------------------------------------------------------------------- the 15 losses
def sigmoid(p: Pairs) -> torch.Tensor:
    """DPO −(1−ε) log σ(βh) − ε log σ(−βh) (Rafailov et al. 2023; ε > 0 is cDPO, Mitchell 2023 — TRL ignores ε)."""
    return smoothed_logistic(p.beta * p.h, p.eps)


def hinge(p: Pairs) -> torch.Tensor:
    """max(0, 1 − βh): the hinge of SLiC-HF (Zhao et al. 2023) on the reference-corrected margin."""
    return torch.relu(1 - p.beta * p.h)


def ipo(p: Pairs) -> torch.Tensor:
    """IPO (ρ_w/n_w − ρ_l/n_l − 1/(2β))² on per-token log-ratios (Azar et al. 2024, Eq. 17; β is their τ)."""
    return (p.w / p.nc - p.l / p.nr - 1 / (2 * p.beta)) ** 2


def exo_pair(p: Pairs) -> torch.Tensor:
    """EXO KL(q ‖ (1−ε, ε)) with q = (σ(βh), σ(−βh)) (Ji et al. 2024, Eq. 16); needs 0 < ε."""
    q_w, q_l = torch.sigmoid(p.beta * p.h), torch.sigmoid(-p.beta * p.h)
    kl_w = q_w * (F.logsigmoid(p.beta * p.h) - math.log1p(-p.eps))
    return kl_w + q_l * (F.logsigmoid(-p.beta * p.h) - math.log(p.eps))


def nca_pair(p: Pairs) -> torch.Tensor:
    """NCA −log σ(βρ_w) − ½ log σ(−βρ_w) − ½ log σ(−βρ_l): absolute, not relative, rewards (Chen et al. 2024)."""
    return -F.logsigmoid(p.beta * p.w) - 0.5 * F.logsigmoid(-p.beta * p.w) - 0.5 * F.logsigmoid(-p.beta * p.l)


def robust(p: Pairs) -> torch.Tensor:
    """[−(1−ε) log σ(βh) + ε log σ(−βh)]/(1−2ε): unbiased under labels flipped w.p. ε (Chowdhury et al. 2024)."""
    return (-(1 - p.eps) * F.logsigmoid(p.beta * p.h) + p.eps * F.logsigmoid(-p.beta * p.h)) / (1 - 2 * p.eps)


def bco_pair(p: Pairs) -> torch.Tensor:
    """BCO −log σ(βρ_w) − log σ(−βρ_l): chosen vs rejected as a binary classifier (Jung et al. 2024)."""
    return -F.logsigmoid(p.beta * p.w) - F.logsigmoid(-p.beta * p.l)


def sppo_hard(p: Pairs) -> torch.Tensor:
    """SPPO (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))², hard labels P = 1 / 0 (Wu et al. 2024, Eq. 4.7)."""
    return (p.w - 0.5 / p.beta) ** 2 + (p.l + 0.5 / p.beta) ** 2


def aot(p: Pairs) -> torch.Tensor:
    """AOT: the smoothed logistic loss of δ = sort(log π_w − log π_l) − sort(log π_ref,w − log π_ref,l) over the
    batch, quantile against quantile (Melnyk et al. 2024). Entry k is the k-th sorted position, not pair k."""
    delta = torch.sort(p.pc - p.pr).values - torch.sort(p.rc - p.rr).values
    return smoothed_logistic(p.beta * delta, p.eps)


def aot_unpaired(p: Pairs) -> torch.Tensor:
    """AOT unpaired: δ = sort(ρ_w) − sort(ρ_l) over the batch, chosen and rejected sorted apart (Melnyk et al.
    2024). Entry k is the k-th sorted position."""
    return smoothed_logistic(p.beta * (torch.sort(p.w).values - torch.sort(p.l).values), p.eps)


def apo_zero(p: Pairs) -> torch.Tensor:
    """APO-zero 1 − σ(βρ_w) + σ(βρ_l): chosen up, rejected down (D'Oosterlinck et al. 2024, Eq. 7)."""
    return 1 - torch.sigmoid(p.beta * p.w) + torch.sigmoid(p.beta * p.l)


def apo_down(p: Pairs) -> torch.Tensor:
    """APO-down σ(βρ_w) + 1 − σ(βh): chosen down, rejected down more (D'Oosterlinck et al. 2024, Eq. 8)."""
    return torch.sigmoid(p.beta * p.w) + 1 - torch.sigmoid(p.beta * p.h)


def discopop(p: Pairs) -> torch.Tensor:
    """DiscoPOP (1 − m)·(−log σ(βh)) + m·e^{−βh}, m = σ(βh/τ): logistic and exponential losses blended by the
    margin (Lu et al. 2024, Eq. 5; τ = discopop_tau). Not convex: at h = 0 its slope is β[(1 − ln 2)/(4τ) − 3/4],
    positive for τ < 0.102, so from π = π_ref it first pushes the margin DOWN."""
    m = torch.sigmoid(p.beta * p.h / p.tau)
    return (1 - m) * -F.logsigmoid(p.beta * p.h) + m * torch.exp(-p.beta * p.h)


def sft(p: Pairs) -> torch.Tensor:
    """SFT −log π(y_w)/n̄_w, n̄_w the batch's mean chosen length: the mean is the per-token NLL of the chosen
    completions (no reference, no β). The mixing term of MPO (Wang et al. 2024)."""
    return -p.pc / p.nc.mean()


def sigmoid_norm(p: Pairs) -> torch.Tensor:
    """Length-normalised DPO −log σ(β(ρ_w/n_w − ρ_l/n_l)) (per-token log-ratios, as SimPO's; Meng et al. 2024)."""
    return -F.logsigmoid(p.beta * (p.w / p.nc - p.l / p.nr))


LOSSES = {f.__name__: f for f in (sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot,
                                  aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm)}
LOSS_TYPES = tuple(LOSSES)  # TRL 1.16's order
SMOOTHED = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired")  # the losses that read label_smoothing ε
PER_TOKEN = ("ipo", "sft", "sigmoid_norm")  # the losses that need completion token counts
BATCH_LEVEL = ("aot", "aot_unpaired", "sft")  # a pair's loss depends on the rest of the batch
NO_REFERENCE = ("sft",)  # the losses that never read π_ref


def loss_types(loss_type) -> tuple[str, ...]:
    """``loss_type`` as a tuple of known names: one name, or a list of them (TRL's list-of-losses)."""
    names = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type) if isinstance(loss_type, Sequence) else ()
    if not names:
        raise ValueError(f"loss_type must be a loss name or a non-empty list of them; got {loss_type!r}")
    for name in names:
        one_of(name, "loss_type", LOSS_TYPES)
    return names


def check_dpo_args(beta: float, loss_type, label_smoothing: float, loss_weights=None,
                   discopop_tau: float = 0.05) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """β > 0, known loss type(s), ε ∈ [0, 0.5) used by one of them (> 0 for exo_pair), one finite weight per loss
    type, τ > 0. Returns the loss types and their weights (1.0 each when ``loss_weights`` is None, as TRL)."""
    positive_finite(beta, "beta", "the KL coefficient")
    names = loss_types(loss_type)
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 0.5):
        raise ValueError(
            f"label_smoothing must be in [0, 0.5) (the probability a label is flipped); got {label_smoothing!r}"
        )
    if label_smoothing and not set(names) & set(SMOOTHED):
        raise ValueError(f"label_smoothing is used only by the {', '.join(map(repr, SMOOTHED))} losses, not "
                         f"{'/'.join(names)!r} (TRL would ignore it silently): set label_smoothing=0")
    if "exo_pair" in names and not label_smoothing:
        raise ValueError("the 'exo_pair' loss needs label_smoothing ε > 0 (its target is (1−ε, ε); the EXO paper "
                         "uses ε = 1e-3); got label_smoothing=0")
    positive_finite(discopop_tau, "discopop_tau", "DiscoPOP's temperature τ")
    if loss_weights is None:
        return names, (1.0,) * len(names)
    listed = isinstance(loss_weights, Sequence) and not isinstance(loss_weights, (str, bytes))
    if not listed or len(loss_weights) != len(names):
        raise ValueError(f"loss_weights must be a list with one weight per loss type ({len(names)} for {list(names)});"
                         f" got {loss_weights!r}")
    return names, tuple(finite_number(w, f"loss_weights[{k}]") for k, w in enumerate(loss_weights))


def _check_batch(logps: Sequence[torch.Tensor], tokens: Sequence, names: Sequence[str]) -> list:
    """Four 1-D log-prob tensors of one length ≥ 1; token counts ≥ 1 of that length where a loss needs them,
    returned in the log-probs' dtype (or None)."""
    shape = logps[0].shape
    if len(shape) != 1 or any(t.shape != shape for t in logps):
        raise ValueError(
            "the four log-prob tensors must be 1-D with one entry per pair; got shapes "
            f"{[tuple(t.shape) for t in logps]}"
        )
    if shape[0] == 0:
        raise ValueError("empty batch: DPO needs at least one (chosen, rejected) pair")
    needs = [n for n in names if n in PER_TOKEN]
    for name, t in zip(("chosen_tokens", "rejected_tokens"), tokens):
        if needs and t is None:
            raise ValueError(f"loss_type {needs[0]!r} averages log-probs per token: pass {name} (the completion "
                             "token counts, eos included, one per pair) along with the summed log-probs")
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != shape or bool((t < 1).any())):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of counts ≥ 1 with one entry per pair {tuple(shape)}; got {got}")
    return [None if t is None else t.to(logps[0].dtype) for t in tokens]


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    *,
    loss_weights: Sequence[float] | None = None,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss −log σ(β[log π(y_w)/π_ref(y_w) − log π(y_l)/π_ref(y_l)]) (lecture §DPO, policy learning)
    or any of TRL's 14 other loss types, and the implicit rewards β(log π − log π_ref) of chosen and rejected.

    All log-probs are SUMMED over the completion, each [batch]; ``chosen_tokens``/``rejected_tokens`` are the
    completion token counts (eos included), needed by the per-token losses 'ipo', 'sigmoid_norm' and 'sft'. A list
    of loss types gives Σ_k w_k·loss_k with ``loss_weights`` (default 1 each), as TRL's ``loss_type=[…]``. The mean
    of the losses equals TRL 1.16's ``DPOTrainer`` loss on the same batch (tests/test_trl_parity.py), except that
    'sigmoid' with ε > 0 is cDPO here while TRL ignores ε there.

    With ρ = log π − log π_ref, h = ρ_w − ρ_l, ε = ``label_smoothing`` (reference: ✓ read, – not read):
      sigmoid      ✓ −(1−ε) log σ(βh) − ε log σ(−βh)                 DPO, Rafailov et al. 2023 (ε: cDPO)
      hinge        ✓ max(0, 1 − βh)                                   SLiC-HF, Zhao et al. 2023
      ipo          ✓ (ρ_w/n_w − ρ_l/n_l − 1/(2β))²                    IPO, Azar et al. 2024 (β is τ)
      exo_pair     ✓ σ(βh) log(σ(βh)/(1−ε)) + σ(−βh) log(σ(−βh)/ε)    EXO, Ji et al. 2024 (ε > 0)
      nca_pair     ✓ −log σ(βρ_w) − ½ log σ(−βρ_w) − ½ log σ(−βρ_l)   NCA, Chen et al. 2024
      robust       ✓ [−(1−ε) log σ(βh) + ε log σ(−βh)]/(1−2ε)         rDPO, Chowdhury et al. 2024
      bco_pair     ✓ −log σ(βρ_w) − log σ(−βρ_l)                      BCO, Jung et al. 2024
      sppo_hard    ✓ (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²                SPPO, Wu et al. 2024
      aot          ✓ sigmoid loss of sort(log π_w − log π_l) − sort(log π_ref,w − log π_ref,l)   AOT, Melnyk et al. 2024
      aot_unpaired ✓ sigmoid loss of sort(ρ_w) − sort(ρ_l)             AOT, Melnyk et al. 2024
      apo_zero     ✓ 1 − σ(βρ_w) + σ(βρ_l)                            APO, D'Oosterlinck et al. 2024
      apo_down     ✓ σ(βρ_w) + 1 − σ(βh)                              APO, D'Oosterlinck et al. 2024
      discopop     ✓ (1−m)(−log σ(βh)) + m e^{−βh}, m = σ(βh/τ)        DiscoPOP, Lu et al. 2024
      sft          – −log π(y_w)/n̄_w (n̄_w: the batch's mean chosen length)   MPO's SFT term, Wang et al. 2024
      sigmoid_norm ✓ −log σ(β(ρ_w/n_w − ρ_l/n_l))                     length-normalised DPO (cf. SimPO, Meng 2024)

    'aot', 'aot_unpaired' and 'sft' are batch-level: entry k depends on the whole batch (the aot ones are sorted).
    """
    names, weights = check_dpo_args(beta, loss_type, label_smoothing, loss_weights, discopop_tau)
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    tokens = _check_batch(logps, (chosen_tokens, rejected_tokens), names)
    p = Pairs(*logps, *tokens, beta=beta, eps=label_smoothing, tau=discopop_tau)
    losses = sum(weight * LOSSES[name](p) for name, weight in zip(names, weights))
    return losses, beta * p.w.detach(), beta * p.l.detach()


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


def evaluate(policy, ref_policy, dataset, *, beta: float = 0.1, loss_type: str | Sequence[str] = "sigmoid",
             label_smoothing: float = 0.0, loss_weights: Sequence[float] | None = None, discopop_tau: float = 0.05,
             chat: bool = True, max_length: int | None = 256, batch_size: int = 16) -> dict[str, float]:
    """The mean DPO loss and TRL's metrics of ``policy`` against ``ref_policy`` on every pair of ``dataset``.

    One call, no gradient; the same numbers the trainer logs for a batch holding every pair (eos appended to each
    completion, completions cut at ``max_length`` tokens with the prompt as the trainer does). ``dataset``: any
    form ``train.DPOTrainer`` accepts; ``loss_type`` etc. as in ``dpo_loss``.
    """
    check_dpo_args(beta, loss_type, label_smoothing, loss_weights, discopop_tau)
    prompts, chosen, rejected = preference_columns(dataset)
    kw = dict(chat=chat, max_length=max_length, batch_size=batch_size)
    pc, pr = (sequence_logprobs(policy, prompts, c, **kw) for c in (chosen, rejected))
    rc, rr = (sequence_logprobs(ref_policy, prompts, c, **kw) for c in (chosen, rejected))
    nc, nr = (torch.tensor([sum(m) for m in tokenize_pairs(policy, prompts, c, chat=chat, max_length=max_length)[1]],
                           dtype=pc.dtype) for c in (chosen, rejected))  # completion tokens, eos included
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta, loss_type, label_smoothing, nc, nr,
                                                        loss_weights=loss_weights, discopop_tau=discopop_tau)
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
