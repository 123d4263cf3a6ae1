"""Goodhart curves: exact best-of-n and π_β curves over 10^5 responses and 64 pressures, each under a second.

(1) goodhart.bon_curve: the exact best-of-n distribution for 64 values of n (sorted once, 8 n at a time), its KL
    and expected proxy and gold. Baseline: calling bon.bon_distribution + kl_divergence once per n.
(2) goodhart.rl_curve: π_β ∝ π·exp(proxy/β) for 64 values of β, with the same three quantities.
Goal for both: < 1 s on the course's 2-core CPU.

    python benchmarks/bench_goodhart.py [--responses 100000] [--pressures 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import torch

from _timing import arguments, best_of, parse
from alignlecture import goodhart as gh
from alignlecture.bon import bon_distribution, kl_divergence


def world(num: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(num, generator=gen, dtype=torch.float64) ** 2
    proxy = torch.randn(num, generator=gen, dtype=torch.float64)
    gold = proxy + torch.randn(num, generator=gen, dtype=torch.float64)
    return p / p.sum(), proxy, gold


def loop_bon(p, proxy, gold, ns):
    """Baseline: one exact best-of-n distribution per n, each sorting the rewards again."""
    out = []
    for n in ns:
        q = bon_distribution(p, proxy, n)
        out.append((kl_divergence(q, p), q @ proxy, q @ gold))
    return out


def main() -> None:
    ap = arguments(__doc__, repeats=5, threads=2)
    ap.add_argument("--responses", type=int, default=100_000)
    ap.add_argument("--pressures", type=int, default=64)
    args = parse(ap)
    p, proxy, gold = world(args.responses)
    ns = torch.unique(torch.logspace(0, 4, args.pressures).round().long()).tolist()
    ns += [ns[-1] + i for i in range(1, args.pressures - len(ns) + 1)]  # exactly `pressures` distinct n
    betas = torch.logspace(1, -3, args.pressures).tolist()

    t_bon = best_of(lambda: gh.bon_curve(p, proxy, gold, ns), args.repeats)
    t_loop = best_of(lambda: loop_bon(p, proxy, gold, ns), max(1, args.repeats // 2))
    t_rl = best_of(lambda: gh.rl_curve(p, proxy, gold, betas), args.repeats)
    c = gh.bon_curve(p, proxy, gold, ns)
    ref = loop_bon(p, proxy, gold, ns)
    err = max(max(abs(float(a) - float(b)) for a, b in zip((c.kl[i], c.proxy[i], c.gold[i]), ref[i])) for i in range(len(ns)))
    print(f"{args.responses:,} responses, {len(ns)} values of n (1 … {ns[-1]}), {len(betas)} values of β, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"| bon_curve | {t_bon * 1e3:.0f} ms | loop of bon_distribution: {t_loop * 1e3:.0f} ms | "
          f"{t_loop / t_bon:.1f}× | < 1 s: {'met' if t_bon < 1 else 'NOT met'} | max |curve − loop| {err:.1e} |")
    print(f"| rl_curve | {t_rl * 1e3:.0f} ms | — | — | < 1 s: {'met' if t_rl < 1 else 'NOT met'} | |")


if __name__ == "__main__":
    main()
