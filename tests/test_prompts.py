"""Tests for alignlecture.prompts: the course prompt set and its hash-based split."""

from __future__ import annotations

import random

import pytest

from alignlecture import prompts
from alignlecture.prompts import TEMPLATES, TOPICS, all_prompts, is_heldout, prompt_set


def test_all_prompts_is_every_template_times_topic_without_duplicates():
    ps = all_prompts()
    assert len(ps) == len(TEMPLATES) * len(TOPICS)
    assert len(set(ps)) == len(ps)
    assert all(isinstance(p, str) and p for p in ps)
    assert set(ps) == {t.format(topic=topic) for t in TEMPLATES for topic in TOPICS}


def test_splits_are_disjoint_and_cover_all_prompts():
    train, held = prompt_set("train"), prompt_set("heldout")
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(all_prompts())
    assert prompt_set("all") == all_prompts()


def test_default_split_is_train():
    assert prompt_set() == prompt_set("train")


def test_heldout_share_is_between_ten_and_thirty_five_percent():
    share = len(prompt_set("heldout")) / len(all_prompts())
    assert 0.10 <= share <= 0.35


def test_split_keeps_the_all_prompts_order():
    order = {p: i for i, p in enumerate(all_prompts())}
    for split in ("train", "heldout"):
        idx = [order[p] for p in prompt_set(split)]
        assert idx == sorted(idx)


def test_split_membership_is_a_pure_function_of_the_text():
    ps = all_prompts()
    shuffled = ps[:]
    random.Random(0).shuffle(shuffled)
    before = {p: is_heldout(p) for p in ps}
    after = {p: is_heldout(p) for p in shuffled}
    assert before == after
    assert set(prompt_set("heldout")) == {p for p in ps if before[p]}


def test_adding_prompts_never_moves_existing_ones(monkeypatch):
    old = set(all_prompts())
    held, train = set(prompt_set("heldout")), set(prompt_set("train"))
    monkeypatch.setattr(prompts, "TOPICS", TOPICS + ("a sunny beach", "a lost key", "fresh snow"))
    assert len(prompts.all_prompts()) == len(TEMPLATES) * (len(TOPICS) + 3)
    assert set(prompt_set("heldout")) & old == held
    assert set(prompt_set("train")) & old == train


def test_split_is_deterministic_across_calls():
    assert prompt_set("train") == prompt_set("train")
    assert prompt_set("heldout") == prompt_set("heldout")
    assert is_heldout("Write one sentence about cold pizza.") == is_heldout("Write one sentence about cold pizza.")


def test_is_heldout_matches_sha256_rule_on_known_text():
    import hashlib

    for p in ("", "hello", all_prompts()[0]):
        h = int(hashlib.sha256(p.encode("utf-8")).hexdigest(), 16)
        assert is_heldout(p) == (h % 5 == 0)


@pytest.mark.parametrize("split", ["test", "Train", "", "held-out", None])
def test_unknown_split_name_is_rejected(split):
    with pytest.raises(ValueError, match="split must be 'train', 'heldout' or 'all'"):
        prompt_set(split)
