"""Tests for alignlecture.checkpoint's model directories: ``save_converted`` writes a whole directory or nothing.

The trainer's checkpoints (save, resume, the final save) are tested with the trainer, in tests/test_train.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alignlecture.checkpoint import save_converted


def test_save_converted_is_atomic_when_the_weights_write_fails(tiny, tmp_path, monkeypatch):
    import safetensors.torch  # save_converted does `from safetensors.torch import save_file` at call time

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise RuntimeError("simulated disk full mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    target = tmp_path / "models" / "tiny"
    with pytest.raises(RuntimeError, match="simulated disk full"):
        save_converted(tiny.model, tiny.tokenizer, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temp dir left behind


def test_save_converted_onto_an_existing_copy_keeps_it_and_leaves_no_temp_dir(tiny, tmp_path):
    target = tmp_path / "tiny"
    save_converted(tiny.model, tiny.tokenizer, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    assert save_converted(tiny.model, tiny.tokenizer, target) == target  # a concurrent writer that lost the race
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]
