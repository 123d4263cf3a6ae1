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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .dpo import check_dpo_args, dpo_loss, dpo_metrics
from .entanglement import RowGradients
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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model was restored to its last good step."""


SCHEDULES = ("constant", "linear", "cosine")
# old name → TRL's name (DPOConfig accepted these before 0.2; they still work, with a DeprecationWarning)
RENAMED = {"batch_size": "per_device_train_batch_size", "num_epochs": "num_train_epochs",
           "checkpoint_dir": "output_dir", "checkpoint_every": "save_steps"}


@dataclass
class DPOConfig:
    """Everything a DPO run depends on (same config + same seed → same weights). Names and meanings are TRL's
    where the concept is the same; ``max_steps > 0`` overrides ``num_train_epochs``.

    Defaults that differ from TRL 1.16: learning_rate 1e-5 (TRL 1e-6), lr_scheduler_type "constant" (TRL
    "linear"), num_train_epochs 1 (3), logging_steps 1 (10), seed 0 (42), max_length 256 (1024; here the
    completion is cut, never the prompt). ``optimizer`` ("adamw" | "sgd") is torch's, not TRL's ``optim``.
    """

    output_dir: str | None = None  # None: nothing is written
    overwrite_output_dir: bool = False
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    per_device_train_batch_size: int = 8  # pairs per process per micro-step
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 1
    max_steps: int = -1  # optimizer steps; > 0 overrides num_train_epochs, -1 = train num_train_epochs epochs
    logging_steps: int = 1  # a history row every N optimizer steps (the mean over those steps)
    save_steps: int = 500  # a checkpoint output_dir/checkpoint-N every N optimizer steps (0: final save only)
    max_length: int = 256
    seed: int = 0
    optimizer: str = "adamw"  # or "sgd"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    disable_dropout: bool = True  # as TRL: no dropout (LoRA's lora_dropout included) unless False
    trainable_layers: int | None = None
    chat: bool = True
    progress: bool = True
    pairwise_normalized: bool = False  # chapter 4: step along Σ c_i(∇w/‖∇w‖ − ∇l/‖∇l‖) (norms from one extra backward)

    def __post_init__(self) -> None:
        check_dpo_args(self.beta, self.loss_type, self.label_smoothing)
        positive = {
            "learning_rate": self.learning_rate,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "num_train_epochs": self.num_train_epochs,
            "max_length": self.max_length,
            "logging_steps": self.logging_steps,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive; got {value!r}")
        if self.max_steps is None:  # the old spelling of "no limit"
            self.max_steps = -1
        if not isinstance(self.max_steps, int) or self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive number of optimizer steps, or -1 (TRL's default) to train "
                             f"num_train_epochs epochs; got {self.max_steps!r}")
        for name in ("save_steps", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer ≥ 0; got {getattr(self, name)!r}")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type must be one of {SCHEDULES}; got {self.lr_scheduler_type!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd'; got {self.optimizer!r}")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError(f"trainable_layers must be ≥ 1 or None; got {self.trainable_layers!r}")
        if self.pairwise_normalized and (self.loss_type != "sigmoid" or self.label_smoothing):
            raise ValueError(f"pairwise_normalized applies to the plain sigmoid DPO loss; got loss_type="
                             f"{self.loss_type!r}, label_smoothing={self.label_smoothing!r}")


_dataclass_init = DPOConfig.__init__


def _init_with_old_names(self, *args, **kwargs):
    for old, new in RENAMED.items():
        if old in kwargs:
            if new in kwargs:
                raise TypeError(f"pass {new} only ({old} is its old name)")
            warnings.warn(f"DPOConfig({old}=…) is now {new}=… (TRL's name)", DeprecationWarning, stacklevel=2)
            kwargs[new] = kwargs.pop(old)
    if "lora_r" in kwargs or "lora_alpha" in kwargs:
        raise TypeError("lora_r/lora_alpha are gone: pass peft_config=LoraConfig(r=…, lora_alpha=…, target_modules=…) "
                        "to DPOTrainer, as in TRL")
    _dataclass_init(self, *args, **kwargs)


DPOConfig.__init__ = _init_with_old_names


@dataclass
class TrainResult:
    """The trained policy (updated in place) and the logged history (one row per ``logging_steps`` steps)."""

    policy: object
    history: list[dict] = field(default_factory=list)
    config: DPOConfig | None = None
    output_dir: str | None = None  # where the final model or adapter was saved (None: not saved)


class TopLayers(torch.nn.Module):
    """The top k decoder blocks, final norm and LM head of a Llama-family model, run on cached activations."""

    def __init__(self, model: torch.nn.Module, k: int):
        super().__init__()
        base = getattr(model, "model", None)
        if base is None or not all(hasattr(base, a) for a in ("layers", "norm", "rotary_emb")):
            raise ValueError(
                f"trainable_layers needs a Llama-family decoder (model.model.layers/norm/rotary_emb); "
                f"{type(model).__name__} has none — use peft_config or full fine-tuning instead"
            )
        if k > len(base.layers):
            raise ValueError(f"trainable_layers={k} exceeds the model's {len(base.layers)} decoder blocks")
        self.config = model.config
        self.first = len(base.layers) - k
        self.layers = torch.nn.ModuleList(base.layers[self.first :])
        self.norm, self.rotary_emb, self.lm_head = base.norm, base.rotary_emb, model.lm_head

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final (normed) hidden states [B, S, hidden] from the input of block ``first``; apply ``lm_head`` after."""
        from transformers.masking_utils import create_causal_mask

        position_ids = position_ids_from_mask(attention_mask)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None, position_ids=position_ids
        )
        pos = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=pos, position_ids=position_ids)
        return self.norm(hidden)

    def trained(self) -> list[torch.nn.Parameter]:
        """What ``trainable_layers`` trains: the blocks' and the final norm's parameters (never the tied LM head)."""
        return list(self.layers.parameters()) + list(self.norm.parameters())


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

    from .merging import copy_sharing

    config = config or DPOConfig()
    if config.trainable_layers:
        model = copy_sharing(policy.model, TopLayers(policy.model, config.trainable_layers).trained())
    else:
        model = copy.deepcopy(policy.model)
    return dataclasses.replace(policy, model=model.eval())


FIELDS = ("prompt", "chosen", "rejected")


def preference_columns(dataset) -> tuple[list[str], list[str], list[str]]:
    """(prompts, chosen, rejected) from any accepted dataset form (see ``DPOTrainer``)."""
    if hasattr(dataset, "to_dict") and not isinstance(dataset, Mapping):  # PreferenceDataset, datasets.Dataset
        dataset = dataset.to_dict()
    if isinstance(dataset, Mapping):
        missing = [f for f in FIELDS if f not in dataset]
        if missing:
            raise ValueError(f"the dataset has no {missing[0]!r} column (columns: {sorted(dataset)}); DPO needs "
                             "prompt, chosen and rejected columns")
        columns = [list(dataset[f]) for f in FIELDS]
        if len({len(c) for c in columns}) > 1:
            raise ValueError(f"column lengths differ: {len(columns[0])} prompts, {len(columns[1])} chosen, "
                             f"{len(columns[2])} rejected")
        records = [dict(zip(FIELDS, row)) for row in zip(*columns)]
    elif isinstance(dataset, Sequence) and not isinstance(dataset, str):
        records = list(dataset)
    else:
        raise ValueError(f"dataset must be a list of records, a mapping of columns, a datasets.Dataset or a "
                         f"PreferenceDataset with prompt/chosen/rejected; got {type(dataset).__name__}")
    if not records:
        raise ValueError("the preference dataset is empty; DPO needs at least one (prompt, chosen, rejected) pair")
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {i} is a {type(record).__name__}, not a mapping with prompt/chosen/rejected")
        for f in FIELDS:
            if f not in record:
                raise ValueError(f"record {i} has no {f!r} field (it has {sorted(record)}); every record needs "
                                 "prompt, chosen and rejected")
            if not isinstance(record[f], str):
                raise ValueError(f"record {i}: {f!r} is a {type(record[f]).__name__}, not a str; pass plain text "
                                 "(conversational message lists are not supported)")
    return tuple([r[f] for r in records] for f in FIELDS)


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
    """

    def __init__(self, policy, dataset, config: DPOConfig | None = None, ref_policy=None, peft_config=None):
        self.policy, self.ref_policy, self.peft_config = policy, ref_policy, peft_config
        self.config = config or DPOConfig()
        if not isinstance(self.config, DPOConfig):
            raise TypeError(f"config must be an alignlecture.train.DPOConfig; got {type(self.config).__name__}")
        prompts, chosen, rejected = preference_columns(dataset)
        self.num_pairs = len(prompts)
        # rows 0..n-1: prompt+chosen, rows n..2n-1: prompt+rejected (eos appended, like TRL)
        self.rows, self.masks = tokenize_pairs(
            policy, prompts + prompts, chosen + rejected, chat=self.config.chat, add_eos=True,
            max_length=self.config.max_length,
        )
        self.pad_id = policy.tokenizer.pad_token_id
        if self.config.trainable_layers and peft_config is not None:
            raise ValueError("choose one of trainable_layers (top blocks) and peft_config (adapters), not both")
        if self.config.trainable_layers:
            TopLayers(policy.model, self.config.trainable_layers)  # fail before any expensive work
        if peft_config is not None:
            check_peft_targets(policy.model, peft_config)

    # ------------------------------------------------------------------ helpers
    def _batch(self, rows: list[int], device) -> dict[str, torch.Tensor]:
        enc = pad_rows([self.rows[i] for i in rows], [self.masks[i] for i in rows], self.pad_id)
        return {k: v.to(device) for k, v in enc.items()}

    def _loss_logps(self, summed: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """What the loss sees: summed log-probs, or per-token averages for IPO (metrics always use sums)."""
        return summed / lengths if self.config.loss_type == "ipo" else summed

    @torch.no_grad()
    def _precompute(self, device) -> None:
        """Reference log-probs for every row (once) and, for top-layer training, the cached activations."""
        k = self.config.trainable_layers
        model = self.policy.model
        ref_model = self.ref_policy.model if self.ref_policy is not None else None
        n_rows = len(self.rows)
        self.ref_logps = torch.zeros(n_rows, dtype=torch.float32)  # summed over completion tokens
        self.lengths = torch.tensor([sum(m) for m in self.masks], dtype=torch.float32)
        self.cache: list[torch.Tensor] = [None] * n_rows if k else []
        first = len(model.model.layers) - k if k else None
        # a response often appears in several pairs: run each distinct (prompt, completion) row once
        unique: dict[tuple, int] = {}
        same_as = [unique.setdefault((tuple(r), tuple(m)), i) for i, (r, m) in enumerate(zip(self.rows, self.masks))]
        distinct = sorted(set(same_as))
        step = max(1, 2 * self.config.per_device_train_batch_size)
        for start in range(0, len(distinct), step):
            idx = distinct[start : start + step]
            b = self._batch(idx, device)
            check_masks(b["input_ids"], b["attention_mask"], b["completion_mask"])
            pos = position_ids_from_mask(b["attention_mask"])
            if k:  # one full forward gives the cached activations and (without a ref model) the ref log-probs
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
                    self.cache[i] = hidden[j, : len(self.rows[i])].detach().cpu()
        for i, source in enumerate(same_as):
            self.ref_logps[i] = self.ref_logps[source]
            if k:
                self.cache[i] = self.cache[source]

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
        from .entanglement import gradient_norm, normalized_surrogate

        if row_gradients is not None:
            norms = row_gradients.square_norms(logps).sqrt().to(logps.dtype)
        else:
            norms = torch.stack([gradient_norm(self._logps(module, [r], device)[0], params) for r in rows]).to(logps.dtype)
        k, beta = len(rows) // 2, self.config.beta
        weights = beta * torch.sigmoid(beta * ((logps[k:] - ref[k:]) - (logps[:k] - ref[:k])))
        return normalized_surrogate(logps[:k], logps[k:], norms[:k], norms[k:], weights)

    def _logps(self, module, rows: list[int], device) -> torch.Tensor:
        """Summed policy log-probs of ``rows``, with gradient."""
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
        self._precompute(device)
        module = self._trainable()
        params = [p for p in module.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        # sharded across processes by accelerate
        micro_per_step = cfg.gradient_accumulation_steps
        order = self._order(cfg.per_device_train_batch_size * accelerator.num_processes, micro_per_step)
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
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg.lr_scheduler_type, cfg.warmup_steps, total))
        step, history, rng = 0, [], None
        if resume is not None:
            step, history, rng = ckpt.load(resume, self, module, opt, scheduler, fingerprint)
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
                    logps = self._logps(module, rows, device)
                ref, lengths = self.ref_logps[rows].to(device), self.lengths[rows].to(device)
                lp, lr = self._loss_logps(logps, lengths), self._loss_logps(ref, lengths)
                losses, _, _ = dpo_loss(lp[:k], lp[k:], lr[:k], lr[k:], beta=cfg.beta,
                                        loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)
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
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}" if history else None)
                if cfg.output_dir and cfg.save_steps and step % cfg.save_steps == 0:
                    self.last_checkpoint = ckpt.save(self, accelerator, module, opt, scheduler, step, history)
        bar.close()
        accelerator.wait_for_everyone()
        saved = ckpt.save_final(self, accelerator, module, step, history) if cfg.output_dir else None
        self._finish()
        return TrainResult(policy=self.policy, history=history, config=cfg, output_dir=saved)

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
