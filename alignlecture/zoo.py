"""A small zoo of tuned policies: named, seeded DPO recipes that train on first use and are cached.

Chapters 3–7 reuse chapter 2's tuned SmolLM2s through ``load_tuned(name)``. A recipe fixes everything —
prompts, sampling seed, annotator sharpness, DPO config — so the same recipe gives the same weights on the
same kind of machine. Only the tensors that training changed are stored (a few MB), next to the recipe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .cache import atomic_directory, cache_dir
from .models import Policy, generate, load_policy
from .preferences import PreferenceDataset, all_pairs_dataset
from .prompts import prompt_set
from .rewards import gold_reward
from .train import DPOConfig, DPOTrainer, TrainResult


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
    )
}


def recipe(name: str) -> Recipe:
    """The recipe called ``name``."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown zoo policy {name!r}; choose one of {sorted(RECIPES)}") from None


def preference_data(rec: Recipe, policy: Policy) -> PreferenceDataset:
    """Sample responses from the base policy on training prompts; label every pair per prompt by BT on the gold reward."""
    prompts = prompt_set("train")[: rec.num_prompts]
    k = rec.samples_per_prompt
    samples = generate(policy, [x for x in prompts for _ in range(k)], max_new_tokens=rec.max_new_tokens,
                       seed=rec.sample_seed, batch_size=40)
    texts = [samples.texts[i * k : (i + 1) * k] for i in range(len(prompts))]
    return all_pairs_dataset(prompts, texts, gold_reward(rec.gold), scale=rec.label_scale, seed=rec.label_seed)


# Recipes keep the field names DPOConfig had when they were written, because their cache keys hash them.
RECIPE_NAMES = {"batch_size": "per_device_train_batch_size", "num_epochs": "num_train_epochs"}


def dpo_config(rec: Recipe, *, progress: bool = False) -> DPOConfig:
    """The recipe's DPO configuration (``RECIPE_NAMES`` maps a recipe's two older field names to TRL's)."""
    return DPOConfig(**{RECIPE_NAMES.get(k, k): v for k, v in rec.dpo.items()}, progress=progress)


def _dir(rec: Recipe) -> Path:
    from .models import standin_tag

    tag = standin_tag(rec.base)  # a stand-in model's zoo never shares a directory with the real one
    return cache_dir() / "zoo" / f"{rec.name}-{rec.key()}{'-' + tag if tag else ''}"


def train(name: str, *, device=None, progress: bool = False) -> tuple[TrainResult, PreferenceDataset]:
    """Train a zoo policy from scratch (always) and store it in the cache; returns the run and its data."""
    rec = recipe(name)
    policy = load_policy(rec.base, device=device)
    data = preference_data(rec, policy)
    result = DPOTrainer(policy, data, dpo_config(rec, progress=progress)).train()
    save_tuned(rec, result.policy)
    return result, data


def save_tuned(rec: Recipe, policy: Policy) -> Path:
    """Store the tensors that differ from the base model, atomically, with the recipe beside them."""
    from safetensors.torch import save_file

    base = load_policy(rec.base, device="cpu").model.state_dict()
    tuned = policy.model.state_dict()
    changed = {k: v.detach().cpu().contiguous() for k, v in tuned.items() if not torch.equal(v.cpu(), base[k])}
    out = _dir(rec)
    with atomic_directory(out) as tmp:
        save_file(changed, str(tmp / "tuned.safetensors"), metadata={"recipe": rec.name})
        (tmp / "recipe.json").write_text(json.dumps(asdict(rec), indent=2, sort_keys=True))
    return out


def load_tuned(name: str, *, device=None, progress: bool = False) -> Policy:
    """The zoo policy ``name``: read from the cache, or trained now (minutes on a CPU) and cached."""
    from safetensors.torch import load_file

    rec = recipe(name)
    path = _dir(rec) / "tuned.safetensors"
    if not path.is_file():
        train(name, device=device, progress=progress)
    policy = load_policy(rec.base, device=device)
    changed = load_file(str(path))
    missing = set(changed) - set(policy.model.state_dict())
    if missing:
        raise ValueError(f"{path} holds tensors the base model lacks ({sorted(missing)[:3]} …); delete it to retrain")
    policy.model.load_state_dict(changed, strict=False)
    policy.name = name
    return policy
