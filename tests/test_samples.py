"""Tests for alignlecture.samples: pools of generations are computed once per key and read back unchanged."""

from __future__ import annotations

import pytest

from alignlecture import samples
from alignlecture.models import tiny_policy
from alignlecture.widgets import token_strip

PROMPTS = ["describe a dog", "tell me about coffee"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))
    return tmp_path


def test_sample_is_computed_once_and_read_back_identical(cache, monkeypatch):
    pi = tiny_policy(seed=0)
    first = samples.sample(pi, PROMPTS, max_new_tokens=5, seed=3)
    import alignlecture.models as models

    monkeypatch.setattr(models, "generate", lambda *a, **k: pytest.fail("a cached pool was generated again"))
    again = samples.sample(pi, PROMPTS, max_new_tokens=5, seed=3)
    assert again.completion_ids == first.completion_ids and again.texts == first.texts
    assert len(list((cache / "samples").glob("*.pt"))) == 1


def test_sample_keys_separate_seeds_systems_and_weights(cache):
    pi = tiny_policy(seed=0)
    samples.sample(pi, PROMPTS, max_new_tokens=4, seed=1)
    samples.sample(pi, PROMPTS, max_new_tokens=4, seed=2)
    samples.sample_mixed([pi, tiny_policy(seed=1, name="other")], [0.5, 0.5], PROMPTS, max_new_tokens=4, seed=1)
    samples.sample_mixed([pi, tiny_policy(seed=1, name="other")], [1.5, -0.5], PROMPTS, max_new_tokens=4, seed=1)
    assert len(list((cache / "samples").glob("*.pt"))) == 4
    assert samples.policy_key(pi) != samples.policy_key(pi.with_system_prompt("be brief"))


def test_policy_key_names_the_zoo_recipes_of_a_merge():
    class Named:
        name, source, system_prompt, weights = "0.5·smollm2-positivity + 0.5·smollm2-neutrality", "merged", None, ""

    key = samples.policy_key(Named())
    assert {"smollm2-positivity", "smollm2-neutrality"} <= set(key["recipes"])


def test_sample_refuses_a_bare_string_prompt(cache):
    with pytest.raises(TypeError, match="list of str"):
        samples.sample(tiny_policy(seed=0), "describe a dog", max_new_tokens=3, seed=0)


def test_pool_is_m_samples_of_each_prompt_prompt_major_and_is_cached(cache, monkeypatch):
    pi = tiny_policy(seed=0)
    texts = samples.pool(pi, PROMPTS, 3, max_new_tokens=4, seed=2, batch_size=4)
    from alignlecture.models import generate

    plain = generate(pi, [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3, max_new_tokens=4, seed=2, batch_size=4).texts
    assert texts == list(plain)  # exactly one generate of the repeated prompts, prompt i in rows 3i … 3i + 2
    import alignlecture.models as models

    monkeypatch.setattr(models, "generate", lambda *a, **k: pytest.fail("a cached pool was generated again"))
    assert samples.pool(pi, PROMPTS, 3, max_new_tokens=4, seed=2, batch_size=4) == texts
    with pytest.raises(ValueError, match="samples_per_prompt must be an integer ≥ 1"):
        samples.pool(pi, PROMPTS, 0, max_new_tokens=4, seed=2)
    with pytest.raises(TypeError, match="list of str"):
        samples.pool(pi, "describe a dog", 2, max_new_tokens=4, seed=2)


def test_preference_data_is_the_zoo_recipes_pairs_computed_once_per_recipe_and_policy(cache, monkeypatch):
    from alignlecture import recipes, zoo
    from alignlecture.preferences import all_pairs_dataset

    calls = []

    def fake(rec, policy, sampler):  # recipes.preference_data without the model: records what it was asked for
        calls.append((rec.name, policy.name))
        return all_pairs_dataset(["p"], [["a", "bb"]], lambda t: [float(len(x)) for x in t], seed=0)

    monkeypatch.setattr(recipes, "preference_data", fake)
    pi, other = tiny_policy(seed=0), tiny_policy(seed=1, name="other")
    first = samples.preference_data("smollm2-positivity", pi)
    again = samples.preference_data(zoo.recipe("smollm2-positivity"), pi)  # a Recipe or its name: one key
    assert again.to_dict() == first.to_dict() and len(calls) == 1
    samples.preference_data("smollm2-positivity", other)  # another model: another key
    samples.preference_data("smollm2-negativity", pi)  # another recipe: another key
    assert calls == [("smollm2-positivity", pi.name), ("smollm2-positivity", "other"), ("smollm2-negativity", pi.name)]
    assert len(list((cache / "preference-data").glob("*.pt"))) == 3


def test_recipes_that_differ_only_in_gold_or_dpo_settings_share_one_draw_of_answers(cache, monkeypatch):
    """Two seed-0 recipes of one base sample the same answers once; the labels follow each recipe's gold reward;
    the answers are exactly what the uncached recipes.preference_data draws."""
    from alignlecture import recipes
    import alignlecture.models as models

    def small(name, **kw):  # a recipe over 2 prompts × 2 answers of 4 tokens, on the tiny test model
        return recipes.Recipe(name, "test", base="tiny", num_prompts=2, samples_per_prompt=2, max_new_tokens=4, **kw)

    pi = tiny_policy(seed=0)
    plain = recipes.preference_data(small("a", gold="positivity"), pi)
    draws = []
    real = models.generate
    monkeypatch.setattr(models, "generate", lambda *a, **k: draws.append(1) or real(*a, **k))
    pos = samples.preference_data(small("a", gold="positivity"), pi)
    neg = samples.preference_data(small("b", gold="negativity", dpo={"beta": 0.2}), pi)
    assert len(draws) == 1, "two recipes with one base, prompts and sampling seed drew their answers twice"
    assert pos.to_dict() == plain.to_dict()
    answers = lambda d: sorted({*d.column("chosen"), *d.column("rejected")})  # noqa: E731
    assert answers(pos) == answers(neg)
    samples.preference_data(small("c", gold="positivity", sample_seed=1), pi)  # another seed: another draw
    assert len(draws) == 2


def test_token_strip_needs_one_value_per_token():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    token_strip(ax, ["a", "b"], [0.1, -0.2])
    with pytest.raises(ValueError, match="one entry per token"):
        token_strip(ax, ["a", "b"], [0.1])
    plt.close(fig)


def test_policy_key_is_the_same_for_a_first_load_and_a_cached_load_of_the_wheel_model():
    class Loaded:
        name, system_prompt, weights = "smollm2-135m-instruct", None, ""

        def __init__(self, source):
            self.source = source

    assert samples.policy_key(Loaded("gguf")) == samples.policy_key(Loaded("cache"))
    assert samples.policy_key(Loaded("hub")) != samples.policy_key(Loaded("cache"))
