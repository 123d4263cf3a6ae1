"""alignlecture: the tested package behind the course "Language model alignment: story and math".

Submodules are imported on use (``alignlecture.toy``, ``alignlecture.models`` …) so that importing the
package itself stays cheap and needs nothing beyond torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

__version__ = "0.1.0"

PROFILES = ("cpu", "gpu")

_SUBMODULES = (
    "derivations",
    "dpo",
    "logprobs",
    "models",
    "preferences",
    "ppo",
    "prompts",
    "rewards",
    "toy",
    "train",
    "trl_compat",
    "widgets",
    "exercises",
    "zoo",
    "recipes",
    "evaluation",
    "stats",
    "merging",
    "mixing",
    "decoding",
    "qfunction",
    "bon",
    "entanglement",
    "per_example",
    "prefix_sharing",
    "top_blocks",
    "online",
    "search",
    "goodhart",
    "cache",
    "samples",
    "checkpoint",
    "shell",
    "solutions",
    "losses",
)


def device():
    """The best available torch device: cuda > mps > cpu (one helper, never a hard-coded ``.cuda()``)."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def profile() -> str:
    """The course profile: ``"gpu"`` on a CUDA machine, else ``"cpu"``; ``ALIGNLECTURE_PROFILE`` overrides."""
    forced = os.environ.get("ALIGNLECTURE_PROFILE", "").strip().lower()
    if forced:
        if forced not in PROFILES:
            raise ValueError(
                f"ALIGNLECTURE_PROFILE must be one of {PROFILES}; got {forced!r}. "
                "Unset it to choose automatically from the hardware."
            )
        return forced
    return "gpu" if device().type == "cuda" else "cpu"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a profile runs: which model and how many samples (chapters read these, never hard-code them).

    The decoding defaults (max_new_tokens, do_sample, temperature, top_p) are the ones ``models.generate``,
    ``bon.best_of_n`` and ``mixing.generate_mixed`` use when a call leaves them out: plain sampling at T = 1.
    """

    profile: str
    model: str
    num_prompts: int
    samples_per_prompt: int
    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0

    def decoding(self, **overrides) -> dict:
        """The decoding defaults as keyword arguments, with ``overrides`` (None = the default) applied."""
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "temperature": self.temperature,
               "top_p": self.top_p}
        out.update({k: v for k, v in overrides.items() if v is not None})
        return out


_SETTINGS = {
    "cpu": Settings("cpu", "smollm2-135m-instruct", num_prompts=20, samples_per_prompt=4, max_new_tokens=32),
    "gpu": Settings("gpu", "HuggingFaceTB/SmolLM2-1.7B-Instruct", num_prompts=62, samples_per_prompt=8, max_new_tokens=64),
}


def settings(name: str | None = None) -> Settings:
    """The settings of a profile (default: the current ``profile()``)."""
    name = profile() if name is None else name
    if name not in _SETTINGS:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES}")
    return _SETTINGS[name]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", "device", "profile", "settings", "Settings", "PROFILES", *_SUBMODULES]
