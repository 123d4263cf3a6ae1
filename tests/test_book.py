"""Tests for the book: table of contents, install cells, notebook checks, citations, stored outputs, the build."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

import alignlecture
from alignlecture._book import install_cell

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BOOK_MD = sorted((ROOT / "book").glob("*.md"))
CHECKER = ROOT / "tools" / "check_notebooks.py"
PYTHON = sys.executable  # the venv's python when the suite runs as documented
IMAGE_OR_WIDGET = ("application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg", "image/svg+xml", "image/gif")
CITE = re.compile(r"\{(?:foot)?cite(?::[a-z]+)?\}`([^`]*)`")
HEX_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{4,}")


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _code_cells(path: Path):
    return [c for c in _read(path).cells if c.cell_type == "code"]


def _toc_files(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        if "file" in node:
            found.append(node["file"])
        if "root" in node:
            found.append(node["root"])
        for value in node.values():
            if isinstance(value, (dict, list)):
                found += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            found += _toc_files(item)
    return found


def _resolve(entry: str) -> list[Path]:
    return [p for p in (ROOT / f"{entry}.ipynb", ROOT / f"{entry}.md") if p.is_file()]


def test_there_are_notebooks():
    assert NOTEBOOKS


# ---------------------------------------------------------------------------------------------- table of contents
def test_toc_lists_only_existing_files():
    entries = _toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    assert entries
    missing = [e for e in entries if not _resolve(e)]
    assert missing == []


def test_toc_lists_every_notebook():
    entries = _toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    listed = {p for e in entries for p in _resolve(e)}
    assert [nb for nb in NOTEBOOKS if nb not in listed] == []


# ---------------------------------------------------------------------------------------------- install cell
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_generated_install_cell(path):
    assert _code_cells(path)[0].source == install_cell()


def test_install_cell_installs_this_version_and_says_so():
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    url, branch = repo["url"].rstrip("/"), repo["branch"]
    version = alignlecture.__version__
    cell = install_cell()
    assert f'VERSION, REPO = "{version}", "git+{url}"' in cell
    assert f'for ref in (f"v{{VERSION}}", "{branch}"):' in cell  # the tag of this version first, the branch after
    assert max(map(len, cell.splitlines())) <= 100  # fits the page's code column


def _run_install_cell(monkeypatch, returncodes, installed_version):
    """Execute the install cell as on Colab, with pip replaced by a stub that fails or succeeds in turn."""
    import subprocess
    import types

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd[-1])
        return types.SimpleNamespace(returncode=returncodes[len(calls) - 1], stderr="ERROR: no such ref\n")

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(alignlecture, "__version__", installed_version)
    exec(compile(install_cell(), "install cell", "exec"), {})
    return calls


def test_install_cell_tries_the_version_tag_first(monkeypatch, capsys):
    version = alignlecture.__version__
    calls = _run_install_cell(monkeypatch, [0], version)
    assert calls == [f"alignlecture @ git+{alignlecture._book.repository_url()}@v{version}"]
    assert capsys.readouterr().out.strip() == f"installed alignlecture {version} from v{version}; this page is {version}"


def test_install_cell_falls_back_to_the_branch_and_reports_a_total_failure(monkeypatch, capsys):
    version = alignlecture.__version__
    branch = alignlecture._book.repository_branch()
    assert _run_install_cell(monkeypatch, [1, 0], version)[-1].endswith(f"@{branch}")
    assert f"from {branch};" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="(?s)pip could not install git.*no such ref"):
        _run_install_cell(monkeypatch, [1, 1], version)


def test_install_cell_stops_when_another_version_is_imported(monkeypatch):
    with pytest.raises(AssertionError, match="Restart session"):
        _run_install_cell(monkeypatch, [0], "0.0.1")


# ---------------------------------------------------------------------------------------------- check_notebooks.py
def _check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(CHECKER), *map(str, paths)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_check_notebooks_accepts_the_committed_notebooks():
    result = _check(*NOTEBOOKS)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_notebooks_without_arguments_is_a_usage_error():
    result = _check()
    assert result.returncode == 2
    assert "no notebooks given" in result.stderr


def _broken_copy(tmp_path: Path, break_it) -> Path:
    nb = _read(NOTEBOOKS[-1])
    break_it([c for c in nb.cells if c.cell_type == "code"])
    out = tmp_path / NOTEBOOKS[-1].name
    nbformat.write(nb, out)
    return out


def _inject_error(code):
    code[2].outputs.append(
        nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])
    )


def _change_first_cell(code):
    code[0].source = code[0].source.replace('VERSION, REPO = "', 'VERSION, REPO = "0.0.', 1)
    assert code[0].source != install_cell()


def _unexecute(code):
    code[2].execution_count = None


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (_inject_error, r"code cell 2 stores an error: ZeroDivisionError: division by zero"),
        (_change_first_cell, r"first code cell is not the generated Colab install cell"),
        (_unexecute, r"code cell 2 was never executed"),
    ],
    ids=["error-output", "changed-install-cell", "unexecuted-cell"],
)
def test_check_notebooks_reports_a_broken_notebook(tmp_path, break_it, message):
    result = _check(_broken_copy(tmp_path, break_it))
    assert result.returncode == 1
    assert re.search(message, result.stderr), result.stderr


def test_check_notebooks_reports_a_notebook_colab_would_open_on_a_cpu(tmp_path):
    nb = _read(NOTEBOOKS[-1])
    del nb.metadata["accelerator"]
    nb.metadata["colab"].pop("gpuType")
    out = tmp_path / NOTEBOOKS[-1].name
    nbformat.write(nb, out)
    result = _check(out)
    assert result.returncode == 1
    assert "metadata.accelerator is not \"GPU\"" in result.stderr
    assert "metadata.colab.gpuType is not \"T4\"" in result.stderr


def test_glue_without_the_book_toolchain_still_shows_the_value(monkeypatch):
    """On Colab (no myst_nb) a chapter's glue displays the number instead of failing at import."""
    import IPython.display

    from alignlecture._book import glue

    shown = []
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # `from myst_nb import …` now raises ImportError
    monkeypatch.setattr(IPython.display, "display", lambda value: shown.append(value))
    glue("gain", "0.12")
    glue("hidden", "3", display=False)
    assert shown == ["0.12"]


def test_check_notebooks_accepts_an_unbroken_copy(tmp_path):
    result = _check(_broken_copy(tmp_path, lambda code: None))
    assert result.returncode == 0, result.stderr


def _png_cell(cell, alt=None):
    """Give ``cell`` a stored figure (a 1×1 PNG) and, when ``alt`` is given, myst-nb's alt text for it."""
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    cell.outputs.append(nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}))
    cell.metadata.pop("mystnb", None)
    if alt is not None:
        cell.metadata["mystnb"] = {"image": {"alt": alt}}


@pytest.mark.parametrize("alt", [None, "", "   "], ids=["no-alt", "empty-alt", "blank-alt"])
def test_check_notebooks_reports_a_figure_without_alt_text(tmp_path, alt):
    result = _check(_broken_copy(tmp_path, lambda code: _png_cell(code[2], alt)))
    assert result.returncode == 1
    assert re.search(r"code cell 2 outputs a figure \(image/png\) with no alt text: .*\"mystnb\": \{\"image\": "
                     r"\{\"alt\"", result.stderr), result.stderr


def test_check_notebooks_accepts_a_figure_with_alt_text(tmp_path):
    def with_figure(code):
        code[0].source = install_cell()  # so that only the figure is under test, whatever the stored install cell
        _png_cell(code[2], "A line rising: the loss falls.")

    result = _check(_broken_copy(tmp_path, with_figure))
    assert result.returncode == 0, result.stderr


def test_check_notebooks_reports_a_chapter_figure_whose_alt_text_was_removed(tmp_path):
    nb = _read(ROOT / "notebooks" / "05_q_function.ipynb")
    figures = [i for i, c in enumerate(c for c in nb.cells if c.cell_type == "code")
               if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert figures
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i in figures:
        assert code[i].metadata["mystnb"]["image"]["alt"].strip()  # the committed chapter has it
    del code[figures[0]].metadata["mystnb"]["image"]["alt"]
    out = tmp_path / "05_q_function.ipynb"
    nbformat.write(nb, out)
    result = _check(out)
    assert result.returncode == 1
    assert f"code cell {figures[0]} outputs a figure (image/png) with no alt text" in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------- citations
def _bib_keys() -> set[str]:
    from pybtex.database import parse_file

    return set(parse_file(str(ROOT / "book" / "references.bib"), bib_format="bibtex").entries.keys())


def _cited_keys() -> dict[str, set[str]]:
    texts = {p.name: p.read_text() for p in BOOK_MD}
    for path in NOTEBOOKS:
        texts[path.name] = "\n".join(c.source for c in _read(path).cells if c.cell_type == "markdown")
    return {
        name: {key.strip() for group in CITE.findall(text) for key in group.split(",") if key.strip()}
        for name, text in texts.items()
    }


def test_citation_regex_reads_comma_separated_keys():
    text = "see {cite}`a2020, b2021` and {footcite}`c2022` and {cite:p}`d2023`"
    assert {k.strip() for g in CITE.findall(text) for k in g.split(",")} == {"a2020", "b2021", "c2022", "d2023"}


def test_every_cited_key_is_in_the_bibliography():
    cited = _cited_keys()
    assert "bradley1952rank" in set().union(*cited.values())
    keys = _bib_keys()
    missing = {name: sorted(used - keys) for name, used in cited.items() if used - keys}
    assert missing == {}


# ---------------------------------------------------------------------------------------------- stored outputs
def _ignores_output(cell) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return "NBVAL_IGNORE_OUTPUT" in cell.source or "nbval-ignore-output" in tags


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ignored_outputs_are_only_widgets_or_images(path):
    for i, cell in enumerate(_code_cells(path)):
        if not _ignores_output(cell):
            continue
        assert cell.outputs, f"code cell {i} ignores an output it does not have"
        for out in cell.outputs:
            kinds = set(out.get("data", {}))
            assert kinds & set(IMAGE_OR_WIDGET), f"code cell {i} ignores a {out.output_type} output {sorted(kinds)}"


def _texts(out) -> list[str]:
    if out.output_type == "stream":
        return [out.text]
    if out.output_type == "error":
        return [out.evalue, *out.traceback]
    data = out.get("data", {})
    return [v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if k.startswith("text/")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_hold_no_memory_addresses(path):
    found = [
        (i, m)
        for i, cell in enumerate(_code_cells(path))
        for out in cell.outputs
        for text in _texts(out)
        for m in HEX_ADDRESS.findall(text)
    ]
    assert found == []


def test_memory_address_pattern_matches_a_repr():
    assert HEX_ADDRESS.search(repr(object()))


# ---------------------------------------------------------------------------------------------- the build
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The whole book built once, as `make book` builds it (-W -n: any warning fails); returns _build/html."""
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, ALIGNLECTURE_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    jupyter_book = Path(PYTHON).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--builder", "html", "-W", "-n", "--keep-going",
         "--path-output", str(out)],
        capture_output=True, text=True, cwd=out, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return out / "_build" / "html"


def _pages(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)


def test_book_builds_without_warnings_with_footnotes_and_mathjax(built):
    page = (built / "notebooks" / "01_preliminaries.html").read_text()
    # {footcite} renders a footnote holding the reference, linked from the text
    assert 'id="footcite-bradley1952rank"' in page
    assert 'href="#footcite-bradley1952rank"' in page
    assert "Rank analysis of incomplete block designs" in page
    # sympy's text/latex outputs render as MathJax, not as PNG
    latex_outputs = sum(
        "text/latex" in out.get("data", {}) for c in _code_cells(ROOT / "notebooks" / "01_preliminaries.ipynb")
        for out in c.outputs
    )  # fmt: skip
    assert latex_outputs > 0
    assert page.count('class="output text_latex math') == latex_outputs
    assert "\\begin{aligned}" in page


# ---------------------------------------------------------------------------------------------- the built pages
ATTR_URL = re.compile(r'\b(?:href|src)="([^"]*)"')
MATH_CDN = re.compile(r"(?:cdn\.jsdelivr\.net|cdnjs\.cloudflare\.com|unpkg\.com)/[^\"']*mathjax", re.I)


def test_math_is_served_from_the_book_itself(built):
    for page in _pages(built):
        text = page.read_text()
        assert not MATH_CDN.search(text), f"{page.relative_to(built)} loads MathJax from a CDN"
        if 'class="math' in text:
            assert "_static/mathjax/tex-mml-chtml.js" in text, f"{page.relative_to(built)} does not load MathJax"
    assert (built / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert any((built / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def test_every_internal_link_image_and_static_file_resolves(built):
    ids: dict[Path, set[str]] = {}
    problems = []
    for page in _pages(built):
        text = page.read_text()
        ids[page] = set(re.findall(r'\bid="([^"]+)"', text))
    for page in _pages(built):
        for url in ATTR_URL.findall(page.read_text()):
            if re.match(r"^(?:[a-z]+:|//|#$)", url) or not url:
                continue
            path, _, fragment = url.partition("#")
            path = path.split("?")[0]
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                problems.append(f"{page.relative_to(built)}: {url} does not exist")
            elif fragment and target in ids and fragment not in ids[target]:
                problems.append(f"{page.relative_to(built)}: {url}: no id {fragment!r} there")
    assert problems == []


def test_toc_and_pages_agree(built):
    entries = _toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    built_pages = {str(p.relative_to(built).with_suffix("")) for p in _pages(built)}
    assert [e for e in entries if e not in built_pages] == []
    extra = built_pages - set(entries) - {"index", "genindex", "search", "py-modindex"}
    assert extra == set(), f"pages built but not in the table of contents: {sorted(extra)}"


def test_colab_buttons_open_this_repository_on_the_configured_branch(built):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
    branch = config["repository"]["branch"]
    for nb in NOTEBOOKS:
        page = (built / "notebooks" / f"{nb.stem}.html").read_text()
        want = f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{nb.name}"
        assert want in page, f"{nb.name}: no Colab button to {want}"


def test_publish_workflow_builds_with_make_book_for_the_configured_repository():
    workflow = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    spec = yaml.safe_load(workflow)
    steps = [step for job in spec["jobs"].values() for step in job["steps"]]
    assert any(str(step.get("run", "")).startswith("make book") for step in steps)
    assert any(step.get("uses", "").startswith("actions/upload-pages-artifact") for step in steps)
    assert any(step.get("uses", "").startswith("actions/deploy-pages") for step in steps)
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    assert f"repository {url})" in workflow
    owner, name = url.removeprefix("https://github.com/").split("/")
    assert f"https://{owner}.github.io/{name}/" in workflow


def _measured(markdown: str, allowed=()):
    sys.path.insert(0, str(ROOT / "tools"))
    from check_notebooks import measured_numbers

    return measured_numbers(markdown, allowed)


def test_prose_numbers_must_be_glued_or_in_math():
    assert _measured("The gap closes to 0.12, about 87 % of it, 3× faster, 250 times smaller.") == [
        "0.12", "87 %", "3×", "250 times"
    ]
    # glued, in math, in code, in a link target or a role: not prose
    assert _measured(
        "Gain {glue:text}`gain` at $\\beta = 0.1$, `lr=2e-4`, [paper](https://x.org/2409.19605), {cite}`a2024`.\n"
        "$$\\ln 2 \\approx 0.693$$\n```python\nx = 0.5\n```"
    ) == []
    assert _measured("Chapter 3 uses 20 prompts.") == []  # counts and section numbers are not measurements
    assert _measured("The slide's w = (0.5, 0.8)", allowed=["0.5", "0.8"]) == []


# ---------------------------------------------------------------------------------------------- API reference
def _api_modules() -> list[str]:
    return re.findall(r"\.\. automodule:: (alignlecture[\w.]*)", (ROOT / "book" / "api.md").read_text())


def test_api_reference_covers_every_public_module():
    import pkgutil

    documented = set(_api_modules())
    public = {f"alignlecture.{m.name}" for m in pkgutil.iter_modules(alignlecture.__path__) if not m.name.startswith("_")}
    public -= {"alignlecture.solutions"}  # the exercises' worked answers are shown in their chapters, not here
    assert sorted(public - documented) == []


def test_every_public_function_and_class_has_a_docstring():
    import importlib
    import inspect

    missing = []
    for name in _api_modules():
        if name == "alignlecture":
            continue
        mod = importlib.import_module(name)
        for attr, obj in vars(mod).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (obj.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    assert missing == []


INLINE_SCRIPT = re.compile(r"^\s*<script>.*</script>\s*$")


def _inline_scripts(page: str) -> list[str]:
    return [line.strip() for line in page.splitlines() if INLINE_SCRIPT.match(line)]


def _mini_book(tmp_path: Path, extensions: list[str]) -> str:
    """index.html of a one-page Sphinx project with ``extensions`` (book/_ext importable), built in this process."""
    from sphinx.application import Sphinx
    from sphinx.util.docutils import docutils_namespace

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir(parents=True)
    (src / "conf.py").write_text(f"extensions = {extensions!r}\n")
    (src / "index.rst").write_text("Page\n====\n\ntext\n")
    with docutils_namespace():  # as sphinx-build does: directives and roles registered here are dropped after
        app = Sphinx(str(src), str(src), str(out), str(tmp_path / "doctrees"), "html", status=None, warning=None,
                     freshenv=True)
        app.build()
    return (out / "index.html").read_text()


@pytest.mark.parametrize("extensions", [["sphinx_togglebutton", "sphinx_thebe"], ["sphinx_thebe", "sphinx_togglebutton"]])
def test_inline_scripts_added_after_the_builder_starts_are_written_once(tmp_path, extensions):
    import sphinx

    fixed = _inline_scripts(_mini_book(tmp_path / "fixed", [*extensions, "inline_scripts"]))
    assert any(s.startswith("<script>const THEBE_JS_URL") for s in fixed)
    assert any(s.startswith("<script>var togglebuttonSelector") for s in fixed)
    assert len(fixed) == len(set(fixed)), fixed
    if sphinx.version_info < (8, 2):  # the cause: without the extension Sphinx 7 writes these scripts twice
        plain = _inline_scripts(_mini_book(tmp_path / "plain", extensions))
        assert sorted(set(plain)) == sorted(fixed) and len(plain) > len(fixed)


def test_built_pages_declare_each_inline_script_once(built):
    for page in _pages(built):
        inline = _inline_scripts(page.read_text())
        assert len(inline) == len(set(inline)), f"{page.relative_to(built)} repeats an inline script"


# ---------------------------------------------------------------------------------------------- chapters ↔ API
API_ROLE = re.compile(r"\{py:\w+\}`(?:[^`<]*<)?~?([\w.]+?)(?:\(\))?>?`")


def _used_in():
    """book/_ext/used_in.py, the extension that reads notebooks' imports (one reader for the build and the tests)."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import used_in

    return used_in


def _aliases(nb) -> dict[str, str]:
    """Every name a notebook's code cells bind to a package object: ``{"bon": "alignlecture.bon", ...}``."""
    import ast

    names: dict[str, str] = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            _used_in().import_aliases(ast.parse(cell.source), names)
    return names


def _canonical(dotted: str) -> str:
    """The name autodoc documents ``dotted`` under: its defining module and qualified name."""
    return _used_in().qualified_name(dotted)


def _shown_objects(nb) -> list[str]:
    """The package objects a notebook passes to ``show_source(...)``, fully qualified."""
    import ast

    names, shown = _aliases(nb), []
    for cell in nb.cells:
        if cell.cell_type != "code" or "show_source(" not in cell.source:
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "show_source" and node.args:
                dotted = ast.unparse(node.args[0])
                head, _, rest = dotted.partition(".")
                assert head in names, f"show_source({dotted}): {head!r} is not imported from alignlecture"
                shown.append(_canonical(names[head] + (f".{rest}" if rest else "")))
    return shown


def _linked(nb) -> set[str]:
    return {m for c in nb.cells if c.cell_type == "markdown" for m in API_ROLE.findall(c.source)}


def test_shown_objects_and_links_are_read_as_qualified_names():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from alignlecture import bon as b\nfrom alignlecture.toy import ToyWorld\n"
                                  "show_source(b.tilted)\nshow_source(ToyWorld.optimal_policy)"),
        nbformat.v4.new_markdown_cell("{py:func}`~alignlecture.bon.tilted` and "
                                      "{py:meth}`the optimum <alignlecture.toy.ToyWorld.optimal_policy>`"),
    ]
    assert _shown_objects(nb) == ["alignlecture.bon.tilted", "alignlecture.toy.ToyWorld.optimal_policy"]
    assert _linked(nb) == {"alignlecture.bon.tilted", "alignlecture.toy.ToyWorld.optimal_policy"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_shown_function_is_linked_to_its_api_entry(path):
    """A chapter that shows a function's source links its API entry ({py:func} etc.) from its prose. Private
    helpers (a leading underscore) have no API entry; the public function that calls them is linked instead."""
    nb = _read(path)
    public = [name for name in _shown_objects(nb) if not any(p.startswith("_") for p in name.split("."))]
    missing = sorted(set(public) - _linked(nb))
    assert missing == [], f"{path.name} shows the source of {missing} but links no API entry for them"


# ---------------------------------------------------------------------------------------------- API → chapters
def _used_in():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import used_in

    return used_in


def test_used_in_reads_imports_attributes_methods_and_shown_sections(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from alignlecture import bon as b\nfrom alignlecture.toy import ToyWorld\n"
                                  "from alignlecture.dpo import dpo_loss\nworld = ToyWorld()\n"
                                  "world.optimal_policy\nb.kl_divergence(p, q)\n%matplotlib inline"),
        nbformat.v4.new_markdown_cell("(sec-tilt)=\n## The tilt\n\ntext"),
        nbformat.v4.new_code_cell("show_source(b.tilted)"),
        nbformat.v4.new_markdown_cell("## Unlabelled\n"),
        nbformat.v4.new_code_cell("show_source(b.bon_kl_bound)"),
    ]
    path = tmp_path / "06_x.ipynb"
    nbformat.write(nb, path)
    uses = _used_in().notebook_uses(path)
    assert uses == {
        ("alignlecture.toy", "ToyWorld"): None,
        ("alignlecture.toy", "ToyWorld.optimal_policy"): None,
        ("alignlecture.bon", "kl_divergence"): None,
        ("alignlecture.bon", "tilted"): "sec-tilt",
        ("alignlecture.bon", "bon_kl_bound"): None,
    }  # dpo_loss is imported but never used
    assert _used_in().used_in_line([(path, "sec-tilt")]) == (
        "*Used in:* :doc:`chapter 6 </notebooks/06_x>` (source shown in :ref:`sec-tilt`)."
    )


def _api_entry(page: str, name: str) -> str:
    start = page.index(f'id="{name}"')
    end = page.find('<dt class="sig sig-object', start + 1)
    return page[start : end if end > 0 else None]


@pytest.mark.parametrize(
    ("name", "chapters", "section"),
    [
        ("alignlecture.dpo.dpo_loss", ["02_rlhf_and_dpo"], None),
        ("alignlecture.bon.bon_kl_bound", ["06_best_of_n", "06b_reward_guided_search"], "06_best_of_n.html#ch6-kl-bound"),
        ("alignlecture.qfunction.soft_backup", ["05_q_function"], "05_q_function.html#ch5-bellman"),
        ("alignlecture.toy.ToyWorld.optimal_policy", ["02_rlhf_and_dpo", "03_logit_mixing"], "02_rlhf_and_dpo.html#ch2-gibbs"),
    ],
)
def test_api_entries_name_the_chapters_that_use_them(built, name, chapters, section):
    api = built / "book" / "api.html"
    entry = _api_entry(api.read_text(), name)
    assert "<em>Used in:</em>" in entry, f"{name}: no 'Used in' line"
    targets = re.findall(r'href="\.\./notebooks/([^"]+)"', entry)
    for chapter in chapters:
        assert f"{chapter}.html" in targets, f"{name}: no link to {chapter}"
    for target in targets:
        path, _, fragment = target.partition("#")
        page = built / "notebooks" / path
        assert page.is_file(), f"{name} links {target}, which was not built"
        if fragment:
            assert f'id="{fragment}"' in page.read_text(), f"{name} links {target}: no such section"
    if section:
        assert section in targets, f"{name}: does not link the section showing its source ({section})"


def test_api_entries_no_chapter_uses_get_no_used_in_line(built):
    entry = _api_entry((built / "book" / "api.html").read_text(), "alignlecture.bon.check_n")
    assert "Used in" not in entry


# ---------------------------------------------------------------------------------------------- check_html.py
def _page_with(tmp_path: Path, built: Path, equations: list[str]) -> Path:
    import shutil

    root = tmp_path / "html"
    shutil.copytree(built / "_static", root / "_static")
    body = "".join(f'<div style="width: 400px">\\[{tex}\\]</div>' for tex in equations)
    (root / "page.html").write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="stylesheet" href="_static/alignlecture.css">'
        '<script defer src="_static/mathjax/tex-mml-chtml.js"></script></head>'
        f"<body><main>{body}</main></body></html>"
    )
    return root


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (see tools/check_html.py)")
def test_check_html_reports_a_display_equation_wider_than_its_column(tmp_path, built):
    wide = " + ".join(f"x_{{{i}}}^{{2}}" for i in range(40))
    root = _page_with(tmp_path, built, [wide, r"a \\ b"])
    result = subprocess.run([PYTHON, str(ROOT / "tools" / "check_html.py"), str(root), "--screenshots",
                             str(tmp_path / "shots")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(problems) == 1, problems
    assert re.search(r"page\.html: equation wider than the column, \d+ px in 40\d px, in the text: .*x_\{0\}", problems[0])


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (see tools/check_html.py)")
def test_check_html_accepts_the_same_equation_broken_over_aligned_lines(tmp_path, built):
    lines = r" \\ ".join("&+ " + " + ".join(f"x_{{{i}}}^{{2}}" for i in range(j, j + 8)) for j in range(0, 40, 8))
    root = _page_with(tmp_path, built, [rf"\begin{{aligned}} s {lines} \end{{aligned}}"])
    result = subprocess.run([PYTHON, str(ROOT / "tools" / "check_html.py"), str(root), "--screenshots",
                             str(tmp_path / "shots")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _shown_sources(path: Path) -> list[tuple[int, str, str]]:
    """(code cell, qualified name, stored markdown) for every stored show_source output of a notebook."""
    found = []
    for i, cell in enumerate(_code_cells(path)):
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown", "")
            if md.startswith("`alignlecture."):
                found.append((i, md.split("`")[1], md))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_source_listings_match_the_package(path):
    """A chapter shows a function's source beside its equation; once the function changes, the stored listing
    is stale and nbval fails on every reader's machine. Caught here in a second, not after 20 minutes of nbval."""
    from alignlecture._book import source

    stale = []
    for i, name, md in _shown_sources(path):
        obj = _used_in()._resolve(name)  # the one dotted-name resolver, shared with the 'Used in' extension
        assert obj is not None, f"code cell {i} lists {name}, which is not importable"
        if source(obj) not in md:
            stale.append(f"code cell {i}: {name}")
    assert stale == [], f"re-execute {path.name} (make notebooks): its listing of {stale} is out of date"


def test_the_chapters_store_source_listings_to_check():
    assert sum(len(_shown_sources(p)) for p in NOTEBOOKS) >= 30  # the listing test above is not vacuous


def test_the_book_skips_every_scratch_directory_the_checks_write():
    """make colab-check / gpu-check-prepare / check-portable write venvs and caches inside the repository; Sphinx
    would read their files as pages (a huggingface_hub template crashed the build)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    makefile = (ROOT / "Makefile").read_text() + (ROOT / "tools" / "colab_check.py").read_text() + (
        ROOT / "tools" / "check_portable.py").read_text()
    scratch = {d for d in (".venv", ".colab-check", ".gpu-check", ".portable-cache") if d in makefile}
    assert scratch == {".venv", ".colab-check", ".gpu-check", ".portable-cache"}
    assert scratch <= set(config["exclude_patterns"])
    ignored = (ROOT / ".gitignore").read_text().split()
    assert all(f"{d}/" in ignored for d in scratch)


def test_the_book_skips_every_directory_git_ignores():
    """A reader who runs plain ``pytest`` (it writes .pytest_cache/README.md) or ``pip install .`` (build/) must
    still get a book that builds with zero warnings: no ignored directory's files become pages."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    excluded = set(config["exclude_patterns"])
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip().endswith("/") and not line.startswith("#")]
    missing = [d for d in ignored if d not in excluded and f"**{d}" not in excluded and d != "__pycache__"]
    assert missing == [], f"add {missing} to exclude_patterns in _config.yml"
