"""alignlecture.cache.memo computes once per key, reloads after, and leaves nothing half written on failure."""

import pytest

from alignlecture import cache


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))


def test_cache_dir_is_the_environment_override_else_alignlecture_under_the_xdg_cache(tmp_path, monkeypatch):
    assert cache.cache_dir() == tmp_path  # ALIGNLECTURE_CACHE, set by the fixture above
    monkeypatch.delenv("ALIGNLECTURE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "alignlecture"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "alignlecture"
    assert cache.path("pools", {"a": 1}).parent == cache.cache_dir() / "pools"


def test_memo_computes_once_and_reloads_the_same_value():
    calls = []

    def compute():
        calls.append(1)
        return {"texts": ["a", "b"], "n": 2}

    key = {"model": "m", "seed": 0}
    assert cache.memo("pools", key, compute) == {"texts": ["a", "b"], "n": 2}
    assert cache.memo("pools", dict(reversed(list(key.items()))), compute) == {"texts": ["a", "b"], "n": 2}
    assert len(calls) == 1
    cache.memo("pools", {"model": "m", "seed": 1}, compute)
    assert len(calls) == 2


def test_memo_leaves_nothing_when_compute_fails(tmp_path):
    def boom():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.memo("pools", {"a": 1}, boom)
    assert not cache.path("pools", {"a": 1}).exists()
    assert not list((tmp_path / "pools").glob("*")) if (tmp_path / "pools").exists() else True


def test_bad_kind_and_key_are_refused():
    with pytest.raises(ValueError, match="plain folder name"):
        cache.path("../x", {})
    with pytest.raises(TypeError, match="dict"):
        cache.key_hash(["not", "a", "dict"])


# ------------------------------------------------------------------------------------ atomic_directory
def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_atomic_directory_renames_a_finished_directory_into_place(tmp_path):
    target = tmp_path / "deep" / "run"
    with cache.atomic_directory(target) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent and not target.exists()
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert _leftovers(target.parent) == []


def test_atomic_directory_leaves_no_target_and_no_temp_dir_on_an_exception(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError, match="disk full"):
        with cache.atomic_directory(target) as tmp:
            (tmp / "half.bin").write_bytes(b"12")
            raise RuntimeError("disk full")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_an_existing_target_whole_and_keeps_it_on_an_exception(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with cache.atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]  # untouched
    assert _leftovers(tmp_path) == []
    with cache.atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # replaced, not merged
    assert _leftovers(tmp_path) == []


def test_a_checkpoint_whose_write_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from alignlecture import checkpoint

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_weights", fail)
    trainer = SimpleNamespace(config=SimpleNamespace(output_dir=str(tmp_path / "out")))
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(trainer, accelerator, None, None, None, 3, [])
    assert list((tmp_path / "out").iterdir()) == []  # no checkpoint-3, no .checkpoint-3-* temp dir


def test_atomic_file_replaces_the_target_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "sub" / "card.md"
    with cache.atomic_file(target) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError, match="half"):
        with cache.atomic_file(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("half way")
    assert target.read_text() == "first" and sorted(p.name for p in target.parent.iterdir()) == ["card.md"]


def test_code_tree_ignores_docstrings_comments_and_layout_but_not_statements():
    from alignlecture.cache import code_tree

    base = code_tree('"""Module."""\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    assert code_tree('def f(x):  # a comment\n\n    return (x + 1)\n') == base
    assert code_tree('"""Other words."""\ndef f(x):\n    """Other doc."""\n    return x + 1\n') == base
    assert code_tree('def f(x):\n    return x + 2\n') != base
    assert code_tree('def f(x):\n    """Only a docstring."""\n') == code_tree('def f(x):\n    pass\n')


def test_the_zoo_is_keyed_by_the_trainers_code():
    from alignlecture import zoo
    from alignlecture.cache import code_key

    from alignlecture.cache import import_closure

    modules = import_closure(zoo.TRAINER_ROOT)
    # what the trainer runs is in, found from the imports (a hand-kept list missed trl_compat and merging)
    assert {"train", "dpo", "logprobs", "top_blocks", "prefix_sharing", "trl_compat", "merging", "checkpoint",
            "entanglement"} <= set(modules)
    assert "derivations" not in modules and "widgets" not in modules
    assert "zoo" not in modules and "evaluation" not in modules  # sampling and cards do not retrain the zoo
    assert zoo.trainer_code() == code_key(*modules, "zoo")
    assert zoo.trainer_code()[:8] in zoo._dir(zoo.recipe("smollm2-positivity")).name
    assert code_key("train") != code_key("train", "dpo")
