"""Toy-world throughput: vectorised exact scoring against a per-response loop, measured in the same run.

Goal (issue 2): ≥ 10^6 responses scored per second; a V=8, T=6 world in well under a second.
"""

from __future__ import annotations


import torch

from alignlecture.toy import ToyWorld
from _timing import best_of




def loop_logprob(pi, response) -> float:
    """Baseline: walk one response token by token through next_logprobs (what a naive user writes)."""
    total, prefix = 0.0, []
    for tok in response.tolist():
        total += float(pi.next_logprobs(tuple(prefix))[tok])
        if tok == 0 or len(prefix) + 1 == pi.world.max_len:
            break
        prefix.append(tok)
    return total


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    build = best_of(lambda: ToyWorld(8, 6), repeats=3)
    world = ToyWorld(8, 6)
    pi = world.random_policy(seed=0)
    shuffled = world.responses[torch.randperm(world.num_responses, generator=torch.Generator().manual_seed(0))]
    n = world.num_responses
    print(f"world: {world}")
    print(f"build ToyWorld(8, 6)                      : {build * 1e3:8.1f} ms")

    t_gather = best_of(lambda: pi.logprobs(shuffled))
    t_topdown = best_of(lambda: pi.sequence_logprobs())
    logp = pi.sequence_logprobs()
    t_bottomup = best_of(lambda: world.policy_from_sequence_logprobs(logp))
    rewards = world.random_rewards(seed=1)
    t_opt = best_of(lambda: world.optimal_policy(pi, rewards, 0.5))
    sample = shuffled[:2000]
    t_loop = best_of(lambda: [loop_logprob(pi, y) for y in sample], repeats=1) / len(sample) * n

    rate = n / t_gather
    print(f"logprobs(any responses [N, T])            : {t_gather * 1e3:8.1f} ms  = {rate / 1e6:6.2f} M responses/s")
    print(f"sequence_logprobs() (all, top-down)       : {t_topdown * 1e3:8.1f} ms  = {n / t_topdown / 1e6:6.2f} M responses/s")
    print(f"policy_from_sequence_logprobs (bottom-up) : {t_bottomup * 1e3:8.1f} ms")
    print(f"optimal_policy(pi_ref, r, beta)           : {t_opt * 1e3:8.1f} ms")
    print(f"baseline: per-response loop (extrapolated): {t_loop * 1e3:8.1f} ms")
    print(f"speed-up of logprobs over the loop        : {t_loop / t_gather:8.0f} x")
    print(f"goal ≥ 1e6 responses/s                    : {'met' if rate >= 1e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
