"""Meeting TRL users where they are: TRL's spellings for ``train.DPOTrainer`` and ``train.DPOConfig``, translated
or refused with the fix.

A TRL user writes ``DPOTrainer(model=model, ref_model=ref, args=DPOConfig(...), train_dataset=ds,
eval_dataset=ev, processing_class=tokenizer)``. Every TRL option either means something here — and then it works —
or it is refused with a message that says what to use instead; nothing is accepted and silently ignored:

- ``config_kwargs``: TRL/transformers options passed to ``train.DPOConfig`` (``bf16``, ``report_to``,
  ``save_strategy``, ``optim`` …) are checked against what this trainer does (``TRL_OPTIONS``);
- ``from_trl``: a ``trl.DPOConfig`` converted field by field (refused when a field has no counterpart);
- ``trainer_inputs``: TRL's keyword spelling of the trainer and a plain transformers model plus its tokenizer
  turned into the ``Policy`` the trainer trains;
- ``check_not_templated``: prompts that already carry the chat template, refused while ``chat=True`` would wrap
  them a second time (TRL applies no template to plain strings; this trainer does, by default).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import warnings
from collections.abc import Callable

import torch


class UnsupportedOption(ValueError):
    """A TRL option this trainer does not offer with that value; the message names what to use instead."""


def _only(*allowed, fix: str) -> Callable:
    """A rule: the option is accepted (and has nothing to change) when its value is one of ``allowed``."""

    def rule(name, value):
        value = getattr(value, "value", value)  # transformers' enums (IntervalStrategy.STEPS) compare by value
        if any(value == a for a in allowed):
            return {}
        raise UnsupportedOption(f"{name}={value!r} is not supported by alignlecture's DPOTrainer: {fix}")

    return rule


def _save_strategy(name, value):
    value = getattr(value, "value", value)
    if value == "steps":
        return {}
    if value == "no":
        return {"save_steps": 0}  # no checkpoint-N; the final model is still written to output_dir
    raise UnsupportedOption(f"{name}={value!r} is not supported: checkpoints are taken every save_steps optimizer "
                            "steps (save_steps=N), or only at the end (save_strategy='no' or save_steps=0)")


def _optim(name, value):
    value = getattr(value, "value", value)
    if value in ("adamw_torch", "adamw_torch_fused"):
        return {"optimizer": "adamw"}  # torch's AdamW, fused where the parameters allow
    if value == "sgd":
        return {"optimizer": "sgd"}
    raise UnsupportedOption(f"optim={value!r} is not supported: use optimizer='adamw' (torch's fused AdamW, "
                            "TRL's 'adamw_torch_fused') or optimizer='sgd'")


_NO_REPORTERS = (None, "none", [], ["none"], ())
_MEMORY = ("train the top blocks only (trainable_layers=k: the frozen blocks run once and are cached) or adapters "
           "(peft_config=LoraConfig(...)), or lower per_device_train_batch_size and raise gradient_accumulation_steps")

# TRL / transformers options that DPOConfig has no field for: each rule accepts the value (returning the DPOConfig
# fields it stands for, often none) or raises UnsupportedOption with the replacement.
TRL_OPTIONS: dict[str, Callable] = {
    "precompute_ref_log_probs": _only(True, fix="reference log-probs are always precomputed here, once before "
                                      "training (the reference model never runs during training); drop the option"),
    "precompute_ref_batch_size": _only(None, fix="the reference pass uses per_device_train_batch_size"),
    "report_to": _only(*_NO_REPORTERS, fix="the run's metrics are TrainResult.history (one dict per logged step); "
                       "send them yourself, e.g. `for row in result.history: wandb.log(row, step=row['step'])`"),
    "bf16": _only(False, None, fix="the trainer trains in the model's own dtype, without autocast: load the model "
                  "in bfloat16 (load_policy(name, dtype=torch.bfloat16) or model.to(torch.bfloat16))"),
    "fp16": _only(False, fix="the trainer trains in the model's own dtype, without autocast or loss scaling: load "
                  "the model in bfloat16 (load_policy(name, dtype=torch.bfloat16)) rather than float16"),
    "gradient_checkpointing": _only(False, fix=f"to save memory, {_MEMORY}"),
    "activation_checkpointing": _only(False, fix=f"to save memory, {_MEMORY}"),
    "save_strategy": _save_strategy,
    "save_total_limit": _only(None, fix="every checkpoint-N is kept; delete the ones you do not need"),
    "load_best_model_at_end": _only(False, fix="pick a checkpoint-N yourself from the eval_loss rows of "
                                    "TrainResult.history, then resume_from_checkpoint or load it"),
    "metric_for_best_model": _only(None, fix="pick a checkpoint from the eval_ rows of TrainResult.history"),
    "logging_strategy": _only("steps", fix="a history row is logged every logging_steps optimizer steps"),
    "logging_first_step": _only(False, fix="set logging_steps=1 to log every step, the first included"),
    "eval_on_start": _only(False, fix="call trainer.evaluate() before trainer.train()"),
    "evaluation_strategy": _only(None, fix="transformers and TRL now spell it eval_strategy"),
    "optim": _optim,
    "truncation_mode": _only("keep_start", fix="max_length (and max_completion_length) cut the completion's end; "
                             "the prompt is never cut"),
    "max_prompt_length": _only(None, fix="the prompt is never cut here (a cut chat prompt loses its template's "
                               "start, and TRL 1.16 dropped this option too); filter or shorten long prompts, and "
                               "use max_length / max_completion_length to cut completions"),
    "padding_free": _only(False, fix="prefix_sharing=True (the default) already runs each prompt once per pair "
                          "without padding between the two responses"),
    "dataset_num_proc": _only(None, fix="the pairs are tokenised once, in this process; drop the option"),
    "remove_unused_columns": _only(True, False, fix=""),  # extra columns are always ignored
    "dataloader_drop_last": _only(True, fix="the last partial batch is always dropped (the trainer warns and "
                                  "counts the pairs in TrainResult.skipped_pairs); choose a batch that divides the "
                                  "data, or max_steps"),
    "use_cpu": _only(False, not torch.cuda.is_available(), fix="the trainer trains on accelerate's device; run with "
                     "ACCELERATE_USE_CPU=1 (or CUDA_VISIBLE_DEVICES='') to train on the CPU"),
    "push_to_hub": _only(False, fix="write the run to output_dir, then push it: "
                         "result.policy.model.push_to_hub(repo); result.policy.tokenizer.push_to_hub(repo)"),
    "model_init_kwargs": _only(None, fix="load the model yourself (load_policy(name, dtype=...) or "
                               "AutoModelForCausalLM.from_pretrained(name, **kwargs)) and pass it"),
    "sync_ref_model": _only(False, fix="the reference is fixed (TR-DPO's reference updates are not offered)"),
    "use_weighting": _only(False, fix="WPO weighting is not offered; the loss is dpo.dpo_loss's"),
    "ld_alpha": _only(None, fix="LD-DPO's length weighting is not offered; the loss is dpo.dpo_loss's"),
    "f_divergence_type": _only("reverse_kl", fix="only the reverse-KL (standard DPO) regulariser is offered"),
    "rpo_alpha": _only(None, fix="RPO is loss_type=['sigmoid', 'sft'] with loss_weights=[1.0, alpha]"),
    "generate_during_eval": _only(False, fix="sample with alignlecture.models.generate(result.policy, prompts)"),
    "torch_compile": _only(False, fix="compile the model yourself before passing it, if you need to"),
}

# DPOTrainer arguments of TRL's that this trainer does not take, and what to use instead
TRAINER_OPTIONS = {
    "data_collator": "the trainer tokenises and pads the pairs itself (eos appended to each completion, as TRL)",
    "compute_metrics": "the eval rows of TrainResult.history hold TRL's DPO metrics; compute others from "
                       "result.policy afterwards",
    "callbacks": "read TrainResult.history after training, or the checkpoints written every save_steps",
    "optimizers": "choose DPOConfig(optimizer='adamw'|'sgd', learning_rate=..., lr_scheduler_type=...)",
    "optimizer_cls_and_kwargs": "choose DPOConfig(optimizer='adamw'|'sgd', learning_rate=..., weight_decay=...)",
    "preprocess_logits_for_metrics": "the eval metrics are computed from summed completion log-probs",
    "quantization_config": "quantised training is not offered; load the model in bfloat16 or train adapters",
    "model_init": "pass the model itself",
    "tokenizer": "pass the tokenizer as processing_class=tokenizer (TRL's name), or pass a Policy",
}


def _unexpected(owner: str, name: str, known) -> TypeError:
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return TypeError(f"{owner} got an unexpected keyword argument {name!r}{hint}")


def config_kwargs(kwargs: dict, fields: set[str]) -> dict:
    """``DPOConfig``'s own keyword arguments from ``kwargs``: TRL-only options checked and translated
    (``TRL_OPTIONS``), a name neither knows refused with the nearest names."""
    own = {k: v for k, v in kwargs.items() if k in fields}
    for name, value in kwargs.items():
        if name in fields:
            continue
        if name not in TRL_OPTIONS:
            raise _unexpected("DPOConfig", name, fields | set(TRL_OPTIONS))
        for key, translated in TRL_OPTIONS[name](name, value).items():
            if key in own and own[key] != translated:
                raise ValueError(f"{name}={value!r} means {key}={translated!r}, but {key}={own[key]!r} was passed too; "
                                 "pass one of them")
            own[key] = translated
    return own


def accept_trl_options(config_class) -> None:
    """Let ``config_class(...)`` (a dataclass) take TRL's options too, through ``config_kwargs``."""
    init, fields = config_class.__init__, set(config_class.__dataclass_fields__)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **config_kwargs(kwargs, fields))

    config_class.__init__ = __init__


def from_trl(trl_config, config_class):
    """An ``alignlecture.train.DPOConfig`` holding a ``trl.DPOConfig``'s values, or UnsupportedOption listing every
    field it cannot honour.

    Fields both configs have keep the TRL config's values (TRL's defaults included: learning_rate 1e-6, 3 epochs,
    seed 42, a linear schedule …). Any other field left at TRL's default is dropped (``gradient_checkpointing``, for
    one: memory, not the numbers) except ``bf16``, which TRL turns on by default and which changes the numbers: it
    must be False. Fields set to something else go through ``TRL_OPTIONS`` or are refused.
    """
    import dataclasses

    ours = {f.name for f in dataclasses.fields(config_class)}
    theirs = {f.name: f for f in dataclasses.fields(trl_config) if f.init}
    try:  # the defaults after TRL's own __post_init__ (it fills bf16, report_to, enum values …)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' renaming notices, about TRL's defaults, not the user's
            reference = type(trl_config)(output_dir=trl_config.output_dir, use_cpu=True, bf16=False)
    except Exception:  # noqa: BLE001 — fall back on the declared defaults
        reference = None
    kwargs, problems = {}, []
    for name, f in theirs.items():
        value = getattr(trl_config, name)
        if name in ours:
            value = getattr(value, "value", value)
            if name == "loss_type" and isinstance(value, list) and len(value) == 1:
                value = value[0]
            if name == "num_train_epochs" and float(value).is_integer():
                value = int(value)
            kwargs[name] = value
            continue
        default = getattr(reference, name) if reference is not None else (
            f.default if f.default is not dataclasses.MISSING else None)
        if value == default and name != "bf16":  # TRL's default, not the user's choice (bf16 changes the numbers)
            continue
        if name in TRL_OPTIONS:
            try:
                kwargs.update(TRL_OPTIONS[name](name, value))
            except UnsupportedOption as e:
                problems.append(str(e).replace(" is not supported by alignlecture's DPOTrainer", ""))
        else:
            problems.append(f"{name}={value!r} (no counterpart here)")
    if problems:
        raise UnsupportedOption("this trl.DPOConfig cannot be converted to alignlecture's DPOConfig: "
                                + "; ".join(problems) + ". Change those fields, or build "
                                "alignlecture.train.DPOConfig(...) with the same keyword arguments")
    return config_class(**kwargs)


def is_trl_config(config) -> bool:
    """Whether ``config`` is TRL's own ``trl.DPOConfig`` (recognised by name and module, without importing TRL)."""
    return type(config).__name__ == "DPOConfig" and type(config).__module__.startswith("trl")


def as_policy(model, tokenizer, what: str):
    """``model`` as a ``models.Policy``: a Policy as it is, a model name through ``load_policy``, or a transformers
    causal LM with ``tokenizer`` (its pad token set to eos when it has none, as ``load_policy`` and TRL do)."""
    from .models import Policy, load_policy

    if isinstance(model, Policy):
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ValueError(f"{what} is a Policy, which carries its own tokenizer; processing_class is for a plain "
                             "transformers model: pass one of them")
        return model
    if isinstance(model, str):
        policy = load_policy(model)
        return policy if tokenizer is None else dataclasses.replace(policy, tokenizer=tokenizer)
    if isinstance(model, torch.nn.Module):
        if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
            raise TypeError(f"{what} is already a PeftModel; pass its base model and the adapter's config: "
                            "model=peft_model.get_base_model(), peft_config=LoraConfig(...)")
        if tokenizer is None:
            raise TypeError(f"{what} is a {type(model).__name__} without its tokenizer; pass "
                            "processing_class=AutoTokenizer.from_pretrained(...) (TRL's name), or an "
                            "alignlecture Policy (models.load_policy gives one)")
        if not callable(tokenizer) or not hasattr(tokenizer, "eos_token_id"):
            raise TypeError(f"processing_class must be the model's tokenizer; got {type(tokenizer).__name__}")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        return Policy(model=model, tokenizer=tokenizer, name=name, source="given")
    raise TypeError(f"{what} must be an alignlecture Policy, a transformers causal LM (with processing_class=its "
                    f"tokenizer) or a model name; got {type(model).__name__}")


def trainer_inputs(policy, dataset, config, ref_policy, *, model, args, train_dataset, processing_class, ref_model,
                   extra: dict, config_class):
    """(policy, dataset, config, ref_policy) from either spelling: ours (positional) or TRL's keywords."""
    for name in extra:
        if name in TRAINER_OPTIONS:
            raise UnsupportedOption(f"DPOTrainer does not take {name}: {TRAINER_OPTIONS[name]}")
        raise _unexpected("DPOTrainer", name, ["model", "ref_model", "args", "train_dataset", "eval_dataset",
                                               "processing_class", "peft_config", "ref_policy", "config"])
    if isinstance(dataset, torch.nn.Module) or type(dataset).__name__ == "Policy":
        raise TypeError("the second positional argument is the training dataset here (in TRL it is ref_model); "
                        "pass the reference by keyword: DPOTrainer(model, ref_model=ref, args=..., train_dataset=...)")
    for ours, theirs, a, b in (("policy", "model", policy, model), ("dataset", "train_dataset", dataset, train_dataset),
                               ("config", "args", config, args), ("ref_policy", "ref_model", ref_policy, ref_model)):
        if a is not None and b is not None:
            raise TypeError(f"pass {ours} or {theirs} (TRL's name for it), not both")
    policy, dataset = policy if policy is not None else model, dataset if dataset is not None else train_dataset
    config, ref_policy = config if config is not None else args, ref_policy if ref_policy is not None else ref_model
    if policy is None:
        raise TypeError("DPOTrainer needs the model to train: DPOTrainer(policy, dataset, config) or "
                        "DPOTrainer(model=model, processing_class=tokenizer, args=config, train_dataset=dataset)")
    if dataset is None:
        raise TypeError("DPOTrainer needs the preference pairs: pass train_dataset=... (or the dataset second)")
    policy = as_policy(policy, processing_class, "model")
    if ref_policy is not None:
        ref_policy = as_policy(ref_policy, policy.tokenizer if isinstance(ref_policy, torch.nn.Module) else None,
                               "ref_model")
    if config is None:
        config = config_class()
    elif is_trl_config(config):
        config = from_trl(config, config_class)
    elif not isinstance(config, config_class):
        raise TypeError(f"config must be an alignlecture.train.DPOConfig; got {type(config).__name__}")
    return policy, dataset, config, ref_policy


def template_markers(policy) -> tuple[list[str], str, str]:
    """What betrays a prompt already wrapped in ``policy``'s chat template: the special tokens the template writes,
    and the text it puts before and after the user's message ([] and '' when there is no chat template)."""
    tok = policy.tokenizer
    if not getattr(tok, "chat_template", None):
        return [], "", ""
    sentinel = "\u2063alignlecture-user-message\u2063"
    text = policy.format_prompt(sentinel, chat=True)
    before, _, after = text.partition(sentinel)
    special = [t for t in dict.fromkeys(getattr(tok, "all_special_tokens", [])) if t and t in text]
    return special, before, after


def check_not_templated(policy, prompts, what: str = "prompt") -> None:
    """Refuse prompts that already hold ``policy``'s chat template: with ``chat=True`` they would get it twice."""
    special, before, after = template_markers(policy)
    if not (special or before.strip() or after.strip()):
        return
    for i, prompt in enumerate(prompts):
        found = next((m for m in special if m in prompt), None)
        if found is None and before.strip() and prompt.startswith(before):
            found = before
        if found is None and after.strip() and prompt.rstrip().endswith(after.rstrip()):
            found = after
        if found is not None:
            raise ValueError(
                f"{what} {i} already holds the chat template (it contains {found!r}); with chat=True (the default) "
                "the trainer would wrap it in the template a second time. Pass plain prompts, or DPOConfig(chat=False) "
                "for prompts you formatted yourself (TRL applies no template to plain-string prompts)")
