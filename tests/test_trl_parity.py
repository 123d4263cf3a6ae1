"""Parity with TRL 1.16's DPOTrainer: same token ids, same loss for each of its 15 loss types (and a weighted
list of them), same logged metrics.

TRL tokenizes prompt+completion as one string, so every completion here starts with a space; with the word-level
toy tokenizer our encode_pairs(chat=False, add_eos=True) then yields the very same ids. Our side runs on separate,
identically seeded tiny models, because building a TRL trainer patches its models' forward.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from alignlecture.dpo import LOSS_TYPES, SMOOTHED, dpo_loss, dpo_metrics  # noqa: E402
from alignlecture.logprobs import completion_logprobs, encode_pairs  # noqa: E402
from alignlecture.models import tiny_policy  # noqa: E402
from alignlecture.train import DPOConfig as OurConfig  # noqa: E402
from alignlecture.train import DPOTrainer as OurTrainer  # noqa: E402

BETA = 0.1
PROMPTS = [
    "tell me about the movie", "describe the weather", "what do you think of this book", "write one sentence about tea",
    "tell me about the dog", "describe the city",
]
CHOSEN = [" it was very good", " sun and nice weather", " i love it", " nice", " i love the dog", " great city"]
REJECTED = [" bad", " awful rain", " i hate this book", " terrible tea is bad", " the dog is bad", " sad"]
N = len(PROMPTS)
METRICS = (
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
)
LOGP_KEYS = ("logps/chosen", "logps/rejected")
# ε where a loss reads it (exo_pair needs ε > 0; 'sigmoid' is compared at ε = 0: TRL ignores ε there, we do cDPO)
SMOOTHING = {name: 0.1 for name in SMOOTHED if name != "sigmoid"}
# TRL's list-of-losses: MPO's combination (Wang et al. 2024) with its weights
MIXED, MIXED_WEIGHTS = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]


def loss_kwargs(loss_type) -> dict:
    """The loss hyper-parameters a test uses for ``loss_type`` (a name or TRL's list of names)."""
    if isinstance(loss_type, list):
        return {"loss_type": loss_type, "loss_weights": MIXED_WEIGHTS}
    return {"loss_type": loss_type, "label_smoothing": SMOOTHING.get(loss_type, 0.0)}


def trl_trainer(tmp_dir: str, loss_type, precompute: bool = False):
    import trl

    # fresh models per trainer: TRL changes the model it is given (and its tokenizer) in place
    policy, ref = tiny_policy(seed=0, device="cpu"), tiny_policy(seed=1, device="cpu")
    args = trl.DPOConfig(
        output_dir=tmp_dir, report_to="none", beta=BETA, per_device_train_batch_size=N,
        bf16=False, gradient_checkpointing=False, use_cpu=True, max_length=None, disable_dropout=True, seed=0,
        precompute_ref_log_probs=precompute, **loss_kwargs(loss_type),
    )
    data = datasets.Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})
    return trl.DPOTrainer(model=policy.model, ref_model=ref.model, args=args, train_dataset=data,
                          processing_class=policy.tokenizer)


def trl_step(trainer):
    """TRL's loss and logged metrics on its first (shuffled) training batch, and that batch."""
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    mode = "train" if trainer.model.training else "eval"
    metrics = {k: trainer._metrics[mode][k][-1] for k in METRICS}
    return float(loss), metrics, batch


@torch.no_grad()
def our_step(batch, loss_type):
    """Our loss and metrics on the same rows ([all chosen; all rejected], as TRL lays them out): summed log-probs
    and completion token counts (eos included), the per-token losses averaging inside dpo_loss as TRL does."""
    policy, ref = tiny_policy(seed=0, device="cpu"), tiny_policy(seed=1, device="cpu")
    b = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    lp = completion_logprobs(policy.model, **b).per_sequence
    rl = completion_logprobs(ref.model, **b).per_sequence
    n_tokens = b["completion_mask"].sum(dim=1)
    k = lp.shape[0] // 2
    losses, cr, rr = dpo_loss(lp[:k], lp[k:], rl[:k], rl[k:], beta=BETA, chosen_tokens=n_tokens[:k],
                              rejected_tokens=n_tokens[k:], **loss_kwargs(loss_type))
    return float(losses.mean()), dpo_metrics(cr, rr, lp[:k], lp[k:])


def relative_difference(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), 1e-12)


@pytest.fixture(scope="module", params=[*LOSS_TYPES, MIXED], ids=[*LOSS_TYPES, "+".join(MIXED)])
def both(request, tmp_path_factory):
    loss_type = request.param
    trainer = trl_trainer(str(tmp_path_factory.mktemp("trl")), loss_type)
    trl_loss, trl_metrics, batch = trl_step(trainer)
    our_loss, our_metrics = our_step(batch, loss_type)
    return {"loss_type": loss_type, "trainer": trainer, "batch": batch, "trl": (trl_loss, trl_metrics),
            "ours": (our_loss, our_metrics)}


# ---------------------------------------------------------------------------------------------- tokens
def test_collated_token_ids_equal_our_encode_pairs(both):
    trainer = both["trainer"]
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(N)])
    ours = encode_pairs(tiny_policy(seed=0, device="cpu"), PROMPTS + PROMPTS, CHOSEN + REJECTED, chat=False,
                        add_eos=True)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(collated[key], ours[key]), key


def test_training_batch_holds_every_pair_once_as_chosen_then_rejected_rows(both):
    batch = both["batch"]
    ours = encode_pairs(tiny_policy(seed=0, device="cpu"), PROMPTS + PROMPTS, CHOSEN + REJECTED, chat=False,
                        add_eos=True)
    rows = lambda d: [tuple(r[m.bool()].tolist()) for r, m in zip(d["input_ids"], d["attention_mask"])]  # noqa: E731
    got, want = rows(batch), rows(ours)
    assert sorted(got[:N]) == sorted(want[:N]) and sorted(got[N:]) == sorted(want[N:])


# ---------------------------------------------------------------------------------------------- loss and metrics
def test_loss_matches_trl(both):
    trl_loss, _ = both["trl"]
    our_loss, _ = both["ours"]
    assert math.isfinite(trl_loss)
    if both["loss_type"] == "sigmoid":
        assert abs(trl_loss - math.log(2)) > 1e-3  # reference ≠ policy: the comparison is not ln 2 = ln 2
    # both sides compute in float32; IPO's loss is ≈ 25 = 1/(4β²), where float32 spacing is 2e-6
    assert relative_difference(our_loss, trl_loss) <= 1e-6, (our_loss, trl_loss)


@pytest.mark.parametrize("name", METRICS)
def test_metric_matches_trl(both, name):
    _, trl_metrics = both["trl"]
    _, our_metrics = both["ours"]
    if name in LOGP_KEYS:
        assert our_metrics[name] == pytest.approx(trl_metrics[name], rel=1e-6, abs=1e-5)
    else:
        assert our_metrics[name] == pytest.approx(trl_metrics[name], abs=1e-6)


def test_sigmoid_label_smoothing_is_ignored_by_trl_but_is_cdpo_here(tmp_path):
    """Documents a difference: TRL 1.16 applies label_smoothing only to e.g. 'robust', not to 'sigmoid'."""
    import trl

    policy, ref = tiny_policy(seed=0, device="cpu"), tiny_policy(seed=1, device="cpu")
    args = trl.DPOConfig(
        output_dir=str(tmp_path), report_to="none", beta=BETA, loss_type="sigmoid", label_smoothing=0.2,
        per_device_train_batch_size=N, bf16=False, gradient_checkpointing=False, use_cpu=True, max_length=None,
        disable_dropout=True, seed=0,
    )
    data = datasets.Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})
    trainer = trl.DPOTrainer(model=policy.model, ref_model=ref.model, args=args, train_dataset=data,
                             processing_class=policy.tokenizer)
    trl_loss, _, batch = trl_step(trainer)
    plain, _ = our_step(batch, "sigmoid")
    assert trl_loss == pytest.approx(plain, abs=1e-6)
    b = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    with torch.no_grad():
        lp = completion_logprobs(tiny_policy(seed=0, device="cpu").model, **b).per_sequence
        rl = completion_logprobs(tiny_policy(seed=1, device="cpu").model, **b).per_sequence
    cdpo, _, _ = dpo_loss(lp[:N], lp[N:], rl[:N], rl[N:], beta=BETA, label_smoothing=0.2)
    assert abs(float(cdpo.mean()) - trl_loss) > 1e-3


def test_our_trainer_first_step_loss_equals_trls(both):
    """Our DPOTrainer (every loss type, and the weighted list) logs TRL's loss on a first batch of every pair."""
    data = {"prompt": PROMPTS, "chosen": [c.strip() for c in CHOSEN], "rejected": [r.strip() for r in REJECTED]}
    cfg = OurConfig(beta=BETA, per_device_train_batch_size=N, max_steps=1, progress=False, chat=False,
                    **loss_kwargs(both["loss_type"]))
    history = OurTrainer(tiny_policy(seed=0, device="cpu"), data, cfg,
                         ref_policy=tiny_policy(seed=1, device="cpu")).train().history
    trl_loss, _ = both["trl"]
    assert relative_difference(history[0]["loss"], trl_loss) <= 1e-5, (history[0]["loss"], trl_loss)


def test_our_ipo_trainer_logs_metrics_on_summed_log_probs_like_trl(tmp_path):
    trainer = trl_trainer(str(tmp_path), "ipo")
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(N)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(collated))
    mode = "train" if trainer.model.training else "eval"
    trl_metrics = {k: trainer._metrics[mode][k][-1] for k in METRICS}
    data = {"prompt": PROMPTS, "chosen": [c.strip() for c in CHOSEN], "rejected": [r.strip() for r in REJECTED]}
    cfg = OurConfig(loss_type="ipo", beta=BETA, per_device_train_batch_size=N, max_steps=1, progress=False, chat=False)
    history = OurTrainer(tiny_policy(seed=0, device="cpu"), data, cfg,
                         ref_policy=tiny_policy(seed=1, device="cpu")).train().history
    assert history[0]["loss"] == pytest.approx(float(loss), abs=1e-5)  # the loss agrees …
    for name in LOGP_KEYS:  # … the logged log-probs do not
        assert history[0][name] == pytest.approx(trl_metrics[name], rel=1e-6, abs=1e-5)


# ---------------------------------------------------------------------------------------------- config names
SHARED_CONCEPTS = (
    "output_dir", "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "logging_steps", "save_steps", "seed", "beta", "loss_type",
    "label_smoothing", "weight_decay", "max_grad_norm", "max_length", "disable_dropout",
)


def test_our_config_names_are_trls_for_every_shared_concept():
    import dataclasses

    import trl

    ours, theirs = {f.name for f in dataclasses.fields(OurConfig)}, {f.name for f in dataclasses.fields(trl.DPOConfig)}
    assert set(SHARED_CONCEPTS) <= ours
    assert set(SHARED_CONCEPTS) <= theirs, sorted(set(SHARED_CONCEPTS) - theirs)
    # TRL's "unset" max_steps is -1, and a positive max_steps overrides num_train_epochs on both sides
    trl_default = {f.name: f.default for f in dataclasses.fields(trl.DPOConfig)}["max_steps"]
    assert OurConfig().max_steps == trl_default == -1


def test_our_scheduler_names_are_transformers_schedules():
    from transformers.trainer_utils import SchedulerType

    from alignlecture.train import SCHEDULES

    assert set(SCHEDULES) <= {s.value for s in SchedulerType}
