"""Best-of-n and soft values: batched sampling against a loop, and the exact soft backup, each with its baseline.

(1) best_of_n draws all n·P samples in ONE models.generate call; the baseline calls generate n times, one sample
    per prompt each (same max_new_tokens, SmolLM2-135M-Instruct). Goal: batched ≥ 3× faster at n = 8.
(2) soft_values on a V=8, T=6 world (19,608 prefixes), vectorised per depth; the baseline is a per-prefix
    Python recursion on a smaller world, extrapolated per prefix. Goal: < 1 s.

    python benchmarks/bench_bon.py [--quick] [--max-new-tokens 32] [--prompts 2]
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ALIGNLECTURE_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from alignlecture.bon import best_of_n  # noqa: E402
from alignlecture.models import generate, load_policy  # noqa: E402
from alignlecture.prompts import prompt_set  # noqa: E402
from alignlecture.qfunction import soft_values  # noqa: E402
from alignlecture.toy import EOS, DTYPE, ToyWorld  # noqa: E402
from _timing import best_of  # noqa: E402




def loop_soft_values(world, pi_ref, rewards, beta) -> dict:
    """Baseline: V*(s) for every prefix by a per-prefix Python recursion over next_logprobs (what a reader writes)."""
    values: dict[tuple[int, ...], float] = {}
    for prefix in reversed(world.prefixes()):  # deeper prefixes come later in table order
        ref = pi_ref.next_logprobs(prefix)
        q = torch.empty(world.vocab_size, dtype=DTYPE)
        for a in range(world.vocab_size):
            child = prefix + (a,)
            done = a == EOS or len(child) == world.max_len
            q[a] = beta * ref[a] + (rewards[world.index(list(child))] if done else values[child])
        values[prefix] = beta * float(torch.logsumexp(q / beta, 0))
    return values


def bench_bon(n: int, num_prompts: int, max_new_tokens: int, repeats: int) -> None:
    policy = load_policy("smollm2-135m-instruct", device="cpu")
    prompts = prompt_set("train")[:num_prompts]
    length = lambda texts: [float(len(t)) for t in texts]  # noqa: E731 — scoring is not what is timed
    kw = dict(max_new_tokens=max_new_tokens, temperature=1.0)
    generate(policy, prompts, max_new_tokens=2)  # warm-up

    def batched():
        return best_of_n(policy, length, prompts, n, seed=0, **kw)

    def sequential():
        return [generate(policy, prompts, seed=i, **kw) for i in range(n)]

    t_batched = best_of(batched, repeats)
    t_seq = best_of(sequential, repeats)
    tokens_b = sum(len(c) for row in batched().completion_ids for c in row)
    tokens_s = sum(len(c) for g in sequential() for c in g.completion_ids)
    print(f"model: {policy!r}; torch threads {torch.get_num_threads()}")
    print(f"best-of-{n}, {num_prompts} prompt(s), max_new_tokens={max_new_tokens}, best of {repeats}")
    print(f"batched: one generate of {n * num_prompts} rows        : {t_batched:7.2f} s  ({tokens_b} tokens, "
          f"{tokens_b / t_batched:.0f} tokens/s)")
    print(f"baseline: {n} sequential generate calls         : {t_seq:7.2f} s  ({tokens_s} tokens, "
          f"{tokens_s / t_seq:.0f} tokens/s; a lone row stops at its own eos)")
    print(f"speed-up                                      : {t_seq / t_batched:7.2f} x   (goal ≥ 3x: "
          f"{'met' if t_seq / t_batched >= 3 else 'NOT met'})")


def bench_soft_values(repeats: int, loop_world: tuple[int, int]) -> None:
    world = ToyWorld(8, 6)
    pi_ref, rewards = world.random_policy(seed=0), world.random_rewards(seed=1)
    t_vec = best_of(lambda: soft_values(world, pi_ref, rewards, 0.5), repeats)
    small = ToyWorld(*loop_world)
    ref_s, r_s = small.random_policy(seed=0), small.random_rewards(seed=1)
    t_loop = best_of(lambda: loop_soft_values(small, ref_s, r_s, 0.5), 1)
    check = abs(loop_soft_values(small, ref_s, r_s, 0.5)[()] - soft_values(small, ref_s, r_s, 0.5).v_root)
    per_prefix = t_loop / small.num_prefixes
    print(f"world: {world}")
    print(f"soft_values (vectorised, per depth)           : {t_vec * 1e3:7.2f} ms  (goal < 1 s: "
          f"{'met' if t_vec < 1 else 'NOT met'})")
    print(f"baseline: per-prefix loop on {small}: {t_loop:.2f} s = {per_prefix * 1e6:.0f} µs/prefix "
          f"(|ΔV*(root)| = {check:.1e})")
    print(f"loop extrapolated to {world.num_prefixes:,} prefixes            : {per_prefix * world.num_prefixes:7.2f} s"
          f"  = {per_prefix * world.num_prefixes / t_vec:,.0f}x the vectorised backup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 prompt, 1 repeat, a small loop world")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=2, help="number of prompts (1–2 in the issue)")
    parser.add_argument("-n", type=int, default=8)
    args = parser.parse_args()
    prompts, repeats = (1, 1) if args.quick else (args.prompts, 3)
    bench_soft_values(repeats=3 if args.quick else 10, loop_world=(5, 4) if args.quick else (6, 5))
    bench_bon(args.n, prompts, args.max_new_tokens, repeats)


if __name__ == "__main__":
    main()
