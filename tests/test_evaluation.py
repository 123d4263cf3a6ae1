"""A tuned policy against its base: gold reward, KL and fluency with intervals (alignlecture.evaluation)."""

from __future__ import annotations

import math

import pytest
import torch

from alignlecture import evaluation
from alignlecture.evaluation import Evaluation, Interval, evaluate, per_token_nll
from alignlecture.logprobs import generation_logprobs
from alignlecture.models import generate, tiny_policy

PROMPTS = ["describe the weather", "tell me about the film", "how was the day", "the rain"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))


def policies():
    base = tiny_policy(seed=0, device="cpu")
    tuned = tiny_policy(seed=0, device="cpu")
    with torch.no_grad():
        tuned.model.model.layers[-1].mlp.down_proj.weight.mul_(3.0)
    tuned.name = "tiny-tuned"
    return tuned, base


def test_a_policy_against_itself_has_zero_gain_zero_kl_and_equal_fluency():
    _, base = policies()
    ev = evaluate(base, base, PROMPTS, gold="positivity", samples_per_prompt=2, max_new_tokens=6)
    for interval in (ev.gold_gain, ev.kl, ev.nll_gain):
        assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert ev.gold_base == ev.gold_tuned and ev.nll_base == ev.nll_tuned
    assert (ev.prompts, ev.samples_per_prompt) == (len(PROMPTS), 2)


def test_kl_is_the_mean_log_ratio_on_the_tuned_samples_and_intervals_contain_their_means():
    tuned, base = policies()
    ev = evaluate(tuned, base, PROMPTS, gold="positivity", samples_per_prompt=2, max_new_tokens=6, seed=3)
    after = generate(tuned, [x for x in PROMPTS for _ in range(2)], max_new_tokens=6, seed=3, batch_size=48)
    ratio = (generation_logprobs(tuned, after) - generation_logprobs(base, after)).double()
    assert math.isclose(ev.kl.mean, float(ratio.mean()), rel_tol=1e-9, abs_tol=1e-9)
    for interval in (ev.gold_base, ev.gold_tuned, ev.gold_gain, ev.kl, ev.nll_base, ev.nll_tuned, ev.nll_gain):
        assert interval.low <= interval.mean <= interval.high
    assert math.isclose(ev.gold_gain.mean, ev.gold_tuned.mean - ev.gold_base.mean, abs_tol=1e-12)
    assert math.isclose(ev.nll_gain.mean, ev.nll_tuned.mean - ev.nll_base.mean, abs_tol=1e-12)
    assert Evaluation.from_dict(ev.to_dict()) == ev
    assert ev.batch_size == 48  # evaluate's default, recorded: the samples depend on it
    older = {k: v for k, v in ev.to_dict().items() if k != "batch_size"}
    with pytest.raises(ValueError, match=r"without \['batch_size'\].*another version"):
        Evaluation.from_dict(older)
    with pytest.raises(ValueError, match=r"unknown \['temperature'\]"):
        Evaluation.from_dict({**ev.to_dict(), "temperature": 1.0})


def test_per_token_nll_divides_the_sequence_log_prob_by_the_completion_length():
    _, base = policies()
    gens = generate(base, PROMPTS, max_new_tokens=5, seed=0)
    nll = per_token_nll(base, gens)
    lengths = torch.tensor([len(c) for c in gens.completion_ids], dtype=torch.float64)
    torch.testing.assert_close(nll * lengths, -generation_logprobs(base, gens).double())


def test_interval_text_and_bad_input():
    assert Interval(0.12, 0.049, 0.197).text(signed=True) == "+0.120 [+0.049, +0.197]"
    _, base = policies()
    with pytest.raises(ValueError, match="at least 2 prompts"):
        evaluate(base, base, PROMPTS[:1], gold="positivity")
    with pytest.raises(ValueError, match="samples_per_prompt must be an integer ≥ 2"):
        evaluate(base, base, PROMPTS, gold="positivity", samples_per_prompt=1)
    with pytest.raises(ValueError, match="unknown gold reward"):
        evaluate(base, base, PROMPTS, gold="happiness")
    assert evaluation.Evaluation is Evaluation
