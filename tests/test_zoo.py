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
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))
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


def test_save_tuned_that_fails_midway_leaves_no_directory(smollm, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))
    import safetensors.torch

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zoo, "load_policy", lambda *a, **k: smollm)  # the base: nothing changed, cheap
    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        zoo.save_tuned(zoo.recipe("smollm2-positivity"), smollm)
    assert list((tmp_path / "zoo").iterdir()) == []  # neither the recipe's directory nor a temp dir
