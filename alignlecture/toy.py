"""The exact toy world: a tiny language whose every response can be enumerated (float64 throughout).

Token 0 is ``<eos>``. A response is k < max_len non-eos tokens followed by eos, or exactly max_len non-eos
tokens (truncation is terminal and emits no eos). With V tokens and T = max_len there are
N = Σ_{k<T} (V−1)^k + (V−1)^T responses.

Layout. A *prefix* (decision node) is a string of k < T non-eos tokens; there are P = Σ_{k<T} (V−1)^k of
them, numbered depth by depth and, inside a depth, in lexicographic order. Response i < P is "prefix i, then
eos"; response P + j is the j-th truncated response of length T. A tabular policy is one softmax per prefix:
a ``[P, V]`` table of log-probabilities. Every sequence-level quantity is then an exact sum or logsumexp.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._checks import positive_finite

EOS = 0
DTYPE = torch.float64


class ToyWorld:
    """All responses of a V-token, length-T language, with exact sequence ↔ token conversions.

    Attributes:
        vocab_size: V, the number of tokens, eos (token 0) included.
        max_len: T, the longest response in tokens (a response of T non-eos tokens is truncated: no eos).
        device: where every tensor of the world lives (CPU unless ``device=`` says otherwise).
        branch: b = V − 1, the children of a prefix by a non-eos token.
        offsets: ``offsets[k]`` = Σ_{j<k} b^j, the table row of the first depth-k prefix; ``offsets[T]`` = P.
        num_prefixes: P, the decision prefixes (rows of a policy's [P, V] table).
        num_responses: N = P + b^T, every response of the world.
        responses: LongTensor [N, T], every response padded with eos (0), in layout order (module docstring).
        encoded: (nodes [N, T], mask [N, T]) = ``encode(responses)``: the prefix row of each position of each
            response and whether that position is an action (at or before the eos).
        lengths: LongTensor [N], the actions of each response (its tokens, eos included).
    """

    def __init__(self, vocab_size: int = 4, max_len: int = 3, *, device: str | torch.device | None = None):
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int ≥ 2 (eos plus at least one token); got {vocab_size!r}")
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len must be an int ≥ 1; got {max_len!r}")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        b = vocab_size - 1
        self.branch = b  # children of a prefix by a non-eos token
        # offsets[k] = number of prefixes shorter than k = row of the first depth-k prefix; offsets[T] = P
        self.offsets = [sum(b**j for j in range(k)) for k in range(max_len + 1)]
        self.num_prefixes = self.offsets[max_len]
        self.num_responses = self.num_prefixes + b**max_len
        if self.num_responses > 50_000_000:
            raise ValueError(
                f"ToyWorld(vocab_size={vocab_size}, max_len={max_len}) has {self.num_responses:,} responses; "
                "that is too many to enumerate — choose a smaller vocabulary or max_len"
            )
        self.responses = self._enumerate()  # [N, T]
        self.encoded = self.encode(self.responses)  # (nodes [N, T], mask [N, T]) of every response
        self.lengths = self.encoded[1].sum(dim=1)  # [N] tokens scored per response (eos included)

    def child_index(self) -> torch.Tensor:
        """Where each action leads, LongTensor [P, V]: column 0 (eos) is response i, column a ≥ 1 is node b·i + a.

        A node j < P is the prefix row j; a node j ≥ P is the truncated response j. So with a per-node vector
        ``torch.cat([values_of_prefixes [P], final_values[P:]])``, ``nodes[world.child_index()[:, 1:]]`` is the
        value of every non-eos child (prefix i at depth k with code c has row offsets[k] + c; its child by token
        a has row offsets[k+1] + b·c + a − 1 = b·i + a, because offsets[k+1] = 1 + b·offsets[k]).
        """
        rows = torch.arange(self.num_prefixes, device=self.device)[:, None]
        tokens = torch.arange(1, self.vocab_size, device=self.device)[None, :]
        return torch.cat([rows, self.branch * rows + tokens], dim=1)

    # ------------------------------------------------------------------ enumeration and encoding
    def _digits(self, k: int) -> torch.Tensor:
        """All k-token non-eos strings in lexicographic order, LongTensor [(V−1)^k, k]."""
        b = self.branch
        idx = torch.arange(b**k, device=self.device)
        powers = torch.tensor([b ** (k - 1 - j) for j in range(k)], device=self.device, dtype=torch.long)
        return (idx[:, None] // powers[None, :]) % b + 1 if k else idx[:, None][:, :0]

    def _enumerate(self) -> torch.Tensor:
        T = self.max_len
        blocks = []
        for k in range(T + 1):
            d = self._digits(k)
            block = torch.zeros(d.shape[0], T, dtype=torch.long, device=self.device)
            block[:, :k] = d  # position k (if < T) stays 0: the eos
            blocks.append(block)
        return torch.cat(blocks)

    def encode(self, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix node of every position and which positions are actions: (nodes [M, T], mask [M, T])."""
        if not isinstance(responses, torch.Tensor) or responses.dim() != 2 or responses.shape[1] != self.max_len:
            shape = tuple(responses.shape) if isinstance(responses, torch.Tensor) else type(responses).__name__
            raise ValueError(f"responses must be a LongTensor [M, max_len={self.max_len}]; got {shape}")
        if responses.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"responses must hold integer token ids; got dtype {responses.dtype}")
        y = responses.to(device=self.device, dtype=torch.long)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got values in [{int(y.min())}, {int(y.max())}]"
            )
        T, b = self.max_len, self.branch
        is_eos = y == EOS
        seen_eos = torch.cumsum(is_eos.long(), dim=1)  # eos count up to and including t
        before = torch.nn.functional.pad(seen_eos[:, :-1], (1, 0))  # eos count strictly before t
        mask = before == 0  # t is an action iff no eos came before it
        bad = (~mask) & (y != EOS)
        if bool(bad.any()):
            row = int(bad.any(dim=1).nonzero()[0])
            raise ValueError(
                f"response {row} = {y[row].tolist()} has tokens after eos; pad with 0 after the first eos"
            )
        # node code of the prefix y[:t]: code_t = code_{t-1}·b + (y_{t-1} − 1), node = offsets[t] + code_t
        codes = torch.zeros_like(y)
        for t in range(1, T):
            codes[:, t] = codes[:, t - 1] * b + (y[:, t - 1] - 1).clamp(min=0)
        offsets = torch.tensor(self.offsets[:T], device=self.device, dtype=torch.long)
        nodes = torch.where(mask, codes + offsets[None, :], torch.zeros_like(codes))
        return nodes, mask


    # ------------------------------------------------------------------ prefixes
    def prefix_index(self, prefix: Sequence[int]) -> int:
        """Row of ``prefix`` (a tuple of non-eos tokens, length < max_len) in a policy's [P, V] table."""
        prefix = self.check_prefix(prefix)
        code = 0
        for tok in prefix:
            code = code * self.branch + (tok - 1)
        return self.offsets[len(prefix)] + code

    def check_prefix(self, prefix: Sequence[int]) -> tuple[int, ...]:
        """Validate a decision prefix and return it as a tuple of ints."""
        try:
            prefix = tuple(int(t) for t in prefix)
        except (TypeError, ValueError):
            raise ValueError(f"prefix must be a sequence of token ids; got {prefix!r}") from None
        if len(prefix) >= self.max_len:
            raise ValueError(
                f"prefix {prefix} has length {len(prefix)}; a decision prefix has fewer than max_len={self.max_len} "
                "tokens (a length-max_len response is already terminal)"
            )
        for tok in prefix:
            if not 1 <= tok < self.vocab_size:
                raise ValueError(
                    f"prefix {prefix} holds token {tok}; prefix tokens must be non-eos ids in [1, {self.vocab_size})"
                )
        return prefix

    def prefixes(self) -> list[tuple[int, ...]]:
        """Every decision prefix, in table order."""
        return [tuple(int(t) for t in row) for k in range(self.max_len) for row in self._digits(k)]

    def is_terminal(self, prefix: Sequence[int]) -> bool:
        """A prefix of max_len non-eos tokens is a finished (truncated) response."""
        return len(prefix) >= self.max_len

    def along_paths(self, prefix_values: torch.Tensor) -> torch.Tensor:
        """Σ over the decision prefixes each response passes through of a per-prefix value [P], Tensor [N]."""
        if not isinstance(prefix_values, torch.Tensor) or prefix_values.shape != (self.num_prefixes,):
            shape = tuple(prefix_values.shape) if isinstance(prefix_values, torch.Tensor) else type(prefix_values).__name__
            raise ValueError(f"prefix_values must be a Tensor [num_prefixes={self.num_prefixes}]; got {shape}")
        nodes, mask = self.encoded
        per_step = prefix_values.to(device=self.device, dtype=DTYPE)[nodes]  # [N, T]
        return torch.where(mask, per_step, torch.zeros_like(per_step)).sum(dim=1)

    # ------------------------------------------------------------------ text helpers
    def token_name(self, tok: int) -> str:
        """'<eos>' for 0, then 'a', 'b', … for the other tokens."""
        return "<eos>" if tok == EOS else (chr(ord("a") + tok - 1) if tok <= 26 else f"t{tok}")

    def text(self, response: Sequence[int] | torch.Tensor) -> str:
        """Human-readable response, e.g. 'a b <eos>'."""
        toks = [int(t) for t in response]
        out = []
        for tok in toks:
            out.append(self.token_name(tok))
            if tok == EOS:
                break
        return " ".join(out)

    def index(self, response: Sequence[int] | torch.Tensor) -> int:
        """Position of a response in ``self.responses``."""
        y = torch.as_tensor(list(int(t) for t in response), dtype=torch.long, device=self.device)
        if y.numel() != self.max_len:
            y = torch.nn.functional.pad(y, (0, self.max_len - y.numel())) if y.numel() < self.max_len else y
        nodes, mask = self.encode(y[None, :])
        k = int(mask.sum()) - 1  # last action position
        if int(y[k]) == EOS:
            return int(nodes[0, k])  # eos-terminated: same number as its prefix
        code = int(nodes[0, k]) - self.offsets[k]
        return self.num_prefixes + code * self.branch + int(y[k]) - 1

    # ------------------------------------------------------------------ checking inputs
    def check_values(self, values: torch.Tensor, name: str, *, allow_neg_inf: bool = False) -> torch.Tensor:
        """A float64 vector with one finite entry per response, or a clear error."""
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values, dtype=DTYPE)
        if values.shape != (self.num_responses,):
            raise ValueError(
                f"{name} must have shape [{self.num_responses}] (one value per response of this world); "
                f"got {tuple(values.shape)}"
            )
        values = values.to(device=self.device, dtype=DTYPE)
        bad = torch.isnan(values) | (values == math.inf)
        if not allow_neg_inf:
            bad |= torch.isinf(values)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"{name} must be finite; entry {i} is {values[i].item()}")
        return values

    # ------------------------------------------------------------------ policies
    def policy(self, log_table: torch.Tensor) -> "TabularPolicy":
        """The tabular policy with this [P, V] table of next-token log-probabilities."""
        return TabularPolicy(self, log_table)

    def random_policy(self, seed: int = 0, temperature: float = 1.0) -> "TabularPolicy":
        """One softmax of standard-normal logits / temperature per prefix (seeded)."""
        if not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")
        gen = torch.Generator().manual_seed(int(seed))
        logits = torch.randn(self.num_prefixes, self.vocab_size, generator=gen, dtype=DTYPE) / temperature
        return self.policy(torch.log_softmax(logits, dim=-1).to(self.device))

    def markov_policy(self, seed: int = 0, temperature: float = 1.0) -> "TabularPolicy":
        """A smaller model: the next token depends only on the position and the previous token (seeded).

        One softmax of standard-normal logits / temperature per (depth, previous token) — max_len·V·V numbers
        instead of the full table's P·V — spread over every prefix row with that depth and last token.
        """
        positive_finite(temperature, "temperature")
        gen = torch.Generator().manual_seed(int(seed))
        logits = torch.randn(self.max_len, self.vocab_size, self.vocab_size, generator=gen, dtype=DTYPE) / temperature
        depth = torch.tensor([len(s) for s in self.prefixes()])
        last = torch.tensor([s[-1] if s else EOS for s in self.prefixes()])  # row 0 (empty prefix) uses slot 0
        return self.policy(torch.log_softmax(logits[depth, last], dim=-1).to(self.device))

    def uniform_policy(self) -> "TabularPolicy":
        """Every next token equally likely at every prefix."""
        table = torch.full((self.num_prefixes, self.vocab_size), -math.log(self.vocab_size), dtype=DTYPE)
        return self.policy(table.to(self.device))

    def random_rewards(self, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
        """A seeded standard-normal reward per response (× scale), Tensor [N]."""
        gen = torch.Generator().manual_seed(int(seed))
        return (scale * torch.randn(self.num_responses, generator=gen, dtype=DTYPE)).to(self.device)

    def policy_sequence_logprobs(self, log_table: torch.Tensor) -> torch.Tensor:
        """log π(y) of every response for a raw [P, V] log table — differentiable, for training on the toy world."""
        nodes, mask = self.encoded
        per_token = log_table[nodes, self.responses]  # [N, T]
        return torch.where(mask, per_token, torch.zeros_like(per_token)).sum(dim=1)

    def policy_from_sequence_logprobs(self, logp: torch.Tensor) -> "TabularPolicy":
        """The tabular policy whose response distribution is softmax(logp): π(a|s) = Z(s·a)/Z(s).

        Z(s) sums exp(logp) over the responses that start with s; prefixes no response can reach
        (Z = 0, all logp = −inf below them) get a uniform next-token distribution.
        """
        logp = self.check_values(logp, "logp", allow_neg_inf=True)
        if bool(torch.isinf(logp).all()):
            raise ValueError("logp is −inf for every response; at least one response needs positive probability")
        T, b, off = self.max_len, self.branch, self.offsets
        below = logp[self.num_prefixes :]  # log Z of the depth-T (truncated) nodes
        tables = []
        for k in reversed(range(T)):
            eos = logp[off[k] : off[k + 1]]  # [b^k] responses "prefix then eos"
            children = torch.cat([eos[:, None], below.reshape(-1, b)], dim=1)  # [b^k, V]
            log_z = torch.logsumexp(children, dim=1)  # [b^k]
            table = children - log_z[:, None]
            dead = torch.isinf(log_z)
            if bool(dead.any()):
                table[dead] = -math.log(self.vocab_size)
            tables.append(table)
            below = log_z
        return self.policy(torch.cat(tables[::-1]))

    def optimal_policy(self, pi_ref: "TabularPolicy", rewards: torch.Tensor, beta: float) -> "TabularPolicy":
        """Exact KL-regularised optimum π*(y) ∝ π_ref(y)·exp(r(y)/β) (lecture §DPO, closed form)."""
        check_beta(beta)
        self.check_policy(pi_ref, "pi_ref")
        rewards = self.check_values(rewards, "rewards")
        return self.policy_from_sequence_logprobs(pi_ref.sequence_logprobs() + rewards / beta)

    def greedy(self, next_logprobs_fn: Callable[[tuple[int, ...]], torch.Tensor]) -> torch.Tensor:
        """The response built by y_t = argmax fn(y_<t) at each step (lecture §greedy decoding), LongTensor [T]."""
        prefix: list[int] = []
        out = torch.zeros(self.max_len, dtype=torch.long, device=self.device)
        while len(prefix) < self.max_len:
            scores = next_logprobs_fn(tuple(prefix))
            if not isinstance(scores, torch.Tensor) or scores.shape != (self.vocab_size,):
                shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise ValueError(
                    f"next_logprobs_fn({tuple(prefix)}) must return a Tensor [vocab_size={self.vocab_size}]; got {shape}"
                )
            if bool(torch.isnan(scores).any()):
                raise ValueError(f"next_logprobs_fn({tuple(prefix)}) returned NaN scores: {scores.tolist()}")
            tok = int(torch.argmax(scores))
            if tok == EOS:
                break
            out[len(prefix)] = tok
            prefix.append(tok)
        return out

    def check_policy(self, policy: "TabularPolicy", name: str) -> "TabularPolicy":
        """``policy`` must be a TabularPolicy of a world with this vocabulary and max_len; returns it."""
        if not isinstance(policy, TabularPolicy):
            raise TypeError(f"{name} must be a TabularPolicy of this world; got {type(policy).__name__}")
        if policy.world.vocab_size != self.vocab_size or policy.world.max_len != self.max_len:
            raise ValueError(
                f"{name} belongs to ToyWorld(vocab_size={policy.world.vocab_size}, max_len={policy.world.max_len}), "
                f"not to ToyWorld(vocab_size={self.vocab_size}, max_len={self.max_len})"
            )
        return policy


    def __repr__(self) -> str:
        return (
            f"ToyWorld(vocab_size={self.vocab_size}, max_len={self.max_len}): "
            f"{self.num_responses} responses, {self.num_prefixes} prefixes"
        )


def machine_precision(err: float, tol: float = 1e-12, what: str = "") -> str:
    """'< 1e-12 ✓' when an exact identity's error is at float64 round-off; raises AssertionError otherwise.

    The text is what a chapter prints, so a printed ✓ always comes from a check that would stop the page.
    ``what`` names the identity checked, for the error message.
    """
    err = float(err)
    if not math.isfinite(err) or abs(err) > tol:
        label = f" for {what}" if what else ""
        raise AssertionError(
            f"exact identity{label} fails: error {err:.3e} exceeds the tolerance {tol:.0e}"
            + ("" if not math.isfinite(err) else f" by a factor {abs(err) / tol:.3g}")
        )
    return f"< {tol:.0e} ✓"


def check_beta(beta: float) -> float:
    """β must be a positive finite number (the KL coefficient)."""
    return positive_finite(beta, "beta", "the KL coefficient")


class TabularPolicy:
    """A policy on a ToyWorld: one next-token distribution per prefix, stored as a [P, V] log table."""

    def __init__(self, world: ToyWorld, log_table: torch.Tensor, *, atol: float = 1e-9):
        if not isinstance(log_table, torch.Tensor) or log_table.shape != (world.num_prefixes, world.vocab_size):
            shape = tuple(log_table.shape) if isinstance(log_table, torch.Tensor) else type(log_table).__name__
            raise ValueError(
                f"log_table must be a Tensor [num_prefixes={world.num_prefixes}, vocab_size={world.vocab_size}]; "
                f"got {shape}"
            )
        log_table = log_table.to(device=world.device, dtype=DTYPE)
        if bool(torch.isnan(log_table).any()) or bool((log_table == math.inf).any()):
            raise ValueError("log_table holds NaN or +inf; every entry must be a log-probability (≤ 0 or −inf)")
        err = (torch.logsumexp(log_table, dim=1)).abs().max().item()
        if err > atol:
            raise ValueError(
                f"each row of log_table must be a normalised log-distribution; the worst row's logsumexp is off "
                f"by {err:.3g} (tolerance {atol}); pass torch.log_softmax(logits, -1)"
            )
        self.world = world
        self.log_table = log_table

    def next_logprobs(self, prefix: Sequence[int] = ()) -> torch.Tensor:
        """log π(· | prefix), Tensor [vocab_size]; ``prefix`` is a tuple of non-eos tokens, () allowed."""
        return self.log_table[self.world.prefix_index(prefix)].clone()

    def logprobs(self, responses: torch.Tensor) -> torch.Tensor:
        """Exact log π(y) = Σ_t log π(y_t | y_<t) for each row of ``responses`` [M, T], Tensor [M]."""
        if responses is self.world.responses:
            nodes, mask = self.world.encoded
        else:
            nodes, mask = self.world.encode(responses)
            responses = responses.to(device=self.world.device, dtype=torch.long)
        per_token = self.log_table[nodes, responses]  # [M, T]
        return torch.where(mask, per_token, torch.zeros_like(per_token)).sum(dim=1)

    def prefix_logprobs(self) -> torch.Tensor:
        """log π(s) = Σ_t log π(s_t | s_<t) of reaching every decision prefix s, in table order, Tensor [P]."""
        w, off = self.world, self.world.offsets
        reach = torch.zeros(1, dtype=DTYPE, device=w.device)  # log-prob of reaching each depth-k prefix
        parts = []
        for k in range(w.max_len):
            parts.append(reach)
            reach = (reach[:, None] + self.log_table[off[k] : off[k + 1], 1:]).reshape(-1)  # children, in order
        return torch.cat(parts)

    def sequence_logprobs(self) -> torch.Tensor:
        """log π(y) for every response of the world in ``world.responses`` order, Tensor [N] (top-down)."""
        reach = self.prefix_logprobs()
        ended = reach + self.log_table[:, EOS]  # response i < P: prefix i, then eos
        last = slice(self.world.offsets[-2], self.world.offsets[-1])  # depth max_len − 1
        truncated = (reach[last, None] + self.log_table[last, 1:]).reshape(-1)
        return torch.cat([ended, truncated])

    def probs(self) -> torch.Tensor:
        """π(y) for every response, Tensor [N]; sums to 1."""
        return self.sequence_logprobs().exp()

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n exact i.i.d. responses y ~ π, LongTensor [n, T] (seeded)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int; got {n!r}")
        gen = torch.Generator(device=self.world.device).manual_seed(int(seed))
        idx = torch.multinomial(self.probs(), n, replacement=True, generator=gen)
        return self.world.responses[idx]

    def kl(self, other: "TabularPolicy") -> float:
        """Exact sequence-level KL(π ‖ other) = Σ_y π(y) log π(y)/other(y), with 0·log 0 = 0."""
        self.world.check_policy(other, "other")
        logp, logq = self.sequence_logprobs(), other.sequence_logprobs()
        p = logp.exp()
        terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
        return float(terms.sum())

    def expected(self, values: torch.Tensor) -> float:
        """E_{y~π}[values(y)] for one value per response."""
        values = self.world.check_values(values, "values")
        return float((self.probs() * values).sum())

    def __repr__(self) -> str:
        return f"TabularPolicy on {self.world!r}"
