"""Tests for alignlecture.logprobs: completion log-probs of prompt+completion batches in one forward pass."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlecture.logprobs import (
    check_masks,
    completion_logprobs,
    encode_ids,
    encode_pairs,
    sequence_logprobs,
)

PROMPTS = ["tell me about the movie", "describe the weather", "what do you think of this book"]
COMPLETIONS = ["it was very good", "sun", "i love it and it is great"]


def ids_of(tiny, text: str) -> list[int]:
    return tiny.tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def loop_logprobs(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Reference: for each completion token, run the model on the row's unpadded tokens before it."""
    out = torch.zeros(input_ids.shape, dtype=torch.float32)
    for row in range(input_ids.shape[0]):
        real = attention_mask[row].bool()
        tokens = input_ids[row][real]
        positions = real.nonzero().flatten()
        for j, t in enumerate(positions.tolist()):
            if not completion_mask[row, t]:
                continue
            logits = model(input_ids=tokens[:j][None]).logits[0, -1].float()
            out[row, t] = torch.log_softmax(logits, -1)[tokens[j]]
    return out


def left_pad(batch: dict[str, torch.Tensor], extra: int = 0) -> dict[str, torch.Tensor]:
    """The same rows moved to the right end (left padding), optionally with `extra` more pad columns."""
    ids, am, cm = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    B, S = ids.shape
    W = S + extra
    out = {
        "input_ids": torch.zeros(B, W, dtype=torch.long),
        "attention_mask": torch.zeros(B, W, dtype=torch.long),
        "completion_mask": torch.zeros(B, W, dtype=torch.long),
    }
    for i in range(B):
        n = int(am[i].sum())
        out["input_ids"][i, W - n :] = ids[i, :n]
        out["attention_mask"][i, W - n :] = 1
        out["completion_mask"][i, W - n :] = cm[i, :n]
    return out


@pytest.fixture(scope="module")
def batch(tiny):
    return encode_pairs(tiny, PROMPTS, COMPLETIONS, add_eos=False)  # the bare layout (no eos)


# ---------------------------------------------------------------------------------------------- completion_logprobs
def test_per_token_logprobs_equal_token_by_token_loop(tiny, batch):
    with torch.no_grad():
        got = completion_logprobs(tiny.model, **batch)
    ref = loop_logprobs(tiny.model, **batch)
    torch.testing.assert_close(got.per_token, ref, rtol=0, atol=1e-5)
    assert bool((got.per_token[batch["completion_mask"].bool()] < 0).all())


def test_per_sequence_is_sum_of_per_token_and_zero_outside_completion(tiny, batch):
    with torch.no_grad():
        got = completion_logprobs(tiny.model, **batch)
    torch.testing.assert_close(got.per_sequence, got.per_token.sum(dim=1))
    assert got.per_sequence.shape == (len(PROMPTS),)
    assert bool((got.per_token[~batch["completion_mask"].bool()] == 0).all())


def test_left_and_right_padding_give_the_same_logprobs(tiny, batch):
    with torch.no_grad():
        right = completion_logprobs(tiny.model, **batch)
        left = completion_logprobs(tiny.model, **left_pad(batch, extra=2))
        wider_right = completion_logprobs(
            tiny.model, **{k: torch.nn.functional.pad(v, (0, 3)) for k, v in batch.items()}
        )
    torch.testing.assert_close(left.per_sequence, right.per_sequence, rtol=0, atol=1e-5)
    torch.testing.assert_close(wider_right.per_sequence, right.per_sequence, rtol=0, atol=1e-5)
    assert bool(torch.isfinite(left.per_token).all())


def test_a_row_scores_the_same_alone_and_in_a_batch(tiny, batch):
    with torch.no_grad():
        together = completion_logprobs(tiny.model, **batch).per_sequence
        alone = [
            completion_logprobs(tiny.model, **encode_pairs(tiny, [p], [c], add_eos=False)).per_sequence
            for p, c in zip(PROMPTS, COMPLETIONS)
        ]
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-5)


def test_gradients_flow_to_model_parameters(tiny, batch):
    params = [p for p in tiny.model.parameters() if p.requires_grad]
    assert params
    try:
        out = completion_logprobs(tiny.model, **batch)
        assert out.per_sequence.requires_grad
        out.per_sequence.sum().backward()
        grads = [p.grad for p in params]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        assert all(bool(torch.isfinite(g).all()) for g in grads)
    finally:
        for p in params:
            p.grad = None


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_random_batches_match_token_by_token_loop(tiny, data):
    B = data.draw(st.integers(1, 3), label="batch")
    side = data.draw(st.sampled_from(["left", "right"]), label="padding side")
    extra = data.draw(st.integers(0, 2), label="extra padding")
    vocab = len(tiny.tokenizer)
    token = st.integers(3, vocab - 1)
    rows = []
    for _ in range(B):
        prompt = data.draw(st.lists(token, min_size=1, max_size=4), label="prompt ids")
        completion = data.draw(st.lists(token, min_size=1, max_size=4), label="completion ids")
        rows.append((prompt, completion))
    batch = encode_ids([p for p, _ in rows], [c for _, c in rows], tiny.tokenizer.pad_token_id)
    if side == "left":
        batch = left_pad(batch, extra)
    else:
        batch = {k: torch.nn.functional.pad(v, (0, extra)) for k, v in batch.items()}
    with torch.no_grad():
        got = completion_logprobs(tiny.model, **batch)
    ref = loop_logprobs(tiny.model, **batch)
    torch.testing.assert_close(got.per_token, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.per_sequence, ref.sum(dim=1), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- encode_pairs
def test_encode_pairs_splits_exactly_at_the_completion_boundary(tiny, batch):
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask"}
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        ids, am, cm = batch["input_ids"][i], batch["attention_mask"][i].bool(), batch["completion_mask"][i].bool()
        assert ids[cm].tolist() == ids_of(tiny, c)
        assert ids[am & ~cm].tolist() == ids_of(tiny, tiny.format_prompt(p))
        n = int(am.sum())
        assert bool(am[:n].all()) and not bool(am[n:].any())  # right padded
        assert bool((ids[n:] == tiny.tokenizer.pad_token_id).all())
        assert bool(cm[n - len(ids_of(tiny, c)) : n].all())  # the completion ends the row


def test_encode_pairs_appends_eos_to_the_completion_by_default(tiny):
    plain = encode_pairs(tiny, PROMPTS[:1], COMPLETIONS[:1], add_eos=False)
    with_eos = encode_pairs(tiny, PROMPTS[:1], COMPLETIONS[:1])
    c = with_eos["input_ids"][0][with_eos["completion_mask"][0].bool()].tolist()
    assert c == ids_of(tiny, COMPLETIONS[0]) + [tiny.eos_token_id]
    assert with_eos["input_ids"].shape[1] == plain["input_ids"].shape[1] + 1


def test_encode_pairs_max_length_truncates_only_the_completion(tiny):
    p_ids, c_ids = ids_of(tiny, PROMPTS[0]), ids_of(tiny, COMPLETIONS[0])
    limit = len(p_ids) + 2
    out = encode_pairs(tiny, PROMPTS[:1], COMPLETIONS[:1], max_length=limit, add_eos=False)
    ids, cm = out["input_ids"][0], out["completion_mask"][0].bool()
    assert out["input_ids"].shape == (1, limit)
    assert ids[~cm].tolist() == p_ids
    assert ids[cm].tolist() == c_ids[:2]
    roomy = encode_pairs(tiny, PROMPTS[:1], COMPLETIONS[:1], max_length=100, add_eos=False)
    assert roomy["input_ids"].shape[1] == len(p_ids) + len(c_ids)


def test_encode_pairs_gives_an_empty_prompt_one_context_token(tiny):
    out = encode_pairs(tiny, [""], ["good"], add_eos=False)
    assert out["input_ids"].tolist() == [[tiny.eos_token_id, ids_of(tiny, "good")[0]]]
    assert out["completion_mask"].tolist() == [[0, 1]]


def test_encode_ids_builds_the_same_layout_as_encode_pairs(tiny, batch):
    p = [ids_of(tiny, x) for x in PROMPTS]
    c = [ids_of(tiny, y) for y in COMPLETIONS]
    again = encode_ids(p, c, tiny.tokenizer.pad_token_id)
    for k in batch:
        assert torch.equal(again[k], batch[k])


# ---------------------------------------------------------------------------------------------- sequence_logprobs
def test_sequence_logprobs_equals_per_sequence_of_completion_logprobs(tiny, batch):
    with torch.no_grad():
        expected = completion_logprobs(tiny.model, **batch).per_sequence
    got = sequence_logprobs(tiny, PROMPTS, COMPLETIONS, add_eos=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not got.requires_grad
    small_batches = sequence_logprobs(tiny, PROMPTS, COMPLETIONS, batch_size=1, add_eos=False)
    torch.testing.assert_close(small_batches, expected, rtol=0, atol=1e-5)


def test_sequence_logprobs_by_default_adds_the_eos_logprob(tiny):
    base = sequence_logprobs(tiny, PROMPTS, COMPLETIONS, add_eos=False)
    with_eos = sequence_logprobs(tiny, PROMPTS, COMPLETIONS)
    batch = encode_pairs(tiny, PROMPTS, COMPLETIONS)
    with torch.no_grad():
        per_token = completion_logprobs(tiny.model, **batch).per_token
    last = batch["attention_mask"].sum(dim=1) - 1
    eos_lp = per_token[torch.arange(len(PROMPTS)), last]
    torch.testing.assert_close(with_eos, base + eos_lp, rtol=0, atol=1e-5)
    assert bool((eos_lp < 0).all())


# ---------------------------------------------------------------------------------------------- bad input
def _valid():
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    cm = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    return ids, am, cm


def test_valid_masks_pass_the_check():
    check_masks(*_valid())


def test_input_ids_not_two_dimensional_are_rejected():
    ids, am, cm = _valid()
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\]"):
        check_masks(ids[0], am[0], cm[0])


@pytest.mark.parametrize("which", ["attention_mask", "completion_mask"])
def test_mask_shape_differing_from_input_ids_is_rejected(which):
    ids, am, cm = _valid()
    masks = {"attention_mask": am, "completion_mask": cm}
    masks[which] = masks[which][:, :3]
    with pytest.raises(ValueError, match=rf"{which} must have the shape of input_ids \(2, 4\); got \(2, 3\)"):
        check_masks(ids, masks["attention_mask"], masks["completion_mask"])


@pytest.mark.parametrize("which", ["attention_mask", "completion_mask"])
@pytest.mark.parametrize("value", [2, -1])
def test_mask_values_other_than_zero_and_one_are_rejected(which, value):
    ids, am, cm = _valid()
    masks = {"attention_mask": am.clone(), "completion_mask": cm.clone()}
    masks[which][1, 2] = value
    with pytest.raises(ValueError, match=f"{which} must hold only 0 and 1"):
        check_masks(ids, masks["attention_mask"], masks["completion_mask"])


def test_completion_on_padding_is_rejected(tiny):
    ids, am, cm = _valid()
    cm[0, 3] = 1
    with pytest.raises(ValueError, match="completion_mask marks padding tokens"):
        completion_logprobs(tiny.model, ids, am, cm)


def test_completion_at_position_zero_is_rejected(tiny):
    ids, am, cm = _valid()
    cm[1, 0] = 1
    with pytest.raises(ValueError, match="completion_mask marks position 0"):
        completion_logprobs(tiny.model, ids, am, cm)


def test_row_with_empty_completion_is_rejected(tiny):
    ids, am, cm = _valid()
    cm[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] have an empty completion"):
        completion_logprobs(tiny.model, ids, am, cm)


def test_mismatched_prompt_and_completion_counts_are_rejected(tiny):
    with pytest.raises(ValueError, match="got 2 prompts but 1 completions"):
        encode_pairs(tiny, PROMPTS[:2], COMPLETIONS[:1])
    with pytest.raises(ValueError, match="got 1 prompts but 2 completions"):
        encode_ids([[5]], [[6], [7]], 0)


def test_no_pairs_are_rejected(tiny):
    with pytest.raises(ValueError, match="no prompt/completion pairs given"):
        encode_pairs(tiny, [], [])


@pytest.mark.parametrize("completion", ["", "   "])
def test_completion_with_no_tokens_is_rejected_without_eos(tiny, completion):
    with pytest.raises(ValueError, match=r"pair 1: the completion .* has no tokens to score"):
        encode_pairs(tiny, PROMPTS[:2], ["good", completion], add_eos=False)


def test_an_empty_finished_completion_is_just_eos(tiny):
    out = encode_pairs(tiny, PROMPTS[:1], [""])
    assert out["input_ids"][0][out["completion_mask"][0].bool()].tolist() == [tiny.eos_token_id]


def test_prompt_at_least_max_length_is_rejected(tiny):
    n = len(ids_of(tiny, PROMPTS[0]))
    with pytest.raises(ValueError, match=rf"pair 0: the prompt alone has {n} tokens ≥ max_length={n}"):
        encode_pairs(tiny, PROMPTS[:1], COMPLETIONS[:1], max_length=n)


def test_non_str_prompt_is_rejected(tiny):
    with pytest.raises(TypeError, match="prompt must be a str"):
        encode_pairs(tiny, [3], ["good"])


# ------------------------------------------------------------------------------------- several policies at once
def test_pad_states_right_pads_each_row_with_zeros():
    from alignlecture.logprobs import pad_states

    a, b = torch.ones(2, 3), 2 * torch.ones(4, 3)
    out = pad_states([a, b], 5)
    assert out.shape == (2, 5, 3) and out.dtype == a.dtype
    assert torch.equal(out[0, :2], a) and torch.equal(out[0, 2:], torch.zeros(3, 3))
    assert torch.equal(out[1, :4], b) and torch.equal(out[1, 4:], torch.zeros(1, 3))
