"""Per-example gradients from one batched backward equal one backward per row (alignlecture.per_example)."""

import pytest
import torch

from alignlecture.per_example import RowGradients


# ------------------------------------------------------------------------------------------------ one-pass per-row
def _rows_batch(policy, lengths, seed=0):
    from alignlecture.logprobs import pad_rows

    gen = torch.Generator().manual_seed(seed)
    vocab = len(policy.tokenizer)
    rows = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]
    masks = [[0] * 3 + [1] * (len(r) - 3) for r in rows]
    return rows, masks, pad_rows(rows, masks, policy.tokenizer.pad_token_id)


def _per_row_reference(logps_of_row, params, n):
    """Reference: one backward per row, the full gradient vector each, float64 [n, D]."""
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(logps_of_row(i), params)]).double()
                        for i in range(n)])


@pytest.mark.parametrize("lengths", [(7, 5, 9, 6), (60, 52, 47)])  # short rows: token products; long: per-row weights
def test_row_gradients_of_top_blocks_match_one_backward_per_row(lengths):
    from alignlecture.logprobs import logprobs_from_hidden
    from alignlecture.models import tiny_policy
    from alignlecture.top_blocks import TopLayers

    policy = tiny_policy(seed=0, device="cpu")
    model = policy.model
    rows, masks, b = _rows_batch(policy, lengths)
    top = TopLayers(model, 1)
    params = [p for m in (top.layers, top.norm) for p in m.parameters()]
    for p in model.parameters():
        p.requires_grad_(p in set(params))
    with torch.no_grad():
        hidden = model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                             output_hidden_states=True).hidden_states[top.first]

    def one_row(i):  # unpadded, alone
        ids, mask = torch.tensor([rows[i]]), torch.tensor([masks[i]])
        final = top(hidden[i : i + 1, : len(rows[i])], torch.ones_like(ids))
        return logprobs_from_hidden(final, model.lm_head, ids, mask).per_sequence[0]

    G = _per_row_reference(one_row, params, len(rows))
    with RowGradients(top, params) as rg:
        logps = logprobs_from_hidden(top(hidden, b["attention_mask"]), model.lm_head, b["input_ids"],
                                     b["completion_mask"]).per_sequence
    K = G @ G.T
    assert torch.allclose(rg.gram(logps), K, rtol=1e-5, atol=1e-6 * float(K.abs().max()))
    assert torch.allclose(rg.square_norms(logps), K.diagonal(), rtol=1e-5)
    alpha = torch.linspace(-1, 2, len(rows), dtype=torch.float64)
    want = alpha @ G
    assert torch.allclose(rg.combine(alpha, logps).double(), want, atol=1e-5 * float(want.abs().max()))


def test_row_gradients_of_lora_match_one_backward_per_row():
    from peft import LoraConfig, get_peft_model

    from alignlecture.logprobs import completion_logprobs
    from alignlecture.models import tiny_policy

    policy = tiny_policy(seed=2, device="cpu")
    model = get_peft_model(policy.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                    target_modules=["q_proj", "v_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(0)
    for n, p in model.named_parameters():  # LoRA's B starts at zero: give it values so every gradient is non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1, generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    rows, masks, b = _rows_batch(policy, (8, 6, 10))

    def one_row(i):
        ids, mask = torch.tensor([rows[i]]), torch.tensor([masks[i]])
        return completion_logprobs(model, ids, torch.ones_like(ids), mask).per_sequence[0]

    G = _per_row_reference(one_row, params, len(rows))
    with RowGradients(model, params) as rg:
        logps = completion_logprobs(model, b["input_ids"], b["attention_mask"], b["completion_mask"]).per_sequence
    K = G @ G.T
    assert torch.allclose(rg.gram(logps), K, rtol=1e-5, atol=1e-6 * float(K.abs().max()))
    assert torch.allclose(rg.square_norms(logps), K.diagonal(), rtol=1e-5)


def test_row_gradients_refuse_embeddings_tied_weights_and_misuse():
    from alignlecture.models import tiny_policy

    model = tiny_policy(seed=0, device="cpu").model
    params = list(model.parameters())  # the embedding is tied to lm_head, an nn.Linear: still refused
    assert not RowGradients.supports(model, params)
    with pytest.raises(ValueError, match="embeddings and tied weights are not"):
        RowGradients(model, params)
    layer = model.model.layers[0].mlp
    rg = RowGradients(layer, list(layer.parameters()))
    with pytest.raises(ValueError, match="with gradient, from the forward"):
        rg.gram(torch.zeros(3))
    with pytest.raises(ValueError, match="no hooked layer ran"):
        rg.gram(torch.zeros(3, requires_grad=True))
    with rg:
        out = layer(torch.randn(3, 5, 64)).sum((1, 2))
    with pytest.raises(ValueError, match="one weight per row"):
        rg.combine(torch.ones(2), out)
    with pytest.raises(ValueError, match="saw a batch of 3 rows but logps has 1"):
        rg2 = RowGradients(layer, list(layer.parameters()))
        with rg2:
            y = layer(torch.randn(3, 5, 64)).sum()
        rg2.gram(y.reshape(1))
