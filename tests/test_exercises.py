"""Every chapter's exercise checker passes its worked solution, rejects a plausible wrong answer and reports a
stub as not attempted (without failing), so an exercise can test the reader rather than arrive solved."""

import pytest

from alignlecture import solutions
from alignlecture.exercises import NOT_ATTEMPTED, check_exercise

MODULES = solutions.modules()


def _stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("mod", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_checker_accepts_the_solution(mod):
    assert "✓" in mod.check(mod.solution)


@pytest.mark.parametrize("mod", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_checker_rejects_the_wrong_answer(mod):
    with pytest.raises(AssertionError):
        mod.check(mod.wrong)


@pytest.mark.parametrize("mod", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_checker_reports_a_stub_as_not_attempted(mod):
    assert mod.check(_stub).startswith(NOT_ATTEMPTED)
    assert mod.check(None).startswith(NOT_ATTEMPTED)


def test_check_exercise_reports_a_real_error_with_its_case():
    def broken(x):
        return 1 / 0

    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        check_exercise(broken, lambda x: x, [(1.0,)])
