"""Policies that share lower blocks are scored with those blocks run once (alignlecture.top_blocks)."""

import pytest
import torch


def _three_tiny_policies():
    from alignlecture.models import tiny_policy

    a, b, c = (tiny_policy(seed=0, num_layers=4, device="cpu") for _ in range(3))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in b.model.model.layers[3].parameters():  # b differs from a in its top block, c from block 2 up
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for p in c.model.model.layers[2].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        b.model.model.norm.weight.mul_(1.1)  # the final norm trains with the top blocks (trainable_layers)
    return a, b, c


def test_sequence_logprobs_many_equals_one_call_per_policy_and_runs_shared_blocks_once():
    from alignlecture.logprobs import sequence_logprobs
    from alignlecture.top_blocks import _differing_top_blocks, sequence_logprobs_many

    a, b, c = _three_tiny_policies()
    prompts = ["tell me about the movie", "describe the weather", "tell me about the movie", "what do you think"]
    completions = ["it was good", "rain", "it was good", "i love it"]
    many = sequence_logprobs_many([a, b, c], prompts, completions, chat=False, batch_size=2)
    one_by_one = torch.stack([sequence_logprobs(p, prompts, completions, chat=False) for p in (a, b, c)])
    assert many.shape == (3, 4)
    assert torch.allclose(many, one_by_one, atol=1e-5)
    assert many[:, 0].tolist() == many[:, 2].tolist()  # a repeated pair is scored once
    assert _differing_top_blocks([a.model, b.model]) == 1 and _differing_top_blocks([a.model, b.model, c.model]) == 2
    assert _differing_top_blocks([a.model, a.model]) == 1


def test_sequence_logprobs_many_falls_back_when_embeddings_differ_and_refuses_other_tokenisations():
    from alignlecture.logprobs import sequence_logprobs
    from alignlecture.top_blocks import _differing_top_blocks, sequence_logprobs_many

    a, b, _ = _three_tiny_policies()
    with torch.no_grad():
        b.model.model.embed_tokens.weight.add_(0.01)  # tied to the head: nothing can be shared
    assert _differing_top_blocks([a.model, b.model]) is None
    many = sequence_logprobs_many([a, b], ["describe the weather"], ["rain"], chat=False)
    assert torch.allclose(many[1], sequence_logprobs(b, ["describe the weather"], ["rain"], chat=False), atol=1e-5)
    with pytest.raises(ValueError, match="no policies given"):
        sequence_logprobs_many([], ["x"], ["y"])
    b.format_prompt = lambda prompt, chat=True: "question: " + prompt  # another prompt format
    with pytest.raises(ValueError, match="tokenises the pairs differently"):
        sequence_logprobs_many([a, b], ["describe the weather"], ["rain"], chat=False)


def test_generation_logprobs_many_equals_generation_logprobs_of_each_policy():
    from alignlecture.logprobs import generation_logprobs
    from alignlecture.models import generate
    from alignlecture.top_blocks import generation_logprobs_many

    a, b, c = _three_tiny_policies()
    gens = generate(a, ["describe the weather", "the film", "rain"], max_new_tokens=5, seed=0)
    many = generation_logprobs_many([a, b, c], gens)
    for j, pol in enumerate((a, b, c)):
        torch.testing.assert_close(many[j], generation_logprobs(pol, gens).float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no policies given"):
        generation_logprobs_many([], gens)
