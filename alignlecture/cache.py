"""The course cache directory, and results worth keeping between runs — pools of sampled generations, scored
features — cached in it like the zoo.

``cache_dir()`` is the one place the course's cache lives: ``ALIGNLECTURE_CACHE``, else
``$XDG_CACHE_HOME/alignlecture`` (``~/.cache/alignlecture``); the converted model, the zoo and every ``memo`` result
are stored under it.

``memo(kind, key, compute)`` runs ``compute()`` once for a given key and stores the result under
``cache_dir()/kind/<hash>.pt`` (written to a temporary file, then renamed: a crash leaves nothing half
written); later calls with the same key load it. The key must name everything the result depends on — model,
prompts, seed, decoding settings — so that a changed experiment never reads an old result.

``atomic_directory(target)`` does the same for a directory of files (the zoo's tuned weights, a trainer's
checkpoints): they are written into a temporary directory beside ``target``, which is renamed into place only
once every file is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def cache_dir() -> Path:
    """The course cache: ``ALIGNLECTURE_CACHE`` or ``$XDG_CACHE_HOME/alignlecture`` (~/.cache/alignlecture)."""
    env = os.environ.get("ALIGNLECTURE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alignlecture"


def key_hash(key: dict) -> str:
    """A short hash of a JSON-serialisable key (sorted, so dict order does not matter)."""
    if not isinstance(key, dict):
        raise TypeError(f"key must be a dict of the settings the result depends on; got {type(key).__name__}")
    try:
        blob = json.dumps(key, sort_keys=True, default=str).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"key must be JSON-serialisable (strings, numbers, lists, dicts); {exc}") from exc
    return hashlib.sha256(blob).hexdigest()[:16]


def code_key(*modules: str) -> str:
    """A short hash of the code of the named ``alignlecture`` modules, for keys of results that code computes.

    It hashes each module's syntax tree without docstrings (``code_tree``), so a reworded docstring or comment keeps
    the key and a changed statement changes it (and a cached result computed by the old code is computed again).
    The tree's dump may differ between Python versions: then the results are computed once more, never read across.
    """
    import importlib
    import inspect

    trees = [f"{name}\n{code_tree(inspect.getsource(importlib.import_module(f'{__package__}.{name}')))}"
             for name in sorted(set(modules))]
    return hashlib.sha256("\n".join(trees).encode()).hexdigest()[:16]


def import_closure(*roots: str) -> list[str]:
    """The ``alignlecture`` modules that ``roots`` import, directly or through each other, lazily or not (relative
    imports read off the syntax trees; a name that is not a module of the package, such as a function of
    ``__init__``, is skipped): what ``code_key`` should hash for a result those modules compute."""
    import ast
    import importlib.util

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or importlib.util.find_spec(f"{__package__}.{name}") is None:
            continue
        seen.add(name)
        spec = importlib.util.find_spec(f"{__package__}.{name}")
        for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                todo += [node.module.split(".")[0]] if node.module else [alias.name for alias in node.names]
    return sorted(seen)


def code_tree(source: str) -> str:
    """``ast.dump`` of Python source with every module, class and function docstring removed (comments and layout
    never reach the tree)."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def path(kind: str, key: dict) -> Path:
    """Where ``memo`` stores the result for ``key``."""
    if not kind or "/" in kind or kind.startswith("."):
        raise ValueError(f"kind must be a plain folder name such as 'generations'; got {kind!r}")
    return cache_dir() / kind / f"{key_hash(key)}.pt"


def memo(kind: str, key: dict, compute: Callable[[], object]):
    """``compute()``'s result for ``key``: loaded from the cache, or computed now and stored atomically.

    Either way it comes back as stored, with its tensors on the CPU (whichever device computed them).
    """
    target = path(kind, key)
    if target.is_file():
        return _load(target)
    value = compute()
    with atomic_file(target) as tmp:
        torch.save({"key": key, "value": value}, tmp)
    return _load(target)  # what every later call returns: the stored value, its tensors on the CPU


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """A new temporary file beside ``target`` to write; on leaving the block it replaces ``target``.

    ``with atomic_file(out) as tmp: tmp.write_text(...)``. Each writer gets its own temporary name, so concurrent
    writers never mix their bytes; if the block raises, the temporary file is removed and ``target`` is left as it
    was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(target: Path):
    """A stored result with every tensor on the CPU, whichever device wrote it (a GPU run's cache loads anywhere);
    a caller that computes on a device moves what it needs there."""
    return torch.load(target, map_location="cpu", weights_only=False)["value"]


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A new empty directory beside ``target`` to write into; on leaving the block it replaces ``target``.

    ``with atomic_directory(out) as tmp: write files into tmp``. A ``target`` that exists is removed just before
    the rename (so it is replaced whole, never merged). If the block raises, the temporary directory is deleted and
    ``target`` is left as it was: nothing half written is ever found under ``target``'s name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
