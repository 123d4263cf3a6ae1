"""Preferences: the Bradley–Terry model p*(y1 ≻ y2 | x) = σ(r(x, y1) − r(x, y2)), Bernoulli labels, datasets.

The lecture's annotator observes (x, y1, y2) and reports y1 ≻ y2 with probability p*; a preference dataset
D = {(x, y_w, y_l)} records the winner first. Here the annotator is simulated: the gold reward is a real
scorer (``alignlecture.rewards``) and labels are Bernoulli draws from the Bradley–Terry probability.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from ._checks import broadcastable, finite, positive_finite, positive_int


def _check_scale(scale: float) -> float:
    return positive_finite(scale, "scale", "the annotator's sharpness, an inverse temperature")


def bt_probability(r1, r2, scale: float = 1.0) -> torch.Tensor:
    """p*(y1 ≻ y2 | x) = σ(scale·(r1 − r2)) (lecture §Preference; Bradley & Terry 1952)."""
    r1, r2, scale = finite(r1, "rewards"), finite(r2, "rewards"), _check_scale(scale)
    broadcastable(r1, r2, ("r1", "r2"))
    return torch.sigmoid(scale * (r1 - r2))


def sample_preferences(r1, r2, *, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Bernoulli labels: True where the annotator prefers y1, drawn with probability p*(y1 ≻ y2 | x).

    The labels are ``torch.rand(…) < p*`` from a fresh generator seeded with ``seed``: give it a seed of its own,
    never the one that drew y1 and y2. The same seed replays the same uniforms, so a label can repeat a number
    that chose one of its responses, and labels then correlate with the draws (``torch.multinomial`` with
    replacement spends one uniform per draw: labels from that seed are biased; ``goodhart.preference_pairs``
    therefore draws its label seed from its own stream).
    """
    p = bt_probability(r1, r2, scale)
    gen = torch.Generator().manual_seed(int(seed))  # drawn on the CPU: the same labels whatever p's device
    return torch.rand(p.shape, generator=gen, dtype=torch.float64, device="cpu").to(p.device) < p


@dataclass(frozen=True)
class PreferencePair:
    """One labelled comparison (x, y_w, y_l) with the gold rewards that generated the label."""

    prompt: str
    chosen: str
    rejected: str
    gold_chosen: float
    gold_rejected: float

    @property
    def reward_gap(self) -> float:
        """Gold r(x, y_w) − r(x, y_l); negative when the noisy annotator picked the worse response."""
        return self.gold_chosen - self.gold_rejected


class PreferenceDataset(Sequence):
    """D = {(x⁽ⁱ⁾, y_w⁽ⁱ⁾, y_l⁽ⁱ⁾)}: an immutable list of PreferencePair with column views."""

    def __init__(self, pairs: Sequence[PreferencePair], *, scale: float = 1.0, gold_name: str = ""):
        pairs = list(pairs)
        if not pairs:
            raise ValueError("a preference dataset needs at least one pair; got none")
        self._pairs = pairs
        self.scale = _check_scale(scale)
        self.gold_name = gold_name

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return PreferenceDataset(self._pairs[i], scale=self.scale, gold_name=self.gold_name)
        return self._pairs[i]

    def column(self, name: str) -> list:
        """One field for every pair, e.g. ``column("chosen")``."""
        if name not in PreferencePair.__dataclass_fields__ and name != "reward_gap":
            raise KeyError(f"unknown column {name!r}; columns are {list(PreferencePair.__dataclass_fields__)} + reward_gap")
        return [getattr(p, name) for p in self._pairs]

    def to_dict(self) -> dict[str, list]:
        """Columns as a dict (prompt, chosen, rejected) — the layout TRL and datasets use."""
        return {k: self.column(k) for k in ("prompt", "chosen", "rejected", "gold_chosen", "gold_rejected")}

    @property
    def reward_gaps(self) -> torch.Tensor:
        return torch.tensor(self.column("reward_gap"), dtype=torch.float64)

    def agreement(self) -> float:
        """Fraction of pairs whose label agrees with the gold reward (ties count as ½)."""
        gaps = self.reward_gaps
        return float(((gaps > 0).double() + 0.5 * (gaps == 0).double()).mean())

    def __repr__(self) -> str:
        return f"PreferenceDataset({len(self)} pairs, gold={self.gold_name!r}, scale={self.scale})"


def build_preference_dataset(
    prompts: Sequence[str],
    first: Sequence[str],
    second: Sequence[str],
    gold: Callable[[list[str]], torch.Tensor],
    *,
    scale: float = 1.0,
    seed: int = 0,
) -> PreferenceDataset:
    """Score two responses per prompt with ``gold`` and label each pair by a Bernoulli(p*) annotator."""
    if not (len(prompts) == len(first) == len(second)):
        raise ValueError(
            f"prompts, first and second must have one entry per pair; got {len(prompts)}, {len(first)}, {len(second)}"
        )
    if not prompts:
        raise ValueError("no pairs to label: prompts is empty")
    r1, r2 = gold(list(first)), gold(list(second))
    prefers_first = sample_preferences(r1, r2, scale=scale, seed=seed)
    pairs = []
    for i, x in enumerate(prompts):
        if bool(prefers_first[i]):
            pairs.append(PreferencePair(x, first[i], second[i], float(r1[i]), float(r2[i])))
        else:
            pairs.append(PreferencePair(x, second[i], first[i], float(r2[i]), float(r1[i])))
    return PreferenceDataset(pairs, scale=scale, gold_name=getattr(gold, "name", ""))


def all_pairs(num_prompts: int, k: int) -> list[tuple[int, int, int]]:
    """(i, a, b) for every prompt i and every pair a < b of its k responses: C(k, 2) comparisons per prompt."""
    num_prompts, k = positive_int(num_prompts, "num_prompts"), positive_int(k, "k", 2, "responses per prompt")
    return [(i, a, b) for i in range(num_prompts) for a, b in combinations(range(k), 2)]


def all_pairs_dataset(
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    gold: Callable[[list[str]], torch.Tensor],
    *,
    scale: float = 1.0,
    seed: int = 0,
) -> PreferenceDataset:
    """Every pair of responses to the same prompt, labelled by a Bradley–Terry annotator on ``gold``.

    ``responses[i]`` holds the k responses to ``prompts[i]`` (the same k ≥ 2 for every prompt); the pairs come
    in the order of :func:`all_pairs`, so a given seed always gives the same labels.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"need one list of responses per prompt; got {len(prompts)} prompts, {len(responses)} lists")
    sizes = sorted({len(r) for r in responses})
    if len(sizes) != 1:
        raise ValueError(f"every prompt needs the same number of responses; got sizes {sizes}")
    pairs = all_pairs(len(prompts), sizes[0])
    return build_preference_dataset(
        [prompts[i] for i, _, _ in pairs], [responses[i][a] for i, a, _ in pairs],
        [responses[i][b] for i, _, b in pairs], gold, scale=scale, seed=seed,
    )


def annotator_agreement(r1, r2, *, scale: float, annotators: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Show each comparison to several independent Bradley–Terry annotators (seeds seed, seed + 1, …).

    Returns (∣gold gap∣, label agrees with the gold order), one entry per label, annotator by annotator, over the
    comparisons whose gold gap is not zero (a tie has no right answer). Annotator 0 labels exactly as
    ``build_preference_dataset(..., seed=seed)`` does.
    """
    annotators = positive_int(annotators, "annotators")
    gap = finite(r1, "rewards") - finite(r2, "rewards")
    labels = torch.stack([sample_preferences(r1, r2, scale=scale, seed=seed + s) for s in range(annotators)])
    decided = gap != 0
    return gap.abs()[decided].repeat(annotators), (labels == (gap > 0))[:, decided].flatten()


@dataclass
class AgreementBins:
    """Label agreement with the gold reward, binned by ∣gap∣: centres, rate, Wilson 95% interval, counts."""

    centres: torch.Tensor
    rate: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    count: torch.Tensor


def wilson_interval(successes: torch.Tensor, n: torch.Tensor, z: float = 1.96):
    """Wilson score interval for a binomial proportion (no NaN at 0 or n successes)."""
    n = n.double()
    p = torch.where(n > 0, successes.double() / n.clamp(min=1), torch.zeros_like(n))
    denom = 1 + z**2 / n.clamp(min=1)
    centre = (p + z**2 / (2 * n.clamp(min=1))) / denom
    half = z * torch.sqrt(p * (1 - p) / n.clamp(min=1) + z**2 / (4 * n.clamp(min=1) ** 2)) / denom
    return (centre - half).clamp(0.0, 1.0), (centre + half).clamp(0.0, 1.0)  # exact 0/1 despite rounding


def label_agreement(abs_gap: torch.Tensor, agrees: torch.Tensor, edges: torch.Tensor) -> AgreementBins:
    """Bin comparisons by ∣gold gap∣ and report how often the label agreed with the gold reward."""
    abs_gap = torch.as_tensor(abs_gap, dtype=torch.float64)
    agrees = torch.as_tensor(agrees, device=abs_gap.device).bool()
    edges = torch.as_tensor(edges, dtype=torch.float64, device=abs_gap.device)
    if abs_gap.shape != agrees.shape or abs_gap.dim() != 1:
        raise ValueError(f"abs_gap and agrees must be 1-D of equal length; got {tuple(abs_gap.shape)}, {tuple(agrees.shape)}")
    if edges.dim() != 1 or edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError("edges must be an increasing 1-D tensor with at least two entries")
    which = torch.bucketize(abs_gap, edges[1:-1])
    k = edges.numel() - 1
    count = torch.bincount(which, minlength=k)
    hits = torch.bincount(which, weights=agrees.double(), minlength=k)
    low, high = wilson_interval(hits, count)
    rate = torch.where(count > 0, hits / count.clamp(min=1), torch.full_like(hits, float("nan")))
    return AgreementBins((edges[1:] + edges[:-1]) / 2, rate, low, high, count)


def expected_bt_loss(probs: torch.Tensor, gold: torch.Tensor, model_rewards: torch.Tensor, scale: float = 1.0):
    """Population reward-learning loss E_{y1,y2~π} CE(p*(y1≻y2), σ(r̂1 − r̂2)) over a finite response set.

    With y1, y2 drawn i.i.d. from ``probs`` and labels from the gold Bradley–Terry model, this is the
    expectation of the lecture's L_r(φ); it is minimised exactly when r̂ = scale·gold up to a constant.
    """
    probs = torch.as_tensor(probs, dtype=torch.float64, device=model_rewards.device)
    gold = torch.as_tensor(gold, dtype=torch.float64, device=model_rewards.device)
    if probs.dim() != 1 or gold.shape != probs.shape or model_rewards.shape != probs.shape:
        raise ValueError(
            f"probs, gold and model_rewards must be 1-D of one length; got {tuple(probs.shape)}, "
            f"{tuple(gold.shape)}, {tuple(model_rewards.shape)}"
        )
    p_star = bt_probability(gold[:, None], gold[None, :], scale)  # [N, N] p*(y_i ≻ y_j)
    d = model_rewards[:, None] - model_rewards[None, :]
    logsig = torch.nn.functional.logsigmoid
    ce = -(p_star * logsig(d) + (1 - p_star) * logsig(-d))
    return (probs[:, None] * probs[None, :] * ce).sum()


FIELDS = ("prompt", "chosen", "rejected")


def preference_columns(dataset) -> tuple[list[str], list[str], list[str]]:
    """(prompts, chosen, rejected) from any accepted dataset form (see ``DPOTrainer``)."""
    if hasattr(dataset, "to_dict") and not isinstance(dataset, Mapping):  # PreferenceDataset, datasets.Dataset
        dataset = dataset.to_dict()
    if isinstance(dataset, Mapping):
        missing = [f for f in FIELDS if f not in dataset]
        if missing:
            raise ValueError(f"the dataset has no {missing[0]!r} column (columns: {sorted(dataset)}); DPO needs "
                             "prompt, chosen and rejected columns")
        columns = [list(dataset[f]) for f in FIELDS]
        if len({len(c) for c in columns}) > 1:
            raise ValueError(f"column lengths differ: {len(columns[0])} prompts, {len(columns[1])} chosen, "
                             f"{len(columns[2])} rejected")
        records = [dict(zip(FIELDS, row)) for row in zip(*columns)]
    elif isinstance(dataset, Sequence) and not isinstance(dataset, str):
        records = list(dataset)
    else:
        raise ValueError(f"dataset must be a list of records, a mapping of columns, a datasets.Dataset or a "
                         f"PreferenceDataset with prompt/chosen/rejected; got {type(dataset).__name__}")
    if not records:
        raise ValueError("the preference dataset is empty; DPO needs at least one (prompt, chosen, rejected) pair")
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {i} is a {type(record).__name__}, not a mapping with prompt/chosen/rejected")
        for f in FIELDS:
            if f not in record:
                raise ValueError(f"record {i} has no {f!r} field (it has {sorted(record)}); every record needs "
                                 "prompt, chosen and rejected")
            if not isinstance(record[f], str):
                raise ValueError(f"record {i}: {f!r} is a {type(record[f]).__name__}, not a str; pass plain text "
                                 "(conversational message lists are not supported)")
    return tuple([r[f] for r in records] for f in FIELDS)
