"""One DPO training step on SmolLM2-135M (fp32, full fine-tuning): our DPOTrainer against TRL's, in the same run.

A step = forward of chosen + rejected, backward, gradient clipping to 1.0, AdamW step (both sides use
torch.optim.AdamW: TRL with ``optim="adamw_torch"``). The same 4 (prompt, chosen, rejected) pairs from the
course's prompt set form every step's batch; the token ids are checked to be identical on both sides.

Timing (median over the steps after the first):
- TRL: a TrainerCallback stamps on_step_begin and on_step_end.
- ours: DPOTrainer.train() has no callback, so a subclass stamps every step's first ``_logps`` call; the time
  between consecutive stamps is one whole step (forward, backward, clip, AdamW, logging). As a cross-check, train() is also timed end to end with max_steps = 2 and 7, and the
  difference divided by 5 (that cancels the set-up: Accelerator, reference-log-prob precompute).
TRL is timed three times: with its default per-step reference forward (a separate reference model), with
``precompute_ref_log_probs=True`` (reference log-probs computed once before training, as ours always are), and
with that and ``optim="adamw_torch_fused"`` — our trainer uses torch's fused AdamW, which TRL offers too.

Two workloads, run one after the other (``--workload short|chat|both``):
- short: the course's bare prompts (~10 tokens, no chat template) and completions of 3–10 tokens;
- chat: the same prompts in SmolLM2's chat template (system prompt included: 40–50 tokens) and completions of
  10–25 tokens — the shape of a chat-tuned DPO pair, where the prompt is the longest part.
Ours runs twice: with prefix sharing (the default: each prompt computed once for both responses) and without.
The distinct-token bound is (prompt + chosen + rejected) / (2·prompt + chosen + rejected) over TRL's tokens: the
fraction of TRL's token work that sharing cannot avoid.

Goals (issue 23): ours / TRL precomputed ≤ 0.7 on the chat workload and ≤ 0.8 on the short one.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ALIGNLECTURE_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from alignlecture.logprobs import encode_pairs  # noqa: E402
from alignlecture.models import load_policy  # noqa: E402
from alignlecture.prompts import prompt_set  # noqa: E402
from alignlecture.train import DPOConfig, DPOTrainer  # noqa: E402

MODEL = "smollm2-135m-instruct"
STEPS = 12  # ours yields STEPS − 1 stamped intervals; the first is dropped: warm-up
LR = 1e-6
PROMPTS = prompt_set("train")[:4]
# TRL tokenizes prompt + completion as one string: the leading space keeps both sides' token ids identical
CHOSEN = [
    " It is a calm and pleasant day.",
    " Quiet, warm and full of small joys.",
    " I think it is lovely and worth it.",
    " A wonderful, friendly experience.",
]
REJECTED = [
    " Bad.",
    " Whatever, I do not care at all about it.",
    " No.",
    " It is terrible and I hate it.",
]
# completions of 10–25 tokens for the chat workload (same leading-space rule)
CHAT_CHOSEN = [
    " It is a calm and pleasant day, with soft light over the hills and a warm breeze from the sea.",
    " Quiet, warm and full of small joys: coffee with a friend, a long walk and a good book.",
    " I think it is lovely and worth it, a thoughtful story told with care and real kindness.",
    " A wonderful, friendly experience from start to finish; the staff made everyone feel welcome.",
]
CHAT_REJECTED = [
    " Bad weather again, cold and grey, and nobody wants to go outside today at all.",
    " Whatever, I do not care at all about it, and I would rather not talk about it.",
    " No. It is boring and far too long.",
    " It is terrible and I hate it; the food was cold and the service was slow and rude.",
]
WORKLOADS = {"short": (PROMPTS, CHOSEN, REJECTED, False), "chat": (PROMPTS, CHAT_CHOSEN, CHAT_REJECTED, True)}
DATA = {"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED}


def workload(name: str, policy) -> dict[str, list[str]]:
    """The workload's pairs as plain text; chat prompts are formatted with the template here, so both trainers
    see the same string and neither adds a template of its own."""
    prompts, chosen, rejected, chat = WORKLOADS[name]
    return {"prompt": [policy.format_prompt(x, chat=chat) for x in prompts], "chosen": chosen, "rejected": rejected}


def load():
    return load_policy(MODEL, device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- ours
class TimedDPOTrainer(DPOTrainer):
    """Our trainer with step stamps: the time between consecutive steps' _logps calls is one whole step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_times: list[float] = []
        self._last: float | None = None

    def _logps(self, module, pairs, device):
        now = time.perf_counter()
        if self._last is not None:
            self.step_times.append(now - self._last)
        self._last = now
        return super()._logps(module, pairs, device)


def our_config(steps: int, sharing: bool) -> DPOConfig:
    return DPOConfig(
        per_device_train_batch_size=4, learning_rate=LR, max_grad_norm=1.0, optimizer="adamw", weight_decay=0.0,
        max_steps=steps, chat=False, progress=False, seed=0, prefix_sharing=sharing,
    )


def run_ours_timed(name: str, sharing: bool) -> tuple[list[float], list[dict]]:
    policy = load()
    trainer = TimedDPOTrainer(policy, workload(name, policy), our_config(STEPS, sharing))
    result = trainer.train()
    assert trainer.share is sharing
    times, history = trainer.step_times, result.history
    del policy, trainer, result
    gc.collect()
    return times, history


def run_ours_wall(name: str, steps: int) -> float:
    policy = load()
    trainer = DPOTrainer(policy, workload(name, policy), our_config(steps, True))
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    del policy, trainer
    gc.collect()
    return elapsed


# ---------------------------------------------------------------------------------------------- TRL
def run_trl(name: str, precompute: bool, optim: str = "adamw_torch") -> tuple[list[float], list[dict], bool, float]:
    import datasets
    import trl
    from transformers import PrinterCallback, TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    policy = load()
    ref = None if precompute else load().model  # precompute: the untrained policy itself is the reference
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = trl.DPOConfig(
            output_dir=out, report_to="none", beta=0.1, loss_type="sigmoid", per_device_train_batch_size=4,
            learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            optim=optim, max_steps=STEPS, logging_steps=1, save_strategy="no", disable_tqdm=True,
            bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, max_length=None,
            disable_dropout=True, seed=0, dataloader_num_workers=0, precompute_ref_log_probs=precompute,
        )
        pairs = workload(name, policy)
        data = datasets.Dataset.from_dict(pairs)
        trainer = trl.DPOTrainer(model=policy.model, ref_model=ref, args=args, train_dataset=data,
                                 processing_class=policy.tokenizer, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
        collated = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PROMPTS))])
        n = len(PROMPTS)
        ours = encode_pairs(policy, pairs["prompt"] * 2, pairs["chosen"] + pairs["rejected"], chat=False, add_eos=True)
        same_ids = all(torch.equal(collated[k], ours[k]) for k in ("input_ids", "attention_mask", "completion_mask"))
        real, completion = collated["attention_mask"].sum(1), collated["completion_mask"].sum(1)
        prompt = real - completion  # per row; rows i and n + i share their prompt
        bound = float((prompt[:n] + completion[:n] + completion[n:]).sum() / real.sum())
        trainer.train()
        history = [row for row in trainer.state.log_history if "loss" in row and "step" in row]
    del policy, ref, trainer
    gc.collect()
    return timer.times, history, same_ids, bound


def median_after_first(times: list[float]) -> float:
    return statistics.median(times[1:])


def report(name: str) -> dict[str, float]:
    shared_times, shared_hist = run_ours_timed(name, True)
    plain_times, plain_hist = run_ours_timed(name, False)
    trl_times, trl_hist, same_ids, bound = run_trl(name, precompute=False)
    trl_pre_times, trl_pre_hist, same_ids_pre, _ = run_trl(name, precompute=True)
    trl_fused_times, _, _, _ = run_trl(name, precompute=True, optim="adamw_torch_fused")
    wall2, wall8 = run_ours_wall(name, 2), run_ours_wall(name, STEPS)

    ours, plain = median_after_first(shared_times), median_after_first(plain_times)
    trl_default, trl_pre = median_after_first(trl_times), median_after_first(trl_pre_times)
    trl_fused = median_after_first(trl_fused_times)
    ours_diff = (wall8 - wall2) / (STEPS - 2)
    ms = lambda s: f"{s * 1e3:8.0f} ms"  # noqa: E731
    steps = lambda ts: str([round(t * 1e3) for t in ts])  # noqa: E731
    runs = (("ours", shared_hist), ("ours unshared", plain_hist), ("TRL", trl_hist), ("TRL precomputed", trl_pre_hist))
    print(f"\n== workload: {name} ==")
    print(f"token ids identical (TRL collator vs encode_pairs)      : {same_ids and same_ids_pre}")
    print(f"ours (prefix sharing): each step (ms)                   : {steps(shared_times)}")
    print(f"ours (no sharing): each step (ms)                       : {steps(plain_times)}")
    print(f"TRL per-step reference: each step (ms)                  : {steps(trl_times)}")
    print(f"TRL precomputed reference: each step (ms)               : {steps(trl_pre_times)}")
    print(f"ours, per step (stamped, median)                        : {ms(ours)}")
    print(f"ours, per step ((train({STEPS}) − train(2)) / {STEPS - 2}, cross-check) : {ms(ours_diff)}")
    print(f"ours without prefix sharing, per step                   : {ms(plain)}")
    print(f"TRL,  per step, reference forward every step (default)  : {ms(trl_default)}")
    print(f"TRL,  per step, precompute_ref_log_probs=True           : {ms(trl_pre)}")
    print(f"TRL,  per step, precomputed + optim=adamw_torch_fused   : {ms(trl_fused)}")
    print(f"ratio ours / TRL precomputed                            : {ours / trl_pre:8.2f}")
    print(f"ratio ours / TRL precomputed with the fused AdamW too   : {ours / trl_fused:8.2f}")
    print(f"ratio ours (cross-check) / TRL precomputed              : {ours_diff / trl_pre:8.2f}")
    print(f"ratio ours / TRL default                                : {ours / trl_default:8.2f}")
    print(f"ratio ours / ours without sharing                       : {ours / plain:8.2f}")
    print(f"distinct-token bound (p + c + r) / (2p + c + r)         : {bound:8.2f}")
    print(f"ours / TRL precomputed, over the bound                  : {ours / trl_pre / bound:8.2f}")
    for key in ("loss", "logps/chosen", "logps/rejected"):
        print(f"first step {key:15s}: " + " | ".join(f"{label} {h[0][key]:.6f}" for label, h in runs))
    print(f"last step (step {STEPS}) loss    : " + " | ".join(f"{label} {h[-1]['loss']:.6f}" for label, h in runs))
    agree = all(abs(shared_hist[0]["loss"] - h[0]["loss"]) < 1e-4 for _, h in runs)
    print(f"first-step losses agree (|Δ| < 1e-4)                    : {agree}")
    return {"ratio": ours / trl_pre, "bound": bound, "fused": ours / trl_fused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["short", "chat", "both"], default="both")
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else torch.get_num_threads())
    print(f"model: {MODEL} fp32, full fine-tuning; batch: 4 pairs (8 rows); {STEPS} steps, median of the last "
          f"{STEPS - 1}; AdamW lr {LR}, clip 1.0")
    print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS={threads}); "
          f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    goals = {"chat": 0.7, "short": 0.8}
    names = ["chat", "short"] if args.workload == "both" else [args.workload]
    results = {name: report(name) for name in names}
    print()
    for name, r in results.items():
        verdict = "met" if r["ratio"] <= goals[name] else "NOT met"
        print(f"goal {name}: ours / TRL precomputed ≤ {goals[name]}: {verdict} ({r['ratio']:.2f}; "
              f"distinct-token bound {r['bound']:.2f}; against TRL with its fused AdamW too: {r['fused']:.2f})")


if __name__ == "__main__":
    main()
