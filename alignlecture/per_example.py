"""Per-example gradients: every row's ∇_θ log π(row) from one batched backward pass, never one pass per row.

Chapter 4 needs the Gram matrix ⟨∇ log π(y_r), ∇ log π(y_s)⟩ of a batch of responses, and the trainer's
pairwise-normalized step needs each row's gradient norm. Both come from :class:`RowGradients`: hooks on the
trainable linear and RMSNorm layers record each layer's input x and output, one backward gives every output
gradient δ, and row r's weight gradient is δ_rᵀ x_r. :func:`gradient_norm` is the one-pass-per-value
reference the tests compare against.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ._checks import finite

DTYPE = torch.float64  # Gram matrices and norms are summed in float64


class RowGradients:
    """Every row's gradient ∇_θ log π(row r) from ONE batched backward pass (the per-example gradient trick).

    Rows of a batch do not interact, so the gradient of Σ_r log π_r with respect to a layer's output, read at
    row r, is row r's own δ_r; a linear layer's gradient for row r is then δ_rᵀ x_r (x_r: the layer's input
    for that row), and an RMSNorm weight's is Σ_t δ_r,t ∘ x̂_r,t. Hooks record x and the output during the
    forward; :meth:`gram`, :meth:`square_norms` and :meth:`combine` build the per-row quantities from them,
    never the [rows, D] matrix of gradients at once. Covers nn.Linear (top blocks, LoRA's A and B) and
    RMSNorm weights; any other trainable parameter is refused with the alternative named.

    >>> with RowGradients(module, params) as rows:
    ...     logps = ...  # forward of a batch, Tensor [R]
    >>> rows.gram(logps)  # ⟨∇_r, ∇_s⟩, Tensor [R, R] float64
    """

    def __init__(self, module: torch.nn.Module, params):
        self.params = list(params)
        owner, missing = _owners(module, self.params)
        if missing:
            raise ValueError(f"{len(missing)} trainable parameter(s) (shapes {missing[:3]}) are not the weight or bias "
                             "of one nn.Linear or the weight of one RMSNorm (embeddings and tied weights are not), "
                             "so one pass cannot give per-row gradients for them; train the top blocks (trainable_layers) or LoRA, or take one pass per row")
        self.modules = list({id(m): (m, kind) for m, kind, _ in owner.values()}.values())
        self.owner = owner
        self.calls: dict[int, list] = {id(m): [] for m, _ in self.modules}
        self._hooks, self._delta = [], None

    @staticmethod
    def supports(module: torch.nn.Module, params) -> bool:
        """Whether every parameter in ``params`` is an nn.Linear weight/bias or an RMSNorm weight of ``module``."""
        return not _owners(module, list(params))[1]

    def __enter__(self):
        self.calls, self._delta = {id(m): [] for m, _ in self.modules}, None  # a new forward, a new record
        for m, _ in self.modules:
            self._hooks.append(m.register_forward_hook(self._record))
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _record(self, module, args, output):
        self.calls[id(module)].append((args[0].detach(), output))

    def _factors(self, logps: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per module: (input x, output gradient δ), each [R, N, features], calls joined along N."""
        if self._delta is not None and self._delta[0] is logps:
            return self._delta[1]
        if not isinstance(logps, torch.Tensor) or logps.dim() != 1 or not logps.requires_grad:
            raise ValueError("logps must be the batch's log-probs, a Tensor [R] with gradient, from the forward "
                             "run inside this `with RowGradients(...)` block")
        outputs = [(i, x, out) for i, calls in self.calls.items() for x, out in calls]
        if not outputs:
            raise ValueError("no hooked layer ran: run the forward inside the `with RowGradients(...)` block")
        batch = outputs[0][1].shape[0]
        if any(x.shape[0] != batch for _, x, _ in outputs) or len(logps) % batch:
            raise ValueError(f"a hooked layer saw a batch of {batch} rows but logps has {len(logps)}; per-row "
                             "gradients need every trainable layer to keep the batch dimension first, and logps to "
                             "hold one value per batch row, or several per row in groups (packed pairs)")
        # logps = G groups of `batch` values, group g's value b computed in batch row b (G = 2 for prompt-shared
        # pairs: every chosen, then every rejected). Values of one group come from different rows, so one backward
        # per group gives each value its own δ; G = 1 is the classic one-backward trick.
        groups = len(logps) // batch
        outs = [o for _, _, o in outputs]
        grads = [torch.autograd.grad(logps[g * batch : (g + 1) * batch].sum(), outs, retain_graph=True, allow_unused=True)
                 for g in range(groups)]
        factors: dict[int, list] = {}
        kinds = {id(m): (m, kind) for m, kind in self.modules}
        for j, (i, x, out) in enumerate(outputs):
            d = torch.cat([torch.zeros_like(out) if g[j] is None else g[j].detach() for g in grads])
            x = torch.cat([x] * groups)
            m, kind = kinds[i]
            if kind == "norm":
                x = _rms_normalized(m, x)
            wide = torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 activations: sums in float32 at least
            x, d = x.to(wide), d.to(wide)
            factors.setdefault(i, []).append((x.reshape(len(logps), -1, x.shape[-1]), d.reshape(len(logps), -1, d.shape[-1])))
        joined = {i: (torch.cat([a for a, _ in f], 1), torch.cat([b for _, b in f], 1)) for i, f in factors.items()}
        self._delta = (logps, joined)
        return joined

    def _per_row(self, p, factors) -> torch.Tensor:
        """Row r's gradient of parameter p, Tensor [R, *p.shape]: Σ_t δ_t x_tᵀ, Σ_t δ_t or Σ_t δ_t ∘ x̂_t."""
        m, kind, name = self.owner[id(p)]
        x, d = factors[id(m)]
        if kind == "norm":
            return (d * x).sum(1)
        return d.sum(1) if name == "bias" else torch.einsum("rno,rni->roi", d, x)

    def gram(self, logps: torch.Tensor) -> torch.Tensor:
        """⟨∇ log π_r, ∇ log π_s⟩ over the parameters, Tensor [R, R] float64 (one parameter at a time)."""
        factors = self._factors(logps)
        gram = torch.zeros(len(logps), len(logps), dtype=DTYPE, device=logps.device)
        for p in self.params:
            gram += _gram64(self._per_row(p, factors).reshape(len(logps), -1))
        return gram

    def square_norms(self, logps: torch.Tensor) -> torch.Tensor:
        """‖∇ log π_r‖² per row, Tensor [R] float64; a linear weight's norm from token products when that is cheaper:
        ‖δ_rᵀ x_r‖² = Σ_{t,u} (x_t·x_u)(δ_t·δ_u)."""
        factors = self._factors(logps)
        out = torch.zeros(len(logps), dtype=DTYPE, device=logps.device)
        for p in self.params:
            m, kind, name = self.owner[id(p)]
            x, d = factors[id(m)]
            if kind == "linear" and name == "weight" and x.shape[1] * (x.shape[2] + d.shape[2]) < x.shape[2] * d.shape[2]:
                out += ((x @ x.transpose(1, 2)).double() * (d @ d.transpose(1, 2)).double()).sum((1, 2))
            else:
                out += _gram64(self._per_row(p, factors).reshape(len(logps), -1), diagonal=True)
        return out

    def combine(self, alpha: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
        """Σ_r α_r ∇ log π_r as one flat vector [D] in the order of ``params`` (what ``PairGradients.apply`` takes)."""
        factors = self._factors(logps)
        alpha = finite(alpha, "alpha")
        if alpha.shape != logps.shape:
            raise ValueError(f"alpha must have one weight per row, shape {tuple(logps.shape)}; got {tuple(alpha.shape)}")
        parts = []
        for p in self.params:
            m, _, _ = self.owner[id(p)]
            x, d = factors[id(m)]
            weighted = {id(m): (x, d * alpha.to(d.dtype)[:, None, None])}
            parts.append(self._per_row(p, weighted).sum(0).reshape(-1))
        return torch.cat(parts)


@contextmanager
def only_trainable(model: torch.nn.Module, params):
    """Only ``params`` require grad while the block runs; the model's own flags are restored after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _gram64(g: torch.Tensor, *, diagonal: bool = False, chunk: int = 1 << 12) -> torch.Tensor:
    """g gᵀ (or its diagonal) for g [R, N], float64: float32 products over chunks of N, summed in float64 (one
    float32 sum over 10⁶ terms drifts by ~1e-4; over 2¹² it stays near rounding)."""
    shape = (g.shape[0],) if diagonal else (g.shape[0], g.shape[0])
    out = torch.zeros(shape, dtype=DTYPE, device=g.device)
    for start in range(0, g.shape[1], chunk):
        part = g[:, start : start + chunk]
        out += (part.double() ** 2).sum(1) if diagonal else (part @ part.T).double()
    return out


def _owners(module, params) -> tuple[dict, list]:
    """Which module (and kind, attribute name) owns each parameter; the shapes of those no supported module owns."""
    owner, elsewhere, wanted = {}, set(), {id(p) for p in params}
    for m in module.modules():
        kind = "linear" if isinstance(m, torch.nn.Linear) else "norm" if _is_rms_norm(m) else None
        for name, p in m.named_parameters(recurse=False):
            if id(p) in wanted:
                if kind and id(p) not in owner:
                    owner[id(p)] = (m, kind, name)
                else:  # an unsupported module, or a second one (tied weights): its share would be missed
                    elsewhere.add(id(p))
    return owner, [tuple(p.shape) for p in params if id(p) not in owner or id(p) in elsewhere]


def _is_rms_norm(m) -> bool:
    """An RMSNorm with a weight (Llama, Qwen, Mistral …): out = w ∘ x/√(mean x² + ε)."""
    return type(m).__name__.endswith("RMSNorm") and isinstance(getattr(m, "weight", None), torch.nn.Parameter)


def _rms_normalized(m, x: torch.Tensor) -> torch.Tensor:
    """x̂ = x/√(mean x² + ε) as the module computes it (in float32, back to x's dtype)."""
    eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
    if eps is None:
        raise ValueError(f"{type(m).__name__} has no variance_epsilon or eps attribute; cannot recompute its input's norm")
    h = x.to(torch.float32)
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def gradient_norm(value: torch.Tensor, params) -> torch.Tensor:
    """‖∂ value/∂ params‖ for a scalar ``value`` (one backward pass), Tensor []."""
    grads = torch.autograd.grad(value, list(params), allow_unused=True)
    return torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))
