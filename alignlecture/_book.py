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
    """Source of the first code cell: on Colab, installs the package version this page was built with.

    It tries the git tag ``v{version}`` first and ``branch`` (the branch the Colab button opens) if that install
    fails — while the tag is unpublished, or on any other pip failure, whose message it then shows. It prints in
    one line the version and the ref it installed, and stops, saying what to do, if another version is imported.
    """
    url = url or repository_url()
    branch = branch or repository_branch()
    return (
        f"# Colab only: install alignlecture {version}, the version this page was built with (git tag v{version};\n"
        f"# the branch {branch} while that tag is not published yet).\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    VERSION, REPO = "{version}", "git+{url}"\n'
        f'    for ref in (f"v{{VERSION}}", "{branch}"):\n'
        '        pip = [sys.executable, "-m", "pip", "install", "-q", f"alignlecture @ {REPO}@{ref}"]\n'
        "        done = subprocess.run(pip, capture_output=True, text=True)\n"
        "        if done.returncode == 0:\n"
        "            break\n"
        "    else:\n"
        '        raise RuntimeError(f"pip could not install {REPO}:\\n{done.stderr[-2000:]}")\n'
        "    import alignlecture\n"
        "\n"
        '    print(f"installed alignlecture {alignlecture.__version__} from {ref}; this page is {VERSION}")\n'
        '    assert alignlecture.__version__ == VERSION, "old copy loaded: Restart session"'
    )


# What Colab reads from a notebook's top-level metadata to open it on a GPU runtime (a free T4).
COLAB_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4"}}


def colab_metadata_problems(metadata: dict) -> list[str]:
    """What a notebook's metadata lacks for Colab to open it on a GPU runtime ([] when nothing)."""
    found = []
    if metadata.get("accelerator") != "GPU":
        found.append('metadata.accelerator is not "GPU" (Colab would open a CPU runtime)')
    if (metadata.get("colab") or {}).get("gpuType") != "T4":
        found.append('metadata.colab.gpuType is not "T4" (the free Colab GPU the course is sized for)')
    return found


def glue(name: str, value, display: bool = True):
    """myst-nb's ``glue`` where the book toolchain is installed; elsewhere (Colab) the value is only shown.

    The book pastes glued values into its prose; a notebook run outside the book has no prose to paste into,
    so there the value is displayed (when ``display``) exactly as ``glue`` would display it.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show

            show(value)
        return None
    return myst_glue(name, value, display=display)


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
