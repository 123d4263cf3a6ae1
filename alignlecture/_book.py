"""Book tooling: the one Colab install cell every notebook starts with, generated from the package version
and the repository URL in ``_config.yml`` (so both live in one place)."""

from __future__ import annotations

from pathlib import Path

from . import __version__

ROOT = Path(__file__).resolve().parent.parent


def _repository(config: Path) -> dict:
    import yaml

    return (yaml.safe_load(config.read_text()) or {}).get("repository", {})


def repository_url(config: Path = ROOT / "_config.yml") -> str:
    """``repository.url`` from the book's _config.yml."""
    url = _repository(config).get("url")
    if not url:
        raise ValueError(f"{config} has no repository.url; set it (the Colab buttons and install cells use it)")
    return url.rstrip("/")


def repository_branch(config: Path = ROOT / "_config.yml") -> str:
    """``repository.branch`` from _config.yml: the branch the Colab buttons open and the install cells install."""
    branch = _repository(config).get("branch")
    if not branch:
        raise ValueError(f"{config} has no repository.branch; set it (Jupyter Book would otherwise use 'master')")
    return branch


def install_cell(url: str | None = None, version: str = __version__, branch: str | None = None) -> str:
    """Source of the first code cell: on Colab, installs the package from the same repository and branch the
    Colab button opened the notebook from, and checks it is the version this page was built with."""
    url = url or repository_url()
    branch = branch or repository_branch()
    return (
        "# Colab only: install the course package from the branch this notebook was opened from.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    PACKAGE = "alignlecture @ git+{url}@{branch}"\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], check=True)\n'
        "    import alignlecture\n"
        "\n"
        f'    assert alignlecture.__version__ == "{version}", (\n'
        f'        f"this page was built with alignlecture {version}; got {{alignlecture.__version__}}"\n'
        "    )"
    )


def source(obj) -> str:
    """The source code of a package function or class, exactly as it is in ``alignlecture/``."""
    import inspect

    try:
        return inspect.getsource(obj).rstrip("\n")
    except (TypeError, OSError) as exc:
        raise TypeError(f"show_source needs a function or class defined in a source file; got {obj!r}") from exc


def show_source(obj):
    """Display the implementation of ``obj`` beside its equation (a Markdown code block taken from the source)."""
    from IPython.display import Markdown, display

    module = getattr(obj, "__module__", "") or ""
    display(Markdown(f"`{module}.{obj.__qualname__}`\n\n```python\n{source(obj)}\n```"))
