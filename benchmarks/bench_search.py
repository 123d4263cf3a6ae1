"""Cost per generated token of reward-guided search (``search.guided_search``) as a multiple of one cached decode
step of the same model, measured in one run.

Both sides decode the same left-padded prompts at the same batch size B:
- one cached decode step: chapter 3's decoder with one model, ``generate_mixed([policy], [1.0], prompts,
  max_new_tokens=N, min_new_tokens=N)``, timed at N and at 1 new token; (t(N) − t(1))/(N − 1) is one step
  (the prefill cancels).
- guided search with k candidates and lookahead depth d, timed the same way. Per step it runs one forward at
  B rows and d forwards at B·k rows (the k lookaheads branch the prefix's KV cache; the prefix is never
  recomputed), decodes B·k lookahead texts and calls the reward once. The reward here is the text's length in
  characters — nearly free, and it keeps eos from winning, so every row runs all N steps.
Goal: search step ≤ (1 + k·d) × cached step.

``--random-weights DIR`` builds a randomly initialised model from DIR's config.json and tokenizer (same shapes,
so the same cost as the trained model) — for machines without the model's weights.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ALIGNLECTURE_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from alignlecture.mixing import generate_mixed  # noqa: E402
from alignlecture.models import Policy, load_policy  # noqa: E402
from alignlecture.prompts import prompt_set  # noqa: E402
from alignlecture.search import guided_search  # noqa: E402
from _timing import arguments, best_of, parse  # noqa: E402

MODEL = "smollm2-135m-instruct"


def random_policy(directory: str, device: torch.device) -> Policy:
    """A randomly initialised causal LM with the config and tokenizer stored in ``directory``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(directory)
    tok = AutoTokenizer.from_pretrained(directory)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device).eval()
    return Policy(model=model, tokenizer=tok, name=f"random {config.model_type}", source="random")


def text_length(texts: list[str]) -> list[float]:
    return [float(len(t)) for t in texts]


def main() -> None:
    parser = arguments(__doc__, repeats=3)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--random-weights", default=None, help="directory with config.json and a tokenizer")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parse(parser)
    device = torch.device(args.device) if args.device else None
    if args.random_weights:
        policy = random_policy(args.random_weights, device or torch.device("cpu"))
    else:
        policy = load_policy(args.model, device=device)
    device = policy.device
    prompts = (prompt_set("all") * 4)[: args.batch]
    N, k, d = args.new_tokens, args.k, args.depth

    def plain(n):
        return lambda: generate_mixed([policy], [1.0], prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def guided(n):
        return lambda: guided_search(policy, text_length, prompts, k=k, depth=d, max_new_tokens=n)

    out = guided(N)()
    steps = max(len(ids) for ids in out.completion_ids)
    ended = sum(policy.tokenizer.eos_token_id in ids for ids in out.completion_ids)
    plain(2)()  # warm-up
    t_plain = (best_of(plain(N), args.repeats, device) - best_of(plain(1), args.repeats, device)) / (N - 1)
    t_search = (best_of(guided(N), args.repeats, device) - best_of(guided(1), args.repeats, device)) / (N - 1)
    torch_threads = torch.get_num_threads()
    print(f"{policy.name} on {device} ({torch_threads} torch threads) · batch {args.batch} · {N} new tokens · "
          f"k = {k}, depth = {d}")
    print(f"search ran {steps} steps ({ended} of {args.batch} rows ended early); per step "
          f"{out.next_token_evals / max(1, sum(len(c) for c in out.completion_ids)):.2f} next-token evaluations "
          f"per generated token, {out.forwards} forward calls in all")
    print(f"one cached decode step:     {1e3 * t_plain:8.1f} ms")
    print(f"one guided-search step:     {1e3 * t_search:8.1f} ms = {t_search / t_plain:.2f} × a cached step "
          f"(goal ≤ 1 + k·depth = {1 + k * d}×: {'met' if t_search / t_plain <= 1 + k * d else 'NOT met'})")


if __name__ == "__main__":
    main()
