"""The model zoo: recipes are named and hashed, tuned weights round-trip through the cache."""

from __future__ import annotations

import pytest
import torch

from alignlecture import zoo


def test_recipes_have_distinct_stable_keys():
    keys = {name: zoo.recipe(name).key() for name in zoo.RECIPES}
    assert len(set(keys.values())) == len(keys)
    assert keys == {name: zoo.recipe(name).key() for name in zoo.RECIPES}


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match="smollm2-positivity"):
        zoo.recipe("smollm2-kindness")


def test_save_and_load_tuned_round_trips_only_the_changed_tensors(smollm, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "cache_dir", lambda: tmp_path)  # the zoo in tmp; the converted model from the cache
    from alignlecture.models import load_policy

    rec = zoo.recipe("smollm2-positivity")
    tuned = load_policy(rec.base, device="cpu")
    with torch.no_grad():
        tuned.model.model.layers[-1].mlp.down_proj.weight.add_(0.01)
    path = zoo.save_tuned(rec, tuned)
    from safetensors.torch import load_file

    assert list(load_file(str(path / "tuned.safetensors"))) == ["model.layers.29.mlp.down_proj.weight"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp dirs left
    loaded = zoo.load_tuned("smollm2-positivity", device="cpu")  # from the cache: no training
    for (name, a), b in zip(tuned.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.name == "smollm2-positivity"


def test_sample_keys_follow_the_zoo_weights_not_only_the_recipe(smollm, tmp_path, monkeypatch):
    """Re-training under the same recipe (a trainer change) must not reuse the old weights' cached samples."""
    import hashlib

    from alignlecture.merging import merge_parameters
    from alignlecture.models import load_policy
    from alignlecture.samples import policy_key

    monkeypatch.setattr(zoo, "cache_dir", lambda: tmp_path)
    rec = zoo.recipe("smollm2-positivity")
    tuned = load_policy(rec.base, device="cpu")
    keys, fingerprints = [], []
    for step in (0.01, 0.02, 0.01):  # the third save stores the first one's weights again
        with torch.no_grad():
            tuned.model.model.layers[-1].mlp.down_proj.weight.copy_(smollm.model.model.layers[-1].mlp.down_proj.weight)
            tuned.model.model.layers[-1].mlp.down_proj.weight.add_(step)
        path = zoo.save_tuned(rec, tuned)
        loaded = zoo.load_tuned("smollm2-positivity", device="cpu")
        stored = (path / "tuned.safetensors").read_bytes()
        assert loaded.weights == hashlib.sha256(stored).hexdigest()[:16]
        base = smollm.model.state_dict()
        changed = {k: v for k, v in tuned.model.state_dict().items() if not torch.equal(v, base[k])}
        assert zoo.fingerprint(rec, changed) == loaded.weights  # what chapter 2 stamps on the policy it trained
        keys.append(policy_key(loaded))
        fingerprints.append(policy_key(merge_parameters([loaded, smollm], [0.5, 0.5])))
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert fingerprints[0] != fingerprints[1] and fingerprints[0] == fingerprints[2]
    assert "weights" not in policy_key(smollm)  # a base model's keys are what they were
    assert policy_key(loaded.with_system_prompt("Be brief."))["weights"] == loaded.weights


def test_save_tuned_that_fails_midway_leaves_no_directory(smollm, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))
    import safetensors.torch

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zoo, "load_policy", lambda *a, **k: smollm)  # the base: nothing changed, cheap
    monkeypatch.setattr(safetensors.torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        zoo.save_tuned(zoo.recipe("smollm2-positivity"), smollm)
    assert list((tmp_path / "zoo").iterdir()) == []  # neither the recipe's directory nor a temp dir


def test_a_model_card_has_hugging_face_front_matter_the_recipe_and_the_evaluation(tmp_path, monkeypatch):
    from alignlecture.evaluation import Evaluation, Interval
    from alignlecture.models import tiny_policy

    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))
    rec = zoo.recipe("smollm2-positivity")
    i = lambda m, lo, hi: Interval(m, lo, hi)  # noqa: E731
    ev = Evaluation(prompts=36, samples_per_prompt=4, seed=1, max_new_tokens=32, batch_size=144, gold="positivity",
                    gold_base=i(0.2, 0.1, 0.3), gold_tuned=i(0.4, 0.3, 0.5), gold_gain=i(0.2, 0.1, 0.3),
                    kl=i(4.0, 3.5, 4.5), nll_base=i(3.0, 2.9, 3.1), nll_tuned=i(3.4, 3.2, 3.6), nll_gain=i(0.4, 0.2, 0.6))
    zoo._dir(rec).mkdir(parents=True)
    card = zoo.write_card(rec, tiny_policy(seed=0, num_layers=4, device="cpu"), ev)
    front = card.split("---")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in front and "library_name: alignlecture" in front
    assert "- dpo" in front and "- positivity" in front
    assert "β = 0.1" in card and "30 optimizer steps" in card and "120 pairs" in card
    assert "+0.200 [+0.100, +0.300]" in card and "4.00 [3.50, 4.50]" in card
    assert "in batches of 144 rows" in card  # the samples depend on it: the card says it
    assert "The gold reward rises; the per-token NLL under the base model rises (text less plausible" in card
    assert zoo.model_card(rec.name) == card and zoo.evaluation(rec.name) == ev  # read back, nothing recomputed


def test_optimizer_steps_is_what_the_trainer_runs():
    rec = zoo.recipe("smollm2-positivity")
    assert zoo.optimizer_steps(rec, 120) == 30  # 2 epochs × 120 pairs / 8 per step
    assert zoo.optimizer_steps(rec, 121) == 30  # drop_last: the odd pair never makes a full step


def test_seed_recipes_differ_from_seed_zero_only_in_their_seeds():
    base, other = zoo.recipe("smollm2-positivity-normalized"), zoo.recipe(zoo.seeded("smollm2-positivity-normalized", 2))
    assert (other.sample_seed, other.label_seed, other.dpo["seed"]) == (2, 2, 2)
    assert {k: v for k, v in other.dpo.items() if k != "seed"} == {k: v for k, v in base.dpo.items() if k != "seed"}
    assert zoo.seeded("smollm2-positivity", 0) == "smollm2-positivity"
    with pytest.raises(ValueError, match="seed must be one of"):
        zoo.seeded("smollm2-positivity", 7)


def test_an_evaluation_written_by_an_older_version_is_evaluated_again(tmp_path, monkeypatch):
    """A stored evaluation.json that lacks a field (here batch_size) is replaced, not read half-complete."""
    import json

    from alignlecture.evaluation import Evaluation, Interval
    from alignlecture.models import tiny_policy

    monkeypatch.setattr(zoo, "cache_dir", lambda: tmp_path)
    i = Interval(0.1, 0.0, 0.2)
    fresh = Evaluation(prompts=36, samples_per_prompt=4, seed=1, max_new_tokens=32, batch_size=144, gold="positivity",
                       gold_base=i, gold_tuned=i, gold_gain=i, kl=i, nll_base=i, nll_tuned=i, nll_gain=i)
    rec = zoo.recipe("smollm2-positivity")
    zoo._dir(rec).mkdir(parents=True)
    older = {k: v for k, v in fresh.to_dict().items() if k != "batch_size"}
    (zoo._dir(rec) / zoo.EVALUATION).write_text(json.dumps(older))
    calls = []
    monkeypatch.setattr(zoo, "load_tuned", lambda name, device=None: tiny_policy(seed=0, num_layers=4, device="cpu"))
    monkeypatch.setattr(zoo, "_evaluate", lambda rec, policy: calls.append(rec.name) or fresh)
    assert zoo.evaluation("smollm2-positivity") == fresh and calls == ["smollm2-positivity"]
    assert zoo.evaluation("smollm2-positivity") == fresh and calls == ["smollm2-positivity"]  # stored now: read
    assert "in batches of 144 rows" in (zoo._dir(rec) / zoo.CARD).read_text()
