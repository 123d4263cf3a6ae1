"""A tuned policy against its base, on prompts it never trained on: gold reward, KL and fluency, with intervals.

Three numbers say whether preference tuning worked, and none of them alone is enough:

- **gold reward**: the change, per prompt, of the mean gold reward of the tuned policy's samples over the base's;
- **KL(π‖π_base)** per response, estimated from the tuned policy's own samples: E_{y∼π}[log π(y) − log π_base(y)]
  — how far the policy moved to get that change;
- **fluency**: the mean per-token negative log-likelihood of the samples under the BASE model, tuned samples vs
  the base's own. A policy that raised its reward by writing text the base model finds implausible (broken words,
  repetition) shows it here: a reward gain bought with collapsed text is not alignment.

Samples of one prompt are not independent, so every interval is a percentile bootstrap over PROMPTS of the
per-prompt means (``stats.bootstrap_mean``, seeded: the same interval on every run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from . import __version__
from ._checks import positive_int
from .cache import memo
from .logprobs import generation_logprobs
from .models import generate
from .rewards import gold_reward
from .samples import policy_key, sample
from . import stats
from .stats import bootstrap_mean
from .top_blocks import generation_logprobs_many


@dataclass(frozen=True)
class Interval:
    """A mean with its 95 % bootstrap interval over prompts.

    Attributes:
        mean: the mean over prompts of the per-prompt means.
        low: the interval's lower end.
        high: the interval's upper end.
    """

    mean: float
    low: float
    high: float

    def text(self, digits: int = 3, signed: bool = False) -> str:
        """``+0.120 [+0.049, +0.197]``: the mean and its interval at ``digits`` decimals (never ``-0.00``)."""
        def f(x: float) -> str:
            return stats.signed(x, digits) if signed else f"{round(x, digits) + 0.0:.{digits}f}"

        return f"{f(self.mean)} [{f(self.low)}, {f(self.high)}]"


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` measured.

    Attributes:
        prompts: how many prompts (none seen in training); every interval is over them.
        samples_per_prompt: samples of each policy per prompt.
        seed: the sampling seed (both policies sample with it).
        max_new_tokens: the sampling length cap.
        batch_size: rows per sampling batch (padding and the random stream follow it: needed to redraw the samples).
        gold: the gold reward's name (``rewards.gold_reward``).
        gold_base: mean gold reward of the base policy's samples.
        gold_tuned: mean gold reward of the tuned policy's samples.
        gold_gain: per-prompt change tuned − base (the number that says whether tuning worked).
        kl: KL(π_tuned ‖ π_base) in nats per response, from the tuned policy's samples.
        nll_base: mean per-token NLL of the base's own samples under the base model (its own fluency).
        nll_tuned: mean per-token NLL of the tuned samples under the base model.
        nll_gain: per-prompt change tuned − base of that NLL (> 0: less plausible text to the base model).
        examples: a few (prompt, base answer, tuned answer, their gold rewards) to read beside the numbers.
    """

    prompts: int
    samples_per_prompt: int
    seed: int
    max_new_tokens: int
    batch_size: int
    gold: str
    gold_base: Interval
    gold_tuned: Interval
    gold_gain: Interval
    kl: Interval
    nll_base: Interval
    nll_tuned: Interval
    nll_gain: Interval
    examples: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        known = {f.name for f in fields(cls)}
        missing, unknown = sorted(known - set(d) - {"examples"}), sorted(set(d) - known)
        if missing or unknown:
            raise ValueError(f"an evaluation without {missing} / with unknown {unknown}: written by another "
                             "version of alignlecture; evaluate again")
        values = {k: Interval(**v) if isinstance(v, dict) else v for k, v in d.items() if k != "examples"}
        return cls(**values, examples=tuple(d.get("examples", ())))


EXAMPLES = 3  # answers kept beside the numbers, from prompts spread over the list


def _per_prompt(values: torch.Tensor, prompts: int) -> torch.Tensor:
    return values.double().reshape(prompts, -1).mean(dim=1)


def _interval(per_prompt: torch.Tensor) -> Interval:
    return Interval(*bootstrap_mean(per_prompt, generator=torch.Generator().manual_seed(0)))


def per_token_nll(policy, generations) -> torch.Tensor:
    """−log π(y ∣ x) / len(y) of each sampled completion under ``policy``: the mean per-token NLL, Tensor [n]."""
    lengths = torch.tensor([len(ids) for ids in generations.completion_ids], dtype=torch.float64)
    return -generation_logprobs(policy, generations).double() / lengths


def evaluate(tuned, base, prompts: list[str], *, gold: str, samples_per_prompt: int = 4, max_new_tokens: int = 32,
             seed: int = 1, batch_size: int = 48) -> Evaluation:
    """Gold reward, KL(π_tuned ‖ π_base) and fluency of ``tuned`` against ``base`` on ``prompts`` (see the module).

    Both policies sample ``samples_per_prompt`` answers per prompt with the same ``seed``, in batches of
    ``batch_size`` rows. The base's samples are cached (``samples.sample``); the tuned policy's are drawn afresh,
    since ``tuned`` may be any policy — the zoo caches the returned Evaluation beside the weights instead.
    """
    m = positive_int(samples_per_prompt, "samples_per_prompt", minimum=2)
    batch_size = positive_int(batch_size, "batch_size")
    if len(prompts) < 2:
        raise ValueError(f"need at least 2 prompts for an interval over prompts; got {len(prompts)}")
    repeated = [x for x in prompts for _ in range(m)]
    kw = dict(max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    before, after = sample(base, repeated, **kw), generate(tuned, repeated, **kw)
    reward = gold_reward(gold)
    n = len(prompts)
    g_before, g_after = reward(before.texts), reward(after.texts)
    r_before, r_after = _per_prompt(g_before, n), _per_prompt(g_after, n)
    # log π_base and log π_tuned of the tuned samples in one pass over the blocks they share
    logp_base, logp_tuned = generation_logprobs_many([base, tuned], after).double()
    lengths = torch.tensor([len(ids) for ids in after.completion_ids], dtype=torch.float64)
    # the base's fluency on its own samples is the same for every policy compared with it: computed once
    own = memo("evaluation-base-nll", {"policy": policy_key(base), "prompts": repeated, "settings": kw,
                                       "package": __version__}, lambda: per_token_nll(base, before))
    nll_before, nll_after = _per_prompt(own, n), _per_prompt(-logp_base / lengths, n)
    log_ratio = logp_tuned - logp_base
    return Evaluation(
        prompts=n, samples_per_prompt=m, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size, gold=gold,
        gold_base=_interval(r_before), gold_tuned=_interval(r_after), gold_gain=_interval(r_after - r_before),
        kl=_interval(_per_prompt(log_ratio, n)),
        nll_base=_interval(nll_before), nll_tuned=_interval(nll_after), nll_gain=_interval(nll_after - nll_before),
        examples=tuple({"prompt": repeated[i], "base": before.texts[i], "tuned": after.texts[i],
                        "gold_base": float(g_before[i]), "gold_tuned": float(g_after[i])}
                       for i in range(0, len(repeated), m * max(1, n // EXAMPLES))[:EXAMPLES]),
    )
