"""alignlecture.cache.memo computes once per key, reloads after, and leaves nothing half written on failure."""

import pytest

from alignlecture import cache


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))


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
