"""check_samples: a non-finite value anywhere is found (from column maxima and minima), and the constant-column
test reads max |x| without materialising |x| and computes a std only for columns of tiny range."""

import pytest
import torch

from estimators.validation import _all_finite, check_samples


@pytest.mark.parametrize("where", [(0, 0), (517, 3), (1023, 7)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_value_in_any_chunk_is_found(where, bad):
    x = torch.randn(1024, 8)
    assert _all_finite(x.amax(0), x.amin(0))
    x[where] = bad
    assert not _all_finite(x.amax(0), x.amin(0))
    with pytest.raises(ValueError, match=rf"1 NaN/Inf values \(first at index \({where[0]}, {where[1]}\)\)"):
        check_samples(x)


def test_constant_columns_named_whatever_their_sign():
    x = torch.randn(50, 5)
    x[:, 1], x[:, 3] = -7.5, 1e6
    with pytest.raises(ValueError, match=r"2 zero-variance column\(s\) \(index 1, 3\)"):
        check_samples(x)
    assert torch.equal(check_samples(x, allow_constant=True), x)


def test_nearly_constant_columns_as_before():
    """Only columns of tiny range are candidates; a column varying by one ulp in float32 is not constant, one whose
    values are all equal is, in 3-d problem batches too."""
    x = torch.randn(3, 400, 4)
    x[1, :, 2] = 0.25
    x[2, :, 0] = 1.0
    x[2, 7, 0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(ValueError, match=r"1 zero-variance column\(s\) \(index 2\)"):
        check_samples(x, ndim=3)
