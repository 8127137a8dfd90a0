"""Device selection and the training-only TF32 switch."""

import pytest
import torch

from estimators.device import resolve_device, training_precision


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_training_precision_is_tf32_on_cuda_only_and_restored():
    before = torch.get_float32_matmul_precision()
    with training_precision(torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == before
    with training_precision(torch.device("cuda")):  # only a flag: needs no GPU to check
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), training_precision(torch.device("cuda")):
        raise RuntimeError("a failing step")
    assert torch.get_float32_matmul_precision() == before
