"""Tests for the alignlecture package itself: device and profile selection, settings, lazy submodules."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import alignlecture


def _no_mps(monkeypatch):
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)


def test_device_is_a_torch_device_matching_the_hardware():
    dev = alignlecture.device()
    assert isinstance(dev, torch.device)
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    else:
        mps = getattr(torch.backends, "mps", None)
        assert dev.type == ("mps" if mps is not None and mps.is_available() else "cpu")


def test_device_is_cpu_without_an_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _no_mps(monkeypatch)
    assert alignlecture.device() == torch.device("cpu")


def test_device_prefers_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert alignlecture.device() == torch.device("cuda")


def test_profile_follows_the_hardware_when_not_forced(monkeypatch):
    monkeypatch.delenv("ALIGNLECTURE_PROFILE", raising=False)
    assert alignlecture.profile() == ("gpu" if alignlecture.device().type == "cuda" else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _no_mps(monkeypatch)
    assert alignlecture.profile() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert alignlecture.profile() == "gpu"


@pytest.mark.parametrize("value, expected", [("gpu", "gpu"), (" GPU ", "gpu"), ("cpu", "cpu"), ("", "cpu")])
def test_profile_honours_the_environment_override(monkeypatch, value, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _no_mps(monkeypatch)
    monkeypatch.setenv("ALIGNLECTURE_PROFILE", value)
    assert alignlecture.profile() == expected


def test_profile_rejects_an_unknown_override_naming_the_allowed_values(monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_PROFILE", "banana")
    with pytest.raises(ValueError, match=r"ALIGNLECTURE_PROFILE must be one of \('cpu', 'gpu'\); got 'banana'"):
        alignlecture.profile()


def test_settings_follow_the_profile(monkeypatch):
    monkeypatch.setenv("ALIGNLECTURE_PROFILE", "gpu")
    assert alignlecture.settings().profile == "gpu"
    cpu = alignlecture.settings("cpu")
    assert cpu.profile == "cpu" and cpu.model == "smollm2-135m-instruct"
    assert cpu.num_prompts <= alignlecture.settings("gpu").num_prompts


def test_settings_reject_an_unknown_profile():
    with pytest.raises(ValueError, match=r"unknown profile 'tpu'; choose one of \('cpu', 'gpu'\)"):
        alignlecture.settings("tpu")


def test_submodules_are_reachable_as_attributes():
    toy = alignlecture.toy
    assert toy.__name__ == "alignlecture.toy"
    assert hasattr(toy, "ToyWorld")
    for name in ("derivations", "logprobs", "preferences", "prompts", "rewards", "models"):
        assert getattr(alignlecture, name).__name__ == f"alignlecture.{name}"


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="module 'alignlecture' has no attribute 'banana'"):
        alignlecture.banana  # noqa: B018
    assert not hasattr(alignlecture, "banana")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_importing_the_package_does_not_import_sympy_or_transformers():
    code = "import alignlecture, sys; print('sympy' in sys.modules, 'transformers' in sys.modules)"
    assert _run(code) == "False False"


def test_submodule_is_imported_lazily_on_first_attribute_access():
    code = (
        "import alignlecture, sys; before = 'alignlecture.toy' in sys.modules; "
        "w = alignlecture.toy.ToyWorld(3, 2); print(before, 'alignlecture.toy' in sys.modules, w.num_responses)"
    )
    assert _run(code) == "False True 7"


def test_version_and_all_are_declared():
    assert isinstance(alignlecture.__version__, str) and alignlecture.__version__.count(".") == 2
    assert {"device", "profile", "settings", "toy", "logprobs"} <= set(alignlecture.__all__)


def test_the_gpu_smoke_check_runs_its_checks_on_the_cpu(capsys):
    """The GPU script's checks, run with the CPU standing in for CUDA, so the script cannot rot unseen."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tools" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.run_checks(torch.device("cpu"))
    out = capsys.readouterr().out
    assert len(results) >= 11 and all(results), out  # 6 kernels + 4 or 5 trainer variants (LoRA needs peft) + resume
    assert "DPO trainer (pairwise-normalized) on cpu" in out and "resumed from checkpoint-1" in out


def test_the_gpu_checks_cpu_reference_runs_in_a_process_that_sees_no_gpu(monkeypatch):
    """On a GPU machine the trainer's Accelerator would take the GPU for the 'CPU' runs too, so gpu_check trains
    the CPU reference in a child process with CUDA hidden: that path, with torch told a GPU is here."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tools" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    in_process = module._cpu_losses()
    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: True)
    child = module._cpu_reference()
    assert set(child) == set(in_process) >= {"full", "top block", "unpacked", "pairwise-normalized"}
    assert all(max(abs(a - b) for a, b in zip(child[k], in_process[k])) < 1e-6 for k in child)


def test_every_public_module_is_reachable_as_an_attribute():
    import pkgutil

    public = {m.name for m in pkgutil.iter_modules(alignlecture.__path__) if not m.name.startswith("_")}
    assert sorted(public - set(alignlecture._SUBMODULES)) == []


def test_run_chapter_executes_cells_in_order_and_reports_the_failing_one(tmp_path):
    """tools/run_chapter.py (what gpu-check runs per chapter, with no Jupyter kernel on the GPU machine)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import nbformat

    root = Path(__file__).resolve().parent.parent
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    good, bad = nb_dir / "good.ipynb", nb_dir / "bad.ipynb"
    cells = ["x = 2", "import matplotlib.pyplot as plt\nplt.plot([1, x])", "display(x)  # a kernel builtin chapters use",
             "assert x == 2\nprint('done', x)"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), good)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in ["y = 1", "1 / 0"]]), bad)
    script = root / "tools" / "run_chapter.py"
    ok = subprocess.run([sys.executable, str(script), str(good), "--json", str(tmp_path / "g.json")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "done 2" in ok.stdout
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["chapter"] == "good" and result["error"] is None and result["host_peak_gb"] > 0
    failed = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert json.loads(failed.stdout.strip().splitlines()[-1])["error"] == "code cell 1: ZeroDivisionError: division by zero"


def test_check_portable_refuses_to_empty_the_course_cache_or_the_repository(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    from alignlecture.cache import cache_dir

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("check_portable", root / "tools" / "check_portable.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.unsafe(cache_dir().resolve())
    assert module.unsafe(cache_dir().resolve().parent)  # holds the course cache
    assert module.unsafe(root) and module.unsafe(root.parent) and module.unsafe(Path.home())
    assert not module.unsafe(tmp_path / "scratch")
    assert not module.unsafe(root / ".portable-cache")


def _package_imports():
    """{module: {(imported module, name or None)}} over alignlecture's own modules, imports inside functions too."""
    import ast
    from pathlib import Path

    import alignlecture

    root = Path(alignlecture.__file__).resolve().parent
    mods = {p.stem: p for p in root.glob("*.py")}
    out = {}
    for name, path in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges |= {(node.module.split(".")[0], a.name) for a in node.names}
                else:
                    edges |= {(a.name, None) for a in node.names}
        out[name] = {(m, n) for m, n in edges if m in mods and m not in (name, "__init__")}
    return out


def test_no_import_cycle_among_the_package_modules_imports_inside_functions_included():
    graph = {m: {t for t, _ in e} for m, e in _package_imports().items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            assert state.get(t) != 1, f"import cycle: {' → '.join(path + [t])}"
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_module_imports_another_modules_private_names():
    private = sorted((m, t, n) for m, e in _package_imports().items() for t, n in e
                     if n and n.startswith("_") and not t.startswith("_") and not n.startswith("__"))
    assert private == []


def test_no_chapter_shows_a_private_function():
    import json
    import re
    from pathlib import Path

    shown = []
    for nb in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                for arg in re.findall(r"show_source\(([^)]*)\)", "".join(cell["source"])):
                    if re.search(r"(^|\.)_[a-z]", arg.strip()):
                        shown.append((nb.name, arg))
    assert shown == []
