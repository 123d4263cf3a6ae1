"""Per-token decode time of K-model logit mixing (``generate_mixed``) against three baselines, in one run.

The K models are SmolLM2-135M-Instruct loaded once and deep-copied, so every model has its own weights in
memory (as K different fine-tunes would). Every method decodes exactly N new tokens per row (eos is
forbidden until N: ``min_new_tokens``), greedily, from the same left-padded prompts; prefill is included.

Baselines, each for the same K, batch size and N:
(a) Σ_k model_k.generate: each model's own cached transformers ``generate``, timed one after the other and
    summed. Goal: mixed ≤ 1.0× the sum.
(b) memory-bandwidth bound: one decode step must read every weight of all K models once, so
    step time ≥ K·bytes(weights) / read bandwidth; the bandwidth is measured here as ``x.sum()`` over a large
    tensor (a pure read). The copy bandwidth (read + write, counting both) is printed for reference only.
    Goal: mixed within 1.5× of the bound.
(c) no KV cache: every step runs a full forward of each model over prompt + continuation so far (last
    position's logits only) and mixes. Its cost grows with the length, so it is timed at ``--nocache-steps``
    evenly spaced steps t ∈ [0, N) and their mean is taken as the mean step time. Goal: mixed ≥ 5× faster.
"""

from __future__ import annotations

import argparse
import copy
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ALIGNLECTURE_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from alignlecture.logprobs import _accepts_logits_to_keep, position_ids_from_mask, prompt_token_ids  # noqa: E402
from alignlecture.mixing import generate_mixed, mix_logprobs  # noqa: E402
from alignlecture.models import Policy, load_policy  # noqa: E402
from alignlecture.prompts import prompt_set  # noqa: E402
from _timing import best_of  # noqa: E402

MODEL = "smollm2-135m-instruct"




def bandwidth(device: torch.device, gib: float) -> tuple[float, float]:
    """(read, copy) bandwidth in bytes/s: x.sum() reads the tensor once; y.copy_(x) reads and writes it."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    y = torch.empty_like(x)
    nbytes = x.numel() * 4
    read = nbytes / best_of(lambda: x.sum(), 5, device)
    rw = 2 * nbytes / best_of(lambda: y.copy_(x), 5, device)
    del x, y
    return read, rw


def weight_bytes(policies) -> int:
    """Bytes of all models' parameters (tied embeddings counted once per model)."""
    return sum(p.numel() * p.element_size() for pol in policies for p in pol.model.parameters())


def left_padded(policy, prompts):
    tok = policy.tokenizer
    old, tok.padding_side = tok.padding_side, "left"
    try:
        return tok([policy.format_prompt(p) for p in prompts], return_tensors="pt", padding=True,
                   add_special_tokens=False).to(policy.device)
    finally:
        tok.padding_side = old


def own_generate(policy, enc, n: int) -> None:
    """Baseline (a): one model's cached transformers generate, exactly n greedy tokens."""
    tok = policy.tokenizer
    with torch.inference_mode():
        out = policy.model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + n


@torch.inference_mode()
def nocache_step(policies, weights, rows_per_model, continuation) -> None:
    """Baseline (c): one decode step without caches — a full forward per model over prompt + continuation."""
    logps = []
    for policy, rows in zip(policies, rows_per_model):
        full = [r + c for r, c in zip(rows, continuation)]
        width = max(len(r) for r in full)
        pad = policy.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in full], device=policy.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in full], device=policy.device)
        keep = {"logits_to_keep": 1} if _accepts_logits_to_keep(policy.model) else {}
        logits = policy.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                              use_cache=False, **keep).logits[:, -1].float()
        logps.append(torch.log_softmax(logits, dim=-1)[:, : len(policy.tokenizer)])
    mix_logprobs(logps, weights).argmax(dim=-1).tolist()


def measure(policies, batch: int, n: int, args, device) -> dict[str, float]:
    k = len(policies)
    weights = [1.0 / k] * k
    prompts = (prompt_set("train") * batch)[:batch]
    mixed_run = lambda: generate_mixed(policies, weights, prompts, max_new_tokens=n, do_sample=False, min_new_tokens=n)  # noqa: E731
    out = mixed_run()  # warm-up, and the continuation the no-cache baseline re-reads
    assert all(len(c) == n for c in out.completion_ids), "every row must decode exactly n tokens"
    mixed = best_of(mixed_run, args.repeats, device)

    encs = [left_padded(p, prompts) for p in policies]
    for p, enc in zip(policies, encs):
        own_generate(p, enc, 4)  # warm-up
    own = sum(best_of(lambda: own_generate(p, enc, n), args.repeats, device) for p, enc in zip(policies, encs))

    rows = [[prompt_token_ids(p, q) for q in prompts] for p in policies]
    steps = sorted({round(i * (n - 1) / max(1, args.nocache_steps - 1)) for i in range(args.nocache_steps)})
    nocache_step(policies, weights, rows, [c[:0] for c in out.completion_ids])  # warm-up
    per_step = [best_of(lambda: nocache_step(policies, weights, rows, [c[:t] for c in out.completion_ids]), 1, device)
                for t in steps]
    return {"mixed": mixed / n, "own": own / n, "nocache": sum(per_step) / len(per_step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per row, forced (default 256)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", type=int, nargs="+", default=[2, 3], help="values of K (default 2 3)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method, best kept (default 2)")
    parser.add_argument("--nocache-steps", type=int, default=8, help="steps timed for the no-cache baseline")
    parser.add_argument("--bandwidth-gib", type=float, default=1.0, help="tensor size for the bandwidth probe")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default=None, help="torch device (default: alignlecture.device())")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 tokens, batch 1, K=2, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.batch_sizes, args.models, args.repeats = 32, [1], [2], 1
        args.nocache_steps, args.bandwidth_gib = 4, 0.5
    threads = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else torch.get_num_threads())

    base = load_policy(MODEL, device=args.device, dtype=getattr(torch, args.dtype))
    device = base.device
    policies = [base] + [Policy(model=copy.deepcopy(base.model), tokenizer=base.tokenizer, name=f"{MODEL}#{i}",
                                source=base.source) for i in range(1, max(args.models))]
    read_bw, copy_bw = bandwidth(device, args.bandwidth_gib)
    per_model = weight_bytes(policies[:1])
    print(f"model: {MODEL} {args.dtype} ({per_model / 2**20:.0f} MiB of weights each, separate copies) on {device}; "
          f"{args.tokens} new tokens forced, greedy")
    print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS={threads}); load average at start: "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"bandwidth: read (x.sum) {read_bw / 1e9:.1f} GB/s; copy (read+write counted) {copy_bw / 1e9:.1f} GB/s; "
          "the bound uses the read figure")
    print(f"{'K':>2} {'B':>3} | {'mixed':>8} {'Σ gen':>8} {'bound':>8} {'no cache':>9}  (ms/token step) | "
          f"{'mixed/Σgen':>10} {'mixed/bound':>11} {'nocache/mixed':>13}")
    verdicts = []
    for k in args.models:
        bound = weight_bytes(policies[:k]) / read_bw
        for batch in args.batch_sizes:
            r = measure(policies[:k], batch, args.tokens, args, device)
            ratios = (r["mixed"] / r["own"], r["mixed"] / bound, r["nocache"] / r["mixed"])
            verdicts.append((ratios[0] <= 1.0, ratios[1] <= 1.5, ratios[2] >= 5.0))
            print(f"{k:>2} {batch:>3} | {r['mixed'] * 1e3:8.2f} {r['own'] * 1e3:8.2f} {bound * 1e3:8.2f} "
                  f"{r['nocache'] * 1e3:9.2f}                  | {ratios[0]:10.2f} {ratios[1]:11.2f} {ratios[2]:13.1f}")
    for name, i in (("mixed ≤ 1.0× Σ generate", 0), ("mixed ≤ 1.5× bandwidth bound", 1), ("no cache ≥ 5× mixed", 2)):
        met = sum(v[i] for v in verdicts)
        print(f"goal {name:30s}: met in {met}/{len(verdicts)} settings")


if __name__ == "__main__":
    main()
