"""Tests for alignlecture.train and .checkpoint: the DPO trainer (full, top-layer and LoRA) on tiny random Llamas."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alignlecture.train as train_mod
from alignlecture.dpo import dpo_loss
from alignlecture.logprobs import (
    completion_logprobs,
    encode_pairs,
    logprobs_from_hidden,
    position_ids_from_mask,
)
from alignlecture.models import tiny_policy
from alignlecture.top_blocks import TopLayers
from alignlecture.train import DPOConfig, DPOTrainer, TrainingDiverged
from dpo_pairs import CHOSEN, DATA, PROMPTS, REJECTED  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)


def config(**kw) -> DPOConfig:
    """A quiet, plain-text (chat=False) config with test-sized defaults."""
    base = dict(per_device_train_batch_size=4, learning_rate=1e-2, progress=False, chat=False, seed=0)
    base.update(kw)
    return DPOConfig(**base)


def state(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def assert_states_equal(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def train(policy=None, data=DATA, ref_policy=None, peft_config=None, resume=None, **kw):
    policy = policy if policy is not None else tiny_policy(seed=0, device="cpu")
    return DPOTrainer(policy, data, config(**kw), ref_policy=ref_policy, peft_config=peft_config).train(resume)


# ---------------------------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def six_epochs():
    return train(num_train_epochs=6)


def test_loss_falls_and_reward_margin_and_accuracy_rise_over_epochs(six_epochs):
    h = six_epochs.history
    assert [row["step"] for row in h] == list(range(1, 13))  # 8 pairs / batch 4 × 6 epochs
    assert all(math.isfinite(row["loss"]) for row in h)
    last = h[-2:]
    assert sum(r["loss"] for r in last) / 2 < h[0]["loss"] - 0.2
    assert sum(r["rewards/margins"] for r in last) / 2 > h[0]["rewards/margins"] + 1.0
    assert sum(r["rewards/accuracies"] for r in last) / 2 >= 0.75 > h[0]["rewards/accuracies"]


def test_first_step_loss_is_ln2_because_the_policy_starts_as_the_reference(six_epochs):
    first = six_epochs.history[0]
    assert first["loss"] == pytest.approx(LN2, abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/accuracies"] == 0.0  # ties are not wins


def test_history_rows_carry_trl_metric_names(six_epochs):
    assert set(six_epochs.history[0]) == {
        "step", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
        "logps/chosen", "logps/rejected",
    }


def test_result_returns_the_policy_trained_in_place_in_eval_mode():
    policy = tiny_policy(seed=0, device="cpu")
    before = state(policy)
    result = train(policy, max_steps=1)
    assert result.policy is policy and result.config.max_steps == 1
    assert not policy.model.training
    assert any(not torch.equal(before[k], v) for k, v in state(policy).items())


def test_same_config_and_seed_give_identical_weights_and_history():
    a, b = train(num_train_epochs=2), train(num_train_epochs=2)
    assert_states_equal(state(a.policy), state(b.policy))
    assert a.history == b.history


def test_different_seed_gives_different_weights_and_history():
    a, b = train(num_train_epochs=2, seed=0), train(num_train_epochs=2, seed=1)
    sa, sb = state(a.policy), state(b.policy)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    assert a.history != b.history


def test_gradient_accumulation_equals_one_big_batch():
    kw = dict(optimizer="sgd", learning_rate=0.5, max_grad_norm=None, max_steps=1)
    initial = state(tiny_policy(seed=0, device="cpu"))
    big = train(per_device_train_batch_size=8, gradient_accumulation_steps=1, **kw)
    accumulated = train(per_device_train_batch_size=4, gradient_accumulation_steps=2, **kw)
    assert len(big.history) == len(accumulated.history) == 1
    assert big.history[0]["loss"] == pytest.approx(accumulated.history[0]["loss"], abs=1e-6)
    sb = state(big.policy)
    assert any(not torch.equal(sb[k], initial[k]) for k in sb)  # the step did move the weights
    assert_states_equal(sb, state(accumulated.policy), atol=1e-6)


def test_reference_policy_is_used_for_reference_log_probs():
    ref = tiny_policy(seed=1, device="cpu")
    result = train(ref_policy=ref, per_device_train_batch_size=8, max_steps=1)
    # by hand, on fresh copies: every pair is in the one batch of 8, so the mean does not depend on the order
    policy0, ref0 = tiny_policy(seed=0, device="cpu"), tiny_policy(seed=1, device="cpu")
    batch = encode_pairs(policy0, PROMPTS + PROMPTS, CHOSEN + REJECTED, chat=False, add_eos=True)
    with torch.no_grad():
        lp = completion_logprobs(policy0.model, **batch).per_sequence
        rl = completion_logprobs(ref0.model, **batch).per_sequence
    n = len(PROMPTS)
    losses, _, _ = dpo_loss(lp[:n], lp[n:], rl[:n], rl[n:], beta=0.1)
    assert abs(result.history[0]["loss"] - LN2) > 1e-3
    assert result.history[0]["loss"] == pytest.approx(float(losses.mean()), abs=1e-6)
    assert_states_equal(state(ref), state(ref0))  # the reference is never trained


def test_ipo_loss_type_runs_and_starts_at_one_over_four_beta_squared():
    result = train(loss_type="ipo", beta=0.1, num_train_epochs=3)
    losses = [row["loss"] for row in result.history]
    assert losses[0] == pytest.approx(1 / (4 * 0.1**2), rel=1e-6)  # h = 0 at the start: (0 − 1/(2β))²
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------- top layers
def test_trainable_layers_trains_only_top_blocks_and_final_norm():
    policy = tiny_policy(seed=0, num_layers=4, device="cpu")
    before = state(policy)
    train(policy, trainable_layers=2, num_train_epochs=2)
    after = state(policy)
    trains = ("model.layers.2.", "model.layers.3.", "model.norm.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {k for k in before if k.startswith(trains)}
    assert expected and changed == expected  # every top tensor moved; embeddings, lm_head, lower blocks bitwise equal


def test_training_in_place_drops_a_zoo_fingerprint():
    """Policy.weights names the zoo file a policy was loaded from; once trained further it no longer does, and
    sample caches (samples.policy_key) must not take the trained weights for the stored ones."""
    policy = tiny_policy(seed=0, num_layers=2, device="cpu")
    policy.weights = "0123456789abcdef"
    train(policy, trainable_layers=1, max_steps=1)
    assert policy.weights == ""


def test_requires_grad_flags_are_restored_after_training():
    policy = tiny_policy(seed=0, num_layers=3, device="cpu")
    for name, p in policy.model.named_parameters():  # a user's own pattern, not all-True
        p.requires_grad_(not name.startswith("model.layers.0."))
    flags = {n: p.requires_grad for n, p in policy.model.named_parameters()}
    assert False in flags.values() and True in flags.values()
    train(policy, trainable_layers=1, max_steps=2)
    assert {n: p.requires_grad for n, p in policy.model.named_parameters()} == flags


def test_top_layers_on_cached_activations_give_full_model_logits_on_real_positions():
    policy = tiny_policy(seed=3, num_layers=4, device="cpu")
    model = policy.model
    batch = encode_pairs(policy, PROMPTS[:4], CHOSEN[:4], chat=False, add_eos=True)  # right-padded, ragged rows
    ids, am, cm = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    assert bool((am == 0).any())
    with torch.no_grad():
        pos = position_ids_from_mask(am)
        out = model(input_ids=ids, attention_mask=am, position_ids=pos, output_hidden_states=True)
        top = TopLayers(model, 2)
        assert top.first == 2
        # cache per row (real tokens only), then zero-pad like the trainer does
        cached = [out.hidden_states[2][i, : int(am[i].sum())] for i in range(len(ids))]
        hidden = torch.zeros_like(out.hidden_states[2])
        for i, h in enumerate(cached):
            hidden[i, : h.shape[0]] = h
        final = top(hidden, am)
        logits = model.lm_head(final)
        real = am.bool()
        torch.testing.assert_close(logits[real], out.logits[real], rtol=0, atol=1e-6)
        lp_top = logprobs_from_hidden(final, model.lm_head, ids, cm).per_sequence
        lp_full = completion_logprobs(model, ids, am, cm).per_sequence
    torch.testing.assert_close(lp_top, lp_full, rtol=0, atol=1e-5)


def test_top_layers_refuse_a_model_without_llama_layers():
    with pytest.raises(ValueError, match="needs a Llama-family decoder"):
        TopLayers(torch.nn.Linear(4, 4), 1)


# ---------------------------------------------------------------------------------------------- LoRA
def lora(**kw):
    from peft import LoraConfig

    return LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, **kw})


def logps(model, policy, data=DATA):
    batch = encode_pairs(policy, data["prompt"], data["chosen"], chat=False)
    with torch.no_grad():
        return completion_logprobs(model, **batch).per_sequence


def test_lora_adapter_is_saved_in_peft_format_and_reloads_to_the_trained_log_probs(tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    fresh = state(tiny_policy(seed=0, device="cpu"))
    result = train(peft_config=lora(target_modules=["q_proj", "o_proj", "down_proj"], r=2), max_steps=2, output_dir=str(out))
    assert result.output_dir == str(out)
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json"} <= set(os.listdir(out))
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "o_proj", "down_proj"} and config["r"] == 2
    trained = logps(result.policy.model, result.policy)
    base = tiny_policy(seed=0, device="cpu")
    reloaded = PeftModel.from_pretrained(base.model, str(out)).eval()
    torch.testing.assert_close(logps(reloaded, base), trained, rtol=0, atol=1e-6)
    assert (trained - logps(tiny_policy(seed=0, device="cpu").model, base)).abs().max() > 1e-3  # training did move it


def test_lora_leaves_the_base_weights_untouched_and_merging_is_opt_in():
    fresh = tiny_policy(seed=0, device="cpu")
    result = train(peft_config=lora(), max_steps=2)
    model = result.policy.model
    assert hasattr(model, "peft_config")  # still the PeftModel: the adapter and the base are both there
    with model.disable_adapter():
        torch.testing.assert_close(logps(model, fresh), logps(fresh.model, fresh), rtol=0, atol=0)
    trained = logps(model, fresh)
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(logps(merged, fresh), trained, rtol=0, atol=1e-5)
    changed = {k for k, v in state(fresh).items() if not torch.equal(v, merged.state_dict()[k])}
    assert changed == {k for k in changed if k.endswith(("q_proj.weight", "v_proj.weight"))} and changed


def test_lora_config_that_targets_no_module_is_refused():
    with pytest.raises(ValueError, match=r"matches no module of LlamaForCausalLM; its linear layers are named .*'q_proj'"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), DATA, config(), peft_config=lora(target_modules=["query"]))


def test_peft_config_must_be_a_peft_config():
    with pytest.raises(TypeError, match="peft_config must be a peft config"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), DATA, config(), peft_config={"r": 4})


def test_peft_config_and_trainable_layers_are_exclusive():
    with pytest.raises(ValueError, match="choose one of trainable_layers"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), DATA, config(trainable_layers=1), peft_config=lora())


# ---------------------------------------------------------------------------------------------- divergence
def nan_from_call(n: int):
    """A dpo_loss that returns NaN losses from its n-th call on."""
    calls = [0]

    def patched(*args, **kwargs):
        calls[0] += 1
        losses, cr, rr = dpo_loss(*args, **kwargs)
        return (losses * float("nan") if calls[0] >= n else losses), cr, rr

    return patched


def test_nan_loss_raises_and_restores_weights_of_the_last_good_step(monkeypatch):
    initial = state(tiny_policy(seed=0, device="cpu"))
    after_one = state(train(max_steps=1).policy)
    assert any(not torch.equal(initial[k], after_one[k]) for k in initial)
    monkeypatch.setattr(train_mod, "dpo_loss", nan_from_call(2))
    policy = tiny_policy(seed=0, device="cpu")
    with pytest.raises(TrainingDiverged, match=r"optimizer step 2; that update was not applied, so the weights are restored to step 1"):
        train(policy, num_train_epochs=3)
    assert_states_equal(state(policy), after_one)


def test_nan_on_the_first_step_restores_the_initial_weights(monkeypatch):
    monkeypatch.setattr(train_mod, "dpo_loss", nan_from_call(1))
    policy = tiny_policy(seed=0, device="cpu")
    initial = state(policy)
    with pytest.raises(TrainingDiverged, match="step 1.*restored"):
        train(policy)
    assert_states_equal(state(policy), initial)


def test_requires_grad_flags_are_restored_after_divergence(monkeypatch):
    monkeypatch.setattr(train_mod, "dpo_loss", nan_from_call(2))
    policy = tiny_policy(seed=0, device="cpu")
    with pytest.raises(TrainingDiverged):
        train(policy, trainable_layers=1)
    assert all(p.requires_grad for p in policy.model.parameters())


def test_lora_divergence_keeps_the_adapter_of_the_last_good_step(monkeypatch):
    one = logps(train(peft_config=lora(), max_steps=1).policy.model, tiny_policy(seed=0, device="cpu"))
    monkeypatch.setattr(train_mod, "dpo_loss", nan_from_call(2))
    policy = tiny_policy(seed=0, device="cpu")
    with pytest.raises(TrainingDiverged, match="no checkpoint was saved before it"):
        train(policy, peft_config=lora())
    assert hasattr(policy.model, "peft_config")
    torch.testing.assert_close(logps(policy.model, policy), one, rtol=0, atol=0)


def test_divergence_names_the_last_good_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(train_mod, "dpo_loss", nan_from_call(4))
    with pytest.raises(TrainingDiverged, match=r"the last checkpoint is .*checkpoint-2 \(resume from it"):
        train(num_train_epochs=3, output_dir=str(tmp_path / "run"), save_steps=2)


def test_weights_restored_after_divergence_are_finite_even_when_gradients_went_nan(monkeypatch):
    calls = [0]

    def nan_gradient_at_call_2(pc, pr, rc, rr, **kwargs):
        calls[0] += 1
        losses, cr, rr_ = dpo_loss(pc, pr, rc, rr, **kwargs)
        if calls[0] == 2:  # forward value unchanged (finite), backward NaN: the classic torch.where NaN gradient
            losses = torch.where(torch.ones_like(losses, dtype=torch.bool), losses, torch.sqrt(-1 - 0 * pc))
        return losses, cr, rr_

    monkeypatch.setattr(train_mod, "dpo_loss", nan_gradient_at_call_2)
    policy = tiny_policy(seed=0, device="cpu")
    with pytest.raises(TrainingDiverged, match="restored"):
        train(policy, per_device_train_batch_size=2, optimizer="sgd", max_grad_norm=None)
    assert all(bool(torch.isfinite(p).all()) for p in policy.model.parameters())


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_every_save_steps_hold_weights_optimizer_scheduler_rng_and_state(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    policy = tiny_policy(seed=0, device="cpu")
    result = train(policy, trainable_layers=1, max_steps=4, save_steps=2, output_dir=str(out))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-4"]
    assert not [p for p in out.rglob(".*")]  # no temp files or dirs left
    files = set(os.listdir(out / "checkpoint-4"))
    assert files == {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    saved = load_file(str(out / "checkpoint-4" / "trainable.safetensors"))
    top = policy.model.model.layers[-1]
    expected = {f"layers.0.{k}": v for k, v in top.state_dict().items()}
    expected["norm.weight"] = policy.model.model.norm.weight.detach()
    assert saved.keys() == expected.keys()  # no embeddings, lm_head or lower blocks
    for k, v in expected.items():
        assert torch.equal(saved[k], v), k
    trainer_state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert trainer_state["global_step"] == 2 and trainer_state["log_history"] == result.history[:2]
    assert train_mod.latest_checkpoint(out) == out / "checkpoint-4"


def test_final_save_of_a_full_fine_tune_loads_with_load_policy(tmp_path):
    from alignlecture.models import load_policy

    out = tmp_path / "run"
    result = train(max_steps=2, output_dir=str(out), save_steps=0)
    assert not list(out.glob("checkpoint-*"))
    loaded = load_policy(str(out), device="cpu")
    assert loaded.source == "local"
    assert_states_equal(state(loaded), state(result.policy))


@pytest.mark.parametrize("mode", ["full", "top", "lora"])
def test_two_steps_then_resume_then_two_steps_equal_four_steps_bit_for_bit(tmp_path, mode):
    kw = {"full": {}, "top": {"trainable_layers": 1}, "lora": {}}[mode]
    # lora_dropout with dropout on: the resumed run must also restore torch's random generator
    peft = (lambda: lora(lora_dropout=0.3)) if mode == "lora" else (lambda: None)
    extra = {"disable_dropout": False} if mode == "lora" else {}
    straight = train(max_steps=4, peft_config=peft(), **kw, **extra)
    out = str(tmp_path / "run")
    first = train(max_steps=2, save_steps=2, output_dir=out, peft_config=peft(), **kw, **extra)
    assert first.history == straight.history[:2]
    resumed = train(max_steps=4, save_steps=2, output_dir=out, peft_config=peft(), resume=True, **kw, **extra)
    assert resumed.history == straight.history
    assert_states_equal(state(resumed.policy), state(straight.policy))
    assert (tmp_path / "run" / "checkpoint-4").is_dir()


def test_resume_refuses_a_checkpoint_from_another_config_model_or_data(tmp_path):
    out = str(tmp_path / "run")
    trained = train(max_steps=2, save_steps=2, output_dir=out).policy
    with pytest.raises(ValueError, match=r"another config \(beta: 0.1 → 0.2\)"):
        train(max_steps=4, output_dir=out, beta=0.2, resume=True)
    with pytest.raises(ValueError, match="another model .*fresh copy of the base"):
        train(trained, max_steps=4, output_dir=out, resume=True)
    with pytest.raises(ValueError, match="made on other data"):
        train(data={k: v[::-1] for k, v in DATA.items()}, max_steps=4, output_dir=out, resume=True)
    with pytest.raises(ValueError, match="is not a checkpoint directory"):
        train(max_steps=4, output_dir=out, resume=str(tmp_path))
    with pytest.raises(ValueError, match="holds no checkpoint-N"):
        train(max_steps=4, output_dir=str(tmp_path / "empty"), resume=True)


def test_non_empty_output_dir_is_refused_unless_overwrite_output_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty; pass overwrite_output_dir=True"):
        train(max_steps=1, output_dir=str(tmp_path))
    train(max_steps=1, output_dir=str(tmp_path), overwrite_output_dir=True)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- TRL semantics
def test_max_steps_overrides_the_number_of_epochs():
    assert [r["step"] for r in train(max_steps=3).history] == [1, 2, 3]  # 8 pairs / 4 = 2 steps per epoch
    assert [r["step"] for r in train(max_steps=5, num_train_epochs=9).history] == [1, 2, 3, 4, 5]


def test_a_max_steps_run_is_the_prefix_of_a_longer_run():
    assert train(max_steps=3).history == train(num_train_epochs=3).history[:3]


def test_logging_steps_logs_the_mean_over_each_window_and_the_last_step():
    every = train(max_steps=5).history
    sparse = train(max_steps=5, logging_steps=2).history
    assert [r["step"] for r in sparse] == [2, 4, 5]
    assert sparse[0]["loss"] == pytest.approx((every[0]["loss"] + every[1]["loss"]) / 2, abs=1e-12)
    assert sparse[2]["loss"] == every[4]["loss"]


def test_linear_schedule_with_warmup_follows_transformers():
    from transformers import get_linear_schedule_with_warmup

    factor = train_mod._schedule("linear", 2, 10)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_linear_schedule_with_warmup(opt, 2, 10)
    for s in range(11):
        assert factor(s) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), s
        opt.step()
        ref.step()


def test_zoo_recipes_written_with_older_field_names_give_trls_names():
    from alignlecture import zoo

    config = zoo.dpo_config(zoo.recipe("smollm2-positivity"))
    assert (config.per_device_train_batch_size, config.num_train_epochs) == (8, 2)
    with pytest.raises(TypeError, match="batch_size"):
        DPOConfig(batch_size=4)  # the old names are not DPOConfig's any more


# ---------------------------------------------------------------------------------------------- datasets and eos
def dataset_forms():
    import datasets

    from alignlecture.preferences import PreferenceDataset, PreferencePair

    records = [{"prompt": p, "chosen": c, "rejected": r, "id": i} for i, (p, c, r) in enumerate(zip(PROMPTS, CHOSEN, REJECTED))]
    pairs = PreferenceDataset([PreferencePair(p, c, r, 1.0, 0.0) for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)])
    return {"records": records, "columns": DATA, "datasets.Dataset": datasets.Dataset.from_dict(DATA),
            "PreferenceDataset": pairs}


@pytest.mark.parametrize("form", ["records", "datasets.Dataset", "PreferenceDataset"])
def test_every_dataset_form_trains_like_a_mapping_of_columns(form):
    assert train(data=dataset_forms()[form], max_steps=2).history == train(max_steps=2).history


def test_a_record_missing_a_field_is_named():
    records = dataset_forms()["records"]
    del records[2]["rejected"]
    with pytest.raises(ValueError, match="record 2 has no 'rejected' field"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), records, config())


def test_conversational_records_are_refused_with_the_fix():
    records = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "good", "rejected": "bad"}]
    with pytest.raises(ValueError, match="record 0: 'prompt' is a list, not a str"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), records, config())


def test_first_step_logps_equal_sequence_logprobs_and_dpo_evaluate_on_the_same_pairs():
    from alignlecture.dpo import evaluate
    from alignlecture.logprobs import sequence_logprobs

    policy0 = tiny_policy(seed=0, device="cpu")
    first = train(per_device_train_batch_size=8, max_steps=1).history[0]  # every pair in the one first batch
    chosen = sequence_logprobs(policy0, PROMPTS, CHOSEN, chat=False)  # the package's default: eos appended
    rejected = sequence_logprobs(policy0, PROMPTS, REJECTED, chat=False)
    assert first["logps/chosen"] == pytest.approx(float(chosen.mean()), abs=1e-5)
    assert first["logps/rejected"] == pytest.approx(float(rejected.mean()), abs=1e-5)
    report = evaluate(policy0, policy0, DATA, chat=False)
    assert report["loss"] == pytest.approx(LN2, abs=1e-6)
    for key in ("loss", "rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert report[key] == pytest.approx(first[key], abs=1e-5), key


# ---------------------------------------------------------------------------------------------- bad input
def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="the preference dataset is empty"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), {"prompt": [], "chosen": [], "rejected": []}, config())


def test_mismatched_column_lengths_are_refused():
    with pytest.raises(ValueError, match="column lengths differ: 8 prompts, 8 chosen, 7 rejected"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), {**DATA, "rejected": REJECTED[:7]}, config())


@pytest.mark.parametrize("missing", ["prompt", "chosen", "rejected"])
def test_dataset_missing_a_column_is_refused(missing):
    data = {k: v for k, v in DATA.items() if k != missing}
    with pytest.raises(ValueError, match=f"the dataset has no '{missing}' column"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), data, config())


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"beta": 0}, "beta must be a positive finite number"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be an integer ≥ 1"),
        ({"learning_rate": float("nan")}, "learning_rate must be a positive finite number"),
        ({"max_steps": 0}, "max_steps must be a positive number of optimizer steps, or -1"),
        ({"max_steps": -2}, "max_steps must be a positive number of optimizer steps, or -1"),
        ({"save_steps": -1}, "save_steps must be an integer ≥ 0"),
        ({"lr_scheduler_type": "step"}, "lr_scheduler_type must be one of"),
        ({"optimizer": "adam"}, "optimizer must be 'adamw' or 'sgd'"),
        ({"trainable_layers": 0}, "trainable_layers must be ≥ 1 or None"),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing is used only by .* not .hinge."),
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "loss_weights must be a list with one weight per"),
        ({"loss_type": "exo_pair"}, "needs label_smoothing ε > 0"),
    ],
)
def test_config_validation_refuses_bad_values(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DPOConfig(**kwargs)


def test_config_accepts_every_loss_type_and_trls_list_of_losses():
    from alignlecture.dpo import LOSS_TYPES

    for loss_type in LOSS_TYPES:
        DPOConfig(loss_type=loss_type, label_smoothing=0.001 if loss_type == "exo_pair" else 0.0)
    cfg = DPOConfig(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])
    assert cfg.loss_weights == [0.8, 0.2, 1.0] and cfg.discopop_tau == 0.05


def test_trainable_layers_deeper_than_the_model_is_refused():
    with pytest.raises(ValueError, match="trainable_layers=3 exceeds the model's 2 decoder blocks"):
        train(trainable_layers=3)


def test_refused_trainable_layers_leaves_requires_grad_flags_unchanged():
    policy = tiny_policy(seed=0, device="cpu")
    with pytest.raises(ValueError, match="exceeds"):
        train(policy, trainable_layers=3)
    assert all(p.requires_grad for p in policy.model.parameters())


def test_prompt_longer_than_max_length_is_refused():
    long = {"prompt": ["tell me what you think of the movie please"], "chosen": ["good"], "rejected": ["bad"]}
    with pytest.raises(ValueError, match="completion would be empty after truncation"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), long, config(max_length=5))


def test_too_few_pairs_for_one_step_is_refused():
    data = {k: v[:3] for k, v in DATA.items()}
    with pytest.raises(ValueError, match="3 pairs give no full optimizer step at per_device_train_batch_size=4"):
        train(data=data)


# ---------------------------------------------------------------------------------------------- coming from TRL
MORE = (["tell me about the cat", "describe the food"], ["the cat is nice", "great food"], ["the cat is awful", "bad food"])
TEN = {k: v + extra for (k, v), extra in zip(DATA.items(), MORE)}  # 10 pairs: not a multiple of the batch of 4


def test_trl_keyword_spelling_with_a_model_and_its_tokenizer_trains_like_a_policy():
    import datasets

    p, ref = tiny_policy(seed=0, device="cpu"), tiny_policy(seed=1, device="cpu")
    result = DPOTrainer(model=p.model, ref_model=ref.model, args=config(max_steps=2), processing_class=p.tokenizer,
                        train_dataset=datasets.Dataset.from_dict(DATA)).train()
    assert result.history == train(ref_policy=tiny_policy(seed=1, device="cpu"), max_steps=2).history
    assert result.policy.model is p.model and result.policy.tokenizer is p.tokenizer


def test_a_model_name_is_loaded_with_load_policy(tmp_path):
    from alignlecture.checkpoint import write_pretrained

    p = tiny_policy(seed=0, device="cpu")
    write_pretrained(p.model, p.tokenizer, tmp_path / "tiny")
    result = DPOTrainer(model=str(tmp_path / "tiny"), args=config(max_steps=2), train_dataset=DATA).train()
    assert result.history == train(max_steps=2).history


def test_a_plain_model_without_its_tokenizer_says_to_pass_processing_class():
    with pytest.raises(TypeError, match=r"LlamaForCausalLM without its tokenizer; pass processing_class="):
        DPOTrainer(model=tiny_policy(seed=0, device="cpu").model, args=config(), train_dataset=DATA)


def test_trls_positional_order_and_doubled_arguments_are_refused_with_the_fix():
    p = tiny_policy(seed=0, device="cpu")
    with pytest.raises(TypeError, match="second positional argument is the training dataset here .*ref_model=ref"):
        DPOTrainer(p.model, tiny_policy(seed=1, device="cpu").model, args=config(), train_dataset=DATA)
    with pytest.raises(TypeError, match=r"pass config or args \(TRL's name for it\), not both"):
        DPOTrainer(p, DATA, config(), args=config())
    with pytest.raises(TypeError, match="needs the preference pairs: pass train_dataset"):
        DPOTrainer(model=p)
    with pytest.raises(ValueError, match="Policy, which carries its own tokenizer"):
        DPOTrainer(model=p, processing_class=tiny_policy(seed=0, device="cpu").tokenizer, train_dataset=DATA)


@pytest.mark.parametrize(("name", "fragment"), [
    ("callbacks", "read TrainResult.history"), ("data_collator", "tokenises and pads the pairs itself"),
    ("tokenizer", "processing_class=tokenizer"), ("optimizers", "optimizer='adamw'"),
])
def test_trainer_arguments_trl_has_and_this_trainer_lacks_name_the_replacement(name, fragment):
    from alignlecture.trl_compat import UnsupportedOption

    with pytest.raises(UnsupportedOption, match=f"DPOTrainer does not take {name}: .*{fragment}"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), DATA, config(), **{name: object()})
    with pytest.raises(TypeError, match="unexpected keyword argument 'trian_dataset'; did you mean train_dataset"):
        DPOTrainer(model=tiny_policy(seed=0, device="cpu"), trian_dataset=DATA)


def test_trl_options_that_describe_this_trainer_are_accepted_and_change_nothing():
    same = config(precompute_ref_log_probs=True, report_to="none", bf16=False, fp16=False, gradient_checkpointing=False,
                  save_strategy="steps", truncation_mode="keep_start", logging_strategy="steps", max_prompt_length=None)
    assert same == config()
    assert config(report_to=[]) == config(report_to=None) == config()


def test_trl_options_that_translate_to_this_trainers_fields():
    assert config(save_strategy="no").save_steps == 0  # no checkpoint-N; the final save stays
    assert config(optim="adamw_torch_fused").optimizer == "adamw" and config(optim="sgd").optimizer == "sgd"
    with pytest.raises(ValueError, match="save_strategy='no' means save_steps=0, but save_steps=10 was passed too"):
        config(save_strategy="no", save_steps=10)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"bf16": True}, r"model's own dtype.*load_policy\(name, dtype=torch.bfloat16\)"),
    ({"fp16": True}, "without autocast or loss scaling"),
    ({"gradient_checkpointing": True}, r"trainable_layers=k.*peft_config=LoraConfig"),
    ({"precompute_ref_log_probs": False}, "always precomputed here, once before training"),
    ({"report_to": "wandb"}, r"TrainResult.history .*wandb.log\(row"),
    ({"save_strategy": "epoch"}, r"every save_steps optimizer steps \(save_steps=N\)"),
    ({"max_prompt_length": 64}, "the prompt is never cut here"),
    ({"optim": "adafactor"}, "use optimizer='adamw'"),
    ({"dataloader_drop_last": False}, "TrainResult.skipped_pairs"),
    ({"load_best_model_at_end": True}, "eval_loss rows of TrainResult.history"),
    ({"push_to_hub": True}, r"push_to_hub\(repo\)"),
])
def test_trl_options_this_trainer_does_not_offer_are_refused_with_the_replacement(kwargs, fragment):
    from alignlecture.trl_compat import UnsupportedOption

    with pytest.raises(UnsupportedOption, match=fragment):
        DPOConfig(**kwargs)


def trl_config(tmp_path, **kw):
    trl = pytest.importorskip("trl")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers renames gradient_checkpointing
        return trl.DPOConfig(output_dir=str(tmp_path / "run"), use_cpu=True, **kw)


def test_a_trl_dpo_config_converts_with_trls_values_when_every_field_maps(tmp_path):
    from alignlecture.trl_compat import from_trl

    defaults = from_trl(trl_config(tmp_path, bf16=False, gradient_checkpointing=False), DPOConfig)
    assert (defaults.learning_rate, defaults.num_train_epochs, defaults.seed) == (1e-6, 3, 42)
    assert defaults.logging_steps == 10
    assert (defaults.lr_scheduler_type, defaults.loss_type, defaults.max_length) == ("linear", "sigmoid", 1024)
    args = trl_config(tmp_path, bf16=False, gradient_checkpointing=False, learning_rate=1e-2, max_steps=2, seed=0,
                      per_device_train_batch_size=4, logging_steps=1, lr_scheduler_type="constant", max_length=256)
    p = tiny_policy(seed=0, device="cpu")
    result = DPOTrainer(model=p.model, processing_class=p.tokenizer, args=args, train_dataset=DATA).train()
    assert result.history == train(max_steps=2).history  # the toy tokenizer has no chat template: chat is moot


def test_a_trl_dpo_config_with_fields_that_do_not_map_lists_them_all(tmp_path):
    args = trl_config(tmp_path, run_name="mine", gradient_checkpointing=False)  # bf16 stays TRL's default, True
    with pytest.raises(ValueError, match=r"cannot be converted .*bf16=True: the trainer trains in the model's own "
                                         r"dtype.*run_name='mine' \(no counterpart here\)"):
        DPOTrainer(model=tiny_policy(seed=0, device="cpu"), args=args, train_dataset=DATA)


# ---------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("mode", ["full", "top"])
def test_eval_rows_carry_trls_eval_prefix_equal_dpo_evaluate_and_change_no_training_number(mode):
    from alignlecture.dpo import evaluate

    kw = {"top": {"trainable_layers": 1}, "full": {}}[mode]
    held_out = {k: v[:5] for k, v in TEN.items()}
    p = tiny_policy(seed=0, device="cpu")
    result = DPOTrainer(p, DATA, config(max_steps=4, eval_strategy="steps", eval_steps=2, **kw),
                        eval_dataset=held_out).train()
    evals = [r for r in result.history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert set(evals[0]) == {"step", "eval_loss", "eval_rewards/chosen", "eval_rewards/rejected",
                             "eval_rewards/margins", "eval_rewards/accuracies", "eval_logps/chosen", "eval_logps/rejected"}
    plain = train(max_steps=4, **kw)
    assert [r for r in result.history if "loss" in r] == plain.history  # evaluation trains nothing, draws nothing
    assert_states_equal(state(result.policy), state(plain.policy))
    report = evaluate(result.policy, tiny_policy(seed=0, device="cpu"), held_out, chat=False)
    for key, value in report.items():
        assert evals[-1][f"eval_{key}"] == pytest.approx(value, abs=1e-5), key


def test_an_eval_dataset_is_scored_once_after_the_last_step_unless_eval_strategy_is_no():
    p = tiny_policy(seed=0, device="cpu")
    trainer = DPOTrainer(p, DATA, config(max_steps=3, logging_steps=2), eval_dataset=TEN)
    before = trainer.evaluate()  # the policy is still the reference
    assert before["eval_loss"] == pytest.approx(LN2, abs=1e-6) and before["eval_rewards/margins"] == 0.0
    history = trainer.train().history
    assert [(r["step"], "eval_loss" in r) for r in history] == [(2, False), (3, False), (3, True)]
    assert history[-1] == {"step": 3, **trainer.evaluate()}
    silent = train(max_steps=3, eval_strategy="no")  # no eval_dataset needed for "no"
    assert not any("eval_loss" in r for r in silent.history)


def test_eval_strategy_epoch_scores_at_the_end_of_each_pass():
    history = DPOTrainer(tiny_policy(seed=0, device="cpu"), TEN, config(num_train_epochs=2, eval_strategy="epoch"),
                         eval_dataset=DATA).train().history
    # 10 pairs, 4 a step: passes end in steps 3 (pair 12 > 10) and 5 (the last step, 20 pairs)
    assert [r["step"] for r in history if "eval_loss" in r] == [3, 5]


def test_eval_strategy_steps_without_an_eval_dataset_is_refused():
    with pytest.raises(ValueError, match="eval_strategy='steps' needs an eval_dataset"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), DATA, config(eval_strategy="steps"))
    with pytest.raises(ValueError, match="eval_strategy must be None, 'no', 'steps' or 'epoch'"):
        config(eval_strategy="best")
    with pytest.raises(ValueError, match="evaluate\\(\\) needs an eval_dataset"):
        DPOTrainer(tiny_policy(seed=0, device="cpu"), DATA, config()).evaluate()


# ---------------------------------------------------------------------------------------------- schedule, lengths
def test_warmup_ratio_warms_up_for_ceil_ratio_times_the_steps():
    kw = dict(optimizer="sgd", learning_rate=0.5, lr_scheduler_type="linear", max_steps=3)
    by_ratio, by_steps = train(warmup_ratio=0.5, **kw), train(warmup_steps=2, **kw)  # ceil(1.5) = 2
    assert by_ratio.history == by_steps.history
    assert_states_equal(state(by_ratio.policy), state(by_steps.policy))
    assert config(warmup_steps=0.5).warmup_ratio == 0.5  # transformers 5 writes the ratio as warmup_steps < 1
    with pytest.raises(ValueError, match="pass warmup_steps \\(2\\) or warmup_ratio \\(0.1\\), not both"):
        config(warmup_steps=2, warmup_ratio=0.1)
    with pytest.raises(ValueError, match="warmup_ratio must be a number in \\[0, 1\\]"):
        config(warmup_ratio=1.5)


def test_max_completion_length_keeps_the_prompt_and_the_first_completion_tokens():
    p = tiny_policy(seed=0, device="cpu")
    full, cut = DPOTrainer(p, DATA, config()), DPOTrainer(p, DATA, config(max_completion_length=2))
    for (r, m), (rc, mc) in zip(zip(full.rows, full.masks), zip(cut.rows, cut.masks)):
        assert sum(mc) == min(2, sum(m)) and m.count(0) == mc.count(0) and r[: len(rc)] == rc
    assert any(sum(m) > 2 for m in full.masks)  # some completion really was cut
    assert train(max_completion_length=2, max_steps=1).history[0]["loss"] == pytest.approx(LN2, abs=1e-6)


# ---------------------------------------------------------------------------------------------- things said aloud
def chat_policy():
    from alignlecture.models import toy_tokenizer

    tok = toy_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tiny_policy(tok, seed=0, device="cpu")


def test_prompts_already_in_the_chat_template_are_refused_while_chat_is_true():
    p = chat_policy()
    formatted = {**DATA, "prompt": [p.format_prompt(x) for x in PROMPTS]}
    with pytest.raises(ValueError, match=r"prompt 0 already holds the chat template \(it contains '<\|im_start\|>'\)"
                                         r".*DPOConfig\(chat=False\)"):
        DPOTrainer(p, formatted, config(chat=True))
    with pytest.raises(ValueError, match="eval prompt 0 already holds the chat template"):
        DPOTrainer(p, DATA, config(chat=True), eval_dataset=formatted)
    plain = DPOTrainer(p, DATA, config(chat=True))  # plain prompts: templated once, here
    mine = DPOTrainer(p, formatted, config(chat=False))  # formatted by the caller: taken as they are
    assert plain.rows == mine.rows


def test_pairs_that_do_not_fill_the_last_batch_are_counted_and_warned_about():
    with pytest.warns(UserWarning, match="2 of the 10 pairs are not trained on in the last epoch"):
        result = train(data=TEN)
    assert result.skipped_pairs == 2 and len(result.history) == 2
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(data=TEN, num_train_epochs=2).skipped_pairs == 0  # 20 pairs: the order runs on across epochs
        assert train(data=TEN, max_steps=3).skipped_pairs == 0
    assert not [w for w in caught if "not trained on" in str(w.message)]


def test_resuming_a_run_that_already_reached_max_steps_says_nothing_is_left(tmp_path):
    out = str(tmp_path / "run")
    first = train(max_steps=2, save_steps=2, output_dir=out)
    with pytest.warns(UserWarning, match="already at optimizer step 2, the run's last .*nothing is left to train"):
        again = train(max_steps=2, save_steps=2, output_dir=out, resume=True)
    assert again.history == first.history
    assert_states_equal(state(again.policy), state(first.policy))


def test_a_checkpoint_written_before_a_config_field_existed_still_resumes(tmp_path):
    out = tmp_path / "run"
    straight = train(max_steps=4)
    train(max_steps=2, save_steps=2, output_dir=str(out))
    path = out / "checkpoint-2" / "trainer_state.json"
    saved = json.loads(path.read_text())
    for new in ("warmup_ratio", "max_completion_length", "eval_strategy", "eval_steps", "per_device_eval_batch_size"):
        del saved["config"][new]
    path.write_text(json.dumps(saved))
    assert train(max_steps=4, save_steps=2, output_dir=str(out), resume=True).history == straight.history


# ---------------------------------------------------------------------------------------------- multi-process
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_step(cmd: list[str], out: Path, **extra_env: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ALIGNLECTURE_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra_env}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("mode", ["plain", "normalized-top", "normalized-full"])
def test_two_processes_of_four_pairs_equal_one_process_of_eight(tmp_path, mode):
    """Data-parallel DPO through accelerate: same global batch → same first loss and same updated weights.

    ``accelerate launch --cpu --num_processes 2`` starts ONE process in accelerate 1.x (the simple launcher; multi-CPU
    needs mpirun), so the two CPU processes are started through torchrun (``--multi_gpu``) with ACCELERATE_USE_CPU=1,
    which makes each process join a gloo group; the script reports how many processes the trainer really ran on.
    """
    from safetensors.torch import load_file

    script = str(ROOT / "tests" / "accelerate_dpo_step.py")
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_step([sys.executable, script, str(one), mode], one)
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launch = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(free_port()), script, str(two), mode,
    ]
    double = run_step(launch, two, ACCELERATE_USE_CPU="1")
    assert (single["num_processes"], single["batch_size"]) == (1, 8)
    assert (double["num_processes"], double["batch_size"]) == (2, 4)
    assert double["distributed_type"] == "DistributedType.MULTI_CPU"
    assert abs(single["loss"] - LN2) > 1e-3  # a reference ≠ policy: the loss says something about the batch
    assert double["loss"] == pytest.approx(single["loss"], abs=1e-6)
    w1, w2 = load_file(str(one / "weights.safetensors")), load_file(str(two / "weights.safetensors"))
    initial = state(tiny_policy(seed=0, device="cpu"))
    assert any(not torch.equal(w1[k], initial[k]) for k in initial)
    assert_states_equal(w1, w2, atol=1e-6)
