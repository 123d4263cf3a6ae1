"""Parameter merging and the Q/K sign-flip hack: the flip is an exact symmetry, the merge is not."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from alignlecture.logprobs import position_ids_from_mask
from alignlecture.merging import copy_sharing, flip_qk, merge_parameters
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


# ---------------------------------------------------------------------------------------------- memory: sharing
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def _old_merge(policies, weights) -> torch.nn.Module:
    """merge_parameters as it was: a deep copy loaded with a full dict of float64 sums cast back."""
    states = [p.model.state_dict() for p in policies]
    merged = copy.deepcopy(policies[0].model)
    with torch.no_grad():
        new_state = {
            k: sum(w * s[k].to(v.device, torch.float64) for w, s in zip(weights, states)).to(v.dtype)
            if v.is_floating_point() else v.clone()
            for k, v in states[0].items()
        }
        merged.load_state_dict(new_state)
    return merged.eval()


def _old_flip(policy, layers) -> torch.nn.Module:
    """flip_qk as it was: a deep copy of the whole model with W_Q, W_K negated in place."""
    flipped = copy.deepcopy(policy.model)
    with torch.no_grad():
        for i in layers:
            for proj in (flipped.model.layers[i].self_attn.q_proj, flipped.model.layers[i].self_attn.k_proj):
                proj.weight.neg_()
    return flipped.eval()


def _with_edge_values(policy, values):
    """``policy`` with its final norm's first entries set to ``values`` (−0.0, ±inf, NaN: rounding edge cases)."""
    with torch.no_grad():
        policy.model.model.norm.weight[: len(values)] = torch.tensor(values, dtype=policy.model.model.norm.weight.dtype)
    return policy


def _ptrs(model) -> dict[str, int]:
    return {n: p.data_ptr() for n, p in model.named_parameters(remove_duplicate=False)}


def test_flip_qk_owns_only_the_flipped_weights_and_shares_the_rest(tiny):
    flipped = flip_qk(tiny, layers=[0])
    own = {f"model.layers.0.self_attn.{p}_proj.weight" for p in "qk"}
    theirs, ours = _ptrs(tiny.model), _ptrs(flipped.model)
    assert {n for n in ours if ours[n] != theirs[n]} == own
    for n in own:
        assert torch.equal(flipped.model.get_parameter(n), -tiny.model.get_parameter(n))
    assert flipped.model.lm_head.weight is flipped.model.model.embed_tokens.weight  # still tied
    assert all(a is not b for a, b in zip(flipped.model.parameters(), tiny.model.parameters()))  # own Parameters
    flipped_bytes = sum(tiny.model.get_parameter(n).numel() * 4 for n in own)
    _, peak = _LiveBytes().measure([tiny.model], lambda: flip_qk(tiny, layers=[0]))
    assert flipped_bytes <= peak <= flipped_bytes + 1024  # + the copied rotary frequencies


def test_flip_qk_gives_the_same_logits_as_a_full_deep_copy_bit_for_bit(tiny):
    for layers in ([1], [0, 1]):
        old = _old_flip(tiny, layers)
        new = flip_qk(tiny, layers)
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(old.state_dict().values(),
                                                                 new.model.state_dict().values()))
        old_policy = type(tiny)(model=old, tokenizer=tiny.tokenizer, name="old")
        assert torch.equal(_next_logits(new), _next_logits(old_policy))


def test_moving_a_sharing_copy_leaves_the_original_where_it_is():
    policy = tiny_policy(seed=4, device="cpu")
    twin = flip_qk(policy)
    twin.model.to(torch.float64)
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    assert copy_sharing(policy.model).model.norm.weight.data_ptr() == policy.model.model.norm.weight.data_ptr()


def _cases():
    a = _with_edge_values(tiny_policy(seed=0, device="cpu"), [-0.0, float("inf"), float("nan")])
    b = _with_edge_values(tiny_policy(seed=1, device="cpu"), [0.0, float("inf"), 1.0])
    c = tiny_policy(seed=2, device="cpu")
    wide = tiny_policy(seed=1, device="cpu", dtype=torch.float64)
    half = tiny_policy(seed=0, device="cpu", dtype=torch.bfloat16)
    return {
        "two models": ([a, b], [0.3, 0.7]),
        "three models": ([a, b, c], [0.2, 0.5, 0.3]),
        "flip twin 50/50": ([a, flip_qk(a, layers=[0, 1])], [0.5, 0.5]),
        "flip twin 0.3/0.7": ([a, flip_qk(a)], [0.3, 0.7]),
        "itself, extrapolated": ([a, a], [1.5, -0.5]),
        "itself, weights not summing to 1": ([a, a], [0.1, 0.2]),
        "itself, many weights": ([c, c, c], [0.1, 0.2, 0.7]),
        "float64 inputs": ([tiny_policy(seed=0, device="cpu", dtype=torch.float64), wide], [0.3, 0.7]),
        "float64 itself": ([wide, wide], [0.1, 0.9]),
        "bfloat16 with float32": ([half, c], [0.6, 0.4]),
        "bfloat16 itself": ([half, half], [0.3, 0.7]),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_merge_equals_the_float64_sum_then_cast_bit_for_bit(case):
    policies, weights = _cases()[case]
    before = [{k: v.clone() for k, v in p.model.state_dict().items()} for p in policies]
    want = _old_merge(policies, weights).state_dict()
    merged = merge_parameters(policies, weights).model
    got = merged.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(_bits(got[k]), _bits(want[k])), k
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    for p, saved in zip(policies, before):  # the inputs are untouched, bit for bit
        assert all(torch.equal(_bits(v), _bits(saved[k])) for k, v in p.model.state_dict().items())


def test_merge_shares_exactly_the_tensors_it_gives_back_bit_for_bit():
    a = _with_edge_values(tiny_policy(seed=0, device="cpu"), [-0.0])
    twin = flip_qk(a, layers=[0])
    merged = merge_parameters([a, twin], [0.5, 0.5]).model
    theirs, ours = _ptrs(a.model), _ptrs(merged)
    flipped = {f"model.layers.0.self_attn.{p}_proj.weight" for p in "qk"}
    # Q and K of block 0 are 0 now; the final norm holds a −0.0, which the float64 sum turns into +0.0
    assert {n for n in ours if ours[n] != theirs[n]} == flipped | {"model.norm.weight"}
    assert torch.equal(_bits(merged.model.norm.weight[1:]), _bits(a.model.model.norm.weight[1:]))
    other = tiny_policy(seed=1, device="cpu")
    apart = merge_parameters([a, other], [0.3, 0.7]).model
    shared = set(_ptrs(a.model).values()) | set(_ptrs(other.model).values())
    assert not shared & set(_ptrs(apart).values())  # independent inputs: every merged tensor is new


class _LiveBytes(TorchDispatchMode):
    """The peak bytes of storages created during the block and still alive (sampled after every torch op)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.before:
                s = t.untyped_storage()
                self.live[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
        self.peak = max(self.peak, sum(n for ref, n in self.live.values() if not ref.expired()))
        return out

    def measure(self, models, fn):
        self.before = {t.untyped_storage().data_ptr() for m in models for t in m.state_dict().values()}
        with self:
            result = fn()
        return result, self.peak


def test_merge_holds_one_copy_and_one_tensor_of_float64_temporaries_at_most():
    a, b = tiny_policy(seed=0, num_layers=4, device="cpu"), tiny_policy(seed=1, num_layers=4, device="cpu")
    params = list(a.model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in params)
    largest64 = max(p.numel() for p in params) * 8
    _, old_peak = _LiveBytes().measure([a.model, b.model], lambda: _old_merge([a, b], [0.3, 0.7]))
    assert old_peak >= 2 * model_bytes  # the deep copy plus the full dict of merged tensors
    _, peak = _LiveBytes().measure([a.model, b.model], lambda: merge_parameters([a, b], [0.3, 0.7]))
    assert peak <= model_bytes + 2.5 * largest64  # the merged tensors + (sum, term) of the one being merged
    twin = flip_qk(a)
    flipped_bytes = 2 * a.model.model.layers[-1].self_attn.q_proj.weight.numel() * 4
    _, twin_peak = _LiveBytes().measure([a.model, twin.model], lambda: merge_parameters([a, twin], [0.5, 0.5]))
    assert twin_peak <= flipped_bytes + 2.5 * largest64  # only the flipped block is new memory


def test_flip_qk_refuses_a_block_named_twice():
    from alignlecture.merging import flip_qk
    from alignlecture.models import tiny_policy

    policy = tiny_policy(num_layers=2, device="cpu")
    with pytest.raises(ValueError, match="name a block twice"):
        flip_qk(policy, [1, -1])
