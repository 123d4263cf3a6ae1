"""Tests for alignlecture.decoding: the incremental KV-cached decoder that mixing and guided search share."""

from __future__ import annotations

import torch

from alignlecture.decoding import CachedDecoder
from alignlecture.logprobs import completion_logprobs, encode_ids, prompt_token_ids
from alignlecture.mixing import check_same_vocabulary

PROMPTS = ["write one sentence about the dog", "i love tea", "the"]


def test_the_default_vocabulary_is_the_tokenizers(sharp):
    assert CachedDecoder(sharp).vocab_size == len(sharp.tokenizer) == check_same_vocabulary([sharp])
    assert CachedDecoder(sharp, 7).vocab_size == 7


def test_each_step_gives_the_log_probs_of_a_full_forward_on_the_left_padded_prefix(sharp):
    rows = [prompt_token_ids(sharp, p, chat=False) for p in PROMPTS]  # prompts of different lengths
    decoder = CachedDecoder(sharp)
    fed, logps = [], [decoder.start(rows)]
    for tok in (5, 7, 9):
        fed.append([tok] * len(rows))
        logps.append(decoder.step(torch.full((len(rows),), tok), torch.ones(len(rows), dtype=torch.bool)))
    completions = [list(col) + [1] for col in zip(*fed)]  # the fed tokens, then one more to read the last step's
    batch = encode_ids(rows, completions, sharp.tokenizer.pad_token_id)
    with torch.no_grad():
        per_token = completion_logprobs(sharp.model, **batch).per_token  # log π of each completion token
    for i, (prompt, completion) in enumerate(zip(rows, completions)):
        want = per_token[i, len(prompt) : len(prompt) + len(completion)]
        got = torch.stack([lp[i, tok] for lp, tok in zip(logps, completion)])
        assert torch.allclose(got, want, atol=1e-4)


def test_branch_leaves_the_parent_cache_untouched(sharp):
    rows = [prompt_token_ids(sharp, p, chat=False) for p in PROMPTS]
    parent, fresh = CachedDecoder(sharp), CachedDecoder(sharp)
    first = parent.start(rows)
    fresh.start(rows)
    child = parent.branch(torch.tensor([2, 0, 0, 1]))
    for tok in (5, 7, 9):
        child.step(torch.full((4,), tok), torch.ones(4, dtype=torch.bool))
    tokens = first.argmax(dim=-1)
    real = torch.ones(len(PROMPTS), dtype=torch.bool)
    assert torch.equal(parent.step(tokens, real), fresh.step(tokens, real))


def test_branched_rows_continue_like_their_parent_rows(sharp):
    rows = [prompt_token_ids(sharp, p, chat=False) for p in PROMPTS]
    parent = CachedDecoder(sharp)
    parent.start(rows)
    child = parent.branch(torch.tensor([2, 0]))
    tok, real = torch.tensor([5, 6]), torch.ones(2, dtype=torch.bool)
    got = child.step(tok, real)
    want = parent.step(torch.tensor([6, 0, 5]), torch.ones(3, dtype=torch.bool))[[2, 0]]
    assert torch.allclose(got, want, atol=1e-5)
