"""GPU smoke check (`make gpu-check`): the toy world, a tiny Llama and logprobs on CUDA, compared with the CPU.

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
    print("all checks passed" if all(results) else "SOME CHECKS FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
