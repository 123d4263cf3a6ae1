"""One DPO optimizer step of alignlecture.train on a fixed 8-pair batch, for the multi-process test in test_train.py.

Run it with plain ``python`` (1 process × 8 pairs) or under ``accelerate launch`` with 2 processes (2 × 4 pairs):
the global batch is the same, so the first step's loss and the updated weights must be the same too.

    python tests/accelerate_dpo_step.py OUT_DIR [MODE]

MODE: ``plain`` (default, full fine-tuning), ``normalized-top`` (pairwise-normalized descent on the top block: norms
from the batch's hooks) or ``normalized-full`` (pairwise-normalized, full fine-tuning: norms from one pass per row).

On the main process it writes OUT_DIR/result.json (first-step loss, number of processes, distributed type) and
OUT_DIR/weights.safetensors (the policy's state dict after the step).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ALIGNLECTURE_OFFLINE", "1")

from dpo_pairs import DATA  # noqa: E402 — tests/ is this script's directory, on sys.path

GLOBAL_BATCH = 8


MODES = {"plain": {}, "normalized-top": {"pairwise_normalized": True, "trainable_layers": 1},
         "normalized-full": {"pairwise_normalized": True}}


def main(out_dir: str, mode: str = "plain") -> None:
    import torch
    from accelerate import PartialState
    from safetensors.torch import save_file

    from alignlecture.models import tiny_policy
    from alignlecture.train import DPOConfig, DPOTrainer

    # the trainer's own Accelerator sets up the process group (reading ACCELERATE_USE_CPU); a PartialState made
    # here first would be made without cpu=True and never join it, so size the batch from the launcher's WORLD_SIZE
    num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    if GLOBAL_BATCH % num_processes:
        raise SystemExit(f"{num_processes} processes do not divide the global batch of {GLOBAL_BATCH}")
    policy = tiny_policy(seed=0, device="cpu")
    reference = tiny_policy(seed=1, device="cpu")  # ≠ policy, so the first loss is not ln 2 by construction
    config = DPOConfig(
        per_device_train_batch_size=GLOBAL_BATCH // num_processes, optimizer="sgd", learning_rate=0.1, max_grad_norm=None,
        max_steps=1, num_train_epochs=1, progress=False, chat=False, seed=0, **MODES[mode],
    )
    result = DPOTrainer(policy, DATA, config, ref_policy=reference).train()
    state = PartialState()  # the state the trainer ran under
    if state.num_processes != num_processes:
        raise SystemExit(f"launched as {num_processes} processes but the trainer ran on {state.num_processes}")
    if state.is_main_process:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().clone().contiguous() for k, v in result.policy.model.state_dict().items()}
        save_file(weights, str(out / "weights.safetensors"))
        (out / "result.json").write_text(json.dumps({
            "loss": result.history[0]["loss"],
            "steps": len(result.history),
            "num_processes": num_processes,
            "distributed_type": str(state.distributed_type),
            "batch_size": config.per_device_train_batch_size,
            "torch_threads": torch.get_num_threads(),
        }))
    state.wait_for_everyone()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] not in MODES):
        raise SystemExit(f"usage: accelerate_dpo_step.py OUT_DIR [{'|'.join(MODES)}]")
    main(*sys.argv[1:])
