"""Tests for alignlecture.derivations: self-checking chains of sympy steps."""

from __future__ import annotations

import pytest
import sympy as sp

from alignlecture.derivations import Derivation, DerivationError, check_identity, derive, sigma

a, b = sp.symbols("a b", positive=True)
x = sp.Symbol("x", real=True)
beta = sp.Symbol("beta", positive=True)


def sigmoid_exp_form(t):
    return sp.exp(t) / (1 + sp.exp(t))


def test_correct_chain_verifies_and_records_every_step():
    d = (
        Derivation("square", (x + 1) ** 2, lhs=sp.Symbol("f"))
        .step(x**2 + 2 * x + 1, "expand the square")
        .step(1 + x * (x + 2), "factor x")
        .conclude(x * (x + 2) + 1, "reorder")
    )
    assert [s.reason for s in d.steps] == ["", "expand the square", "factor x", "reorder"]
    assert d.steps[0].checked_by == "start"
    assert all(s.checked_by == "simplify(new − previous) = 0" for s in d.steps[1:])
    assert sp.simplify(d.result - (x + 1) ** 2) == 0
    assert "3 verified steps" in repr(d)


def test_latex_starts_with_display_math_and_names_each_reason():
    d = (
        Derivation("log product", sp.log(a * b), lhs=sp.Symbol("L"))
        .step(sp.log(a) + sp.log(b), "log of a product")
        .step(sp.log(b) + sp.log(a), "commutativity")
    )
    latex = d._repr_latex_()
    assert latex.startswith("$$") and latex.endswith("$$")
    assert "\\begin{aligned}" in latex
    for reason in ("log of a product", "commutativity"):
        assert f"\\text{{{reason}}}" in latex
    assert latex.count("&=") == 3  # start + two steps
    assert latex.split("\n")[1].startswith("L &=")


def test_latex_escapes_special_characters_in_reasons():
    d = Derivation("escape", a).step(a, "rule_1 & 50% #2")
    assert r"\text{rule\_1 \& 50\% \#2}" in d._repr_latex_()


def test_wrong_step_raises_naming_derivation_step_number_and_reason():
    d = Derivation("my chain", a + b).step(b + a, "commute")
    with pytest.raises(DerivationError, match=r"derivation 'my chain', step 2 \('bogus doubling'\) does not follow"):
        d.step(2 * (a + b), "bogus doubling")
    assert len(d.steps) == 2  # the rejected step was not appended


def test_derivation_error_is_an_assertion_error():
    with pytest.raises(AssertionError, match="does not follow"):
        Derivation("assert", x).step(x + 1, "off by one")


def test_log_of_product_of_positive_symbols_expands():
    Derivation("log rules", sp.log(a * b)).step(sp.log(a) + sp.log(b), "log(ab) = log a + log b")
    Derivation("log power", sp.log(a**3)).step(3 * sp.log(a), "log a^3 = 3 log a")
    Derivation("exp sum", sp.exp(a + b)).step(sp.exp(a) * sp.exp(b), "exp of a sum")


def test_sigmoid_forms_verify_both_ways():
    Derivation("sigmoid", 1 / (1 + sp.exp(-x))).step(sigmoid_exp_form(x), "multiply by e^x")
    Derivation("sigmoid back", sigmoid_exp_form(x)).step(1 / (1 + sp.exp(-x)), "divide by e^x")
    # σ(x) + σ(−x) = 1
    Derivation("symmetry", 1 / (1 + sp.exp(-x)) + 1 / (1 + sp.exp(x))).step(sp.Integer(1), "σ(x)+σ(−x)=1")


def test_sigma_function_rewrites_to_exp_form_for_verification():
    Derivation("sigma def", sigma(x)).step(1 / (1 + sp.exp(-x)), "definition of σ")
    Derivation("sigma symmetry", sigma(x) + sigma(-x)).step(sp.Integer(1), "σ(x)+σ(−x)=1")
    with pytest.raises(DerivationError, match="sigma wrong"):
        Derivation("sigma wrong", sigma(x)).step(sp.exp(-x), "not σ")


def test_sigma_derivative_is_sigma_times_one_minus_sigma():
    assert sp.diff(sigma(x), x) == sigma(x) * (1 - sigma(x))
    assert check_identity(sp.diff(sigma(x), x), sp.diff(1 / (1 + sp.exp(-x)), x))


def test_sigma_prints_as_sigma_in_latex():
    assert sp.latex(sigma(x)) == r"\sigma\left(x\right)"
    assert sp.latex(sigma(x) ** 2) == r"\sigma\left(x\right)^{2}"


def test_dpo_style_log_ratio_rewrite_verifies():
    pi, ref, Z = sp.symbols("pi pi_ref Z", positive=True)
    r = sp.Symbol("r", real=True)
    # π = π_ref exp(r/β)/Z  ⇒  β log(π/π_ref) + β log Z = r
    start = beta * sp.log((ref * sp.exp(r / beta) / Z) / ref) + beta * sp.log(Z)
    Derivation("dpo reward", start).step(r, "solve the optimum for r")


def test_proof_callable_returning_true_passes_and_is_recorded():
    def by_am_gm(previous, new):
        return True

    d = Derivation("inequality", (a + b) / 2).step(sp.sqrt(a * b), "AM ≥ GM", proof=by_am_gm)
    assert d.steps[-1].checked_by == "proof: by_am_gm"
    assert d.result == sp.sqrt(a * b)


def test_proof_callable_returning_sympy_true_passes():
    d = Derivation("sympy true", a).step(a + b, "bigger", proof=lambda prev, new: sp.Gt(new, prev))
    assert d.result == a + b


def test_proof_receives_previous_and_new_expressions():
    seen = []

    def record(previous, new):
        seen.append((previous, new))
        return True

    Derivation("args", a).step(b, "swap", proof=record)
    assert seen == [(a, b)]


@pytest.mark.parametrize("verdict", [False, sp.false, None, 1, "yes"])
def test_proof_callable_not_returning_true_raises(verdict):
    with pytest.raises(DerivationError, match=r"derivation 'strict', step 1 \('claimed'\) does not follow"):
        Derivation("strict", a).step(a + 1, "claimed", proof=lambda prev, new: verdict)


def test_non_callable_proof_is_a_type_error():
    with pytest.raises(TypeError, match="proof must be None or a callable"):
        Derivation("typed", a).step(a, "same", proof="trust me")


def test_derive_builds_the_same_chain_and_accepts_proof_triples():
    d = derive(
        "helper",
        sp.log(a * b),
        (sp.log(a) + sp.log(b), "expand"),
        (sp.log(a) + sp.log(b) + 1, "upper bound", lambda prev, new: True),
        lhs=sp.Symbol("y"),
    )
    assert [s.reason for s in d.steps[1:]] == ["expand", "upper bound"]
    assert d.steps[2].checked_by.startswith("proof: ")
    assert d.lhs == sp.Symbol("y")


def test_derive_raises_on_a_wrong_step():
    with pytest.raises(DerivationError, match=r"derivation 'bad helper', step 2 \('wrong'\)"):
        derive("bad helper", a * b, (b * a, "commute"), (a + b, "wrong"))


def test_start_is_sympified():
    d = Derivation("from string", "a + a")
    assert isinstance(d.start, sp.Expr)
    d.step(2 * sp.Symbol("a"), "collect")


def test_check_identity_true_and_false():
    assert check_identity(sp.log(a * b), sp.log(a) + sp.log(b))
    assert check_identity(1 / (1 + sp.exp(-x)), sigmoid_exp_form(x))
    assert check_identity("sin(t)**2 + cos(t)**2", 1)
    assert not check_identity(x, x + 1)
    assert not check_identity(sp.log(a + b), sp.log(a) + sp.log(b))
    assert not check_identity(sp.log(-a), sp.log(a))


# ---------------------------------------------------------------------------------------------- soundness
# The module promises that log/exp/power rewrites are applied to *positive* symbols. It uses
# expand_log(force=True), powsimp(force=True) and logcombine(force=True), which ignore assumptions,
# so false identities over real or complex symbols verify.
z, w = sp.symbols("z w")  # no assumptions: complex


def test_log_of_square_of_real_symbol_is_not_twice_its_log():
    with pytest.raises(DerivationError):
        Derivation("unsound power rule", sp.log(x**2)).step(2 * sp.log(x), "log x^2 = 2 log x")


def test_log_of_product_of_general_symbols_is_not_an_identity():
    assert not check_identity(sp.log(z * w), sp.log(z) + sp.log(w))


def test_log_exp_of_complex_symbol_is_not_an_identity():
    assert sp.log(sp.exp(2 * sp.pi * sp.I)) == 0  # the counterexample: log(exp(2πi)) = 0 ≠ 2πi
    assert not check_identity(sp.log(sp.exp(z)), z)
