"""Tests for alignlecture.mixing: the per-token product of experts, its cached decoder and the lecture's recipes."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture.logprobs import completion_logprobs, encode_ids, prompt_token_ids
from alignlecture.mixing import (
    MixingLogitsProcessor,
    beta_adjustment,
    generate_mixed,
    mix_logprobs,
    multi_objective,
    next_token_logprobs,
    proxy_tuning,
    weak_to_strong,
)
from alignlecture.models import Policy, generate, tiny_policy, toy_tokenizer
from alignlecture.toy import ToyWorld

PROMPTS = ["write one sentence about the dog", "i love tea", "the"]


def sharpened(policy: Policy, scale: float = 10.0) -> Policy:
    """A copy whose matrices are ×scale: peaked, context-dependent logits, so greedy decoding is not one repeated token."""
    model = copy.deepcopy(policy.model)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.mul_(scale)
    return Policy(model=model, tokenizer=policy.tokenizer, name=policy.name + "-sharp", source="random")


@pytest.fixture(scope="module")
def pair(tiny):
    a = sharpened(tiny)
    b = sharpened(tiny_policy(tiny.tokenizer, seed=1, device="cpu", name="tiny-llama-1"))
    return a, b


def rescored(policy, prompts, completion_ids, *, chat=True) -> torch.Tensor:
    """Per-token log π(y_t | x, y_<t) of given completions from one forward pass, [B, T] (0 past the end)."""
    prompt_ids = [prompt_token_ids(policy, p, chat=chat) for p in prompts]
    batch = encode_ids(prompt_ids, completion_ids, policy.tokenizer.pad_token_id)
    with torch.no_grad():
        per_token = completion_logprobs(policy.model, **batch).per_token
    width = max(len(c) for c in completion_ids)
    out = torch.zeros(len(prompts), width)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        out[i, : len(c)] = per_token[i, len(p) : len(p) + len(c)]
    return out


# ---------------------------------------------------------------------------------------------- mix_logprobs
def test_mix_with_weights_one_and_zero_returns_the_first_models_logprobs():
    a, b = torch.randn(2, 3, 7).log_softmax(-1)
    assert torch.allclose(mix_logprobs([a, b], [1.0, 0.0]), a, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 4),
    vocab=st.integers(2, 9),
    seed=st.integers(0, 10_000),
    weights=st.lists(st.floats(-3, 3, allow_nan=False), min_size=4, max_size=4),
)
def test_mix_is_normalised_and_equals_the_brute_force_product_of_experts(k, vocab, seed, weights):
    w = weights[:k]
    if all(x == 0 for x in w):
        w[0] = 1.0
    gen = torch.Generator().manual_seed(seed)
    logps = [torch.randn(5, vocab, generator=gen, dtype=torch.float64).log_softmax(-1) for _ in range(k)]
    mixed = mix_logprobs(logps, w)
    product = math.prod(lp.exp() ** wk for lp, wk in zip(logps, w))  # Π_k π_k^{w_k}, then normalised
    assert torch.allclose(mixed.exp(), product / product.sum(-1, keepdim=True), atol=1e-10)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12)


def test_mix_stays_finite_and_normalised_at_extreme_weights():
    logps = [torch.randn(4, 50).log_softmax(-1) for _ in range(2)]
    for w in ([1e4, -1e4], [-1e4, 1e4 + 1], [1e4, 1e4]):
        mixed = mix_logprobs(logps, w)
        assert torch.isfinite(mixed).all()
        assert torch.allclose(mixed.exp().sum(-1), torch.ones(4), atol=1e-5)


def test_a_token_impossible_under_a_weighted_model_is_impossible_in_the_mix_whatever_the_weights_sign():
    a = torch.tensor([[-1.0, -2.0, -math.inf, -0.5]]).log_softmax(-1)
    b = torch.tensor([[-math.inf, -1.0, -1.0, -1.0]]).log_softmax(-1)
    for w in ([1.0, 1.0], [1.0, -1.0], [-2.0, 0.5]):
        mixed = mix_logprobs([a, b], w)
        assert torch.isneginf(mixed[0, :3:2]).all()  # tokens 0 and 2: −inf under some model with w ≠ 0
        assert not torch.isnan(mixed).any() and not (mixed == math.inf).any()
        assert torch.allclose(mixed.exp().sum(), torch.tensor(1.0))
    assert torch.allclose(mix_logprobs([a, b], [1.0, 0.0]), a)  # a zero weight ignores the model, −inf and all


def test_mix_raises_when_no_token_is_possible():
    a = torch.tensor([[0.0, -math.inf]])
    b = torch.tensor([[-math.inf, 0.0]])
    with pytest.raises(ValueError, match="mixed distribution is empty"):
        mix_logprobs([a, b], [1.0, -1.0])


def test_mix_rejects_nan_inputs_and_mismatched_vocabularies():
    a = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        mix_logprobs([a, torch.tensor([[0.0, math.nan, 0.0, 0.0]])], [1.0, 1.0])
    with pytest.raises(ValueError, match="same vocabulary"):
        mix_logprobs([a, torch.zeros(1, 5)], [1.0, 1.0])


@pytest.mark.parametrize(
    "weights, message",
    [([1.0, math.nan], r"weights must be finite; got \[1.0, nan\]"), ([1.0, math.inf], "must be finite"),
     ([1.0], "1 weights for 2 models"), ([0.0, 0.0], "all zero"), (["a", 1.0], "real numbers")],
)
def test_bad_weights_raise_naming_the_value(weights, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mix_logprobs([torch.zeros(1, 3), torch.zeros(1, 3)], weights)


# ---------------------------------------------------------------------------------------------- generate_mixed
def test_weights_one_zero_decode_exactly_the_models_own_greedy_generate(pair):
    a, b = pair
    own = generate(a, PROMPTS, max_new_tokens=12, do_sample=False)
    mixed = generate_mixed([a, b], [1.0, 0.0], PROMPTS, max_new_tokens=12, do_sample=False)
    assert mixed.completion_ids == own.completion_ids and mixed.texts == own.texts
    assert len({tuple(c) for c in mixed.completion_ids}) == 3  # the rows really differ


def test_mixing_a_model_with_itself_at_half_half_equals_the_model(pair):
    a, _ = pair
    alone = generate_mixed([a], [1.0], PROMPTS, max_new_tokens=10, do_sample=False)
    assert generate_mixed([a, a], [0.5, 0.5], PROMPTS, max_new_tokens=10, do_sample=False).completion_ids == alone.completion_ids


def test_a_left_padded_batch_decodes_like_one_prompt_at_a_time(pair):
    batched = generate_mixed(pair, [0.6, 0.4], PROMPTS, max_new_tokens=10, do_sample=False)
    for i, prompt in enumerate(PROMPTS):
        single = generate_mixed(pair, [0.6, 0.4], [prompt], max_new_tokens=10, do_sample=False)
        assert single.completion_ids[0] == batched.completion_ids[i]
        n = len(single.completion_ids[0])
        assert torch.allclose(single.logprobs[:, 0, :n], batched.logprobs[:, i, :n], atol=1e-5)


def test_each_row_stops_at_its_own_eos_and_is_masked_after(pair):
    out = generate_mixed(pair, [2.0, -1.0], PROMPTS, max_new_tokens=12, do_sample=False)
    eos = pair[0].eos_token_id
    lengths = [len(c) for c in out.completion_ids]
    assert min(lengths) < 12 and max(lengths) == 12  # one row ended early, the others kept going
    for i, (row, n) in enumerate(zip(out.completion_ids, lengths)):
        assert eos not in row[:-1] and (row[-1] == eos) == (n < 12)
        assert (out.logprobs[:, i, n:] == 0).all() and (out.mixed_logprobs[i, n:] == 0).all()
        assert (out.logprobs[:, i, :n] != 0).all()


def test_min_new_tokens_forces_exactly_that_many_tokens(pair):
    out = generate_mixed(pair, [2.0, -1.0], PROMPTS, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert [len(c) for c in out.completion_ids] == [12, 12, 12]


def test_seeded_sampling_is_reproducible_and_different_seeds_differ(pair):
    run = lambda seed: generate_mixed(pair, [0.5, 0.5], PROMPTS, max_new_tokens=10, do_sample=True, seed=seed)  # noqa: E731
    assert run(3).completion_ids == run(3).completion_ids
    assert run(3).completion_ids != run(4).completion_ids


def test_sampling_with_weights_one_zero_matches_the_models_own_seeded_sampling(pair):
    own = generate(pair[0], PROMPTS, max_new_tokens=10, do_sample=True, seed=7, top_p=0.9, temperature=0.8)
    mixed = generate_mixed(pair, [1.0, 0.0], PROMPTS, max_new_tokens=10, do_sample=True, seed=7, top_p=0.9, temperature=0.8)
    assert mixed.completion_ids == own.completion_ids


def test_top_p_near_zero_sampling_is_greedy(pair):
    greedy = generate_mixed(pair, [0.7, 0.3], PROMPTS, max_new_tokens=8, do_sample=False)
    assert generate_mixed(pair, [0.7, 0.3], PROMPTS, max_new_tokens=8, do_sample=True, top_p=1e-6, seed=0).completion_ids \
        == greedy.completion_ids


def test_reported_logprobs_equal_rescoring_with_completion_logprobs(pair):
    out = generate_mixed(pair, [1.5, -0.5], PROMPTS, max_new_tokens=10, do_sample=True, seed=1)
    for k, policy in enumerate(pair):
        assert torch.allclose(out.logprobs[k], rescored(policy, PROMPTS, out.completion_ids), atol=1e-5)


def test_models_with_differently_formatted_prompts_stay_aligned_on_the_continuation(pair):
    a, b = pair
    chat_tok = toy_tokenizer()  # the same vocabulary, but with a chat template that wraps the prompt
    chat_tok.chat_template = "{% for m in messages %}please {{ m['content'] }} thanks yes{% endfor %}"
    b_chat = Policy(model=b.model, tokenizer=chat_tok, name="tiny-chat")
    assert len(prompt_token_ids(b_chat, PROMPTS[1])) > len(prompt_token_ids(a, PROMPTS[1]))
    out = generate_mixed([a, b_chat], [0.5, 0.5], PROMPTS, max_new_tokens=10, do_sample=False)
    assert torch.allclose(out.logprobs[0], rescored(a, PROMPTS, out.completion_ids), atol=1e-5)
    assert torch.allclose(out.logprobs[1], rescored(b_chat, PROMPTS, out.completion_ids), atol=1e-5)
    assert out.completion_ids != generate_mixed([a, b], [0.5, 0.5], PROMPTS, max_new_tokens=10, do_sample=False).completion_ids


def test_mixing_logits_processor_in_transformers_generate_gives_the_same_tokens(pair):
    from transformers import LogitsProcessorList

    a, b = pair
    # a private deep copy: a shallow copy shares init_kwargs, so padding_side would leak into the session's
    # shared tokenizer (and into what save_pretrained writes for it)
    tok = copy.deepcopy(a.tokenizer)
    tok.padding_side = "left"
    enc = tok([a.format_prompt(p) for p in PROMPTS], return_tensors="pt", padding=True, add_special_tokens=False)
    singles = [generate_mixed([a, b], w, PROMPTS, max_new_tokens=10, do_sample=False).completion_ids for w in ([1.0, 0.0], [0.0, 1.0])]
    for weights in ([0.6, 0.4], [2.0, -1.0]):
        proc = MixingLogitsProcessor([a, b], weights, PROMPTS)
        with torch.no_grad():
            out = a.model.generate(**enc, logits_processor=LogitsProcessorList([proc]), do_sample=False,
                                   max_new_tokens=10, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        ids = [r[: r.index(tok.eos_token_id) + 1] if tok.eos_token_id in r else r
               for r in out[:, enc["input_ids"].shape[1] :].tolist()]
        assert ids == generate_mixed([a, b], weights, PROMPTS, max_new_tokens=10, do_sample=False).completion_ids
        assert ids not in singles  # the second model really steers the primary's generate


# ---------------------------------------------------------------------------------------------- vocabularies
class PaddedHead(torch.nn.Module):
    """A causal LM whose logits have `extra` entries past its tokenizer, made the most likely (+50)."""

    def __init__(self, inner, extra: int):
        super().__init__()
        self.inner, self.extra, self.config = inner, extra, inner.config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None, logits_to_keep=0):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         use_cache=use_cache, logits_to_keep=logits_to_keep)
        pad = torch.full((*out.logits.shape[:-1], self.extra), 50.0) if self.extra > 0 else None
        logits = torch.cat([out.logits, pad], -1) if pad is not None else out.logits[..., : self.extra]
        return SimpleNamespace(logits=logits)


def test_logits_wider_than_the_tokenizer_are_cut_to_len_tokenizer(pair):
    a, b = pair
    padded = Policy(model=PaddedHead(a.model, 8), tokenizer=a.tokenizer, name="padded")
    out = generate_mixed([padded, b], [0.5, 0.5], PROMPTS, max_new_tokens=8, do_sample=False)
    assert all(t < len(a.tokenizer) for row in out.completion_ids for t in row)
    assert out.completion_ids == generate_mixed([a, b], [0.5, 0.5], PROMPTS, max_new_tokens=8, do_sample=False).completion_ids
    assert torch.allclose(out.logprobs[0], rescored(padded, PROMPTS, out.completion_ids), atol=1e-5)


def test_logits_narrower_than_the_tokenizer_raise(pair):
    narrow = Policy(model=PaddedHead(pair[0].model, -4), tokenizer=pair[0].tokenizer, name="narrow")
    with pytest.raises(ValueError, match="'narrow' has 56 logits but its tokenizer has 60"):
        generate_mixed([narrow, pair[1]], [0.5, 0.5], PROMPTS, max_new_tokens=2, do_sample=False)


def test_different_tokenizers_raise_naming_both_models(pair):
    tok = toy_tokenizer()
    tok.add_tokens(["zebra"])
    other = tiny_policy(tok, seed=2, device="cpu", name="tiny-zebra")
    with pytest.raises(ValueError, match=r"'tiny-llama-sharp'.*'tiny-zebra'.*different tokenizers"):
        generate_mixed([pair[0], other], [0.5, 0.5], PROMPTS, max_new_tokens=2, do_sample=False)
    with pytest.raises(ValueError, match="different tokenizers"):
        MixingLogitsProcessor([pair[0], other], [0.5, 0.5], PROMPTS)


def test_generate_mixed_rejects_bad_weights_before_decoding(pair):
    with pytest.raises(ValueError, match=r"weights must be finite; got \[1.0, nan\]"):
        generate_mixed(pair, [1.0, math.nan], PROMPTS)
    with pytest.raises(ValueError, match="3 weights for 2 models"):
        generate_mixed(pair, [1.0, 0.5, 0.5], PROMPTS)


# ---------------------------------------------------------------------------------------------- recipes
def test_recipes_return_the_lectures_policies_and_weights():
    assert beta_adjustment("pi", "ref", 0.1, 0.2) == (["pi", "ref"], [0.5, 0.5])
    assert proxy_tuning("big", "tuned", "ref", alpha=2.0) == (["big", "tuned", "ref"], [1.0, 2.0, -2.0])
    assert weak_to_strong("strong", "tuned", "ref", alpha=0.5) == (["strong", "tuned", "ref"], [1.0, -0.5, 0.5])
    assert multi_objective(["p", "q"], [0.25, 0.75]) == (["p", "q"], [0.25, 0.75])
    with pytest.raises(ValueError, match="beta_new must be a positive"):
        beta_adjustment("pi", "ref", 0.1, 0.0)
    with pytest.raises(ValueError, match="alpha must be a finite"):
        proxy_tuning("big", "tuned", "ref", alpha=math.nan)
    with pytest.raises(ValueError, match=r"must sum to 1; got \[1.0, 1.0\] .*\[0.5, 0.5\]"):
        multi_objective(["p", "q"], [1.0, 1.0])


@pytest.fixture(scope="module")
def world():
    return ToyWorld(4, 3)


def test_beta_adjustment_is_exact_at_the_sequence_level_on_the_toy_world(world):
    pi_ref, r, beta, beta_new = world.random_policy(seed=0), world.random_rewards(seed=1), 0.5, 2.0
    pi = world.optimal_policy(pi_ref, r, beta)
    policies, w = beta_adjustment(pi, pi_ref, beta, beta_new)
    mixed = mix_logprobs([p.sequence_logprobs() for p in policies], w)
    target = torch.log_softmax(pi_ref.sequence_logprobs() + r / beta_new, dim=0)  # π_ref·exp(r/β′), normalised
    assert torch.allclose(mixed, target, atol=1e-12, rtol=0)


def test_proxy_tuning_adds_the_small_models_implicit_reward_on_the_toy_world(world):
    big, ref_small, r, beta = world.random_policy(seed=2), world.random_policy(seed=3), world.random_rewards(seed=4), 0.7
    tuned_small = world.optimal_policy(ref_small, r, beta)
    policies, w = proxy_tuning(big, tuned_small, ref_small)
    mixed = mix_logprobs([p.sequence_logprobs() for p in policies], w)
    assert torch.allclose(mixed, torch.log_softmax(big.sequence_logprobs() + r / beta, 0), atol=1e-12, rtol=0)


def test_multi_objective_of_optimal_policies_is_optimal_for_the_combined_reward_on_the_toy_world(world):
    pi_ref, beta, w = world.random_policy(seed=5), 0.4, [0.3, 0.9, -0.2]
    rewards = [world.random_rewards(seed=s) for s in (6, 7, 8)]
    policies, w = multi_objective([world.optimal_policy(pi_ref, r, beta) for r in rewards], w)
    mixed = mix_logprobs([p.sequence_logprobs() for p in policies], w)
    combined = world.optimal_policy(pi_ref, sum(wk * r for wk, r in zip(w, rewards)), beta)
    assert torch.allclose(mixed, combined.sequence_logprobs(), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------- SmolLM2
def test_smollm_weights_one_zero_equal_its_own_greedy_generate(smollm):
    prompts = ["Write one sentence about tea.", "Hi"]
    own = generate(smollm, prompts, max_new_tokens=6, do_sample=False)
    assert generate_mixed([smollm, smollm], [1.0, 0.0], prompts, max_new_tokens=6, do_sample=False).completion_ids == own.completion_ids


def test_smollm_chat_and_raw_prompts_stay_aligned_on_the_continuation(smollm):
    raw_tok = copy.deepcopy(smollm.tokenizer)
    raw_tok.chat_template = None  # the same vocabulary, no chat template: this copy sees the bare prompt
    raw = Policy(model=smollm.model, tokenizer=raw_tok, name="smollm-raw")
    prompts = ["Write one sentence about tea."]
    out = generate_mixed([smollm, raw], [1.5, -0.5], prompts, max_new_tokens=5, do_sample=False)
    # cached one-token steps against one full forward: float32 kernels (and their thread split) differ, ~1e-4
    assert torch.allclose(out.logprobs[0], rescored(smollm, prompts, out.completion_ids), atol=2e-4)
    assert torch.allclose(out.logprobs[1], rescored(raw, prompts, out.completion_ids), atol=2e-4)


def test_next_token_logprobs_are_the_first_completion_token_logprobs_of_each_prompt(pair):
    a, _ = pair
    first = next_token_logprobs(a, PROMPTS)  # [B, vocab], one left-padded batch
    assert first.shape == (len(PROMPTS), len(a.tokenizer))
    assert torch.allclose(first.exp().sum(dim=-1), torch.ones(len(PROMPTS)), atol=1e-5)
    tokens = first.argmax(dim=-1).tolist()
    for row, (prompt, tok) in enumerate(zip(PROMPTS, tokens)):
        assert float(first[row, tok]) == pytest.approx(float(rescored(a, [prompt], [[tok]])[0, 0]), abs=1e-5)
    with pytest.raises(TypeError, match="list of str"):
        next_token_logprobs(a, "one prompt")


def test_processor_generate_inputs_are_what_generate_mixed_decodes_from(pair):
    from transformers import LogitsProcessorList

    a, b = pair
    proc = MixingLogitsProcessor([a, b], [0.6, 0.4], PROMPTS)
    enc = proc.generate_inputs()
    with torch.no_grad():
        out = a.model.generate(**enc, logits_processor=LogitsProcessorList([proc]), do_sample=False, max_new_tokens=10,
                               pad_token_id=a.tokenizer.pad_token_id, eos_token_id=a.tokenizer.eos_token_id)
    eos = a.tokenizer.eos_token_id
    ids = [r[: r.index(eos) + 1] if eos in r else r for r in out[:, enc["input_ids"].shape[1] :].tolist()]
    assert ids == generate_mixed([a, b], [0.6, 0.4], PROMPTS, max_new_tokens=10, do_sample=False).completion_ids


def test_processor_refuses_rows_in_another_order_than_its_prompts(pair):
    from transformers import LogitsProcessorList

    a, b = pair
    proc = MixingLogitsProcessor([a, b], [0.6, 0.4], PROMPTS)
    enc = proc.generate_inputs()
    swapped = MixingLogitsProcessor([a, b], [0.6, 0.4], PROMPTS[::-1])
    with pytest.raises(ValueError, match=r"row 0 of generate's input_ids is not prompt 0 .*generate_inputs\(\)"):
        a.model.generate(**enc, logits_processor=LogitsProcessorList([swapped]), do_sample=False, max_new_tokens=2,
                         pad_token_id=a.tokenizer.pad_token_id)


def test_generate_and_generate_mixed_share_the_decoding_defaults_of_settings(pair):
    import alignlecture

    a, _ = pair
    defaults = alignlecture.settings().decoding()
    assert defaults["do_sample"] is True and defaults["max_new_tokens"] == alignlecture.settings().max_new_tokens
    mixed = generate_mixed([a], [1.0], PROMPTS, chat=False)
    explicit = generate_mixed([a], [1.0], PROMPTS, chat=False, **defaults)
    assert mixed.completion_ids == explicit.completion_ids
    assert max(len(r) for r in mixed.completion_ids) <= defaults["max_new_tokens"]
    assert generate(a, PROMPTS, chat=False).completion_ids == generate(a, PROMPTS, chat=False, **defaults).completion_ids


# ---------------------------------------------------------------------------------------------- toy-world recipes, exact
def test_markov_policy_depends_only_on_position_and_previous_token():
    from alignlecture.toy import ToyWorld

    w = ToyWorld(5, 4)
    t = w.markov_policy(seed=3).log_table
    assert torch.equal(t[w.prefix_index((1, 2))], t[w.prefix_index((3, 2))])  # same depth, same last token
    assert not torch.equal(t[w.prefix_index((1, 2))], t[w.prefix_index((1, 3))])
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        w.markov_policy(temperature=0.0)


def test_proxy_tuning_and_weak_to_strong_are_exact_on_sequences_with_a_smaller_proxy():
    from alignlecture.mixing import proxy_tuning, weak_to_strong
    from alignlecture.toy import ToyWorld

    w = ToyWorld(4, 3)
    small_ref, large, r, beta = w.markov_policy(seed=1), w.random_policy(seed=2), w.random_rewards(seed=3), 0.7
    small, large_star = w.optimal_policy(small_ref, r, beta), w.optimal_policy(large, r, beta)
    pols, wts = proxy_tuning(large, small, small_ref)
    seq = mix_logprobs([p.sequence_logprobs() for p in pols], wts)
    assert torch.allclose(seq, large_star.sequence_logprobs(), atol=1e-12, rtol=0)
    for alpha in (1.0, 2.0):
        pols, wts = weak_to_strong(large_star, small, small_ref, alpha=alpha)
        seq = mix_logprobs([p.sequence_logprobs() for p in pols], wts)
        goal = w.optimal_policy(large, (1 - alpha) * r, beta).sequence_logprobs()
        assert torch.allclose(seq, goal, atol=1e-12, rtol=0)


def test_mod_product_needs_weights_summing_to_one_or_a_reference_factor():
    from alignlecture.toy import ToyWorld

    w = ToyWorld(4, 3)
    ref, r1, r2, beta = w.random_policy(seed=1), w.random_rewards(seed=2), w.random_rewards(seed=3), 0.5
    s1, s2 = (w.optimal_policy(ref, r, beta).sequence_logprobs() for r in (r1, r2))
    combined = w.optimal_policy(ref, 0.5 * r1 + 0.8 * r2, beta).sequence_logprobs()
    assert (mix_logprobs([s1, s2], [0.5, 0.8]) - combined).abs().max() > 1e-3  # the slide's "any w1, w2"
    fixed = mix_logprobs([s1, s2, ref.sequence_logprobs()], [0.5, 0.8, -0.3])
    assert torch.allclose(fixed, combined, atol=1e-12, rtol=0)
