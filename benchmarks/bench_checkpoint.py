"""What keeping a DPO run costs: a 20-step LoRA run on SmolLM2-135M with and without checkpoints, and a resume.

- plain: ``DPOConfig(max_steps=20)``, no output_dir (nothing written);
- kept: the same with ``output_dir`` and ``save_steps=5`` (checkpoint-5, -10, -15, -20 — adapter, optimizer,
  scheduler, RNG, state — plus the final adapter save);
- resume: a fresh base resumed from checkpoint-15 for the last 5 steps; the time spent reading and restoring the
  checkpoint (``checkpoint.load``) is reported on its own.
Runs alternate plain/kept ``--repeats`` times; the fastest of each is reported (machine noise only adds time).

Goal (issue 13): kept / plain ≤ 1.10; restoring a checkpoint ≤ 2 s plus the model load.
    python benchmarks/bench_checkpoint.py [--repeats 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ALIGNLECTURE_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from alignlecture import checkpoint  # noqa: E402
from alignlecture.models import load_policy  # noqa: E402
from alignlecture.prompts import prompt_set  # noqa: E402
from alignlecture.train import DPOConfig, DPOTrainer  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPTS = prompt_set("train")[:8]
PAIRS = [{"prompt": p, "chosen": "A warm and friendly answer, happy to help.", "rejected": "No. Go away."}
         for p in PROMPTS]


def lora():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def config(steps: int, out: str | None) -> DPOConfig:
    return DPOConfig(output_dir=out, max_steps=steps, save_steps=5 if out else 500, per_device_train_batch_size=4,
                     learning_rate=1e-4, progress=False, seed=0)


def timed_train(steps: int, out: str | None, resume=None) -> tuple[float, float]:
    """Seconds of train() (model load excluded) and of checkpoint.load within it."""
    policy = load_policy(MODEL, device="cpu")
    trainer = DPOTrainer(policy, PAIRS, config(steps, out), peft_config=lora())
    spent = [0.0]
    real_load = checkpoint.load

    def load(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_load(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    checkpoint.load = load
    try:
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume)
        return time.perf_counter() - start, spent[0]
    finally:
        checkpoint.load = real_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} LoRA steps, 8 pairs, batch 4")
    plain, kept = [], []
    root = tempfile.mkdtemp(prefix="bench-ckpt-")
    try:
        for r in range(args.repeats):
            plain.append(timed_train(args.steps, None)[0])
            out = os.path.join(root, f"run{r}")
            kept.append(timed_train(args.steps, out)[0])
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) / 1e6
        t_plain, t_kept = min(plain), min(kept)
        print(f"plain {t_plain:.1f} s   kept {t_kept:.1f} s   ratio {t_kept / t_plain:.3f}   "
              f"(runs: plain {[round(x, 1) for x in plain]}, kept {[round(x, 1) for x in kept]}); {size:.1f} MB written")
        start = time.perf_counter()
        load_policy(MODEL, device="cpu")
        t_model = time.perf_counter() - start
        t_resume, t_load = timed_train(args.steps, out, resume=os.path.join(out, "checkpoint-15"))
        print(f"resume from checkpoint-15: checkpoint.load {t_load:.2f} s; whole resumed train() {t_resume:.1f} s "
              f"(5 steps + reference precompute); model load {t_model:.1f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
