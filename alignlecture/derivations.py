"""Derivations that check themselves: a named chain of sympy steps, each verified as it is added.

A step claims ``new == previous``. It is accepted when ``simplify(new − previous)`` is 0 (after a few
standard rewrites: expanding logs, exponentials and powers of positive symbols), or when an explicit
``proof`` — a callable returning True, a sympy boolean, or a note of the rule used — establishes it.
A step that cannot be verified raises :class:`DerivationError` naming the derivation and the step.

In a notebook a derivation renders as an aligned LaTeX chain with each step's justification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp


class sigma(sp.Function):
    """The logistic function σ(x) = 1 / (1 + e^{−x}); prints as σ, rewrites to exp for verification."""

    def fdiff(self, argindex=1):
        s = sigma(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _latex(self, printer, exp=None):
        arg = printer._print(self.args[0])
        base = rf"\sigma\left({arg}\right)"
        return rf"{base}^{{{exp}}}" if exp else base


class DerivationError(AssertionError):
    """A step of a derivation does not follow from the previous one."""


def _is_zero(expr: sp.Expr) -> bool:
    """True when sympy can show ``expr`` is identically 0 (several rewrites are tried)."""
    if expr == 0:
        return True
    expr = expr.rewrite(sp.exp) if expr.has(sigma) else expr
    attempts = (
        sp.simplify,
        # no force=True anywhere: a rewrite must respect the symbols' assumptions (log(x**2) ≠ 2 log x
        # for a real x), so declare symbols positive where the lecture's quantities are positive
        lambda e: sp.simplify(sp.expand_log(e)),
        lambda e: sp.simplify(sp.powsimp(sp.expand(sp.expand_log(e)))),
        lambda e: sp.simplify(sp.logcombine(e)),
        lambda e: sp.simplify(e.rewrite(sp.exp)),
    )
    for attempt in attempts:
        try:
            if attempt(expr) == 0:
                return True
        except (TypeError, ValueError, NotImplementedError, AttributeError):  # a rewrite that does not apply
            continue
    return False


def check_identity(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """True when sympy proves lhs − rhs ≡ 0."""
    return _is_zero(sp.sympify(lhs) - sp.sympify(rhs))


@dataclass
class Step:
    """One link of a chain: the expression, why it equals the previous one, and how that was checked."""

    expr: sp.Expr
    reason: str
    checked_by: str


@dataclass
class Derivation:
    """A named chain expr_0 = expr_1 = … where every ``=`` is verified by sympy when it is added."""

    name: str
    start: sp.Expr
    lhs: sp.Expr | None = None
    steps: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start = sp.sympify(self.start)
        self.steps = [Step(self.start, "", "start")]

    @property
    def result(self) -> sp.Expr:
        """The last expression of the chain."""
        return self.steps[-1].expr

    def step(
        self,
        expr: sp.Expr,
        reason: str,
        proof: Callable[[sp.Expr, sp.Expr], object] | None = None,
    ) -> "Derivation":
        """Append ``expr``; raise DerivationError unless it equals the previous expression.

        ``proof``: None (sympy must simplify the difference to 0) or a callable ``proof(previous, expr)``
        returning True or sympy's ``true`` — for steps simplification cannot settle (an inequality, a
        limit, a case split); name the function after the rule it applies, it is shown as the check.
        """
        expr = sp.sympify(expr)
        previous = self.result
        index = len(self.steps)
        if proof is None:
            ok = _is_zero(expr - previous)
            how = "simplify(new − previous) = 0"
        elif callable(proof):
            verdict = proof(previous, expr)
            ok = bool(verdict is True or verdict == sp.true)
            how = f"proof: {getattr(proof, '__name__', 'callable')}"
        else:
            raise TypeError(f"proof must be None or a callable proof(previous, new); got {proof!r}")
        if not ok:
            diff = sp.simplify(expr - previous)
            raise DerivationError(
                f"derivation {self.name!r}, step {index} ({reason!r}) does not follow: "
                f"new − previous simplifies to {diff}, not 0"
            )
        self.steps.append(Step(expr, reason, how))
        return self

    def conclude(self, expected: sp.Expr, reason: str = "result") -> "Derivation":
        """Close the chain on the expression the lecture states (verified like any step)."""
        return self.step(expected, reason)

    def _repr_latex_(self) -> str:
        lhs = sp.latex(self.lhs) if self.lhs is not None else ""
        rows = [f"{lhs} &= {sp.latex(self.steps[0].expr)}"]
        for st in self.steps[1:]:
            rows.append(f"&= {sp.latex(st.expr)} && \\text{{{_latex_text(st.reason)}}}")
        body = " \\\\\n".join(rows)
        return f"$$\\begin{{aligned}}\n{body}\n\\end{{aligned}}$$"

    def __repr__(self) -> str:
        lines = [f"Derivation {self.name!r}: {len(self.steps) - 1} verified steps"]
        lines.append(f"  {sp.sstr(self.steps[0].expr)}")
        for st in self.steps[1:]:
            lines.append(f"  = {sp.sstr(st.expr)}    [{st.reason}]")
        return "\n".join(lines)


def _latex_text(text: str) -> str:
    """Escape the characters LaTeX's \\text{} does not accept literally."""
    for a, b in (("\\", r"\backslash "), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def derive(name: str, start: sp.Expr, *steps: tuple[sp.Expr, str], lhs: sp.Expr | None = None) -> Derivation:
    """Build and verify a whole chain at once: ``derive(name, e0, (e1, why1), (e2, why2), …)``."""
    d = Derivation(name, start, lhs=lhs)
    for item in steps:
        if len(item) == 2:
            d.step(*item)
        else:
            d.step(item[0], item[1], item[2])
    return d
