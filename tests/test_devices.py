"""Device-correct code, checked without a GPU: caches and checkpoints that a GPU wrote load on a CPU machine, no
``torch.load`` lacks ``map_location``, and no tensor the package creates lands off the device of the data it meets.

That last check runs the package on CPU data while every tensor it creates from a shape or from Python numbers
*without naming a device* is sent to the meta device instead (:func:`elsewhere`): a stand-in for a CPU tensor
meeting CUDA data. Code that creates its tensors on its data's device (``device=x.device``, ``zeros_like``,
``x.new_tensor``) runs unchanged; code that does not fails where the two meet, as it would on a GPU. What needs a
real GPU (CUDA kernels, CUDA generators, a model moved to the GPU) is left to ``make gpu-check``.
"""

from __future__ import annotations

import ast
import contextlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode

import alignlecture
from alignlecture import cache

PACKAGE = Path(alignlecture.__file__).resolve().parent
TORCH = Path(torch.__file__).resolve().parent


# ---------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def written_on_a_gpu(monkeypatch):
    """``torch.save`` inside the block tags every storage 'cuda:0', as a GPU run writes it: loading such a file on
    a CPU-only machine without ``map_location`` raises."""
    import torch.serialization as serialization

    if not hasattr(serialization, "location_tag"):
        pytest.skip("this torch has no torch.serialization.location_tag to imitate a GPU-written file with")
    with monkeypatch.context() as m:
        m.setattr(serialization, "location_tag", lambda storage: "cuda:0")
        yield


FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.rand, torch.randn, torch.randint,
             torch.randperm, torch.eye, torch.linspace, torch.tensor, torch.as_tensor}


def _caller() -> tuple[Path, str]:
    """File and function of the nearest frame outside torch and this file: whoever asked for the tensor."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if TORCH not in path.parents and path != Path(__file__).resolve():
            return path, frame.f_code.co_name
        frame = frame.f_back
    return Path(), ""


# what a GPU allows between devices: copies, assignment into a tensor, indexing a GPU tensor with CPU indices
ACROSS_DEVICES = {"copy_", "__setitem__", "__getitem__", "to", "cpu", "set_"}


def _meets_elsewhere(args, kwargs) -> bool:
    """Whether a call mixes meta and other tensors (beyond 0-dim ones, which a GPU op accepts from the CPU)."""
    leaves = [*args, *kwargs.values()]
    leaves += [x for a in list(leaves) if isinstance(a, (list, tuple)) for x in a]
    return len({t.is_meta for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0}) > 1


class _Elsewhere(TorchFunctionMode):
    def __init__(self, by_design: tuple[str, ...]):
        super().__init__()
        self.by_design = by_design

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        fresh = not (args and isinstance(args[0], torch.Tensor))  # not as_tensor/tensor of a tensor: its own device
        if func in FACTORIES and fresh and kwargs.get("device") is None:
            path, name = _caller()
            if PACKAGE in path.parents and name not in self.by_design:
                kwargs["device"] = "meta"
        elif getattr(func, "__name__", "") not in ACROSS_DEVICES and _meets_elsewhere(args, kwargs):
            # meta accepts in-place ops with CPU operands (x += created); CUDA does not
            raise RuntimeError(f"{getattr(func, '__name__', func)}: a tensor created without a device meets the data")
        return func(*args, **kwargs)


@contextlib.contextmanager
def elsewhere(by_design: tuple[str, ...] = ("pad_rows",)):
    """Tensors that alignlecture creates without a device land on the meta device (see the module docstring).

    ``by_design``: functions whose output is a CPU batch every caller moves (``logprobs.pad_rows``), left alone.
    """
    with _Elsewhere(by_design):
        yield


def test_elsewhere_catches_a_tensor_created_without_its_datas_device():
    """The check itself: the bug it stands for fails under it, the fix passes."""
    from alignlecture import entanglement

    g = torch.randn(3, 5)
    namespace = {"torch": torch}
    code = compile(  # compiled under a package file's name: the check tells package code by its frames' files
        "def bad(g):\n    out = torch.zeros(g.shape[0])\n    out += g.sum(1)\n    return out\n"
        "def good(g):\n    out = torch.zeros(g.shape[0], device=g.device)\n    out += g.sum(1)\n    return out\n",
        entanglement.__file__, "exec",
    )
    exec(code, namespace)
    with elsewhere():
        assert namespace["good"](g).device == g.device
        with pytest.raises((RuntimeError, NotImplementedError)):
            namespace["bad"](g)


# ---------------------------------------------------------------------------------------------- torch.load
def _torch_loads(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            owner = node.func.value
            if (isinstance(owner, ast.Name) and owner.id == "torch") or (
                isinstance(owner, ast.Attribute) and owner.attr == "serialization"
            ):
                yield node


def test_every_torch_load_in_the_package_names_a_map_location():
    """A file a GPU wrote must load on a CPU machine: every ``torch.load`` in the package passes map_location."""
    calls, missing = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in _torch_loads(path):
            calls += 1
            if not any(k.arg == "map_location" for k in node.keywords):
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert calls >= 4, "the scan found too few torch.load calls: is it still looking at the package?"
    assert missing == [], f"torch.load without map_location at {missing}"


# ---------------------------------------------------------------------------------------------- cache.memo
@pytest.fixture
def course_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_CACHE", str(tmp_path))
    return tmp_path


def test_memo_reads_a_cache_that_a_gpu_wrote(course_cache, monkeypatch):
    value = {"logprobs": torch.arange(4.0), "texts": ["a", "b"]}
    with written_on_a_gpu(monkeypatch):
        first = cache.memo("pools", {"seed": 0}, lambda: value)  # stored with 'cuda:0' storages
    again = cache.memo("pools", {"seed": 0}, lambda: pytest.fail("recomputed a cached value"))
    for got in (first, again):  # the first call returns what every later call will: the stored value
        assert got["texts"] == ["a", "b"]
        assert got["logprobs"].device.type == "cpu"
        assert torch.equal(got["logprobs"], value["logprobs"])


def test_memo_loads_with_map_location_cpu(course_cache, monkeypatch):
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    cache.memo("pools", {"seed": 1}, lambda: torch.ones(2))
    cache.memo("pools", {"seed": 1}, lambda: torch.ones(2))
    assert seen and all(str(k.get("map_location")) == "cpu" for k in seen)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_a_gpu_wrote_resumes_on_this_machine(tmp_path, monkeypatch):
    """optimizer.pt, scheduler.pt and rng_state.pth written with CUDA storages load here, state and all."""
    from alignlecture import checkpoint
    from alignlecture.train import DPOConfig

    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(module.parameters(), lr=0.1)
    module(torch.randn(4, 3)).sum().backward()
    opt.step()  # AdamW now holds exp_avg / exp_avg_sq tensors
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    fp = {"model": "m", "data": "d"}
    trainer = SimpleNamespace(config=DPOConfig(output_dir=str(tmp_path), progress=False), peft_config=None,
                              fingerprint=fp)
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None, unwrap_model=lambda m: m)
    with written_on_a_gpu(monkeypatch):
        path = checkpoint.save(trainer, accelerator, module, opt, scheduler, 3, [{"step": 3, "loss": 0.5}])
    state = json.loads((path / checkpoint.STATE).read_text())
    assert state["global_step"] == 3

    fresh = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    scheduler2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
    step, history, rng = checkpoint.load(path, trainer, fresh, opt2, scheduler2, fp)
    assert (step, history) == (3, [{"step": 3, "loss": 0.5}])
    assert torch.equal(fresh.weight, module.weight)
    for p, q in zip(module.parameters(), fresh.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt2.state[q][key].device == q.device
            assert torch.equal(opt2.state[q][key], opt.state[p][key])
    assert rng["cpu"].device.type == "cpu"
    checkpoint.set_rng(rng)  # restores the CPU generator (and CUDA's, on a machine that has it)


def test_set_rng_restores_no_more_gpu_states_than_this_machine_has(monkeypatch):
    """A checkpoint from a machine with more GPUs restores the ones that are here, instead of failing."""
    from alignlecture import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(list(states)))
    gpus = [torch.zeros(8, dtype=torch.uint8), torch.ones(8, dtype=torch.uint8)]
    checkpoint.set_rng({"cpu": torch.get_rng_state(), "cuda": gpus})
    assert len(restored) == 1 and len(restored[0]) == 1 and torch.equal(restored[0][0], gpus[0])


# ---------------------------------------------------------------------------------------------- creations
def test_stats_follow_their_values():
    from alignlecture import stats

    values = torch.tensor([0.1, 0.4, -0.2, 0.3, 0.05])
    want = stats.bootstrap_mean(values, num=200), stats.gap_closed(values, values + 0.1, values + 0.3, num=200)
    with elsewhere():
        got = stats.bootstrap_mean(values, num=200), stats.gap_closed(values, values + 0.1, values + 0.3, num=200)
    assert got == want


def test_toy_world_functions_create_tensors_on_the_worlds_device():
    from alignlecture import bon, entanglement, goodhart, online, ppo, preferences, qfunction
    from alignlecture.toy import ToyWorld

    world = ToyWorld(3, 3)
    pi, ref = world.random_policy(seed=0), world.uniform_policy()
    rewards = world.random_rewards(seed=1)
    chosen, rejected = world.responses[[1, 2, 5]], world.responses[[3, 7, 6]]
    p = pi.probs()
    with elsewhere():
        features = entanglement.shared_features(world, "position_bigram")
        assert features.device == world.device
        entanglement.tabular_chosen_change(pi, chosen, rejected)
        entanglement.dpo_direction(pi, ref, chosen, rejected, 0.5, features=features, normalized=True)
        entanglement.population_direction(pi, ref, rewards, 0.5, features=features)
        bon.bon_distribution_for_each_n(p, rewards, [1, 2, 4])
        bon.bon_distribution(p[:3] / p[:3].sum(), [0.0, 1.0, 1.0], 2)  # rewards as Python numbers
        assert bon.sample_best_of_n(p, rewards, 3, 50, generator=torch.Generator().manual_seed(0)).device == p.device
        bon.random_tilts_at_kl(p, 0.05, 2, generator=torch.Generator().manual_seed(0))
        r = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
        online.tabular_online_dpo(r, 1.0, "mix-p", 3, 0.5)
        online.sampled_online_dpo(r, 1.0, "on-policy", 3, 0.5, num_pairs=8)
        preferences.sample_preferences(rewards[:4], rewards[4:8], seed=0)
        gap, agrees = preferences.annotator_agreement(rewards[:4], rewards[4:8], scale=1.0, annotators=3)
        preferences.label_agreement(gap, agrees.tolist(), [0.0, 0.5, 1.0, 10.0])  # Python agrees and edges
        preferences.expected_bt_loss(p.tolist(), rewards.tolist(), 0.5 * rewards)
        goodhart.preference_pairs(p, rewards, 10, seed=0)
        goodhart.bon_curve(p, rewards, rewards, [1, 2, 8])
        d = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
        goodhart.fit_gao(d, goodhart.gao_bon(d, 1.0, 0.3), "bon")
        goodhart.fit_gao(d, goodhart.gao_rl(d, 1.0, 0.3), "rl")
        qfunction.exact_argmax(world, rewards)
        assert qfunction.q_prime(pi, ref, 0.5, 0.0, world.responses[4]).device == world.device
        ppo.ppo_tabular(world, ref, rewards, ppo.PPOConfig(iterations=2, batch_size=8, ppo_epochs=1))


def test_reward_scores_of_texts_are_cpu_vectors():
    """Guided search and best-of-n keep their bookkeeping on the CPU: the scores of a reward_fn come back there."""
    from alignlecture import search

    with elsewhere():
        scores = search.score_texts(lambda texts: [float(len(t)) for t in texts], ["ab", "c"])
    assert scores.device.type == "cpu" and scores.tolist() == [2.0, 1.0]


def test_logprobs_pad_states_keeps_the_states_device():
    from alignlecture.logprobs import pad_states

    states = [torch.randn(2, 4), torch.randn(3, 4)]
    with elsewhere():
        out = pad_states(states, 5)
    assert out.device == states[0].device
    assert torch.equal(out[0, :2], states[0]) and bool((out[0, 2:] == 0).all())


PROMPTS = ["tell me about the movie", "describe the weather"]
CHOSEN, REJECTED = ["it was very good", "sunny and nice"], ["bad", "awful rain"]


def test_pair_gradients_and_lm_step_create_tensors_on_the_models_device():
    """Chapter 4's real-model path: Gram matrix, plain and pairwise-normalized steps."""
    from alignlecture import entanglement as ge
    from alignlecture.models import tiny_policy

    policy = tiny_policy(seed=1, num_layers=2, device="cpu")
    with elsewhere():
        pg = ge.PairGradients(policy, PROMPTS, CHOSEN, REJECTED, top_k=1)
        ref_w, ref_l = pg.logps(range(pg.n))
        g_w, g_l, _, _ = pg.gradients(range(pg.n))
        for normalized in (False, True):
            out = ge.lm_step(pg, range(pg.n), ref_w, ref_l, beta=0.1, learning_rate=1e-3, normalized=normalized)
            assert all(v.device == ref_w.device for v in out.values())
    assert g_w.shape == g_l.shape


@pytest.mark.parametrize("trainable", ["top", "lora", "full"])
def test_the_trainers_pairwise_normalized_steps_create_tensors_on_the_models_device(trainable, tmp_path):
    """DPOTrainer(pairwise_normalized=True): norms from the batch's hooks (top blocks, LoRA) or one pass per row.

    Its reference log-probs, lengths and activations are CPU tables by design (``_precompute``: moved per batch).
    """
    from alignlecture.models import tiny_policy
    from alignlecture.train import DPOConfig, DPOTrainer

    peft = None
    if trainable == "lora":
        peft_module = pytest.importorskip("peft")
        peft = peft_module.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    cfg = DPOConfig(pairwise_normalized=True, trainable_layers=1 if trainable == "top" else None, max_steps=2,
                    per_device_train_batch_size=2, output_dir=str(tmp_path), save_steps=1, progress=False)
    data = {"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED}
    with elsewhere(by_design=("pad_rows", "pack_pairs", "_precompute")):
        history = DPOTrainer(tiny_policy(seed=1, num_layers=2, device="cpu"), data, cfg, peft_config=peft).train().history
        resumed = DPOTrainer(tiny_policy(seed=1, num_layers=2, device="cpu"), data, cfg, peft_config=peft).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-1")).history
    assert len(history) == 2 and resumed == history
