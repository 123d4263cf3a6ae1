"""Online DPO on the bandit: the closed-form population gradient against a plain autograd loop, same run.

``online.tabular_online_dpo`` with K = 300 responses and 1000 steps, every sampler. Baseline: the loop a reader
writes — W(θ) from ``online.pair_weights``, ``online.population_loss`` differentiated by autograd, SGD.
Both must end at the same logits (checked). Goal: < 2 s per run.

    python benchmarks/bench_online.py [--K 300] [--steps 1000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import torch

from alignlecture import online
from _timing import arguments, best_of, parse


def autograd_online_dpo(rewards, beta, sampler, steps, lr) -> torch.Tensor:
    """Baseline: the same descent with autograd through the population loss; returns the final logits."""
    p = online.preference(rewards)
    theta = torch.zeros_like(rewards, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=lr)
    for _ in range(steps):
        W = online.pair_weights(theta.detach(), p, beta, sampler)
        loss = online.population_loss(theta, p, beta, W)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach()


def main() -> None:
    ap = arguments(__doc__, repeats=3, threads=1)
    ap.add_argument("--K", type=int, default=300)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--beta", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=10.0)
    args = parse(ap)
    rewards = torch.randn(args.K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    print(f"K = {args.K}, {args.steps} steps, β = {args.beta}, lr = {args.lr}, {args.threads} torch thread(s), "
          f"best of {args.repeats}")
    print("| sampler | closed form (s) | autograd loop (s) | speed-up | max |Δθ| at the end | final gap |")
    print("|---|---|---|---|---|---|")
    for sampler in online.SAMPLERS:
        run = online.tabular_online_dpo(rewards, args.beta, sampler, args.steps, args.lr)
        ours = best_of(lambda: online.tabular_online_dpo(rewards, args.beta, sampler, args.steps, args.lr),
                       args.repeats)
        base_theta = autograd_online_dpo(rewards, args.beta, sampler, args.steps, args.lr)
        base = best_of(lambda: autograd_online_dpo(rewards, args.beta, sampler, args.steps, args.lr), 1)
        diff = float((run.logits[-1] - base_theta).abs().max())
        assert diff < 1e-9, f"{sampler}: closed form and autograd disagree by {diff:.3g}"
        print(f"| {sampler} | {ours:.3f} | {base:.3f} | {base / ours:.1f}× | {diff:.1e} | {float(run.gap[-1]):.1e} |")


if __name__ == "__main__":
    main()
