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
