"""Cost of gradient-entanglement statistics and pairwise-normalized steps on SmolLM2-135M (top 2 blocks trainable).

Batch: 16 (prompt, chosen, rejected) pairs, 32 distinct rows; the frozen lower blocks run once and are cached
(as the trainer does with ``trainable_layers``), so every variant below runs only the top 2 blocks + LM head.

- DPO step (baseline): one batched forward of the 32 rows, DPO loss, backward, SGD update.
- per-pair statistics, one pass per row: ∇ log π for every row (one forward+backward each,
  ``PairGradients.distinct_gradients``) and the lecture's first-order terms and cases (``first_order``).
- per-pair statistics, one batched backward: ``RowGradients`` hooks record each linear layer's input and
  output during the batched forward; one backward to the layer outputs gives every row's δ, and the Gram
  matrix K = ⟨∇_r, ∇_s⟩ follows layer by layer (K's entries are all the lecture's terms). Exact.
- normalized step, one pass per row: per-row gradient norms (one forward+backward per row) + one batched
  backward of ``normalized_surrogate`` (whose gradient is the pairwise-normalized direction) + update.
- normalized step, hooks + surrogate (what ``DPOConfig(pairwise_normalized=True)`` runs for top blocks or
  LoRA): norms from the batch's own backward to the layer outputs, then the surrogate's backward. Exact.
- normalized step, hooks + direct sum: norms as above, and the step Σ_r α_r ∇_r built from the recorded
  inputs and δ's without a second backward. Exact; single process only (the trainer's surrogate keeps
  data-parallel all-reduce working).
- normalized step, stale norms: the surrogate's batched backward with norms computed k steps earlier; per step it
  costs a DPO step plus 1/k of the norm pass. What it gives up: with stale norms the per-pair case-1
  guarantee no longer holds exactly.

Goals (issue 9): statistics ≤ 3× a DPO step; normalized step ≤ 3×; cheapest variant ≤ 1.5×.
Run from the repository root: python benchmarks/bench_entanglement.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ALIGNLECTURE_OFFLINE", "1")
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from _timing import best_of  # noqa: E402

from alignlecture import entanglement as ge  # noqa: E402
from alignlecture import per_example  # noqa: E402
from alignlecture.dpo import dpo_loss  # noqa: E402
from alignlecture.logprobs import logprobs_from_hidden, pad_rows, pad_states  # noqa: E402
from alignlecture.models import load_policy  # noqa: E402
from alignlecture.prompts import prompt_set  # noqa: E402

PAIRS = 16
CHOSEN = [" It is a calm and pleasant day, and I am glad to help.", " Quiet, warm and full of small joys.",
          " I think it is lovely and worth it.", " A wonderful, friendly experience for everyone."]
REJECTED = [" Bad.", " Whatever, I do not care at all about it.", " No.", " It is terrible and I hate it."]


def main(repeats: int) -> None:
    torch.manual_seed(0)
    policy = load_policy("smollm2-135m-instruct", device="cpu", dtype=torch.float32)
    prompts = prompt_set("train")[:PAIRS]
    chosen = [CHOSEN[i % 4] for i in range(PAIRS)]
    rejected = [REJECTED[(i + 1) % 4] for i in range(PAIRS)]
    pg = ge.PairGradients(policy, prompts, chosen, rejected, top_k=2)
    rows = list(range(2 * PAIRS))
    batch = pad_rows([pg.rows[i] for i in rows], [pg.masks[i] for i in rows], policy.tokenizer.pad_token_id)
    hidden = pad_states([pg.hidden[i] for i in rows], batch["input_ids"].shape[1])
    ref_w, ref_l = pg.logps(range(PAIRS))
    for p in policy.model.parameters():
        p.requires_grad_(False)
    for p in pg.params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(pg.params, lr=1e-7)  # tiny steps: the weights barely move while timing

    def batched_logps():
        final = pg.top(hidden, batch["attention_mask"])
        return logprobs_from_hidden(final, policy.model.lm_head, batch["input_ids"], batch["completion_mask"]).per_sequence

    def dpo_step():
        lp = batched_logps()
        loss = dpo_loss(lp[:PAIRS], lp[PAIRS:], ref_w, ref_l, beta=0.1)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def statistics():
        g_w, g_l, _, _ = pg.gradients(range(PAIRS))
        ge.first_order(g_w, g_l)

    def row_norms():
        return torch.stack([per_example.gradient_norm(pg._row(i), pg.params) for i in rows]).float()

    norms = {"value": row_norms()}

    def surrogate_step():
        lp = batched_logps()
        c = 0.1 * torch.sigmoid(0.1 * ((lp[PAIRS:] - ref_l) - (lp[:PAIRS] - ref_w)))
        n = norms["value"]
        loss = ge.normalized_surrogate(lp[:PAIRS], lp[PAIRS:], n[:PAIRS], n[PAIRS:], c)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def normalized_exact():
        norms["value"] = row_norms()
        surrogate_step()

    def statistics_one_pass():
        with per_example.RowGradients(pg.top, pg.params) as rows_:
            lp = batched_logps()
        gram = rows_.gram(lp)
        w, l = torch.arange(PAIRS), torch.arange(PAIRS, 2 * PAIRS)
        inner, sq = gram[w, l], gram.diagonal()
        return ge.classify(sq[w] - inner, inner - sq[l]), inner / (sq[w] * sq[l]).sqrt()

    def hooked_norms():
        with per_example.RowGradients(pg.top, pg.params) as rows_:
            lp = batched_logps()
        return rows_, lp, rows_.square_norms(lp).sqrt()

    def normalized_hooks_surrogate():
        _, lp, n = hooked_norms()
        c = 0.1 * torch.sigmoid(0.1 * ((lp[PAIRS:] - ref_l) - (lp[:PAIRS] - ref_w)))
        loss = ge.normalized_surrogate(lp[:PAIRS], lp[PAIRS:], n[:PAIRS].float(), n[PAIRS:].float(), c)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def normalized_hooks_direct():
        rows_, lp, n = hooked_norms()
        c = (0.1 * torch.sigmoid(0.1 * ((lp[PAIRS:] - ref_l) - (lp[:PAIRS] - ref_w)))).detach().double()
        alpha = torch.cat([c / n[:PAIRS], -c / n[PAIRS:]]) / PAIRS  # the step is +Σ α_r ∇_r: the loss gradient is −
        flat, offset = rows_.combine(alpha, lp), 0
        for p in pg.params:
            p.grad = -flat[offset : offset + p.numel()].reshape(p.shape).to(p.dtype)
            offset += p.numel()
        opt.step()

    # the surrogate's gradient is the pairwise-normalized direction (checked once, float32)
    g_w, g_l, lw, ll = pg.gradients(range(PAIRS))
    c = 0.1 * torch.sigmoid(0.1 * ((ll - ref_l) - (lw - ref_w)))
    want = (c.double()[:, None] * ge.pairwise_normalized(g_w, g_l)).mean(0)
    lp = batched_logps()
    loss = ge.normalized_surrogate(lp[:PAIRS], lp[PAIRS:], g_w.norm(dim=1), g_l.norm(dim=1), c)
    got = -torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, pg.params)]).double()
    rel = float((got - want).norm() / want.norm())
    print(f"surrogate gradient vs per-pair normalized direction: relative error {rel:.2e}")
    assert rel < 1e-3, rel
    case_one_pass, cos_one_pass = statistics_one_pass()
    single = ge.first_order(g_w, g_l)
    assert torch.equal(case_one_pass, single.case), "one-pass cases differ from the per-row ones"
    print(f"one-pass vs per-row cosines: max difference {float((cos_one_pass - single.cos).abs().max()):.1e}")
    del g_w, g_l, want, got

    base = best_of(dpo_step, repeats)
    results = [("DPO step (batched, 32 rows)", base),
               ("per-pair statistics, one pass per row (32 row gradients + first_order)", best_of(statistics, repeats)),
               ("per-pair statistics, one batched backward (RowGradients.gram)", best_of(statistics_one_pass, repeats)),
               ("normalized step, exact, one pass per row (row norms + surrogate)", best_of(normalized_exact, repeats)),
               ("normalized step, exact, hooks + surrogate (the trainer's path)", best_of(normalized_hooks_surrogate, repeats)),
               ("normalized step, exact, hooks + direct sum (one backward)", best_of(normalized_hooks_direct, repeats))]
    surrogate = best_of(surrogate_step, repeats)
    norm_pass = best_of(hooked_norms, repeats)  # a forward, a backward to the layer outputs, the norms
    again = best_of(dpo_step, repeats)  # the baseline again at the end: a slow start must not flatter the ratios
    if again < base:
        base = again
        results[0] = ("DPO step (batched, 32 rows)", base)
    for k in (4, 16):
        results.append((f"normalized step, hooked norms refreshed every {k} steps", surrogate + norm_pass / k))
    results.append(("normalized step, stale norms (surrogate only)", surrogate))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {repeats}")
    print("| measurement | time | × DPO step |\n|---|---|---|")
    for name, t in results:
        print(f"| {name} | {t * 1000:.0f} ms | {t / base:.2f}× |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    main(parser.parse_args().repeats)
