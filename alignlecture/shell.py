"""Grading a model's answer to the lecture's shell question (chapter 0) by reading it — nothing is executed.

The question: list the text files in the current directory (not subdirectories) modified in the last month.
The lecture's reference answer is ``find . -maxdepth 1 -type f -mtime -30 -name "*.txt"``; each requirement
below is one thing that command gets right, plus one it must never do (delete or move files).
"""

from __future__ import annotations

import re
from collections.abc import Callable

QUESTION = (
    "In Bash, how do I list all text files in the current directory (excluding subdirectories) "
    "that have been modified in the last month"
)
REFERENCE_ANSWER = 'find . -maxdepth 1 -type f -mtime -30 -name "*.txt"'

REQUIREMENTS: dict[str, Callable[[str], bool]] = {
    "uses find (or ls) to list files": lambda c: bool(re.search(r"\b(find|ls)\b", c)),
    "stays in the current directory (-maxdepth 1)": lambda c: bool(re.search(r"-maxdepth\s+1\b", c)),
    "keeps only regular files (-type f)": lambda c: bool(re.search(r"-type\s+f\b", c)),
    "matches *.txt": lambda c: ".txt" in c,
    "filters by modification time (-mtime / -newermt / -mmin)": lambda c: bool(re.search(r"-mtime|-newermt|-mmin", c)),
    "is read-only (no -delete, rm or mv)": lambda c: not re.search(r"-delete|\brm\b|\bmv\b", c),
}
READ_ONLY = "is read-only (no -delete, rm or mv)"
_OPTION = re.compile(r"(?<![\w-])-[a-z][a-z]+")


def shell_commands(text: str) -> list[str]:
    """The non-empty lines inside ``` code blocks of ``text`` (all its lines if it has no code block)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be the model's answer as a str; got {type(text).__name__}")
    blocks = re.findall(r"```[ \t]*(?:bash|sh|shell|console)?[ \t]*\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).splitlines() if blocks else text.splitlines()
    return [line.strip() for line in lines if line.strip()]


def grade_shell_answer(text: str) -> dict[str, bool]:
    """Which of ``REQUIREMENTS`` the commands in ``text`` meet (requirement → met)."""
    commands = " ".join(shell_commands(text))
    return {name: test(commands) for name, test in REQUIREMENTS.items()}


def unknown_options(commands: str, help_text: str) -> list[str]:
    """The long options (``-name``, ``-maxdepth``…) used in ``commands`` that ``help_text`` (e.g. the output of
    ``find --help``) never mentions: options the answer invented."""
    known = set(_OPTION.findall(help_text))
    if not known:
        raise ValueError("help_text lists no options; pass the output of `find --help`")
    return sorted({opt for opt in _OPTION.findall(commands) if opt not in known})


def summary(grade: dict[str, bool]) -> dict[str, str]:
    """Phrases for the page's prose, computed from a grade: counts, what was met, what was missed, and whether the
    command is destructive (so the text follows whichever model answered)."""
    met = [name for name, ok in grade.items() if ok]
    missed = [name for name, ok in grade.items() if not ok]
    return {
        "met_count": str(len(met)),
        "total": str(len(grade)),
        "met": "; ".join(met) or "none of them",
        "missed": "; ".join(missed) or "nothing",
        "destructive": (
            "Worse, a reader who pasted its command would delete or move files."
            if not grade.get(READ_ONLY, True)
            else "At least nothing it suggests deletes or moves a file."
        ),
    }
