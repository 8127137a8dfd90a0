"""``rsmi encode``: a finished flow applied to a store's activations equals the flow's own coarse samples."""

import pytest
import torch
from safetensors.torch import load_file

from rsmi_nn import load_run
from rsmi_nn.app.cli import main
from rsmi_nn.app.config import load_config
from rsmi_nn.app.pipeline import run_pipeline


@pytest.mark.parametrize(("filt", "binarize"), [("linear", None), ("mlp", None), ("linear", "straight-through")])
def test_encode_store_equals_flow_coarse_samples(tmp_path, capsys, filt, binarize):
    cfg = load_config("tiny")
    cfg.set("flow.levels", 2)
    cfg.set("flow.filter", filt)
    cfg.set("flow.binarize", binarize)
    run_dir = run_pipeline(cfg, tmp_path / "run", report=False)
    run = load_run(run_dir)
    out = tmp_path / "codes.safetensors"
    assert main(["encode", str(run_dir), "--out", str(out), "--quiet"]) == 0  # default store: RUN/activations
    assert "encoded" in capsys.readouterr().out
    codes = load_file(str(out))
    assert sorted(codes) == [f"level_{i:03d}" for i in range(len(run.levels))] and len(run.levels) == 2
    for i, lv in enumerate(run.levels):
        expected = lv.coarse_samples()
        assert codes[f"level_{i:03d}"].shape == expected.shape
        torch.testing.assert_close(codes[f"level_{i:03d}"], expected.float(), rtol=1e-4, atol=1e-4)
    if binarize:
        assert set(codes["level_000"].unique().tolist()) <= {-1.0, 1.0}


def test_encode_errors(tmp_path, capsys):
    cfg = load_config("tiny")
    run_dir = run_pipeline(cfg, tmp_path / "run", report=False)
    torch.save(torch.zeros(5, 3), tmp_path / "x.pt")
    assert main(["encode", str(run_dir), "--samples", str(tmp_path / "x.pt"), "--out", str(tmp_path / "c")]) == 1
    assert "have 3 columns but the run's level 0 has" in capsys.readouterr().err
    assert main(["encode", str(tmp_path), "--out", str(tmp_path / "c")]) == 1
    capsys.readouterr()
