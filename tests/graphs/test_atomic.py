"""Atomic writes: the final name appears only once the content is complete; JSON and safetensors helpers."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from graphs.atomic import atomic_save_tensors, atomic_write, atomic_write_json


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.bin"

    def crash(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, crash)
    assert list((tmp_path / "sub").iterdir()) == []  # no final file, no temporary file


def test_atomic_write_json(tmp_path):
    obj = {"b": [1, 2.5], "a": float("nan"), "é": "ü"}
    path = atomic_write_json(tmp_path / "o.json", obj)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(obj, indent=1)  # insertion order, NaN written as NaN
    assert math.isnan(json.loads(text)["a"])
    atomic_write_json(path, obj, indent=None, sort_keys=True)
    assert path.read_text(encoding="utf-8") == json.dumps(obj, sort_keys=True)


def test_atomic_save_tensors(tmp_path):
    w = torch.arange(6.0, requires_grad=True).reshape(2, 3)
    tensors = {"t": w.T, "i": torch.arange(3)}  # a non-contiguous view that requires grad
    path = atomic_save_tensors(tmp_path / "t.safetensors", tensors, metadata={"note": "x"})
    back = load_file(str(path))
    assert torch.equal(back["t"], w.detach().T) and torch.equal(back["i"], torch.arange(3))
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"note": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    """Regression: mkstemp's owner-only mode (0600) used to reach every output of a run."""
    import os
    import stat

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    path = atomic_write_json(tmp_path / "o.json", {"a": 1})
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
