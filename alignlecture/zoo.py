"""A small zoo of tuned policies: named, seeded DPO recipes that train on first use and are cached.

Chapters 3–7 reuse chapter 2's tuned SmolLM2s through ``load_tuned(name)``. A recipe (``recipes``) fixes
everything — prompts, sampling seed, annotator sharpness, DPO config — so the same recipe gives the same weights
on the same kind of machine. Only the tensors that training changed are stored (a few MB), next to the recipe.

Every policy carries a model card in the Hugging Face convention, ``README.md`` beside its weights
(``model_card(name)``): the recipe, and an evaluation against the base model on prompts it never trained on —
gold reward, KL and fluency with 95 % intervals (``evaluation``), computed once — the first time it is asked for,
so a cold machine spends it only on the cards a chapter reads — and stored as ``evaluation.json``
(``evaluation(name)``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from pathlib import Path

import torch

from . import samples
from .cache import atomic_directory, atomic_file, cache_dir, code_key, import_closure
from .evaluation import Evaluation, evaluate
from .models import KNOWN_MODELS, Policy, load_policy
from .preferences import PreferenceDataset
from .recipes import (  # noqa: F401  (the zoo's recipe book, read through zoo by the chapters)
    DPO_DEFAULTS, EVAL_SAMPLES_PER_PROMPT, EVAL_SEED, RECIPES, SEEDS, Recipe, evaluation_prompts, preference_data,
    recipe, seeded,
)
from .stats import verdict
from .top_blocks import TopLayers
from .train import DPOConfig, DPOTrainer, TrainResult


# Recipes keep the field names DPOConfig had when they were written, because their cache keys hash them.
RECIPE_NAMES = {"batch_size": "per_device_train_batch_size", "num_epochs": "num_train_epochs"}


def dpo_config(rec: Recipe, *, progress: bool = False) -> DPOConfig:
    """The recipe's DPO configuration (``RECIPE_NAMES`` maps a recipe's two older field names to TRL's)."""
    return DPOConfig(**{RECIPE_NAMES.get(k, k): v for k, v in rec.dpo.items()}, progress=progress)


# The code that decides a zoo policy's weights, given its recipe and training pairs: the trainer and every module it
# imports (found, not listed: a list kept by hand goes stale), and this module's own code (its DPO config, what it
# stores) — not the modules this one imports for sampling and model cards, which would retrain it for nothing.
# Its hash is part of the zoo's key (``trainer_code``): a machine whose zoo was trained by older code trains again,
# so that its stored outputs are the ones a fresh machine re-creates (the pairs are keyed by
# ``samples.SAMPLER_VERSION``; the model cards stored beside the weights are not keyed by the evaluation's code).
TRAINER_ROOT = "train"


@functools.lru_cache(maxsize=1)
def trainer_code() -> str:
    """``cache.code_key`` of ``train``, every package module it imports, and ``zoo``: 16 hex digits that change
    when the trainer's code does (computed once per process)."""
    return code_key(*import_closure(TRAINER_ROOT), "zoo")


def _dir(rec: Recipe) -> Path:
    from .models import standin_tag

    tag = standin_tag(rec.base)  # a stand-in model's zoo never shares a directory with the real one
    return cache_dir() / "zoo" / f"{rec.name}-{rec.key()}-{trainer_code()[:8]}{'-' + tag if tag else ''}"


def train(name: str, *, device=None, progress: bool = False) -> tuple[TrainResult, PreferenceDataset]:
    """Train a zoo policy from scratch (always) and store it in the cache; returns the run and its data. Its model
    card is computed the first time it is asked for (``evaluation``, ``model_card``) and stored beside it."""
    rec = recipe(name)
    policy = load_policy(rec.base, device=device)
    data = samples.preference_data(rec, policy)
    result = DPOTrainer(policy, data, dpo_config(rec, progress=progress)).train()
    save_tuned(rec, result.policy)
    return result, data


def save_tuned(rec: Recipe, policy: Policy) -> Path:
    """Store the tensors that differ from the base model, atomically, with the recipe beside them."""
    base = load_policy(rec.base, device="cpu").model.state_dict()
    tuned = policy.model.state_dict()
    changed = {k: v for k, v in tuned.items() if not torch.equal(v.cpu(), base[k])}
    out = _dir(rec)
    with atomic_directory(out) as tmp:
        (tmp / "tuned.safetensors").write_bytes(_stored_bytes(rec, changed))
        (tmp / "recipe.json").write_text(json.dumps(asdict(rec), indent=2, sort_keys=True))
    return out


def _stored_bytes(rec: Recipe, changed: dict) -> bytes:
    """The safetensors file ``save_tuned`` writes for the tensors ``changed`` (those that differ from the base)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in changed.items()}, metadata={"recipe": rec.name})


def fingerprint(rec: Recipe, changed: dict) -> str:
    """``Policy.weights`` of the zoo policy whose tensors differ from the base by ``changed``: the sha256 of the
    file ``save_tuned`` stores for them (16 hex digits; what ``load_tuned`` sets)."""
    return _sha(_stored_bytes(rec, changed))


def _sha(stored: bytes) -> str:
    import hashlib

    return hashlib.sha256(stored).hexdigest()[:16]


def load_tuned(name: str, *, device=None, progress: bool = False) -> Policy:
    """The zoo policy ``name``: read from the cache, or trained now (minutes on a CPU) and cached.

    ``Policy.weights`` is set to the sha256 of the stored tensors (``fingerprint``), so that sample caches keyed by
    ``samples.policy_key`` follow the weights and not only the recipe."""
    from safetensors.torch import load as load_bytes

    rec = recipe(name)
    path = _dir(rec) / "tuned.safetensors"
    if not path.is_file():
        train(name, device=device, progress=progress)
    policy = load_policy(rec.base, device=device)
    stored = path.read_bytes()  # a few tens of MB: hashed in well under a second
    changed = load_bytes(stored)
    missing = set(changed) - set(policy.model.state_dict())
    if missing:
        raise ValueError(f"{path} holds tensors the base model lacks ({sorted(missing)[:3]} …); delete it to retrain")
    policy.model.load_state_dict(changed, strict=False)
    policy.name = name
    policy.weights = _sha(stored)
    return policy


CARD, EVALUATION = "README.md", "evaluation.json"


def _evaluate(rec: Recipe, tuned: Policy) -> Evaluation:
    """The card's evaluation of ``tuned`` against the recipe's base model (``evaluation.evaluate``)."""
    base = load_policy(rec.base, device=tuned.device)
    prompts = evaluation_prompts(rec)
    # one batch on a CPU (144 rows: 19 s instead of 23 s in batches of 48 for SmolLM2-135M on the course's
    # 2 cores); 48 rows on an accelerator, which bounds the key-value cache of a larger model on a 16 GB card
    rows = len(prompts) * EVAL_SAMPLES_PER_PROMPT if torch.device(tuned.device).type == "cpu" else 48
    return evaluate(tuned, base, prompts, gold=rec.gold, samples_per_prompt=EVAL_SAMPLES_PER_PROMPT,
                    max_new_tokens=rec.max_new_tokens, seed=EVAL_SEED, batch_size=rows)


def evaluation(name: str, *, device=None) -> Evaluation:
    """The zoo policy's evaluation against its base model: read from beside its weights, or computed now (and
    the policy trained first, if it is not in the cache) and stored with its model card."""
    rec = recipe(name)
    path = _dir(rec) / EVALUATION
    if path.is_file():
        try:
            return Evaluation.from_dict(json.loads(path.read_text()))
        except ValueError:  # written by another version (a field missing or unknown): evaluated again below
            pass
    # the first time it is asked for (a new training run replaces the whole directory)
    policy = load_tuned(name, device=device)  # trained first if it is not in the cache
    write_card(rec, policy, _evaluate(rec, policy))
    return Evaluation.from_dict(json.loads(path.read_text()))


def model_card(name: str, *, device=None) -> str:
    """The zoo policy's model card (Hugging Face ``README.md``: YAML front matter, recipe, evaluation)."""
    evaluation(name, device=device)
    return (_dir(recipe(name)) / CARD).read_text()


def optimizer_steps(rec: Recipe, num_pairs: int) -> int:
    """How many optimizer steps the recipe's DPO run takes on ``num_pairs`` pairs (what ``DPOTrainer`` runs)."""
    cfg = dpo_config(rec)
    steps = (cfg.num_train_epochs * num_pairs // cfg.per_device_train_batch_size) // cfg.gradient_accumulation_steps
    return min(steps, cfg.max_steps) if cfg.max_steps > 0 else steps


def write_card(rec: Recipe, policy: Policy, ev: Evaluation) -> str:
    """Store ``ev`` and the model card built from it beside the recipe's weights; returns the card."""
    card = card_text(rec, policy, ev)
    out = _dir(rec)
    for name, text in ((EVALUATION, json.dumps(ev.to_dict(), indent=2, sort_keys=True)), (CARD, card)):
        with atomic_file(out / name) as tmp:
            tmp.write_text(text)
    return card


def card_text(rec: Recipe, policy: Policy, ev: Evaluation) -> str:
    """The model card of ``rec``'s policy: front matter, how it was made, how it compares with its base."""
    cfg = dpo_config(rec)
    pairs = rec.num_prompts * rec.samples_per_prompt * (rec.samples_per_prompt - 1) // 2
    if cfg.trainable_layers:
        top = TopLayers(policy.model, cfg.trainable_layers)
        trained = f"the top {cfg.trainable_layers} decoder blocks and the final norm"
        count = sum(p.numel() for p in top.trained())
    else:
        trained, count = "every parameter", sum(p.numel() for p in policy.model.parameters())
    method = "pairwise-normalized descent on the DPO loss" if cfg.pairwise_normalized else "DPO"
    quote = lambda text: " ".join(text.split()).replace("|", "/")  # noqa: E731  (one line, no table pipes)
    examples = "\n".join(f"- *{e['prompt']}*\n  - base ({e['gold_base']:+.2f}): {quote(e['base'])}\n"
                         f"  - tuned ({e['gold_tuned']:+.2f}): {quote(e['tuned'])}" for e in ev.examples)
    hub = KNOWN_MODELS[rec.base].hub_id if rec.base in KNOWN_MODELS else rec.base
    gain = verdict(ev.gold_gain.low, ev.gold_gain.high)
    fluency = verdict(ev.nll_gain.low, ev.nll_gain.high, up="rises (text less plausible to the base model)",
                      down="falls (text more plausible to the base model)", flat="is unchanged within noise")
    return f"""---
base_model: {hub}
library_name: alignlecture
pipeline_tag: text-generation
tags:
- alignlecture
- dpo
- {rec.gold}
---

# {rec.name}

{rec.description}.

Load it with `alignlecture.zoo.load_tuned("{rec.name}")`: the zoo stores only the tensors training changed, on
top of `{hub}`.

## How it was made

- **Data**: {rec.num_prompts} training prompts × {rec.samples_per_prompt} answers sampled from the base model (at
  most {rec.max_new_tokens} new tokens, seed {rec.sample_seed}); every pair of one prompt's answers labelled by a
  simulated annotator, Bradley–Terry on the gold reward `{rec.gold}` with sharpness {rec.label_scale:g} (seed
  {rec.label_seed}): {pairs} pairs.
- **Training**: {method}, loss `{cfg.loss_type}`, β = {cfg.beta:g}, learning rate {cfg.learning_rate:g}
  ({cfg.optimizer}, {cfg.lr_scheduler_type} schedule), {cfg.per_device_train_batch_size} pairs per step,
  {cfg.num_train_epochs} epochs = {optimizer_steps(rec, pairs)} optimizer steps, seed {cfg.seed}.
- **Trained parameters**: {trained} ({count:,} parameters); everything else is the base model's.

## Evaluation

{ev.prompts} prompts it never trained on × {ev.samples_per_prompt} samples from each policy (seed {ev.seed}, at most
{ev.max_new_tokens} new tokens, in batches of {ev.batch_size} rows). Means over prompts with 95 % bootstrap intervals over the prompts.

| | base model | this policy | change |
|---|---|---|---|
| gold reward `{ev.gold}` | {ev.gold_base.text()} | {ev.gold_tuned.text()} | {ev.gold_gain.text(signed=True)} |
| per-token NLL under the base model (fluency; lower reads as more plausible) | {ev.nll_base.text()} | {ev.nll_tuned.text()} | {ev.nll_gain.text(signed=True)} |
| KL(π ‖ π_base), nats per response, from this policy's samples | 0 | {ev.kl.text(2)} | |

The gold reward {gain}; the per-token NLL under the base model {fluency}.

Answers to read beside the numbers (the first sample of each prompt, gold reward in brackets):

{examples}

Limits: one training seed per card (the `-seedN` recipes repeat the run with other seeds); a 135M-parameter
model; a lexicon-based gold reward (VADER), which rewards words, not meaning — read the samples before calling
the policy aligned.
"""
