"""Chapter 0's shell-answer grader reads commands out of an answer and grades them against the lecture's."""

import pytest

from alignlecture import shell

DESTRUCTIVE = 'Use this:\n```bash\nfind -name "*.txt" -delete -maxlen 30\n```\nIt lists the files.'
HELP = "Usage: find [path...] [expression]\n tests: -name PATTERN -type [bcdpflsD] -mtime N -maxdepth LEVELS -delete"


def test_the_lecture_reference_answer_meets_every_requirement():
    grade = shell.grade_shell_answer(f"```bash\n{shell.REFERENCE_ANSWER}\n```")
    assert all(grade.values()), grade


def test_a_deleting_answer_fails_the_read_only_requirement_and_the_missing_options():
    grade = shell.grade_shell_answer(DESTRUCTIVE)
    assert grade[shell.READ_ONLY] is False
    assert grade["matches *.txt"] and not grade["stays in the current directory (-maxdepth 1)"]
    words = shell.summary(grade)
    assert words["met_count"] == "2" and words["total"] == str(len(shell.REQUIREMENTS))
    assert words["destructive"].startswith("Worse")


def test_shell_commands_reads_code_blocks_only_when_there_are_some():
    assert shell.shell_commands("Run\n```sh\nls -l\n\n```\nthen relax") == ["ls -l"]
    assert shell.shell_commands("ls *.txt\n  \nfind .") == ["ls *.txt", "find ."]
    with pytest.raises(TypeError, match="text must be the model's answer"):
        shell.shell_commands(None)


def test_unknown_options_are_the_ones_the_help_text_never_mentions():
    assert shell.unknown_options('find -name "*.txt" -delete -maxlen 30', HELP) == ["-maxlen"]
    with pytest.raises(ValueError, match="lists no options"):
        shell.unknown_options("find -name x", "no options here")


def test_summary_of_a_perfect_grade_says_nothing_was_missed():
    words = shell.summary({name: True for name in shell.REQUIREMENTS})
    assert words["missed"] == "nothing" and words["destructive"].startswith("At least")
