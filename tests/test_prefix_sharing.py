"""Prefix sharing: a packed pair (prompt once, then chosen, then rejected) gives the log-probs, losses and gradients
of its two unshared rows (alignlecture.prefix_sharing and the trainer's default path)."""

from __future__ import annotations

import pytest
import torch

from alignlecture import prefix_sharing as ps
from alignlecture.logprobs import completion_logprobs, pad_rows, tokenize_pairs
from alignlecture.models import tiny_policy
from alignlecture.train import DPOConfig, DPOTrainer
from dpo_pairs import DATA  # tests/ is on sys.path under pytest

# prompts of different lengths, so the packed rows of one batch differ in length and in shared prefix
PROMPTS = ["describe the weather", "how was your day today , tell me everything", "the film", "rain ?"]
CHOSEN = ["sunny and warm", "good", "a lovely calm story with warm light", "yes"]
REJECTED = ["awful", "bad bad bad and cold", "no", "cold wet and grey all day long"]


def rows_of(policy, prompts=PROMPTS, chosen=CHOSEN, rejected=REJECTED):
    rows, masks = tokenize_pairs(policy, prompts * 2, chosen + rejected, chat=False)
    n = len(prompts)
    return rows[:n], masks[:n], rows[n:], masks[n:]


def left_padded(rows, masks, pad):
    """The same rows padded on the LEFT (the unshared layout TRL's prompts use)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    att, comp = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, width - len(r):], att[i, width - len(r):], comp[i, width - len(r):] = torch.tensor(r), 1, torch.tensor(m)
    return {"input_ids": ids, "attention_mask": att, "completion_mask": comp}


def test_packing_puts_the_prompt_once_and_restarts_the_rejected_positions_after_it():
    # chosen row: prompt 10 11 12, completion 20 21; rejected row: prompt 10 11 12, completion 30
    packed = ps.pack_pairs([[10, 11, 12, 20, 21]], [[0, 0, 0, 1, 1]], [[10, 11, 12, 30]], [[0, 0, 0, 1]], pad_token_id=0)
    assert packed.shared == [3]
    assert packed.input_ids.tolist() == [[10, 11, 12, 20, 21, 30]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]
    assert packed.segments.tolist() == [[0, 0, 0, 1, 1, 2]]
    # scored: 20 from position 2, 21 from 3 (chosen, slot 0); 30 from position 2 (rejected, slot 1)
    assert packed.source.tolist() == [2, 3, 2] and packed.target.tolist() == [20, 21, 30]
    assert packed.owner.tolist() == [0, 0, 1]
    mask = packed.attention_mask()[0, 0].int().tolist()
    assert mask[5] == [1, 1, 1, 0, 0, 1]  # the rejected token sees the prompt and itself, never the chosen tokens
    assert mask[4] == [1, 1, 1, 1, 1, 0]  # chosen tokens: ordinary causal attention


def test_shared_prefix_stops_where_a_completion_starts_even_if_the_tokens_agree():
    assert ps.shared_prefix([1, 2, 3, 4], [0, 0, 1, 1], [1, 2, 3, 5], [0, 0, 1, 1]) == 2
    assert ps.shared_prefix([1, 2, 3], [0, 0, 1], [7, 2, 3], [0, 0, 1]) == 0


def test_pairs_without_a_shared_prefix_still_pack_and_score_exactly():
    policy = tiny_policy(seed=0, device="cpu")
    c, mc, r, mr = rows_of(policy)
    r = [[5] + row for row in r]  # a different first token: nothing shared
    mr = [[0] + m for m in mr]
    packed = ps.pack_pairs(c, mc, r, mr, policy.tokenizer.pad_token_id)
    assert packed.shared == [0] * len(c)
    with torch.no_grad():
        shared = ps.pair_logprobs(policy.model, packed)
        plain = completion_logprobs(policy.model, **pad_rows(c + r, mc + mr, policy.tokenizer.pad_token_id)).per_sequence
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_log_probs_equal_the_unshared_rows_right_or_left_padded(attention):
    policy = tiny_policy(seed=0, device="cpu")
    policy.model.config._attn_implementation = attention
    c, mc, r, mr = rows_of(policy)
    pad = policy.tokenizer.pad_token_id
    packed = ps.pack_pairs(c, mc, r, mr, pad)
    real = int((packed.segments != ps.SEGMENT_PADDING).sum())
    assert all(s > 0 for s in packed.shared) and real == sum(map(len, c + r)) - sum(packed.shared)
    with torch.no_grad():
        shared = ps.pair_logprobs(policy.model, packed)
        right = completion_logprobs(policy.model, **pad_rows(c + r, mc + mr, pad)).per_sequence
        left = completion_logprobs(policy.model, **left_padded(c + r, mc + mr, pad)).per_sequence
    torch.testing.assert_close(shared, right, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared, left, rtol=1e-5, atol=1e-5)


def test_gradients_through_the_shared_prompt_equal_the_unshared_rows():
    policy = tiny_policy(seed=0, device="cpu")
    c, mc, r, mr = rows_of(policy)
    weights = torch.linspace(-1.0, 2.0, 2 * len(c))  # any combination of the 2B log-probs

    def grads(logps):
        policy.model.zero_grad()
        (weights * logps).sum().backward()
        return [p.grad.clone() for p in policy.model.parameters()]

    shared = grads(ps.pair_logprobs(policy.model, ps.pack_pairs(c, mc, r, mr, policy.tokenizer.pad_token_id)))
    plain = grads(completion_logprobs(policy.model, **pad_rows(c + r, mc + mr, policy.tokenizer.pad_token_id)).per_sequence)
    for a, b in zip(shared, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_supports_custom_masks_only_with_sdpa_or_eager_attention():
    policy = tiny_policy(seed=0, device="cpu")
    assert ps.supports(policy.model)
    policy.model.config._attn_implementation = "flash_attention_2"
    assert not ps.supports(policy.model)
    assert not ps.supports(torch.nn.Linear(2, 2))


def test_packing_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one chosen and one rejected row"):
        ps.pack_pairs([[1, 2]], [[0, 1]], [], [], pad_token_id=0)


# ---------------------------------------------------------------------------------------------- the trainer
def one_step(sharing: bool, *, peft=False, **kw):
    """Weights after one SGD step (Δθ = −lr·∇loss) and the logged row, with or without prefix sharing."""
    policy = tiny_policy(seed=0, device="cpu")
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    cfg = DPOConfig(per_device_train_batch_size=4, learning_rate=1e-2, optimizer="sgd", max_grad_norm=None,
                    max_steps=2, progress=False, chat=False, seed=0, prefix_sharing=sharing, **kw)
    trainer = DPOTrainer(policy, DATA, cfg, peft_config=peft_config)
    result = trainer.train()
    assert trainer.share is sharing
    weights = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
    return weights, result.history


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"loss_type": "ipo"},
        {"loss_type": "hinge"},
        {"loss_type": "robust", "label_smoothing": 0.1},
        {"label_smoothing": 0.2},
        {"trainable_layers": 1},
        {"trainable_layers": 2, "pairwise_normalized": True},
        {"pairwise_normalized": True},
        {"peft": True},
        {"peft": True, "pairwise_normalized": True},
    ],
    ids=["sigmoid", "ipo", "hinge", "robust", "cdpo", "top-1", "top-2-normalized", "full-normalized", "lora",
         "lora-normalized"],
)
def test_trainer_with_shared_prompts_matches_the_unshared_path(kw):
    shared, h_shared = one_step(True, **kw)
    plain, h_plain = one_step(False, **kw)
    assert shared.keys() == plain.keys()
    for k in shared:  # two steps: the second starts from the first's weights, so the gradients agree too
        torch.testing.assert_close(shared[k], plain[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    for a, b in zip(h_shared, h_plain):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_a_packed_pairs_cache_assembled_from_its_two_rows_equals_running_it_packed():
    """The precompute runs each distinct row once and assembles a packed pair's cached activations from its two
    rows; the first step's pairs it runs packed. Every pair's cache equals a packed forward's, to float error."""
    policy = tiny_policy(seed=0, device="cpu")
    cfg = DPOConfig(per_device_train_batch_size=4, max_steps=1, progress=False, chat=False, seed=0,
                    trainable_layers=1, prefix_sharing=True)
    trainer = DPOTrainer(policy, DATA, cfg)
    trainer.share = True
    first = [0, 1, 2, 3]
    trainer._precompute(torch.device("cpu"), [first])
    model, n = policy.model, trainer.num_pairs
    top = len(model.model.layers) - 1
    for i in range(n):
        packed = trainer._packed([i], torch.device("cpu"))
        mask = ps.mask_for(model.config, packed.attention_mask(), model.dtype)
        with torch.no_grad():
            out = model.model(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids,
                              output_hidden_states=True)
        torch.testing.assert_close(trainer.cache[i], out.hidden_states[top][0], rtol=1e-5, atol=1e-5)
    assert n > len(first), "the test needs pairs beyond the first step's"
