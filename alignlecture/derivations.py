"""Derivations that check themselves: a named chain of sympy steps, each verified as it is added.

A step claims ``previous REL new`` where REL is ``=`` (the default) or an inequality (``<=``, ``>=``, ``<``,
``>``; rendered ≤, ≥, <, >). It is accepted when

- ``proof`` is None and sympy settles it: for ``=``, ``simplify(new − previous)`` is 0 (after a few standard
  rewrites of logs, exponentials and powers of positive symbols); for an inequality, sympy decides the sign of
  the gap from the symbols' assumptions;
- ``proof`` is a sympy relation about the step — e.g. ``sp.Ge((sp.sqrt(a) - sp.sqrt(b))**2 / 2, 0,
  evaluate=False)`` for (a+b)/2 ≥ √(ab) — whose two sides differ by exactly the step's gap and whose truth
  sympy decides;
- ``proof`` is a :class:`Lemma`: a named rule (``log_rules`` below) that was itself checked, when it was made,
  to accept an example and to reject a counterexample — so no proof can be a function that says yes to anything.

A step that cannot be verified raises :class:`DerivationError` naming the derivation and the step. In a
notebook a derivation renders as an aligned LaTeX chain with each step's relation and justification. The
left-hand side ``lhs`` may be a sympy expression or a string of LaTeX (used as written, for a side sympy cannot
build, like ``r"\sum_t r(s_t,a_t)"``); a reason is prose, and any ``$…$`` part of it is rendered as math.
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


class TeX(sp.Symbol):
    """A symbol printed as the LaTeX it is named with, e.g. ``TeX(r"\\partial_\\theta\\mathcal{L}")`` for a
    derivation's left-hand side."""

    def _latex(self, printer):
        return self.name


def implicit_reward(y: str, ell: sp.Expr, log_ref: sp.Expr, beta: sp.Expr, theta: sp.Symbol) -> sp.Expr:
    """r̂_y(θ) = β(ℓ_y(θ) − log π_ref(y)) as one sympy function of θ printed r̂_y, whose derivative sympy knows:
    r̂′ = β ℓ′ (the identity is checked before it is returned). Lets a derivation keep r̂ folded while
    differentiating through it, as the lecture writes the DPO gradient."""

    def fdiff(self, argindex=1):
        return beta * sp.diff(ell, theta)

    def _latex(self, printer, exp=None):
        return rf"\hat r_{y}" if exp is None else rf"\hat r_{y}^{{{exp}}}"

    r = type(f"rhat_{y}", (sp.Function,), {"fdiff": fdiff, "_latex": _latex})(theta)
    if sp.simplify(sp.diff(r, theta) - sp.diff(beta * (ell - log_ref), theta)) != 0:
        raise DerivationError(f"r̂_{y}′ is not the derivative of β(ℓ − log π_ref)")
    return r


class DerivationError(AssertionError):
    """A step of a derivation does not follow from the previous one."""


# relation → (LaTeX, plain text); "previous REL new"
RELATIONS = {"=": ("=", "="), "<=": (r"\le", "≤"), ">=": (r"\ge", "≥"), "<": ("<", "<"), ">": (">", ">")}
_ALIASES = {"==": "=", "≤": "<=", "≥": ">="}


def _relation(relation: str) -> str:
    rel = _ALIASES.get(relation, relation)
    if rel not in RELATIONS:
        raise ValueError(f"relation must be one of {list(RELATIONS)} (or ≤, ≥); got {relation!r}")
    return rel


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


def _sign_is(expr: sp.Expr, strict: bool) -> bool:
    """True when sympy's assumptions decide that ``expr`` > 0 (``strict``) or ≥ 0, in some simplified form."""
    for form in (lambda e: e, sp.factor, sp.simplify, lambda e: sp.simplify(sp.expand(e))):
        try:
            f = form(expr)
        except (TypeError, ValueError, NotImplementedError, AttributeError):
            continue
        if (f.is_positive if strict else f.is_nonnegative) is True:
            return True
    return False


def check_identity(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """True when sympy proves lhs − rhs ≡ 0."""
    return _is_zero(sp.sympify(lhs) - sp.sympify(rhs))


def _gap(previous: sp.Expr, new: sp.Expr, relation: str) -> tuple[sp.Expr, bool]:
    """The step as "gap ≥ 0" (or > 0 when strict; = 0 for "="): returns (gap, strict)."""
    if relation in (">=", ">"):
        return previous - new, relation == ">"
    if relation in ("<=", "<"):
        return new - previous, relation == "<"
    return previous - new, False


@dataclass(frozen=True)
class Lemma:
    """A named rule a step may cite as its proof, checked when it is made.

    ``holds(previous, new)`` decides whether a step ``previous REL new`` is an instance of the rule. On
    construction the lemma must accept ``example`` and reject ``counterexample`` (both ``(previous, new)``
    pairs); a rule that says yes to everything is refused, so citing a lemma always proves something.
    """

    name: str
    statement: str
    holds: Callable[[sp.Expr, sp.Expr], object]
    example: tuple
    counterexample: tuple
    relation: str = "="

    def __post_init__(self) -> None:
        object.__setattr__(self, "relation", _relation(self.relation))
        if not callable(self.holds):
            raise TypeError(f"lemma {self.name!r}: holds must be a callable holds(previous, new); got {self.holds!r}")
        if not self.accepts(*self.example):
            raise ValueError(f"lemma {self.name!r} rejects its own example {self.example}: the rule is wrong")
        if self.accepts(*self.counterexample):
            raise ValueError(
                f"lemma {self.name!r} accepts its counterexample {self.counterexample}: it would prove false steps"
            )

    def accepts(self, previous, new) -> bool:
        """True when the step previous REL new is an instance of the rule."""
        verdict = self.holds(sp.sympify(previous), sp.sympify(new))
        return verdict is True or verdict is sp.true


def _log_rules(previous: sp.Expr, new: sp.Expr) -> bool:
    return sp.expand(sp.expand_log(previous - new)) == 0


_p, _q = sp.symbols("p q", positive=True)
_w = sp.Symbol("w", real=True)
log_rules = Lemma(
    "log_rules",
    "log(ab) = log a + log b and log a^w = w log a, for positive a, b and real w (probabilities are positive)",
    _log_rules,
    example=(sp.log(_p**_w * _q), _w * sp.log(_p) + sp.log(_q)),
    counterexample=(sp.log(_p + _q), sp.log(_p) + sp.log(_q)),
)


@dataclass
class Step:
    """One link of a chain: the expression, how it relates to the previous one, why, and how that was checked."""

    expr: sp.Expr
    reason: str
    checked_by: str
    relation: str = "="


@dataclass
class Derivation:
    """A named chain expr_0 REL expr_1 REL … where every relation (=, ≤, ≥, <, >) is verified when it is added."""

    name: str
    start: sp.Expr
    lhs: sp.Expr | str | None = None  # a string is LaTeX, used as written
    steps: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start = sp.sympify(self.start)
        self.steps = [Step(self.start, "", "start")]

    @property
    def result(self) -> sp.Expr:
        """The last expression of the chain."""
        return self.steps[-1].expr

    @property
    def relation(self) -> str:
        """How the start relates to the result — "=" for a chain of equalities, else its (one) inequality direction."""
        rels = {s.relation for s in self.steps[1:]} - {"="}
        if not rels:
            return "="
        if rels <= {">=", ">"}:
            return ">" if ">" in rels else ">="
        return "<" if "<" in rels else "<="

    def step(self, expr: sp.Expr, reason: str, proof: Lemma | sp.Basic | None = None, *,
             relation: str = "=") -> "Derivation":
        """Append ``expr`` with ``previous REL expr``; raise DerivationError unless that is proved.

        ``relation``: "=" (default), "<=", ">=", "<" or ">". ``proof``: None (sympy settles the step), a sympy
        relation whose sides differ by the step's gap (pass ``evaluate=False``), or a :class:`Lemma`.
        """
        expr = sp.sympify(expr)
        relation = _relation(relation)
        _reason_latex(reason)  # an unmatched $ is refused here, not when the chain is displayed
        previous = self.result
        where = f"derivation {self.name!r}, step {len(self.steps)} ({reason!r})"
        if relation != "=" and self.relation != "=" and {relation[0], self.relation[0]} == {"<", ">"}:
            raise DerivationError(f"{where}: a chain that goes both ≤ and ≥ proves nothing about its ends")
        gap, strict = _gap(previous, expr, relation)
        if proof is None:
            ok = _is_zero(gap) if relation == "=" else _sign_is(gap, strict)
            how = "simplify(new − previous) = 0" if relation == "=" else "sympy decides the sign of the gap"
        elif isinstance(proof, Lemma):
            if proof.relation != relation:
                raise DerivationError(f"{where}: lemma {proof.name!r} proves a {proof.relation!r} step, not {relation!r}")
            ok = proof.accepts(previous, expr)
            how = f"lemma: {proof.name}"
        elif isinstance(proof, sp.logic.boolalg.BooleanAtom):
            raise DerivationError(
                f"{where}: the proof is already {proof}, so it says nothing about this step; build it with "
                "evaluate=False (e.g. sp.Ge(square, 0, evaluate=False)) so it can be matched to the step's gap"
            )
        elif isinstance(proof, sp.core.relational.Relational):
            ok = _relation_proves(proof, gap, strict, relation)
            how = f"relation: {sp.sstr(proof)}"
        elif callable(proof):
            raise TypeError(
                "proof must be a Lemma (a named rule checked on an example and a counterexample, e.g. "
                "alignlecture.derivations.log_rules) or a sympy relation about the step; a bare function could "
                f"return True for anything; got {proof!r}"
            )
        else:
            raise TypeError(f"proof must be None, a Lemma or a sympy relation; got {proof!r}")
        if not ok:
            diff = sp.simplify(expr - previous)
            raise DerivationError(
                f"{where} does not follow: claimed previous {RELATIONS[relation][1]} new, "
                f"new − previous simplifies to {diff}"
                + (", not 0" if relation == "=" else f"; {how if proof is not None else 'sympy cannot decide its sign'}")
            )
        self.steps.append(Step(expr, reason, how, relation))
        return self

    def conclude(self, expected: sp.Expr, reason: str = "result", proof=None, *, relation: str = "=") -> "Derivation":
        """Close the chain on the expression the lecture states (verified like any step)."""
        return self.step(expected, reason, proof, relation=relation)

    def _repr_latex_(self) -> str:
        """Aligned rows: each step's expression (a long sum broken after a term), its reason on the row below."""
        lhs = self.lhs if isinstance(self.lhs, str) else sp.latex(self.lhs) if self.lhs is not None else ""
        rows = [f"{lhs} &= " + " \\\\\n&\\quad ".join(_latex_lines(self.steps[0].expr))]
        for st in self.steps[1:]:
            rows.append(f"&{RELATIONS[st.relation][0]} " + " \\\\\n&\\quad ".join(_latex_lines(st.expr)))
            rows.append(f"&\\qquad {_reason_latex(st.reason)}")
        body = " \\\\\n".join(rows)
        return f"$$\\begin{{aligned}}\n{body}\n\\end{{aligned}}$$"

    def __repr__(self) -> str:
        lines = [f"Derivation {self.name!r}: {len(self.steps) - 1} verified steps"]
        lines.append(f"  {sp.sstr(self.steps[0].expr)}")
        for st in self.steps[1:]:
            lines.append(f"  {RELATIONS[st.relation][1]} {sp.sstr(st.expr)}    [{st.reason}]")
        return "\n".join(lines)


def _relation_proves(proof, gap: sp.Expr, strict: bool, relation: str) -> bool:
    """A relation proves the step when its sides differ by exactly the step's gap and sympy decides it is true."""
    if isinstance(proof, (sp.Eq, sp.Ne)):
        if relation != "=" or isinstance(proof, sp.Ne):
            return False
        g = proof.lhs - proof.rhs
        return (_is_zero(g - gap) or _is_zero(g + gap)) and _is_zero(g)
    if relation == "=":
        return False  # an inequality cannot prove an equality
    g = proof.lhs - proof.rhs if isinstance(proof, (sp.Ge, sp.Gt)) else proof.rhs - proof.lhs
    proof_strict = isinstance(proof, (sp.Gt, sp.Lt))
    if strict and not proof_strict:
        return False
    return _is_zero(g - gap) and _sign_is(g, proof_strict)


LINE_CHARS = 90  # LaTeX source characters per displayed line: about the width of the book's text column


def _latex_lines(expr: sp.Expr) -> list[str]:
    """``expr`` as LaTeX lines: a sum too long for one line is split between its terms (each line ≤ LINE_CHARS
    where a term allows); anything else stays on one line."""
    whole = sp.latex(expr)
    if len(whole) <= LINE_CHARS or not isinstance(expr, sp.Add):
        return [whole]
    lines: list[str] = []
    for term in expr.as_ordered_terms():
        text = sp.latex(term)
        joined = text if text.startswith("-") or not lines else "+ " + text
        if lines and len(lines[-1]) + len(joined) + 1 <= LINE_CHARS:
            lines[-1] += " " + joined
        else:
            lines.append(joined)
    return lines


def _latex_text(text: str) -> str:
    """Escape the characters LaTeX's \\text{} does not accept literally."""
    for a, b in (("\\", r"\backslash "), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def _reason_latex(reason: str) -> str:
    """A step's reason as LaTeX: prose in \\text{}, each ``$…$`` part as math (``"telescoping: $\\sum_t a_t$"``)."""
    if not isinstance(reason, str):
        raise TypeError(f"a step's reason must be a string; got {reason!r}")
    parts = reason.split("$")
    if len(parts) % 2 == 0:
        raise ValueError(f"reason {reason!r} has an unmatched $: write each formula as $…$ (or drop the $)")
    return " ".join(
        part.strip() if i % 2 else f"\\text{{{_latex_text(part)}}}" for i, part in enumerate(parts) if part.strip()
        # prose keeps its spaces (they show inside \\text{}); an empty part is left out
    )


def derive(name: str, start: sp.Expr, *steps: tuple, lhs: sp.Expr | str | None = None) -> Derivation:
    """Build and verify a whole chain at once: ``derive(name, e0, (e1, why1), (e2, why2, proof), (e3, why3, proof, rel))``."""
    d = Derivation(name, start, lhs=lhs)
    for item in steps:
        if not 2 <= len(item) <= 4:
            raise ValueError(f"each step is (expr, reason[, proof[, relation]]); got {len(item)} items: {item!r}")
        expr, reason, *rest = item
        proof = rest[0] if rest else None
        relation = rest[1] if len(rest) > 1 else "="
        d.step(expr, reason, proof, relation=relation)
    return d
