"""Tests for alignlecture.derivations: self-checking chains of sympy steps."""

from __future__ import annotations

import pytest
import sympy as sp

from alignlecture.derivations import Derivation, DerivationError, Lemma, check_identity, derive, log_rules, sigma

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


def am_gm_square():
    """(a + b)/2 − √(ab) written as a square, the reason AM ≥ GM."""
    return (sp.sqrt(a) - sp.sqrt(b)) ** 2 / 2


def test_am_gm_is_an_inequality_proved_by_a_relation_on_its_gap():
    d = Derivation("AM-GM", (a + b) / 2).step(
        sp.sqrt(a * b), "the gap is a square", sp.Ge(am_gm_square(), 0, evaluate=False), relation=">="
    )
    assert d.steps[-1].relation == ">="
    assert d.steps[-1].checked_by.startswith("relation: ")
    assert d.relation == ">="


def test_the_false_equality_am_equals_gm_is_refused_whatever_the_proof():
    for proof in (None, sp.Ge(am_gm_square(), 0, evaluate=False), sp.Eq(am_gm_square(), 0, evaluate=False)):
        with pytest.raises(DerivationError, match="does not follow"):
            Derivation("AM = GM?", (a + b) / 2).step(sp.sqrt(a * b), "AM = GM", proof)


def test_inequality_steps_render_as_le_and_ge_not_equals():
    d = (
        Derivation("bounds", x**2 + 2, lhs=sp.Symbol("f"))
        .step(x**2 + 1, "drop 1", relation=">=")
        .step(x**2, "drop another 1", relation=">")
    )
    latex = d._repr_latex_()
    assert "&\\ge x^{2} + 1" in latex and "&> x^{2}" in latex
    assert latex.count("&=") == 1  # only the start
    assert "  ≥ x**2 + 1" in repr(d) and "  > x**2" in repr(d)
    assert d.relation == ">"
    up = Derivation("up", x**2).step(x**2 + 1, "add 1", relation="≤")
    assert "\\le" in up._repr_latex_() and "  ≤ x**2 + 1" in repr(up)


def test_inequality_without_proof_is_settled_by_the_symbols_assumptions():
    Derivation("square", (x - 1) ** 2 + 3).step(sp.Integer(3), "a square is ≥ 0", relation=">=")
    with pytest.raises(DerivationError, match="sympy cannot decide its sign"):
        Derivation("wrong way", (x - 1) ** 2 + 3).step(sp.Integer(3), "reversed", relation="<")
    with pytest.raises(DerivationError, match="cannot decide"):
        Derivation("unknown sign", x).step(sp.Integer(0), "x ≥ 0?", relation=">=")


def test_relation_about_another_gap_does_not_prove_the_step():
    true_but_unrelated = sp.Ge(b**2, 0, evaluate=False)
    with pytest.raises(DerivationError, match="does not follow"):
        Derivation("AM-GM", (a + b) / 2).step(sp.sqrt(a * b), "unrelated", true_but_unrelated, relation=">=")


def test_a_relation_sympy_already_evaluated_says_nothing_about_the_step():
    with pytest.raises(DerivationError, match="evaluate=False"):
        Derivation("AM-GM", (a + b) / 2).step(sp.sqrt(a * b), "evaluated", sp.Ge(am_gm_square(), 0), relation=">=")


def test_a_non_strict_proof_cannot_prove_a_strict_step():
    with pytest.raises(DerivationError, match="does not follow"):
        Derivation("AM-GM", (a + b) / 2).step(
            sp.sqrt(a * b), "strict?", sp.Ge(am_gm_square(), 0, evaluate=False), relation=">"
        )


def test_a_chain_going_both_up_and_down_is_refused():
    d = Derivation("zigzag", x**2 + 1).step(x**2, "drop 1", relation=">=")
    with pytest.raises(DerivationError, match="both ≤ and ≥"):
        d.step(x**2 + 5, "add 5", relation="<=")
    assert d.relation == ">="


def test_unknown_relation_is_rejected():
    with pytest.raises(ValueError, match="relation must be one of"):
        Derivation("rel", a).step(a, "same", relation="~")


@pytest.mark.parametrize("proof", [lambda prev, new: True, lambda prev, new: sp.true])
def test_a_bare_callable_proof_is_refused_because_it_could_say_yes_to_anything(proof):
    with pytest.raises(TypeError, match="proof must be a Lemma"):
        Derivation("AM = GM", (a + b) / 2).step(sp.sqrt(a * b), "trust me", proof)


def test_non_callable_proof_is_a_type_error():
    with pytest.raises(TypeError, match="proof must be None, a Lemma or a sympy relation"):
        Derivation("typed", a).step(a, "same", proof="trust me")


def test_a_lemma_that_accepts_everything_cannot_be_made():
    with pytest.raises(ValueError, match="accepts its counterexample"):
        Lemma("yes-man", "anything goes", lambda prev, new: True, example=(a, a), counterexample=(a, a + 1))


def test_a_lemma_that_rejects_its_own_example_cannot_be_made():
    with pytest.raises(ValueError, match="rejects its own example"):
        Lemma("no-man", "nothing goes", lambda prev, new: False, example=(a, a), counterexample=(a, a + 1))


def test_log_rules_lemma_proves_the_chain_rule_steps_of_chapters_3_and_5():
    w1, w2 = sp.symbols("w_1 w_2", real=True)
    p1, p2 = sp.symbols("p1_0:3", positive=True), sp.symbols("p2_0:3", positive=True)
    d = Derivation("log of the product", sp.log(sp.Mul(*p1) ** w1 * sp.Mul(*p2) ** w2))
    d.step(w1 * sp.log(sp.Mul(*p1)) + w2 * sp.log(sp.Mul(*p2)), "log of a power and of a product", log_rules)
    d.step(sum(w1 * sp.log(u) + w2 * sp.log(v) for u, v in zip(p1, p2)), "chain rule", log_rules)
    assert [s.checked_by for s in d.steps[1:]] == ["lemma: log_rules"] * 2


def test_log_rules_lemma_refuses_the_log_of_a_sum_and_real_symbols():
    with pytest.raises(DerivationError, match="does not follow"):
        Derivation("log of a sum", sp.log(a + b)).step(sp.log(a) + sp.log(b), "log of a sum?", log_rules)
    with pytest.raises(DerivationError, match="does not follow"):
        Derivation("real power", sp.log(x**2)).step(2 * sp.log(x), "x may be negative", log_rules)


def test_a_lemma_proves_only_steps_of_its_own_relation():
    with pytest.raises(DerivationError, match="proves a '=' step"):
        Derivation("rel", sp.log(a * b)).step(sp.log(a) + sp.log(b), "log rule as ≥?", log_rules, relation=">=")


def test_a_lemma_receives_previous_and_new_expressions():
    seen = []

    def record(previous, new):
        seen.append((previous, new))
        return previous == new

    same = Lemma("same", "identical expressions", record, example=(a, a), counterexample=(a, b))
    Derivation("args", a).step(a, "same", same)
    assert seen[-1] == (a, a)


def test_derive_builds_the_same_chain_and_accepts_proofs_and_relations():
    d = derive(
        "helper",
        sp.log(a * b),
        (sp.log(a) + sp.log(b), "expand"),
        (sp.log(a) + sp.log(b), "log rules", log_rules),
        (sp.log(a) + sp.log(b) - b**2, "subtract a square", None, ">="),
        lhs=sp.Symbol("y"),
    )
    assert [s.reason for s in d.steps[1:]] == ["expand", "log rules", "subtract a square"]
    assert d.steps[2].checked_by == "lemma: log_rules"
    assert d.steps[3].relation == ">="
    assert d.lhs == sp.Symbol("y")
    with pytest.raises(ValueError, match="each step is"):
        derive("bad", a, (a,))


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
# The module promises that log/exp/power rewrites are applied to *positive* symbols only. An earlier version
# used expand_log(force=True), powsimp(force=True) and logcombine(force=True), which ignore assumptions and
# let false identities over real or complex symbols verify; these tests keep that from coming back.
z, w = sp.symbols("z w")  # no assumptions: complex


def test_log_of_square_of_real_symbol_is_not_twice_its_log():
    with pytest.raises(DerivationError):
        Derivation("unsound power rule", sp.log(x**2)).step(2 * sp.log(x), "log x^2 = 2 log x")


def test_log_of_product_of_general_symbols_is_not_an_identity():
    assert not check_identity(sp.log(z * w), sp.log(z) + sp.log(w))


def test_log_exp_of_complex_symbol_is_not_an_identity():
    assert sp.log(sp.exp(2 * sp.pi * sp.I)) == 0  # the counterexample: log(exp(2πi)) = 0 ≠ 2πi
    assert not check_identity(sp.log(sp.exp(z)), z)


def test_a_string_lhs_is_latex_used_as_written():
    lhs = r"\sum_{t=1}^{T} \big[r(s_t,a_t) - \beta\log\pi_\theta(a_t|s_t)\big]"
    latex = Derivation("sum", a).step(a, "same")._repr_latex_()
    assert latex.split("\n")[1].startswith(" &= a")  # no lhs: the chain starts at the expression
    latex = Derivation("sum", a, lhs=lhs).step(a, "same")._repr_latex_()
    assert latex.split("\n")[1].startswith(lhs + " &= a")
    # the garbling this avoids: sympy reads a plain Symbol's name as base_sub, splitting at "_"
    assert sp.latex(sp.Symbol(r"\sum_t r(s_t,a_t)")) != r"\sum_t r(s_t,a_t)"


def test_symbols_named_in_latex_render_as_written():
    ref = sp.Symbol(r"\pi_{\mathrm{ref}}(a_1|s_1)", positive=True)
    assert sp.latex(sp.log(ref)) == r"\log{\left(\pi_{\mathrm{ref}}(a_1|s_1) \right)}"
    assert "piref" not in sp.latex(ref)


def test_math_in_a_reason_is_rendered_as_math_and_prose_as_text():
    d = Derivation("telescope", sp.log(a * b)).step(sp.log(a) + sp.log(b), r"telescoping: $\sum_t \log\pi_t$ (log rules)",
                                                    proof=log_rules)
    latex = d._repr_latex_()
    assert r"&\qquad \text{telescoping: } \sum_t \log\pi_t \text{ (log rules)}" in latex
    assert r"\$" not in latex and "\\_" not in latex.split(r"&\qquad")[1]


def test_a_reason_with_an_unmatched_dollar_is_refused_when_the_step_is_added():
    d = Derivation("cost", a)
    with pytest.raises(ValueError, match=r"reason 'costs \$5' has an unmatched \$: write each formula as \$…\$"):
        d.step(a, "costs $5")
    assert len(d.steps) == 1  # nothing was added


def test_a_long_sum_is_broken_between_terms_and_each_reason_gets_its_own_row():
    from alignlecture.derivations import LINE_CHARS

    x = sp.Symbol("x")
    terms = sum(sp.Symbol(f"a_{i}") * sp.sqrt(x + i) for i in range(12))
    latex = Derivation("long", terms).step(sp.expand(terms), "expand")._repr_latex_()
    rows = latex.split("\\begin{aligned}\n")[1].split("\n\\end{aligned}")[0].split(" \\\\\n")
    assert len(rows) == 7  # 3 lines per copy of the sum, and the reason's row
    assert all(len(r) <= LINE_CHARS + 10 for r in rows)
    assert rows[-1] == "&\\qquad \\text{expand}"
    joined = "".join(r.replace("&\\quad", "").replace("&=", "") for r in rows[:3])
    assert sp.parse_expr is not None and joined.count("\\sqrt") == 12  # no term lost


def test_tex_symbol_prints_its_name_as_latex():
    from alignlecture.derivations import TeX

    assert sp.latex(TeX(r"\partial_\theta\mathcal{L}")) == r"\partial_\theta\mathcal{L}"


def test_implicit_reward_prints_folded_and_differentiates_to_beta_times_the_log_prob_slope():
    from alignlecture.derivations import implicit_reward

    theta, beta = sp.symbols("theta beta", positive=True)
    log_ref = sp.Symbol("log_ref", real=True)
    ell = sp.Function("ell")(theta)
    r = implicit_reward("w", ell, log_ref, beta, theta)
    assert sp.latex(r) == r"\hat r_w" and sp.latex(r**2) == r"\hat r_w^{2}"
    assert sp.simplify(sp.diff(r, theta) - beta * sp.diff(ell, theta)) == 0
