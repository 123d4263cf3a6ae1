"""A DPO trainer on `accelerate` with TRL's config names: one GPU, several GPUs or nodes through `accelerate launch`.

    from peft import LoraConfig
    config = DPOConfig(output_dir="runs/dpo", max_steps=20, per_device_train_batch_size=8, save_steps=10)
    result = DPOTrainer(policy, pairs, config, peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).train()
    result = DPOTrainer(fresh_policy, pairs, config, peft_config=...).train(resume_from_checkpoint=True)  # bit for bit

Reference log-probs are computed once before training. Three ways to choose what trains:

- full fine-tuning (default);
- ``peft_config``: adapters through peft (any LoraConfig); the policy keeps the PeftModel and the adapter is saved
  in PEFT's own format, so ``PeftModel.from_pretrained(base, output_dir)`` reloads it; merge with
  ``policy.model = policy.model.merge_and_unload()`` when you want plain weights;
- ``trainable_layers = k``: only the top k decoder blocks (+ final norm) of a Llama-family model train. The
  frozen lower blocks are run once and their output is cached, so each step runs k blocks instead of all of
  them — what makes DPO on SmolLM2 fit in a CPU notebook. Exact, because frozen layers' outputs never change.

Completions are scored with eos appended: the package's one convention (``alignlecture.logprobs``), TRL's too.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import trl_compat
from ._checks import positive_finite, positive_int
from .dpo import check_dpo_args, dpo_loss, dpo_metrics, dpo_weight
from . import prefix_sharing
from .entanglement import normalized_surrogate
from .logprobs import (
    check_masks,
    completion_logprobs,
    logprobs_from_hidden,
    logprobs_from_logits,
    pad_rows,
    pad_states,
    position_ids_from_mask,
    tokenize_pairs,
)
from .merging import copy_sharing
from .per_example import RowGradients, gradient_norm
from .preferences import preference_columns
from .prefix_sharing import pack_pairs, pair_logprobs
from .top_blocks import TopLayers


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model was restored to its last good step."""


SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class DPOConfig:
    """Everything a DPO run depends on (same config + same seed → same weights). Names and meanings are TRL's
    where the concept is the same; ``max_steps > 0`` overrides ``num_train_epochs``.

    Defaults that differ from TRL 1.16: learning_rate 1e-5 (TRL 1e-6), lr_scheduler_type "constant" (TRL
    "linear"), num_train_epochs 1 (3), logging_steps 1 (10), seed 0 (42), max_length 256 (1024; here the
    completion is cut, never the prompt). ``optimizer`` ("adamw" | "sgd") is torch's, not TRL's ``optim``
    (``optim="adamw_torch_fused"`` is translated). Other differences from TRL:

    - ``chat=True``: a plain-string prompt is wrapped in the policy's chat template (TRL applies none to plain
      strings); prompts that already hold the template are refused; ``chat=False`` takes prompts as they are.
    - ``eval_strategy=None`` (TRL "no"): with an ``eval_dataset`` the trainer evaluates once, after the last step;
      "no" never, "steps" every ``eval_steps`` steps (default ``logging_steps``), "epoch" at each epoch's end.
      Eval metrics are history rows of their own, with TRL's ``eval_`` prefix.
    - ``warmup_ratio`` (transformers 4's name; transformers 5 writes ``warmup_steps`` < 1): ceil(ratio × steps).
    - ``max_completion_length`` (TRL < 1.0) cuts each completion (eos included) to that many tokens.
    - the reference log-probs are always precomputed (``precompute_ref_log_probs=True`` is accepted); TRL's other
      options either mean what they mean here or are refused with the replacement (``trl_compat.TRL_OPTIONS``:
      ``bf16``, ``gradient_checkpointing``, ``report_to``, ``save_strategy`` …); a ``trl.DPOConfig`` converts
      with ``trl_compat.from_trl``.
    """

    output_dir: str | None = None  # None: nothing is written
    overwrite_output_dir: bool = False
    beta: float = 0.1
    loss_type: str | list[str] = "sigmoid"  # any of dpo.LOSS_TYPES, or a list of them (TRL's list-of-losses)
    label_smoothing: float = 0.0
    loss_weights: list[float] | None = None  # one weight per loss type in the list (None: 1 each, as TRL)
    discopop_tau: float = 0.05  # DiscoPOP's τ (loss_type "discopop"), TRL's default
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0: ceil(warmup_ratio × optimizer steps)
    per_device_train_batch_size: int = 8  # pairs per process per micro-step
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 1
    max_steps: int = -1  # optimizer steps; > 0 overrides num_train_epochs, -1 = train num_train_epochs epochs
    logging_steps: int = 1  # a history row every N optimizer steps (the mean over those steps)
    eval_strategy: str | None = None  # None | "no" | "steps" | "epoch" (see above; needs the trainer's eval_dataset)
    eval_steps: int | None = None  # with eval_strategy="steps"; None: logging_steps
    per_device_eval_batch_size: int = 8  # pairs per evaluation forward pass
    save_steps: int = 500  # a checkpoint output_dir/checkpoint-N every N optimizer steps (0: final save only)
    max_length: int = 256
    max_completion_length: int | None = None  # completion tokens kept (eos included); None: only max_length cuts
    seed: int = 0
    optimizer: str = "adamw"  # or "sgd"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    disable_dropout: bool = True  # as TRL: no dropout (LoRA's lora_dropout included) unless False
    trainable_layers: int | None = None
    chat: bool = True
    progress: bool = True
    pairwise_normalized: bool = False  # chapter 4: step along Σ c_i(∇w/‖∇w‖ − ∇l/‖∇l‖) (norms from one extra backward)
    prefix_sharing: bool = True  # each prompt runs once for both responses where the model allows (prefix_sharing)

    def __post_init__(self) -> None:
        if isinstance(self.warmup_steps, float) and 0 < self.warmup_steps < 1:  # transformers 5's ratio spelling
            self.warmup_steps, self.warmup_ratio = 0, self.warmup_steps
        check_dpo_args(self.beta, self.loss_type, self.label_smoothing, self.loss_weights, self.discopop_tau)
        positive_finite(self.learning_rate, "learning_rate")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_length",
                     "logging_steps", "per_device_eval_batch_size"):
            setattr(self, name, positive_int(getattr(self, name), name))
        for name in ("max_completion_length", "eval_steps"):
            if getattr(self, name) is not None:
                setattr(self, name, positive_int(getattr(self, name), name))
        self.eval_strategy = getattr(self.eval_strategy, "value", self.eval_strategy)  # transformers' enum
        if self.eval_strategy not in (None, "no", "steps", "epoch"):
            raise ValueError(f"eval_strategy must be None, 'no', 'steps' or 'epoch'; got {self.eval_strategy!r}")
        if not (isinstance(self.warmup_ratio, (int, float)) and 0 <= self.warmup_ratio <= 1):
            raise ValueError(f"warmup_ratio must be a number in [0, 1]; got {self.warmup_ratio!r}")
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError(f"pass warmup_steps ({self.warmup_steps}) or warmup_ratio ({self.warmup_ratio}), not both")
        if not isinstance(self.max_steps, int) or self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive number of optimizer steps, or -1 (TRL's default) to train "
                             f"num_train_epochs epochs; got {self.max_steps!r}")
        for name in ("save_steps", "warmup_steps"):
            setattr(self, name, positive_int(getattr(self, name), name, minimum=0))
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type must be one of {SCHEDULES}; got {self.lr_scheduler_type!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd'; got {self.optimizer!r}")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError(f"trainable_layers must be ≥ 1 or None; got {self.trainable_layers!r}")
        if self.pairwise_normalized and (self.loss_type != "sigmoid" or self.label_smoothing):
            raise ValueError(f"pairwise_normalized applies to the plain sigmoid DPO loss; got loss_type="
                             f"{self.loss_type!r}, label_smoothing={self.label_smoothing!r}")


trl_compat.accept_trl_options(DPOConfig)  # DPOConfig(bf16=..., report_to=..., ...): translated or refused with the fix


@dataclass
class TrainResult:
    """The trained policy (updated in place) and the logged history (one row per ``logging_steps`` steps)."""

    policy: object
    history: list[dict] = field(default_factory=list)
    config: DPOConfig | None = None
    output_dir: str | None = None  # where the final model or adapter was saved (None: not saved)
    skipped_pairs: int = 0  # pairs of the last epoch left out because they did not fill a batch (drop_last)


def reference_copy(policy, config: DPOConfig | None = None):
    """π_ref for training ``policy`` with ``config``: the policy as it is now, for a fraction of a copy's memory.

    With ``config.trainable_layers = k`` the trainer changes only the top k blocks and the final norm, so the copy
    owns just those (cloned now) and shares every other weight with ``policy`` (``merging.copy_sharing``): its
    outputs stay bit for bit those of the untrained policy while ``policy`` trains — as long as nothing but such a
    trainer changes ``policy``'s weights. For SmolLM2-1.7B with k = 4: 0.27B parameters copied instead of 1.7B.
    Other training (full fine-tuning, ``peft_config``) may change any weight: then it is a full ``copy.deepcopy``.
    """
    import copy
    import dataclasses

    config = config or DPOConfig()
    if config.trainable_layers:
        model = copy_sharing(policy.model, TopLayers(policy.model, config.trainable_layers).trained())
    else:
        model = copy.deepcopy(policy.model)
    return dataclasses.replace(policy, model=model.eval())


def check_peft_targets(model: torch.nn.Module, peft_config) -> None:
    """The adapter config is a peft config that matches at least one module of ``model``."""
    try:
        from peft import PeftConfig
        from peft.tuners.tuners_utils import check_target_module_exists
    except ImportError:
        raise ImportError("peft_config needs peft: pip install peft") from None
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config must be a peft config such as LoraConfig(...); got {type(peft_config).__name__}")
    targets = getattr(peft_config, "target_modules", None)
    if targets is not None and not any(check_target_module_exists(peft_config, n) for n, _ in model.named_modules()):
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"peft_config.target_modules={targets!r} matches no module of {type(model).__name__}; "
                         f"its linear layers are named {linear}")


def _schedule(kind: str, warmup: int, total: int):
    """The learning-rate factor at step s (transformers' constant/linear/cosine schedules with warm-up)."""

    def factor(s: int) -> float:
        if s < warmup:
            return s / warmup
        if kind == "constant":
            return 1.0
        progress = (s - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) if kind == "linear" else max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


class DPOTrainer:
    """DPO on a preference dataset: ``DPOTrainer(policy, dataset, DPOConfig(...), peft_config=None).train()``.

    ``dataset`` is any of: a list of records ``[{"prompt": …, "chosen": …, "rejected": …}, …]`` (extra fields
    are ignored), a mapping of columns ``{"prompt": [...], "chosen": [...], "rejected": [...]}``, a
    ``datasets.Dataset`` with those columns, or a ``preferences.PreferenceDataset``. Texts are plain strings;
    the prompt is formatted with the policy's chat template when ``config.chat``; every completion is scored with
    eos appended. ``ref_policy`` (default: the policy as it is before training) gives the reference log-probs.

        pairs = [{"prompt": "Describe the weather.", "chosen": "Sunny and warm.", "rejected": "Awful."}, …]
        DPOTrainer(policy, pairs, DPOConfig(max_steps=10))                      # records
        DPOTrainer(policy, {"prompt": [...], "chosen": [...], "rejected": [...]})  # columns
        DPOTrainer(policy, datasets.Dataset.from_list(pairs))                  # a datasets.Dataset

    TRL's keyword spelling works too, with a transformers model and its tokenizer (or a Policy, or a model name):

        DPOTrainer(model=model, ref_model=None, args=DPOConfig(...), train_dataset=ds, eval_dataset=ev,
                   processing_class=tokenizer, peft_config=None)

    ``eval_dataset`` (any dataset form) is scored during training as ``config.eval_strategy`` says, and by
    ``evaluate()``; TRL arguments with no counterpart here are refused with the replacement (``trl_compat``).
    """

    def __init__(self, policy=None, dataset=None, config: DPOConfig | None = None, ref_policy=None, peft_config=None,
                 *, model=None, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 ref_model=None, **unsupported):
        policy, dataset, config, ref_policy = trl_compat.trainer_inputs(
            policy, dataset, config, ref_policy, model=model, args=args, train_dataset=train_dataset,
            processing_class=processing_class, ref_model=ref_model, extra=unsupported, config_class=DPOConfig)
        self.policy, self.ref_policy, self.peft_config, self.config = policy, ref_policy, peft_config, config
        prompts, chosen, rejected = preference_columns(dataset)
        self.num_pairs = len(prompts)
        # rows 0..n-1: prompt+chosen, rows n..2n-1: prompt+rejected (eos appended, like TRL)
        self.rows, self.masks = self._tokenize(prompts, chosen, rejected)
        self.eval_pairs, self.eval_rows, self.eval_masks, self.eval_ref_logps = 0, [], [], None
        if eval_dataset is not None:
            e_prompts, e_chosen, e_rejected = preference_columns(eval_dataset)
            self.eval_pairs = len(e_prompts)
            self.eval_rows, self.eval_masks = self._tokenize(e_prompts, e_chosen, e_rejected, "eval prompt")
            self.eval_lengths = torch.tensor([sum(m) for m in self.eval_masks], dtype=torch.float32)
        elif config.eval_strategy in ("steps", "epoch"):
            raise ValueError(f"eval_strategy={config.eval_strategy!r} needs an eval_dataset: pass "
                             "DPOTrainer(..., eval_dataset=pairs), or eval_strategy='no'")
        self.pad_id = policy.tokenizer.pad_token_id
        if self.config.trainable_layers and peft_config is not None:
            raise ValueError("choose one of trainable_layers (top blocks) and peft_config (adapters), not both")
        if self.config.trainable_layers:
            TopLayers(policy.model, self.config.trainable_layers)  # fail before any expensive work
        if peft_config is not None:
            check_peft_targets(policy.model, peft_config)

    # ------------------------------------------------------------------ helpers
    def _tokenize(self, prompts, chosen, rejected, what: str = "prompt") -> tuple[list, list]:
        """Token rows and completion masks: prompt+chosen for every pair, then prompt+rejected."""
        cfg = self.config
        if cfg.chat:
            trl_compat.check_not_templated(self.policy, prompts, what)
        rows, masks = tokenize_pairs(self.policy, prompts + prompts, chosen + rejected, chat=cfg.chat, add_eos=True,
                                     max_length=cfg.max_length)
        if cfg.max_completion_length is not None:  # keep the prompt and the first tokens of the completion
            keep = [m.index(1) + cfg.max_completion_length for m in masks]
            rows, masks = [r[:k] for r, k in zip(rows, keep)], [m[:k] for m, k in zip(masks, keep)]
        return rows, masks

    def _batch(self, rows: list[int], device, source: tuple | None = None) -> dict[str, torch.Tensor]:
        all_rows, all_masks = source or (self.rows, self.masks)
        enc = pad_rows([all_rows[i] for i in rows], [all_masks[i] for i in rows], self.pad_id)
        return {k: v.to(device) for k, v in enc.items()}

    def _loss_logps(self, logps: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple:
        """``dpo_loss``'s arguments for rows [chosen k; rejected k]: summed log-probs and completion token counts
        (the per-token losses average inside ``dpo_loss``, as TRL does)."""
        return logps[:k], logps[k:], ref[:k], ref[k:], lengths[:k], lengths[k:]

    def _packed(self, pairs: list[int], device, source: tuple | None = None) -> prefix_sharing.PackedPairs:
        """Pairs ``pairs`` packed one per row, prompt once (``prefix_sharing.pack_pairs``), on ``device``."""
        rows, masks = source or (self.rows, self.masks)
        n = len(rows) // 2
        return pack_pairs([rows[i] for i in pairs], [masks[i] for i in pairs],
                          [rows[i + n] for i in pairs], [masks[i + n] for i in pairs], self.pad_id).to(device)

    @torch.no_grad()
    def _eval_logps(self, model, device) -> torch.Tensor:
        """Summed log-probs of every eval pair under ``model`` (the full model, whatever trains), [2m]: log π(y_w|x)
        of each pair, then log π(y_l|x) — through the same log-prob functions as training, no gradient."""
        m, size, source = self.eval_pairs, self.config.per_device_eval_batch_size, (self.eval_rows, self.eval_masks)
        share = self.config.prefix_sharing and prefix_sharing.supports(model)
        out = torch.zeros(2 * m, dtype=torch.float32)
        for start in range(0, m, size):
            idx = list(range(start, min(start + size, m)))
            if share:
                lp = pair_logprobs(model, self._packed(idx, device, source))
            else:
                b = self._batch(idx + [i + m for i in idx], device, source)
                lp = completion_logprobs(model, b["input_ids"], b["attention_mask"], b["completion_mask"]).per_sequence
            out[idx], out[[i + m for i in idx]] = lp[: len(idx)].float().cpu(), lp[len(idx) :].float().cpu()
        return out

    def evaluate(self) -> dict[str, float]:
        """TRL's metrics of the policy as it is now on ``eval_dataset``, with TRL's ``eval_`` prefix: eval_loss,
        eval_rewards/chosen … (the reference log-probs are computed once, before training or on the first call)."""
        if not self.eval_pairs:
            raise ValueError("evaluate() needs an eval_dataset: DPOTrainer(..., eval_dataset=pairs)")
        cfg, model = self.config, self.policy.model
        if self.eval_ref_logps is None:
            ref = (self.ref_policy or self.policy).model
            self.eval_ref_logps = self._eval_logps(ref, next(ref.parameters()).device)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # no dropout: the score of the policy itself, and no draw from torch's generators
        try:
            logps = self._eval_logps(model, device)
        finally:
            model.train(was_training)
        m, ref, lengths = self.eval_pairs, self.eval_ref_logps, self.eval_lengths
        losses, cr, rr = dpo_loss(logps[:m], logps[m:], ref[:m], ref[m:], beta=cfg.beta, loss_type=cfg.loss_type,
                                  label_smoothing=cfg.label_smoothing, chosen_tokens=lengths[:m],
                                  rejected_tokens=lengths[m:], loss_weights=cfg.loss_weights,
                                  discopop_tau=cfg.discopop_tau)
        metrics = {"loss": losses.mean().item(), **dpo_metrics(cr, rr, logps[:m], logps[m:])}
        return {f"eval_{k}": v for k, v in metrics.items()}

    def _eval_due(self, step: int, total: int, pairs_per_step: int) -> bool:
        """Whether to evaluate after optimizer step ``step`` (of ``total``), as ``config.eval_strategy`` says."""
        cfg = self.config
        if not self.eval_pairs or cfg.eval_strategy == "no":
            return False
        if cfg.eval_strategy == "steps":
            return step % (cfg.eval_steps or cfg.logging_steps) == 0
        if cfg.eval_strategy == "epoch":  # the step in which a pass over the data ends, and the last step
            n = self.num_pairs
            return step == total or step * pairs_per_step // n > (step - 1) * pairs_per_step // n
        return step == total  # None: once, after the last step

    @torch.no_grad()
    def _precompute(self, device, first_step: list[list[int]] = ()) -> None:
        """Reference log-probs for every row and, for top-layer training, the cached activations (the input of the
        first trained block) — each distinct ROW run once, on its own: a response often sits in several pairs.

        With shared prompts a packed pair's cache is assembled from its two rows (the chosen row's states, then the
        rejected row's after the shared prefix): each token's state depends only on the tokens it sees and their
        positions, which packing keeps, so this is exact up to float reassociation. Only the first optimizer
        step's micro-batches (``first_step``, pair indices) are run packed, exactly as training packs them: a
        packed row's floats depend a little on its batch's width, and at the first step, where the policy IS the
        reference, the implicit rewards must come out exactly 0."""
        k = self.config.trainable_layers
        model = self.policy.model
        ref_model = self.ref_policy.model if self.ref_policy is not None else None
        n = self.num_pairs
        self.ref_logps = torch.zeros(2 * n, dtype=torch.float32)  # summed over completion tokens
        self.lengths = torch.tensor([sum(m) for m in self.masks], dtype=torch.float32)
        first = len(model.model.layers) - k if k else None
        units = [(tuple(r), tuple(m)) for r, m in zip(self.rows, self.masks)]
        unique: dict[tuple, int] = {}
        same_as = [unique.setdefault(u, i) for i, u in enumerate(units)]
        distinct = sorted(set(same_as))
        states: list[torch.Tensor] = [None] * len(units) if k else []
        step = 2 * self.config.per_device_train_batch_size
        for idx in (distinct[start : start + step] for start in range(0, len(distinct), step)):
            b = self._batch(idx, device)
            check_masks(b["input_ids"], b["attention_mask"], b["completion_mask"])
            pos = position_ids_from_mask(b["attention_mask"])
            if k:
                out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=pos,
                            output_hidden_states=True)
            if ref_model is not None or not k:
                lp = completion_logprobs(ref_model or model, b["input_ids"], b["attention_mask"], b["completion_mask"])
            else:
                lp = logprobs_from_logits(out.logits, b["input_ids"], b["completion_mask"])
            self.ref_logps[idx] = lp.per_sequence.float().cpu()
            if k:
                hidden = out.hidden_states[first]  # input of block `first`
                for j, i in enumerate(idx):
                    states[i] = hidden[j, : len(self.rows[i])].detach().cpu()
        for i, source in enumerate(same_as):
            self.ref_logps[i] = self.ref_logps[source]
            if k:
                states[i] = states[source]
        if not self.share:
            self.cache = states
            return
        self.cache = []
        if k:  # packed row x y_w y_l: the chosen row as it is, then the rejected row after the shared prefix
            self.cache = [torch.cat([states[i], states[i + n][prefix_sharing.shared_prefix(
                self.rows[i], self.masks[i], self.rows[i + n], self.masks[i + n]):]]) for i in range(n)]
        for micro in first_step:  # as training packs them: step-1 rewards exactly 0
            packed = self._packed(micro, device)
            if k:  # the frozen blocks' output for the cache and (without a ref model) the ref log-probs
                mask = prefix_sharing.mask_for(model.config, packed.attention_mask(), model.dtype)
                out = model.model(input_ids=packed.input_ids, attention_mask=mask,
                                  position_ids=packed.position_ids, output_hidden_states=True)
            if ref_model is not None or not k:
                lp = pair_logprobs(ref_model or model, packed)
            else:
                lp = prefix_sharing.logprobs_from_hidden(out.last_hidden_state, model.lm_head, packed)
            self.ref_logps[micro] = lp[: len(micro)].float().cpu()
            self.ref_logps[[i + n for i in micro]] = lp[len(micro) :].float().cpu()
            if k:
                lengths = (packed.segments != prefix_sharing.SEGMENT_PADDING).sum(1).tolist()
                for j, i in enumerate(micro):
                    self.cache[i] = out.hidden_states[first][j, : lengths[j]].detach().cpu()

    def _trainable(self):
        """The module that trains, after freezing what must not."""
        cfg, model = self.config, self.policy.model
        self._saved_flags = [(p, p.requires_grad) for p in model.parameters()]  # by object: peft renames them
        if cfg.trainable_layers:
            top = TopLayers(model, cfg.trainable_layers)  # validates the depth before anything is frozen
            for p in model.parameters():
                p.requires_grad_(False)
            for p in top.trained():
                p.requires_grad_(True)
            return top
        if self.peft_config is not None:
            from peft import get_peft_model

            self.policy.model = get_peft_model(model, self.peft_config)
            return self.policy.model
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def _pairwise_normalized(self, module, rows, logps, ref, params, device, row_gradients=None) -> torch.Tensor:
        """A loss whose gradient is minus the pairwise-normalized step (chapter 4): each row's gradient norm —
        from the batch's hooks (one extra backward to the layer outputs) or else one forward+backward per row —
        then ``entanglement.normalized_surrogate`` on the batch's log-probs."""
        if row_gradients is not None:
            norms = row_gradients.square_norms(logps).sqrt().to(logps.dtype)
        else:
            norms = torch.stack([gradient_norm(self._row_logps(module, [r], device)[0], params) for r in rows]).to(logps.dtype)
        k = len(rows) // 2
        weights = dpo_weight(logps[:k], logps[k:], ref[:k], ref[k:], self.config.beta)
        return normalized_surrogate(logps[:k], logps[k:], norms[:k], norms[k:], weights)

    def _logps(self, module, pairs: list[int], device) -> torch.Tensor:
        """Summed policy log-probs of ``pairs``, with gradient: [2k], log π(y_w|x) of each pair, then log π(y_l|x)."""
        if not self.share:
            return self._row_logps(module, list(pairs) + [i + self.num_pairs for i in pairs], device)
        packed = self._packed(list(pairs), device)
        if not self.config.trainable_layers:
            return pair_logprobs(module, packed)
        model = self.policy.model
        hidden = pad_states([self.cache[i] for i in pairs], packed.input_ids.shape[1]).to(device)
        mask = prefix_sharing.mask_for(model.config, packed.attention_mask(), hidden.dtype)
        final = module(hidden, mask, packed.position_ids)
        return prefix_sharing.logprobs_from_hidden(final, model.lm_head, packed)

    def _row_logps(self, module, rows: list[int], device) -> torch.Tensor:
        """Summed policy log-probs of ``rows`` (each prompt + one response, no sharing), with gradient."""
        b = self._batch(rows, device)
        if self.config.trainable_layers:
            hidden = pad_states([self.cache[i] for i in rows], b["input_ids"].shape[1])
            final = module(hidden.to(device), b["attention_mask"])
            lp = logprobs_from_hidden(final, self.policy.model.lm_head, b["input_ids"], b["completion_mask"])
        else:
            lp = completion_logprobs(module, b["input_ids"], b["attention_mask"], b["completion_mask"])
        return lp.per_sequence

    def _order(self, pairs_per_micro: int, micro_per_step: int) -> list[int]:
        """One fixed, seeded order of pair indices: num_train_epochs epochs, or as many as max_steps needs."""
        cfg = self.config
        epochs = cfg.num_train_epochs
        if cfg.max_steps > 0:
            epochs = math.ceil(cfg.max_steps * micro_per_step * pairs_per_micro / self.num_pairs)
        gen = torch.Generator().manual_seed(cfg.seed)  # on the CPU: the same order on every device
        return torch.cat([torch.randperm(self.num_pairs, generator=gen, device="cpu") for _ in range(epochs)]).tolist()

    # ------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainResult:
        """Run DPO; returns the policy (trained in place) and the history.

        ``resume_from_checkpoint``: a ``checkpoint-N`` directory, or True for the latest one in ``output_dir``.
        Resume on a fresh copy of the base policy the run started from: the run then continues bit for bit.
        """
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        cfg = self.config
        resume = ckpt.find(resume_from_checkpoint, cfg.output_dir)
        ckpt.check_output_dir(cfg, resume)
        accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        set_seed(cfg.seed)
        device = accelerator.device
        self.policy.model.to(device)
        if self.ref_policy is not None:
            self.ref_policy.model.to(device)
        fingerprint = ckpt.fingerprint(self.policy.model, self.rows, self.masks)
        self.share = cfg.prefix_sharing and prefix_sharing.supports(self.policy.model)
        if self.share and cfg.pairwise_normalized and cfg.trainable_layers:  # per-row norms need RowGradients then
            top = TopLayers(self.policy.model, cfg.trainable_layers)
            self.share = RowGradients.supports(top, top.trained())
        micro_per_step, size = cfg.gradient_accumulation_steps, cfg.per_device_train_batch_size
        order = self._order(size * accelerator.num_processes, micro_per_step)
        self._precompute(device, [order[j * size : (j + 1) * size] for j in range(micro_per_step)])
        if self.eval_pairs and self.eval_ref_logps is None:  # the reference's eval log-probs, before any step
            ref = (self.ref_policy or self.policy).model
            self.eval_ref_logps = self._eval_logps(ref, device)
        module = self._trainable()
        params = [p for p in module.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        else:
            # the fused kernel (CPU and CUDA): one pass over the parameters instead of one per tensor and
            # operation — on SmolLM2-135M's full fine-tuning, 0.1 s a step instead of 0.6 s on the course's CPU
            fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
            opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
        # sharded across processes by accelerate
        loader = torch.utils.data.DataLoader(order, batch_size=cfg.per_device_train_batch_size, shuffle=False,
                                             drop_last=True, collate_fn=list)
        module, opt, loader = accelerator.prepare(module, opt, loader)
        total = len(loader) // micro_per_step
        if cfg.max_steps > 0:
            total = min(total, cfg.max_steps)
        if total < 1:
            raise ValueError(
                f"{self.num_pairs} pairs give no full optimizer step at per_device_train_batch_size="
                f"{cfg.per_device_train_batch_size} × {accelerator.num_processes} processes × {micro_per_step} "
                "accumulation steps; lower them"
            )
        warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg.lr_scheduler_type, warmup, total))
        pairs_per_step = size * accelerator.num_processes * micro_per_step
        skipped = len(order) - total * pairs_per_step if cfg.max_steps <= 0 else 0
        if skipped:
            warnings.warn(
                f"{skipped} of the {self.num_pairs} pairs are not trained on in the last epoch: they do not fill a "
                f"batch of {pairs_per_step} pairs (per_device_train_batch_size × processes × "
                f"gradient_accumulation_steps), and the last partial batch is dropped. Use a batch that divides "
                f"{cfg.num_train_epochs} × {self.num_pairs} pairs, or set max_steps (the order runs on across epochs)",
                stacklevel=2)
        step, history, rng = 0, [], None
        if resume is not None:
            step, history, rng = ckpt.load(resume, self, module, opt, scheduler, fingerprint)
            if step >= total:
                warnings.warn(
                    f"{resume} is already at optimizer step {step}, the run's last ({total} steps: max_steps="
                    f"{cfg.max_steps}, num_train_epochs={cfg.num_train_epochs}); nothing is left to train, and the "
                    "result holds the checkpoint's weights and history. Raise max_steps to train on", stacklevel=2)
        self.fingerprint, self.last_checkpoint = fingerprint, resume
        bar = tqdm(total=total, initial=step, disable=not (cfg.progress and accelerator.is_main_process), desc="DPO")
        n = self.num_pairs
        sums, logged = [], []
        module.eval() if cfg.disable_dropout else module.train()  # no dropout: a run is a function of config + seed
        inner = accelerator.unwrap_model(module)  # per-row work bypasses the data-parallel wrapper
        # pairwise-normalized: every row's gradient norm from the batch's own backward when the trainable
        # parameters are linear or RMSNorm weights (top blocks, LoRA), else one pass per row
        one_pass_norms = cfg.pairwise_normalized and RowGradients.supports(inner, params)
        for micro_index, pair_idx in enumerate(loader):
            if micro_index < step * micro_per_step:
                continue  # resumed: these micro-batches were trained before the checkpoint
            if step >= total:
                break
            if rng is not None:  # resumed: torch's generators as they were after the checkpoint's step
                ckpt.set_rng(rng)
                rng = None
            with accelerator.accumulate(module):
                rows = list(pair_idx) + [i + n for i in pair_idx]
                k = len(pair_idx)
                hooks = RowGradients(inner, params) if one_pass_norms else None
                with hooks or contextlib.nullcontext():
                    logps = self._logps(module, list(pair_idx), device)
                ref, lengths = self.ref_logps[rows].to(device), self.lengths[rows].to(device)
                *four, n_chosen, n_rejected = self._loss_logps(logps, ref, lengths, k)
                losses, _, _ = dpo_loss(*four, beta=cfg.beta, loss_type=cfg.loss_type,
                                        label_smoothing=cfg.label_smoothing, chosen_tokens=n_chosen,
                                        rejected_tokens=n_rejected, loss_weights=cfg.loss_weights,
                                        discopop_tau=cfg.discopop_tau)
                cr, rr = cfg.beta * (logps[:k] - ref[:k]).detach(), cfg.beta * (logps[k:] - ref[k:]).detach()
                loss = losses.mean()
                self._check_finite(accelerator, loss.detach(), "loss", step, bar)
                if cfg.pairwise_normalized:  # the logged loss stays DPO's; the step follows the normalized direction
                    accelerator.backward(self._pairwise_normalized(inner, rows, logps, ref, params, device, hooks))
                else:
                    accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # the update is applied only if every gradient is finite: a diverging step never lands
                    norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
                    self._check_finite(accelerator, torch.as_tensor(norm, device=device), "gradient norm", step, bar)
                opt.step()
                opt.zero_grad()
            sums.append({"loss": loss.item(), **dpo_metrics(cr, rr, logps[:k], logps[k:])})
            if accelerator.sync_gradients:
                step += 1
                scheduler.step()
                row = {key: sum(s[key] for s in sums) / len(sums) for key in sums[0]}
                logged.append({key: accelerator.reduce(torch.tensor(v, device=device), "mean").item()
                               for key, v in row.items()})
                sums = []
                if step % cfg.logging_steps == 0 or step == total:
                    history.append({"step": step, **{key: sum(r[key] for r in logged) / len(logged) for key in logged[0]}})
                    logged = []
                bar.update(1)
                last = next((row["loss"] for row in reversed(history) if "loss" in row), None)
                bar.set_postfix(loss=f"{last:.4f}" if last is not None else None)
                if self._eval_due(step, total, pairs_per_step):  # a row of its own, as TRL logs it
                    history.append({"step": step, **self.evaluate()})
                    module.eval() if cfg.disable_dropout else module.train()
                if cfg.output_dir and cfg.save_steps and step % cfg.save_steps == 0:
                    self.last_checkpoint = ckpt.save(self, accelerator, module, opt, scheduler, step, history)
        bar.close()
        accelerator.wait_for_everyone()
        saved = ckpt.save_final(self, accelerator, module, step, history) if cfg.output_dir else None
        self._finish()
        if getattr(self.policy, "weights", ""):
            self.policy.weights = ""  # trained in place: a zoo fingerprint it was loaded with no longer holds
        return TrainResult(policy=self.policy, history=history, config=cfg, output_dir=saved, skipped_pairs=skipped)

    # ------------------------------------------------------------------ state
    def _check_finite(self, accelerator, value: torch.Tensor, what: str, step: int, bar) -> None:
        """Stop (on every process) before a NaN/inf loss or gradient can change the weights."""
        finite = accelerator.gather(torch.isfinite(value).reshape(1)).all()
        if bool(finite):
            return
        bar.close()
        self._finish()
        last = (f"the last checkpoint is {self.last_checkpoint} (resume from it with a lower learning rate)"
                if self.last_checkpoint else "no checkpoint was saved before it")
        raise TrainingDiverged(
            f"the DPO {what} became {value.item()} at optimizer step {step + 1}; that update was not applied, so "
            f"the weights are restored to step {step} (the last good step); {last}. Lower learning_rate "
            f"(now {self.config.learning_rate}) or beta, or check the data for empty or extreme completions."
        )

    def _finish(self) -> None:
        """Restore requires_grad flags of the policy's own parameters, leave the model in eval mode."""
        for p, flag in getattr(self, "_saved_flags", []):
            p.requires_grad_(flag)
        self.policy.model.eval()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-N`` directory with the largest N under ``output_dir`` (None if there is none)."""
    return ckpt.latest(output_dir)
