"""Book tooling: the one Colab install cell every notebook starts with, generated from the package version
and the repository URL in ``_config.yml`` (so both live in one place)."""

from __future__ import annotations

from pathlib import Path

from . import __version__

ROOT = Path(__file__).resolve().parent.parent


def repository_url(config: Path = ROOT / "_config.yml") -> str:
    """``repository.url`` from the book's _config.yml."""
    import yaml

    url = (yaml.safe_load(config.read_text()) or {}).get("repository", {}).get("url")
    if not url:
        raise ValueError(f"{config} has no repository.url; set it (the Colab buttons and install cells use it)")
    return url.rstrip("/")


def install_cell(url: str | None = None, version: str = __version__) -> str:
    """Source of the first code cell: installs this exact version on Colab, does nothing elsewhere."""
    url = url or repository_url()
    return (
        "# Colab only: install the course package at the version this page was built with.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        "    subprocess.run(\n"
        f'        [sys.executable, "-m", "pip", "install", "-q", "alignlecture @ git+{url}@v{version}"],\n'
        "        check=True,\n"
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
