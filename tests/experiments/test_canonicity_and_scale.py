"""The canonicity and scale studies end to end, on their quick settings (slow: minutes)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_canonicity_quick(tmp_path):
    from experiments.canonicity import METHODS, run

    result = run(tmp_path, quick=True)
    assert set(result["methods"]) == set(METHODS)
    for method in METHODS:
        for kind in ("seeds", "halves"):
            levels = result["methods"][method][kind]
            assert len(levels) == 2
            for lv in levels:
                assert 0.0 < lv["mean_abs_corr"] <= 1.0 and 0.0 <= lv["fraction_above_0.9"] <= 1.0
    # global PCA on the same samples does not depend on the seed; the halves differ
    assert all(lv["mean_abs_corr"] == 1.0 for lv in result["methods"]["pca"]["seeds"])
    assert result["methods"]["rsmi"]["halves_rule"] == "same-units"
    assert result["methods"]["rsmi"]["seeds"][0]["pairs"] == 3
    assert json.loads((tmp_path / "canonicity.json").read_text())["source"] == "digits-mlp"
    assert (tmp_path / "canonicity.png").stat().st_size > 0


def test_scale_study_quick(tmp_path):
    from experiments.scale_study import run

    result = run(tmp_path, quick=True)
    assert result["widths"] == [32, 64, 128]
    assert result["units"][32][0] == 48 and result["units"][128][0] == 192
    xi = result["invariants"]["locality"][0]
    assert len(xi["values"]) == 3 and xi["relative_spread"] is not None and xi["fit"] is not None
    assert (tmp_path / "plots" / "participation_ratio.png").is_file()
    assert (tmp_path / "compare" / "compare.json").is_file()
