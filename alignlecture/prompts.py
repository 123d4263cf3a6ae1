"""The course's own prompt set: templated instructions over everyday topics, with a fixed train/held-out split.

The split is decided by a hash of each prompt's text, so it never depends on order and adding prompts never
moves an existing one across the split.
"""

from __future__ import annotations

import hashlib

TEMPLATES = (
    "Write one sentence about {topic}.",
    "Describe {topic} in a short sentence.",
    "Tell me what you think of {topic}.",
    "Write a one-sentence review of {topic}.",
)

TOPICS = (
    "the weather today",
    "a rainy Monday",
    "your favourite book",
    "a crowded train",
    "homemade bread",
    "a long flight",
    "the city at night",
    "learning to swim",
    "a broken umbrella",
    "summer holidays",
    "a noisy neighbour",
    "morning coffee",
    "a new phone",
    "a traffic jam",
    "a walk in the park",
    "an old movie",
    "a job interview",
    "a birthday party",
    "cold pizza",
    "a quiet library",
)

HELDOUT_FRACTION_NUMERATOR = 1  # one prompt in five is held out
HELDOUT_FRACTION_DENOMINATOR = 5


def all_prompts() -> list[str]:
    """Every template × topic, in a fixed order."""
    return [t.format(topic=topic) for topic in TOPICS for t in TEMPLATES]


def is_heldout(prompt: str) -> bool:
    """Whether a prompt belongs to the held-out split (hash of its text)."""
    h = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16)
    return h % HELDOUT_FRACTION_DENOMINATOR < HELDOUT_FRACTION_NUMERATOR


def prompt_set(split: str = "train") -> list[str]:
    """The prompts of one split: ``"train"``, ``"heldout"`` or ``"all"``."""
    if split == "all":
        return all_prompts()
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all'; got {split!r}")
    want = split == "heldout"
    return [p for p in all_prompts() if is_heldout(p) == want]
