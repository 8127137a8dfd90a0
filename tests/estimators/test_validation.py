"""check_samples on arrays larger than one checking chunk: every slice is checked, and the constant-column
test reads max |x| without materialising |x|."""

import pytest
import torch

from estimators.validation import _all_finite, check_samples


@pytest.mark.parametrize("where", [(0, 0), (517, 3), (1023, 7)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_value_in_any_chunk_is_found(where, bad):
    x = torch.randn(1024, 8)
    assert _all_finite(x, chunk_elements=64)
    x[where] = bad
    assert not _all_finite(x, chunk_elements=64)  # 8 rows a chunk: 128 chunks
    with pytest.raises(ValueError, match=rf"1 NaN/Inf values \(first at index \({where[0]}, {where[1]}\)\)"):
        check_samples(x)


def test_constant_columns_named_whatever_their_sign():
    x = torch.randn(50, 5)
    x[:, 1], x[:, 3] = -7.5, 1e6
    with pytest.raises(ValueError, match=r"2 zero-variance column\(s\) \(index 1, 3\)"):
        check_samples(x)
    assert torch.equal(check_samples(x, allow_constant=True), x)
