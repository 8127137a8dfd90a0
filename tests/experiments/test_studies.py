"""The two experiment commands end to end (slow: minutes on 2 cores; run with ``-m slow``)."""

import json

import pytest


@pytest.mark.slow
def test_ising_study_quick(tmp_path):
    from experiments.ising2d import run

    rec = run(tmp_path, quick=True, progress=False)
    w = rec["filter_tc"]["weights"]
    assert min(w) > 0 and max(w) - min(w) < 0.1  # the block spin
    mi = {round(r["T"], 3): r["mi"] for r in rec["mi_vs_temperature"]}
    assert mi[2.0] > mi[2.269] > mi[3.0] > 0  # ordered > critical > paramagnet for one binary H
    broken = {round(r["T"], 3): r["mi_symmetry_broken"] for r in rec["mi_vs_temperature"]}
    # with the symmetry broken only fluctuations are left: largest near T_c, not deep in either phase
    assert max(broken, key=broken.get) in (2.269, 2.5), broken
    assert broken[2.269] > 2 * broken[2.0]
    assert all(r < 1.0 for r in rec["xi_flow"]["ratios"])  # xi shrinks along the flow
    for name in ("ising2d.json", "filter_tc.png", "mi_vs_temperature.png", "xi_flow.png"):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / "ising2d.json").read_text())["quick"] is True


@pytest.mark.slow
def test_gaussian_field_study_quick(tmp_path):
    from experiments.gaussian_field import run

    rec = run(tmp_path, quick=True, progress=False)
    assert rec["filter_ratio_min"] >= 0.98  # exact MI of the learnt filters against the CCA optimum
    assert rec["ratio_mean"] >= 0.9  # the held-out estimate (s.e. ~5% of the optimum on 1 200 test rows)
    assert (tmp_path / "gaussian_field.png").exists()
