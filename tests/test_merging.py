"""Parameter merging and the Q/K sign-flip hack: the flip is an exact symmetry, the merge is not."""

from __future__ import annotations

import pytest
import torch

from alignlecture.logprobs import position_ids_from_mask
from alignlecture.merging import flip_qk, merge_parameters
from alignlecture.models import tiny_policy


def _next_logits(policy, text="the cat sat on the mat"):
    enc = policy.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return policy.model(**enc, position_ids=position_ids_from_mask(enc["attention_mask"])).logits[0, -1]


def test_flipping_q_and_k_leaves_every_logit_unchanged(tiny):
    flipped = flip_qk(tiny)
    assert torch.allclose(_next_logits(flipped), _next_logits(tiny), atol=1e-5)
    assert not torch.equal(flipped.model.model.layers[-1].self_attn.q_proj.weight,
                           tiny.model.model.layers[-1].self_attn.q_proj.weight)


def test_half_half_merge_of_a_model_and_its_flip_zeroes_q_and_k_and_changes_the_output(tiny):
    merged = merge_parameters([tiny, flip_qk(tiny, layers=[0, 1])], [0.5, 0.5])
    attn = merged.model.model.layers[0].self_attn
    assert attn.q_proj.weight.abs().max() == 0 and attn.k_proj.weight.abs().max() == 0
    assert (_next_logits(merged) - _next_logits(tiny)).abs().max() > 1e-3


def test_merge_is_the_weighted_sum_of_parameters_and_leaves_inputs_untouched(tiny):
    other = tiny_policy(seed=1, device="cpu")
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    merged = merge_parameters([tiny, other], [0.25, 0.75])
    for k, v in merged.model.state_dict().items():
        want = 0.25 * tiny.model.state_dict()[k] + 0.75 * other.model.state_dict()[k]
        assert torch.allclose(v, want, atol=1e-6), k
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())


def test_merging_with_weights_one_and_zero_gives_back_the_first_model(tiny):
    merged = merge_parameters([tiny, tiny_policy(seed=3, device="cpu")], [1.0, 0.0])
    assert torch.allclose(_next_logits(merged), _next_logits(tiny), atol=1e-6)


@pytest.mark.parametrize(
    "weights, message", [([1.0], "one weight per model"), ([1.0, float("inf")], "weights must be finite")]
)
def test_bad_weights_are_refused(tiny, weights, message):
    with pytest.raises(ValueError, match=message):
        merge_parameters([tiny, tiny], weights)


def test_different_architectures_cannot_be_merged(tiny):
    wider = tiny_policy(hidden_size=32, num_heads=4, device="cpu")
    with pytest.raises(ValueError, match="different architectures"):
        merge_parameters([tiny, wider], [0.5, 0.5])


def test_flip_rejects_out_of_range_layers(tiny):
    with pytest.raises(ValueError, match="out of range"):
        flip_qk(tiny, layers=[7])
