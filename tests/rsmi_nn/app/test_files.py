"""JSON for people and tools: tensors, arrays and numpy scalars as plain lists and numbers, non-finite as null."""

import json
import math
from pathlib import Path

import numpy as np
import torch

from rsmi_nn.app.files import to_jsonable


def test_tensors_and_arrays_become_plain_lists_with_null_for_non_finite():
    nan, inf = float("nan"), float("inf")
    obj = {1: torch.tensor([[1.0, nan], [inf, -2.5]]), "ints": torch.tensor([3, 4]), "flags": torch.tensor([True]),
           "half": torch.tensor([0.5, -inf], dtype=torch.bfloat16), "array": np.array([[1.5], [np.nan]]),
           "counts": np.array([7], dtype=np.int8), "scalars": (np.float32(nan), np.int64(2), np.bool_(True)),
           "nested": [[nan, 1.0], {"p": Path("a/b")}], "finite": torch.linspace(0, 1, 5, dtype=torch.float64)}
    out = to_jsonable(obj)
    assert out == {"1": [[1.0, None], [None, -2.5]], "ints": [3, 4], "flags": [True], "half": [0.5, None],
                   "array": [[1.5], [None]], "counts": [7], "scalars": [None, 2, True],
                   "nested": [[None, 1.0], {"p": "a/b"}], "finite": [0.0, 0.25, 0.5, 0.75, 1.0]}
    assert all(type(v) is float for v in out["finite"]) and type(out["counts"][0]) is int
    numpy_leaves = to_jsonable([np.float64(1.5), np.str_("x"), np.float64(nan)])  # float and str subclasses
    assert numpy_leaves == [1.5, "x", None] and [type(v) for v in numpy_leaves[:2]] == [float, str]
    text = json.dumps(out, allow_nan=False)  # strict JSON: no NaN or Infinity literal anywhere
    assert not any(word in text for word in ("NaN", "Infinity")) and math.isclose(json.loads(text)["1"][1][1], -2.5)
