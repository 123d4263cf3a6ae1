"""The zoo's recipe book: how each tuned policy is made — base model, gold reward, data and DPO settings.

A recipe fixes everything (prompts, sampling seed, annotator sharpness, DPO config), so the same recipe gives
the same weights on the same kind of machine, and its hash names the cache entry. ``zoo`` trains, stores and
loads the policies; this module only says what they are, so that anything that needs a recipe's identity (the
sample caches' keys) can read it without importing the trainer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from .models import Policy, generate
from .preferences import PreferenceDataset, all_pairs_dataset
from .prompts import prompt_set
from .rewards import gold_reward


SEEDS = (0, 1, 2)
DPO_DEFAULTS = dict(beta=0.1, learning_rate=2e-4, batch_size=8, num_epochs=2, trainable_layers=4, seed=0)


@dataclass(frozen=True)
class Recipe:
    """How a zoo policy is made: base model, gold reward, data and DPO settings."""

    name: str
    description: str
    gold: str
    base: str = "smollm2-135m-instruct"
    num_prompts: int = 20
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    sample_seed: int = 0
    label_scale: float = 10.0  # a sharp annotator: labels agree with the gold order ~87% of the time
    label_seed: int = 0
    dpo: dict = field(default_factory=lambda: dict(DPO_DEFAULTS))

    def key(self) -> str:
        """A short hash of every field: a changed recipe never reads an old cache."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("smollm2-positivity", "SmolLM2-135M-Instruct tuned by DPO toward VADER positivity", gold="positivity"),
        Recipe("smollm2-negativity", "SmolLM2-135M-Instruct tuned by DPO toward VADER negativity (the opposite "
               "objective: it trades off exactly against positivity)", gold="negativity"),
        Recipe("smollm2-neutrality", "SmolLM2-135M-Instruct tuned by DPO toward VADER's neutral share (a sober "
               "register: the second objective of chapter 3's multi-objective front)", gold="neutrality"),
        Recipe("smollm2-positivity-beta0.2", "smollm2-positivity trained at β = 0.2 instead of 0.1 (chapter 3 "
               "compares it with β adjustment by logit mixing)", gold="positivity",
               dpo={**DPO_DEFAULTS, "beta": 0.2}),
        Recipe("smollm2-positivity-normalized", "smollm2-positivity trained by pairwise-normalized descent instead "
               "of the plain DPO gradient (chapter 4 compares the two runs)", gold="positivity",
               dpo={**DPO_DEFAULTS, "pairwise_normalized": True}),
        # chapter 8: two other loss types of TRL's DPOTrainer on the same data, seed and schedule
        Recipe("smollm2-positivity-ipo", "smollm2-positivity trained with the IPO loss (loss_type='ipo') at β = 0.5 "
               "instead of DPO's sigmoid loss at β = 0.1. IPO regresses the per-token log-ratio margin onto 1/(2β), "
               "so its β is on another scale than DPO's: the target is 5 nats per token at β = 0.1 and 1 nat per "
               "token at β = 0.5 (chapter 8 compares the loss types and the margins their runs reach)",
               gold="positivity", dpo={**DPO_DEFAULTS, "loss_type": "ipo", "beta": 0.5}),
        Recipe("smollm2-positivity-apo-zero", "smollm2-positivity trained with APO-zero (loss_type='apo_zero') at "
               "DPO's β = 0.1: it pushes the chosen answer's log-ratio up and the rejected one's down, each "
               "through σ(β·log π/π_ref) of the same summed log-ratio DPO's implicit reward uses, so DPO's β keeps "
               "its meaning (chapter 8 compares the loss types)", gold="positivity",
               dpo={**DPO_DEFAULTS, "loss_type": "apo_zero"}),
        # seeds 1 and 2 of the two runs chapter 4 compares: another data sample, other labels, another batch order
        *(Recipe(f"smollm2-positivity-seed{s}", f"smollm2-positivity with seed {s} for its data, labels and batch "
                 "order (chapter 4 compares methods over seeds 0, 1, 2)", gold="positivity", sample_seed=s,
                 label_seed=s, dpo={**DPO_DEFAULTS, "seed": s}) for s in SEEDS[1:]),
        *(Recipe(f"smollm2-positivity-normalized-seed{s}", f"smollm2-positivity-normalized with seed {s} for its "
                 "data, labels and batch order", gold="positivity", sample_seed=s, label_seed=s,
                 dpo={**DPO_DEFAULTS, "pairwise_normalized": True, "seed": s}) for s in SEEDS[1:]),
    )
}


def seeded(name: str, seed: int) -> str:
    """The recipe name of ``name``'s run with ``seed`` (seed 0 is the recipe itself): chapter 4's seed sweep."""
    if seed not in SEEDS:
        raise ValueError(f"seed must be one of {SEEDS} (the seeds the zoo has recipes for); got {seed!r}")
    return name if seed == 0 else f"{name}-seed{seed}"


# The model cards' evaluation: prompts none of the recipes trained on, several samples each
EVAL_PROMPTS, EVAL_SAMPLES_PER_PROMPT, EVAL_SEED = 36, 4, 1


def evaluation_prompts(rec: Recipe) -> list[str]:
    """``EVAL_PROMPTS`` prompts the recipe never trained on: the held-out split, then the training split's prompts
    beyond the recipe's ``num_prompts``."""
    unseen = prompt_set("heldout") + prompt_set("train")[rec.num_prompts :]
    if len(unseen) < EVAL_PROMPTS:
        raise ValueError(f"recipe {rec.name!r} leaves {len(unseen)} unseen prompts; the cards need {EVAL_PROMPTS}")
    return unseen[:EVAL_PROMPTS]


def recipe(name: str) -> Recipe:
    """The recipe called ``name``."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown zoo policy {name!r}; choose one of {sorted(RECIPES)}") from None


def preference_data(rec: Recipe, policy: Policy, *, sampler=generate) -> PreferenceDataset:
    """Sample responses from the base policy on training prompts; label every pair per prompt by BT on the gold reward.

    ``sampler`` draws the answers (``models.generate``, or ``samples.sample``, its cached form: recipes that differ
    only in their gold reward or DPO settings then share one draw, since the answers depend only on the base model,
    the prompts, ``max_new_tokens`` and ``sample_seed``).
    """
    prompts = prompt_set("train")[: rec.num_prompts]
    k = rec.samples_per_prompt
    samples = sampler(policy, [x for x in prompts for _ in range(k)], max_new_tokens=rec.max_new_tokens,
                      seed=rec.sample_seed, batch_size=40)
    texts = [samples.texts[i * k : (i + 1) * k] for i in range(len(prompts))]
    return all_pairs_dataset(prompts, texts, gold_reward(rec.gold), scale=rec.label_scale, seed=rec.label_seed)
