"""The 8 toy preference pairs that tests/test_train.py and tests/accelerate_dpo_step.py train on (one copy)."""

PROMPTS = [
    "tell me about the movie", "describe the weather", "what do you think of this book", "write one sentence about tea",
    "tell me about the dog", "describe the city", "what do you think of coffee", "write one sentence about music",
]
CHOSEN = [
    "it was very good", "sun and nice weather", "i love it", "nice", "i love the dog", "great city", "coffee is good",
    "music is happy",
]
REJECTED = [
    "bad", "awful rain", "i hate this book", "terrible tea is bad", "the dog is bad", "sad city", "i hate coffee",
    "music is awful",
]
DATA = {"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED}
