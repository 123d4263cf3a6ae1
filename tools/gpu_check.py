"""GPU smoke check (`make gpu-check`): toy world, soft values, best-of-n, a tiny Llama's logprobs, generate and
mixed decoding on CUDA, compared with the CPU.

Needs only torch and transformers (GPU machines have no network, no model wheel and no .venv).
Prints what ran where and exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys
import time

import torch

import alignlecture as al
from alignlecture.logprobs import completion_logprobs, encode_pairs
from alignlecture.models import generate, tiny_policy
from alignlecture.toy import ToyWorld


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return ok


def main() -> int:
    dev = al.device()
    print(f"torch {torch.__version__}, device() = {dev}, profile() = {al.profile()}")
    if dev.type != "cuda":
        print("no CUDA device here: nothing to check (run this on a GPU machine)")
        return 1
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    results = run_checks(dev)
    print("all checks passed" if all(results) else "SOME CHECKS FAILED")
    return 0 if all(results) else 1


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
    return results


if __name__ == "__main__":
    sys.exit(main())
