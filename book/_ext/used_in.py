"""Append to every API entry the chapters that use it, computed from the notebooks, so the line never goes stale.

On ``autodoc-process-docstring`` each documented function, class or method gets a last paragraph

    *Used in:* chapter 2 (source shown in *Road 1, step 3 …*), chapter 7.

linking each chapter page, and — where a chapter shows the object's source with ``show_source(...)`` beside its
equation, under a labelled section — that section too. No docstring carries this by hand.

What counts as a use, read from the code cells' syntax (nothing is executed):
- a name imported from the package and then used (``from alignlecture.bon import tilted`` … ``tilted(...)``);
- an attribute path from an imported package module or class (``bon.tilted``, ``al.zoo.load_tuned``,
  ``ToyWorld.optimal_policy``);
- ``.method`` on any object, when a class the notebook uses defines that public method (``world.optimal_policy``
  in a notebook that uses ``ToyWorld``) — a heuristic: two such classes sharing a method name both get the line.
Entries that no chapter uses get no line. The notebooks are recorded as dependencies of the API page.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from pathlib import Path

HEADING = re.compile(r"^#{1,6}\s")
LABEL = re.compile(r"^\(([\w.-]+)\)=\s*$")
CHAPTER = re.compile(r"^(\d+)([a-z]?)_")
SKIP = ("alignlecture._book", "alignlecture.solutions")


def _key(obj) -> tuple[str, str] | None:
    target = getattr(obj, "fget", obj)
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not (module and qualname) or not module.startswith("alignlecture") or module.startswith(SKIP):
        return None
    return module, qualname


def _resolve(dotted: str):
    """The package object a dotted path names, or None (a data attribute, an instance's method, a typo)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = inspect.getattr_static(obj, attr, None) if inspect.isclass(obj) else getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def import_aliases(tree: ast.AST, aliases: dict[str, str] | None = None) -> dict[str, str]:
    """The names a cell's imports bind to package objects, added to ``aliases``: ``{"ge": "alignlecture.entanglement"}``."""
    aliases = {} if aliases is None else aliases
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alignlecture"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("alignlecture"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    return aliases


def qualified_name(dotted: str) -> str:
    """The name autodoc documents ``dotted`` under (defining module + qualified name); ImportError if it names nothing."""
    obj = _resolve(dotted)
    if obj is None:
        raise ImportError(f"{dotted} names no package object")
    key = _key(obj)
    return ".".join(key) if key else dotted


def _code(source: str) -> ast.Module:
    lines = ["" if re.match(r"\s*[%!]", line) else line for line in source.splitlines()]  # IPython magics
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return ast.Module(body=[], type_ignores=[])


def notebook_uses(path: Path) -> dict[tuple[str, str], str | None]:
    """``{(module, qualname): label}`` for every package object the notebook uses; ``label`` is the section label
    under which the notebook shows the object's source with ``show_source``, else None."""
    cells = json.loads(path.read_text())["cells"]
    trees, aliases = [], {}
    label = None
    for cell in cells:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            previous = ""
            for line in text.splitlines():
                if HEADING.match(line):
                    match = LABEL.match(previous.strip())
                    label = match.group(1) if match else None
                if line.strip():
                    previous = line
            continue
        if cell["cell_type"] != "code":
            continue
        tree = _code(text)
        trees.append((tree, label))
        import_aliases(tree, aliases)

    uses: dict[tuple[str, str], str | None] = {}
    attrs: set[str] = set()

    def record(obj, shown_under=None):
        key = _key(obj)
        if key and (inspect.isfunction(obj) or inspect.isclass(obj) or isinstance(obj, property)):
            uses[key] = uses.get(key) or shown_under

    for tree, section in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                attrs.add(node.attr)
            if not isinstance(node, (ast.Name, ast.Attribute)):
                continue
            dotted = _dotted(node)
            head = (dotted or "").split(".")[0]
            if head not in aliases:
                continue
            obj = _resolve(aliases[head] + dotted[len(head):])
            record(obj)
        for node in ast.walk(tree):  # what show_source shows, under the section it is shown in
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "show_source" and node.args:
                dotted = _dotted(node.args[0]) or ""
                head = dotted.split(".")[0]
                if head in aliases:
                    record(_resolve(aliases[head] + dotted[len(head):]), section)
    classes = [_resolve(".".join(k)) for k in list(uses)]
    for cls in filter(inspect.isclass, classes):
        for name, member in vars(cls).items():
            if not name.startswith("_") and name in attrs and (inspect.isfunction(member) or isinstance(member, property)):
                record(member)
    return uses


def chapter_name(path: Path) -> str | None:
    match = CHAPTER.match(path.stem)
    return f"chapter {int(match.group(1))}{match.group(2)}" if match else None


def collect(srcdir: Path) -> dict[tuple[str, str], list[tuple[Path, str | None]]]:
    """For every package object: the notebooks that use it, in book order, with the section showing its source."""
    found: dict[tuple[str, str], list[tuple[Path, str | None]]] = {}
    for path in sorted((srcdir / "notebooks").glob("*.ipynb")):
        for key, label in notebook_uses(path).items():
            found.setdefault(key, []).append((path, label))
    return found


def used_in_line(places: list[tuple[Path, str | None]]) -> str:
    parts = []
    for path, label in places:
        doc = f"/notebooks/{path.stem}"
        name = chapter_name(path)
        link = f":doc:`{name} <{doc}>`" if name else f":doc:`{doc}`"
        parts.append(f"{link} (source shown in :ref:`{label}`)" if label else link)
    return "*Used in:* " + ", ".join(parts) + "."


def builder_inited(app) -> None:
    app.env.alignlecture_used_in = collect(Path(app.srcdir))


def process_docstring(app, what, name, obj, options, lines) -> None:
    if what not in {"function", "class", "method", "property"}:
        return
    places = getattr(app.env, "alignlecture_used_in", {}).get(_key(obj) or ("", ""))
    if not places:
        return
    for path, _ in places:
        app.env.note_dependency(str(path))
    lines.extend(["", used_in_line(places)])


def setup(app):
    app.connect("builder-inited", builder_inited)
    app.connect("autodoc-process-docstring", process_docstring, priority=600)  # after napoleon
    return {"parallel_read_safe": True, "parallel_write_safe": True}
