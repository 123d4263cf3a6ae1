"""Gold rewards from real scorers we did not write: VADER sentiment and alt-profanity-check.

A gold reward maps a batch of texts to one float per text. It plays the part of the "human" whose
preferences the course's algorithms try to learn; keeping it a published, independent scorer means no result
in the book comes from a formula chosen to make the method look good.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class GoldReward:
    """A named, batched scorer: ``reward(texts) -> Tensor [len(texts)]`` (float64)."""

    name: str
    description: str
    low: float
    high: float
    _score: Callable[[list[str]], list[float]]

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError(f"{self.name} scores a list of texts; wrap a single text in a list: [{texts[:30]!r}]")
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{self.name}: every item must be a str; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        if not texts:
            return torch.zeros(0, dtype=torch.float64)
        return torch.tensor(self._score(texts), dtype=torch.float64)


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def _positivity(texts: list[str]) -> list[float]:
    analyzer = _vader()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def _neutrality(texts: list[str]) -> list[float]:
    analyzer = _vader()
    return [analyzer.polarity_scores(t)["neu"] for t in texts]


def _offensiveness(texts: list[str]) -> list[float]:
    import warnings

    with warnings.catch_warnings():  # its pickled scikit-learn model warns about version skew
        warnings.simplefilter("ignore")
        from profanity_check import predict_prob

        return [float(p) for p in predict_prob(texts)]


GOLD_REWARDS: dict[str, GoldReward] = {
    "positivity": GoldReward(
        "positivity",
        "VADER compound sentiment (Hutto & Gilbert 2014): −1 very negative … +1 very positive",
        -1.0,
        1.0,
        _positivity,
    ),
    "negativity": GoldReward(
        "negativity",
        "minus the VADER compound score: the same published scorer, asked for the opposite sentiment",
        -1.0,
        1.0,
        lambda texts: [-v for v in _positivity(texts)],
    ),
    "neutrality": GoldReward(
        "neutrality",
        "VADER's neutral share: the fraction of the text that carries no sentiment, 0 … 1 (a sober register; it "
        "trades off against positivity without being its mirror image)",
        0.0,
        1.0,
        _neutrality,
    ),
    "offensiveness": GoldReward(
        "offensiveness",
        "alt-profanity-check probability that the text is offensive: 0 … 1",
        0.0,
        1.0,
        _offensiveness,
    ),
}


def gold_reward(name: str) -> GoldReward:
    """The gold reward called ``name`` (one of GOLD_REWARDS)."""
    try:
        return GOLD_REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown gold reward {name!r}; choose one of {sorted(GOLD_REWARDS)}") from None


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Reward-learning loss −(1/N) Σ log σ(r(x, y_w) − r(x, y_l)) (lecture §RLHF, reward learning)."""
    r_chosen, r_rejected = torch.as_tensor(r_chosen), torch.as_tensor(r_rejected)
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(
            f"r_chosen and r_rejected must be 1-D with the same length; got {tuple(r_chosen.shape)} and "
            f"{tuple(r_rejected.shape)}"
        )
    if r_chosen.numel() == 0:
        raise ValueError("no preference pairs: the loss of an empty batch is undefined")
    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()


@torch.no_grad()
def sequence_features(policy, prompts: Sequence[str], completions: Sequence[str], *, chat: bool = True,
                      layer: int | None = None, batch_size: int = 16) -> torch.Tensor:
    """A frozen model's hidden states at ``layer`` (default: the middle one) averaged over the response tokens,
    Tensor [n, hidden] (float32).

    The middle layer is a common choice for frozen-feature probes; chapter 2 uses it and does not compare layers.
    """
    from .logprobs import encode_pairs, position_ids_from_mask

    out = []
    for start in range(0, len(prompts), batch_size):
        b = encode_pairs(policy, prompts[start : start + batch_size], completions[start : start + batch_size],
                         chat=chat, add_eos=True)
        b = {k: v.to(policy.device) for k, v in b.items()}
        states = policy.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                              position_ids=position_ids_from_mask(b["attention_mask"]),
                              output_hidden_states=True).hidden_states
        hidden = states[len(states) // 2 if layer is None else layer]  # [B, S, hidden]
        mask = b["completion_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * mask).sum(dim=1) / mask.sum(dim=1)).float().cpu())
    if not out:
        raise ValueError("no (prompt, completion) pairs to featurise")
    return torch.cat(out)


class RewardModel(torch.nn.Module):
    """r_φ(x, y) = w·standardise(h(x, y)) + b: a scalar head over a frozen LM's features."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.head = torch.nn.Linear(mean.numel(), 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """r̂(x, y) for each row of features [N, D] (standardised, then the linear head): Tensor [N]."""
        return self.head((features - self.mean) / self.std).squeeze(-1)


def train_reward_model(features_chosen: torch.Tensor, features_rejected: torch.Tensor, *, weight_decay: float = 1.0,
                       steps: int = 100, learning_rate: float = 0.05, seed: int = 0):
    """Fit a RewardModel by minimising ℒ_r(φ) = −(1/N) Σ log σ(r_φ(x, y_w) − r_φ(x, y_l)) (lecture §RLHF).

    The Bradley–Terry loss of the pairs, full batch, AdamW with ``weight_decay``; returns (model, losses).
    """
    if features_chosen.shape != features_rejected.shape or features_chosen.dim() != 2:
        raise ValueError(
            f"chosen and rejected features must both be [pairs, hidden]; got {tuple(features_chosen.shape)} and "
            f"{tuple(features_rejected.shape)}"
        )
    if features_chosen.shape[0] == 0:
        raise ValueError("no preference pairs to train the reward model on")
    both = torch.cat([features_chosen, features_rejected])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RewardModel(both.mean(dim=0), both.std(dim=0).clamp(min=1e-6)).to(both.device)  # its head too
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        loss = bradley_terry_loss(model(features_chosen), model(features_rejected))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses
