"""A DPO trainer on `accelerate`: one GPU, several GPUs or nodes through `accelerate launch`, unchanged.

Reference log-probs are computed once before training. Three ways to choose what trains:
- full fine-tuning (default);
- ``lora_r > 0``: LoRA adapters through peft, merged into the weights at the end;
- ``trainable_layers = k``: only the top k decoder blocks (+ final norm) of a Llama-family model train. The
  frozen lower blocks are run once and their output is cached, so each step runs k blocks instead of all of
  them — what makes DPO on SmolLM2 fit in a CPU notebook. Exact, because frozen layers' outputs never change.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .dpo import check_dpo_args, dpo_loss, dpo_metrics
from .logprobs import (
    check_masks,
    completion_logprobs,
    logprobs_from_hidden,
    logprobs_from_logits,
    pad_rows,
    position_ids_from_mask,
    tokenize_pairs,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model was restored to its last good step."""


@dataclass
class DPOConfig:
    """Everything a DPO run depends on (same config + same seed → same weights)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    learning_rate: float = 1e-5
    batch_size: int = 8  # pairs per process per micro-step
    gradient_accumulation_steps: int = 1
    num_epochs: int = 1
    max_steps: int | None = None  # optimizer steps; None = all epochs
    max_length: int = 256
    seed: int = 0
    optimizer: str = "adamw"  # or "sgd"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    trainable_layers: int | None = None
    lora_r: int = 0
    lora_alpha: int = 16
    chat: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_dpo_args(self.beta, self.loss_type, self.label_smoothing)
        positive = {
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "num_epochs": self.num_epochs,
            "max_length": self.max_length,
        }
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive; got {value!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be ≥ 1 or None; got {self.max_steps!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd'; got {self.optimizer!r}")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError(f"trainable_layers must be ≥ 1 or None; got {self.trainable_layers!r}")
        if self.trainable_layers and self.lora_r:
            raise ValueError("choose one of trainable_layers (top blocks) and lora_r (LoRA adapters), not both")


@dataclass
class TrainResult:
    """The trained policy (updated in place) and one history row per optimizer step."""

    policy: object
    history: list[dict] = field(default_factory=list)
    config: DPOConfig | None = None


class TopLayers(torch.nn.Module):
    """The top k decoder blocks, final norm and LM head of a Llama-family model, run on cached activations."""

    def __init__(self, model: torch.nn.Module, k: int):
        super().__init__()
        base = getattr(model, "model", None)
        if base is None or not all(hasattr(base, a) for a in ("layers", "norm", "rotary_emb")):
            raise ValueError(
                f"trainable_layers needs a Llama-family decoder (model.model.layers/norm/rotary_emb); "
                f"{type(model).__name__} has none — use lora_r or full fine-tuning instead"
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


def _pairs(dataset) -> tuple[list[str], list[str], list[str]]:
    """(prompts, chosen, rejected) from a PreferenceDataset or a dict of columns."""
    if hasattr(dataset, "to_dict"):
        dataset = dataset.to_dict()
    try:
        prompts, chosen, rejected = list(dataset["prompt"]), list(dataset["chosen"]), list(dataset["rejected"])
    except (KeyError, TypeError):
        raise ValueError("dataset must be a PreferenceDataset or a mapping with prompt/chosen/rejected columns") from None
    if not prompts:
        raise ValueError("the preference dataset is empty; DPO needs at least one (prompt, chosen, rejected) pair")
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise ValueError(f"column lengths differ: {len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected")
    return prompts, chosen, rejected


class DPOTrainer:
    """DPO on a preference dataset: ``DPOTrainer(policy, dataset, DPOConfig(...)).train()``."""

    def __init__(self, policy, dataset, config: DPOConfig | None = None, ref_policy=None):
        self.policy, self.ref_policy = policy, ref_policy
        self.config = config or DPOConfig()
        prompts, chosen, rejected = _pairs(dataset)
        self.num_pairs = len(prompts)
        # rows 0..n-1: prompt+chosen, rows n..2n-1: prompt+rejected (eos appended, like TRL)
        self.rows, self.masks = tokenize_pairs(
            policy, prompts + prompts, chosen + rejected, chat=self.config.chat, add_eos=True,
            max_length=self.config.max_length,
        )
        self.pad_id = policy.tokenizer.pad_token_id
        if self.config.trainable_layers:
            TopLayers(policy.model, self.config.trainable_layers)  # fail before any expensive work

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
        step = max(1, 2 * self.config.batch_size)
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
        self._saved_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        if cfg.trainable_layers:
            top = TopLayers(model, cfg.trainable_layers)  # validates the depth before anything is frozen
            for p in model.parameters():
                p.requires_grad_(False)
            for p in list(top.layers.parameters()) + list(top.norm.parameters()):
                p.requires_grad_(True)
            return top
        if cfg.lora_r:
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError:
                raise ImportError("lora_r > 0 needs peft: pip install peft") from None
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                              target_modules=["q_proj", "v_proj"])
            self.policy.model = get_peft_model(model, lora)
            return self.policy.model
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def _logps(self, module, rows: list[int], device) -> torch.Tensor:
        """Summed policy log-probs of ``rows``, with gradient."""
        b = self._batch(rows, device)
        if self.config.trainable_layers:
            width = b["input_ids"].shape[1]
            hidden = torch.zeros(len(rows), width, self.cache[rows[0]].shape[-1], dtype=self.cache[rows[0]].dtype)
            for j, i in enumerate(rows):
                hidden[j, : self.cache[i].shape[0]] = self.cache[i]
            final = module(hidden.to(device), b["attention_mask"])
            lp = logprobs_from_hidden(final, self.policy.model.lm_head, b["input_ids"], b["completion_mask"])
        else:
            lp = completion_logprobs(module, b["input_ids"], b["attention_mask"], b["completion_mask"])
        return lp.per_sequence

    # ------------------------------------------------------------------ training
    def train(self) -> TrainResult:
        """Run DPO; returns the policy (trained in place) and the per-step history."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        cfg = self.config
        accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        set_seed(cfg.seed)
        device = accelerator.device
        self.policy.model.to(device)
        if self.ref_policy is not None:
            self.ref_policy.model.to(device)
        self._precompute(device)
        module = self._trainable()
        params = [p for p in module.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        # one fixed, seeded order over all epochs, sharded across processes by accelerate
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.cat([torch.randperm(self.num_pairs, generator=gen) for _ in range(cfg.num_epochs)]).tolist()
        loader = torch.utils.data.DataLoader(order, batch_size=cfg.batch_size, shuffle=False, drop_last=True,
                                             collate_fn=list)
        module, opt, loader = accelerator.prepare(module, opt, loader)
        micro_per_step = cfg.gradient_accumulation_steps
        total = len(loader) // micro_per_step
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        if total < 1:
            raise ValueError(
                f"{self.num_pairs} pairs give no full optimizer step at batch_size={cfg.batch_size} × "
                f"{accelerator.num_processes} processes × {micro_per_step} accumulation steps; lower them"
            )
        history: list[dict] = []
        bar = tqdm(total=total, disable=not (cfg.progress and accelerator.is_main_process), desc="DPO")
        n = self.num_pairs
        micro, step, sums = 0, 0, []
        module.eval()  # no dropout: a run is a deterministic function of its config and seed
        for pair_idx in loader:
            if step >= total:
                break
            with accelerator.accumulate(module):
                rows = list(pair_idx) + [i + n for i in pair_idx]
                k = len(pair_idx)
                logps = self._logps(module, rows, device)
                ref, lengths = self.ref_logps[rows].to(device), self.lengths[rows].to(device)
                lp, lr = self._loss_logps(logps, lengths), self._loss_logps(ref, lengths)
                losses, _, _ = dpo_loss(lp[:k], lp[k:], lr[:k], lr[k:], beta=cfg.beta,
                                        loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)
                cr, rr = cfg.beta * (logps[:k] - ref[:k]).detach(), cfg.beta * (logps[k:] - ref[k:]).detach()
                loss = losses.mean()
                self._check_finite(accelerator, loss.detach(), "loss", step, bar)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # the update is applied only if every gradient is finite: a diverging step never lands
                    norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
                    self._check_finite(accelerator, torch.as_tensor(norm, device=device), "gradient norm", step, bar)
                opt.step()
                opt.zero_grad()
            sums.append({"loss": loss.item(), **dpo_metrics(cr, rr, logps[:k], logps[k:])})
            micro += 1
            if accelerator.sync_gradients:
                step += 1
                row = {key: sum(s[key] for s in sums) / len(sums) for key in sums[0]}
                row = {key: accelerator.reduce(torch.tensor(v, device=device), "mean").item() for key, v in row.items()}
                history.append({"step": step, **row})
                sums = []
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if cfg.checkpoint_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    self._checkpoint(accelerator, module, step)
        bar.close()
        accelerator.wait_for_everyone()
        if cfg.checkpoint_dir:
            self._checkpoint(accelerator, module, step)
        self._finish()
        return TrainResult(policy=self.policy, history=history, config=cfg)

    # ------------------------------------------------------------------ state
    def _check_finite(self, accelerator, value: torch.Tensor, what: str, step: int, bar) -> None:
        """Stop (on every process) before a NaN/inf loss or gradient can change the weights."""
        finite = accelerator.gather(torch.isfinite(value).reshape(1)).all()
        if bool(finite):
            return
        bar.close()
        self._finish()
        raise TrainingDiverged(
            f"the DPO {what} became {value.item()} at optimizer step {step + 1}; that update was not applied, so "
            f"the weights are restored to step {step} (the last good step). Lower learning_rate "
            f"(now {self.config.learning_rate}) or beta, or check the data for empty or extreme completions."
        )

    def _checkpoint(self, accelerator, module, step: int) -> None:
        """Trainable weights as safetensors, written atomically (temp file renamed into place)."""
        if not accelerator.is_main_process:
            return
        from safetensors.torch import save_file

        unwrapped = accelerator.unwrap_model(module)
        state = {n: p.detach().cpu().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}
        out = Path(self.config.checkpoint_dir)
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=out)
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"step": str(step), "config": str(asdict(self.config))})
            os.replace(tmp, out / "trainable.safetensors")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _finish(self) -> None:
        """Merge LoRA adapters, restore requires_grad flags, leave the model in eval mode."""
        model = self.policy.model
        if self.config.lora_r and hasattr(model, "merge_and_unload"):
            model = self.policy.model = model.merge_and_unload()
        for n, p in model.named_parameters():
            p.requires_grad_(self._saved_flags.get(n, False))
        model.eval()
