"""Sample files: every format, one key convention, the 2-D float32 checks, and the errors."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from graphs.tensor_files import PREFERRED_KEYS, load_samples, load_tensor

X = np.arange(12, dtype=np.float64).reshape(4, 3) / 7


def write(path, tensors: dict):
    """Write ``tensors`` (name -> ndarray) in the format the suffix of ``path`` names."""
    suffix = path.suffix
    if suffix == ".npy":
        (value,) = tensors.values()
        np.save(path, value)
    elif suffix == ".npz":
        np.savez(path, **tensors)
    elif suffix == ".safetensors":
        save_file({k: torch.from_numpy(v) for k, v in tensors.items()}, str(path))
    else:
        obj = {k: torch.from_numpy(v) for k, v in tensors.items()}
        torch.save(obj if len(obj) > 1 else next(iter(obj.values())), path)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors", ".pt", ".pth"])
def test_every_format_round_trips_in_its_dtype(tmp_path, suffix):
    path = write(tmp_path / f"x{suffix}", {"samples": X})
    x = load_tensor(path)
    assert x.dtype == torch.float64 and torch.equal(x, torch.from_numpy(X))  # stored dtype kept
    s = load_samples(path)
    assert s.dtype == torch.float32 and s.is_contiguous() and torch.equal(s, torch.from_numpy(X).float())


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
def test_key_convention(tmp_path, suffix):
    a, b = X, X + 1
    assert torch.equal(load_tensor(write(tmp_path / f"only{suffix}", {"anything": a})), torch.from_numpy(a))
    for name in PREFERRED_KEYS:  # the first preferred name present wins over other tensors
        path = write(tmp_path / f"{name}{suffix}", {"aaa": b, name: a})
        assert torch.equal(load_tensor(path), torch.from_numpy(a)), name
    both = write(tmp_path / f"both{suffix}", {"x": b, "samples": a, "spins": b.copy()})
    assert torch.equal(load_tensor(both), torch.from_numpy(a))  # "samples" before "x"
    assert torch.equal(load_tensor(both, "spins"), torch.from_numpy(b))  # an explicit key wins
    assert torch.equal(load_samples(both, key="x"), torch.from_numpy(b).float())
    with pytest.raises(ValueError, match=r"has no tensor 'nope'; it holds samples, spins, x"):
        load_tensor(both, "nope")
    two = write(tmp_path / f"two{suffix}", {"a": a, "b": b})
    with pytest.raises(ValueError, match=r"holds several tensors \(a, b\) and none is named 'x'.*key=.*--key"):
        load_tensor(two)


def test_samples_checks(tmp_path):
    np.save(tmp_path / "x3.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\); expected a 2-D \[n_samples, n_units\]"):
        load_samples(tmp_path / "x3.npy")
    assert load_tensor(tmp_path / "x3.npy").shape == (2, 3, 4)  # any shape for model inputs
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="have dtype <U1; pass a numeric array"):
        load_samples(tmp_path / "s.npy")
    torch.save(torch.zeros(2, 2, dtype=torch.complex64), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="complex64; pass a real-valued"):
        load_samples(tmp_path / "c.pt")
    np.save(tmp_path / "i.npy", np.array([[1, 2], [3, 2**40]], dtype=np.int64))
    assert load_samples(tmp_path / "i.npy").tolist() == [[1.0, 2.0], [3.0, float(2**40)]]
    save_file({"x": torch.ones(2, 3, dtype=torch.bfloat16)}, str(tmp_path / "bf.safetensors"))
    assert torch.equal(load_samples(tmp_path / "bf.safetensors"), torch.ones(2, 3))


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="samples file .*missing.npy' does not exist"):
        load_samples(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="^data file"):
        load_tensor(tmp_path / "missing.npy", what="data")
    with pytest.raises(ValueError, match="is a directory"):
        load_tensor(tmp_path)
    (tmp_path / "x.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"has suffix '.txt'; use .npy, .npz, .safetensors or .pt"):
        load_samples(tmp_path / "x.txt")
    for name, what in [("bad.npy", "numeric .npy"), ("bad.npz", ".npz"), ("bad.safetensors", "safetensors"),
                       ("bad.pt", "PyTorch file")]:
        (tmp_path / name).write_bytes(b"not a tensor file at all")
        with pytest.raises(ValueError, match=f"cannot read .*{name}' as .*{what}"):
            load_tensor(tmp_path / name)
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="holds no tensors"):
        load_tensor(tmp_path / "empty.npz")
