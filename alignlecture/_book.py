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
