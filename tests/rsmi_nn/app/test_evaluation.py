"""The separation-of-scales evaluation on a real digits-mlp run (tiny settings, two levels).

Checks that fail if splicing were wrong: the clean activations spliced back give the clean output
exactly; the all-at-once splice of the rsmi reconstruction equals an independent computation without
hooks; mean ablation is recovered 0; the worst case exceeds every sampled random perturbation of the
same norm in the discarded subspace (computed here from an independent null-space basis); the JSON
layout of the issue's entry points; ``rsmi evaluate`` on the command line.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rsmi_nn import load_run
from rsmi_nn.app.config import Config, EvaluateOptions, read_run_config
from rsmi_nn.app.evaluation import evaluate_run
from rsmi_nn.app.evaluation.decoder import LinearDecoder
from rsmi_nn.app.evaluation.held_out import held_out_model
from rsmi_nn.app.evaluation.worst_case import Subspace
from tests.rsmi_nn.app.test_cli import run_rsmi

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"held_out": 80, "baselines": ["block-pca", "block-mean", "pca"], "worst_case_inputs": 24,
        "worst_case_starts": 2, "worst_case_steps": 12, "effect_inputs": 40}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    proc = run_rsmi("run", "tiny", "--out", out, "--levels", "2", "--no-evaluate", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def evaluation(digits_run):
    return evaluate_run(digits_run, EvaluateOptions(**FAST), device="cpu")


@pytest.fixture(scope="module")
def held(digits_run):
    run = load_run(digits_run)
    config = Config.from_dict(read_run_config(digits_run))
    spliced, kind, store, info = held_out_model(run, digits_run, config, 80)
    return run, spliced, kind, store, info, spliced.record()


def test_held_out_inputs_are_those_the_flow_did_not_record(held):
    run, spliced, kind, store, info, x = held
    assert info["inputs"] == list(range(300, 380))  # the tiny config records digits 0..299
    assert kind.name == "classifier" and x.shape == (80, run.num_units)
    # the recorded activations are the model's own hidden units on those digits
    from rsmi_nn.app.sources import load_source

    src = load_source("digits-mlp")
    h0 = src.model.hidden[0]((src.inputs[300:380] - src.model.mean) / src.model.std)  # the model standardises pixels
    cols = [i for i, n in enumerate(run.unit_names) if n.startswith("hidden.0:")]
    units = [int(run.unit_names[i].split(":")[1]) for i in cols]
    assert torch.allclose(x[:, cols], h0[:, units].detach(), atol=1e-6)


def test_splicing_the_clean_activations_changes_nothing(held):
    run, spliced, kind, store, info, x = held
    clean = spliced.outputs()
    again = spliced.outputs(x.clone())
    assert torch.allclose(torch.cat(clean), torch.cat(again), atol=1e-6)
    values = kind.summary(clean, again, spliced.batches)
    assert values["kl"] < 1e-9 and values["agreement"] == 1.0


def test_all_at_once_splice_matches_an_independent_computation(held, evaluation):
    run, spliced, kind, store, info, x = held
    src_model = spliced.model
    x_train = store.to_tensor(units=run.unit_names)
    dec = LinearDecoder.fit(run.levels[0].coarse_samples(), x_train, ridge=1e-3)
    x_hat = dec.decode(run.encode(x)[0])
    # by hand: the output layer reads hidden.1, which the splice replaces with its reconstruction
    h1_cols = [i for i, n in enumerate(run.unit_names) if n.startswith("hidden.1:")]
    h1_units = [int(run.unit_names[i].split(":")[1]) for i in h1_cols]
    h1 = torch.zeros(len(x), 64)
    train_h1 = store.to_tensor(units=[f"hidden.1:{i}" for i in range(64)]).mean(0)
    h1[:] = train_h1  # units the graph left out are set to their mean
    h1[:, h1_units] = x_hat[:, h1_cols]
    with torch.no_grad():
        p = torch.log_softmax(src_model(spliced.batches[0].inputs), 1)
        q = torch.log_softmax(src_model.out(h1), 1)
    kl = float((p.exp() * (p - q)).sum(1).mean())
    assert evaluation["levels"][0]["methods"]["rsmi"]["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-8)


def test_decoder_is_ridge_least_squares():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(500, 6, generator=gen, dtype=torch.float64) * torch.arange(1, 7)
    x = codes @ torch.randn(6, 9, generator=gen, dtype=torch.float64) + 0.1 * torch.randn(500, 9, generator=gen,
                                                                                               dtype=torch.float64)
    dec = LinearDecoder.fit(codes.float(), x.float(), ridge=0.0)
    a = torch.cat([codes, torch.ones(500, 1, dtype=torch.float64)], 1)
    ref = a @ torch.linalg.lstsq(a, x).solution
    assert torch.allclose(dec.decode(codes.float()).double(), ref, atol=1e-4)
    strong = LinearDecoder.fit(codes.float(), x.float(), ridge=1e6)  # the ridge shrinks towards the mean
    assert torch.allclose(strong.decode(codes.float()), x.float().mean(0).expand(500, -1), atol=1e-2)


def test_reconstruct_reassociates_the_same_ridge_decoder():
    """reconstruct() (x̂ = x̄ + [z_test G⁻¹ zᵀ] (x - x̄), taken when J is large) equals fit + decode."""
    from rsmi_nn.app.evaluation.decoder import Targets, reconstruct

    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(300, 40, generator=gen) * torch.linspace(0.5, 3, 40)
    x = codes[:, :25] @ torch.randn(25, 30, generator=gen) + 0.3 * torch.randn(300, 30, generator=gen)
    test = torch.randn(5, 40, generator=gen)  # few held-out rows, many codes: the reassociated route
    ref = LinearDecoder.fit(codes, x, ridge=1e-2).decode(test)
    assert torch.allclose(reconstruct(codes, Targets.of(x), test, ridge=1e-2), ref, atol=1e-4)


def test_normalisation_clean_is_one_and_mean_ablation_zero(evaluation):
    assert evaluation["mean_ablation"]["recovered"] == 0.0
    assert evaluation["mean_ablation"]["kl"] > 0.5  # the digits MLP with both hidden layers at their mean
    assert evaluation["clean"]["kl"] == 0.0 and evaluation["clean"]["agreement"] == 1.0
    for level in evaluation["levels"]:
        for m in level["methods"].values():
            assert m["recovered"] == pytest.approx(1 - m["kl"] / evaluation["mean_ablation"]["kl"], rel=1e-9)
            assert 0.5 < m["recovered"] <= 1.0 and 0.0 < m["explained_variance"] < 1.0


def test_json_layout_of_the_entry_points(digits_run, evaluation):
    data = json.loads((digits_run / "evaluation.json").read_text())
    assert data["metric"] == "kl" and len(data["levels"]) == 2
    run = load_run(digits_run)
    for i, level in enumerate(data["levels"]):
        assert level["level"] == i and level["num_latents"] == run.levels[i].num_coarse
        assert set(level["methods"]) == {"rsmi", "block-pca", "block-mean", "pca"}
        for m in level["methods"].values():
            assert {"explained_variance", "kl", "agreement", "recovered", "per_module"} <= set(m)
            assert set(m["per_module"]) == {"hidden.0", "hidden.1"}
        # all at once = hidden.1 alone for this MLP (the output layer reads only hidden.1)
        rsmi = level["methods"]["rsmi"]
        assert rsmi["per_module"]["hidden.1"]["kl"] == pytest.approx(rsmi["kl"], rel=1e-5)
        assert {"discarded", "kept", "random"} <= set(level["worst_case"])
        assert len(level["variable_effect"]) == run.levels[i].num_coarse
        assert all(v >= 0 for v in level["variable_effect"]) and max(level["variable_effect"]) > 0
    assert "recovered" in data["mean_ablation"]


def test_worst_case_is_a_maximisation(held, evaluation):
    """No random perturbation of the same norm in the discarded subspace beats the reported worst case."""
    from scipy.linalg import null_space

    run, spliced, kind, store, info, x = held
    wc = evaluation["levels"][0]["worst_case"]
    head = spliced.head(FAST["worst_case_inputs"])
    xs = x[:head.num_rows]
    a = run.feature_map_sparse(0).T.toarray()
    basis = torch.from_numpy(null_space(a)).float()  # [U, U - J], independent of the code's projection
    clean = head.outputs()
    gen = torch.Generator().manual_seed(1)
    best = torch.zeros(head.num_rows)
    for _ in range(100):
        d = torch.randn(head.num_rows, basis.shape[1], generator=gen) @ basis.T
        d = d * (wc["norm"] / d.norm(dim=1, keepdim=True))
        out = head.outputs(xs + d)
        best = torch.maximum(best, kind.input_change(clean[0], out[0], head.batches[0]))
    assert float(best.max()) < wc["discarded"]          # every sampled perturbation, every input
    assert float(best.mean()) < 0.1 * wc["discarded"]   # and the ascent is far above random
    assert wc["random_discarded"] < wc["discarded"] and wc["random"] < wc["discarded"]
    # the code's projections agree with the independent basis
    sub = Subspace(run.feature_map_sparse(0).T)
    d = torch.randn(5, run.num_units, generator=gen)
    ref = d @ basis @ basis.T
    assert torch.allclose(sub.discarded(d), ref, atol=1e-4)


def test_rsmi_cli_evaluate(digits_run):
    proc = run_rsmi("evaluate", digits_run, "--held-out", "30", "--baselines", "block-pca", "--worst-case-steps", "2",
                    "--worst-case-inputs", "8", "--effect-inputs", "8", "--no-per-module", "--quiet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((digits_run / "evaluation.json").read_text())
    assert data["held_out"]["num_inputs"] == 30
    assert set(data["levels"][0]["methods"]) == {"rsmi", "block-pca"}
    assert "block-pca" in proc.stdout and "worst case" in proc.stdout


def test_evaluate_refuses_a_run_without_a_model(tmp_path):
    from graphs import lattice_graph
    from tests.rsmi_nn.app.test_pipeline import lattice_field

    np.save(tmp_path / "x.npy", lattice_field(lattice_graph(8), 400))
    proc = run_rsmi("flow", "--samples", tmp_path / "x.npy", "--lattice", "8", "--levels", "1", "--steps", "10",
                    "--out", tmp_path / "run", "--no-report", "--quiet")
    assert proc.returncode == 0, proc.stderr
    proc = run_rsmi("evaluate", tmp_path / "run", "--quiet")
    assert proc.returncode == 1 and "rsmi: error:" in proc.stderr and "Traceback" not in proc.stderr


def test_decoder_fitted_on_a_seeded_subset_of_the_flow_samples(held, digits_run, evaluation):
    """fit_samples below the flow's samples: the decoder reads only those rows (memory flat in the tokens),
    and the figure equals the same splice computed here from the same rows."""
    run, spliced, kind, store, info, x = held
    small = evaluate_run(digits_run, EvaluateOptions(**{**FAST, "baselines": [], "fit_samples": 120}), device="cpu",
                         write=False)
    assert small["decoder"]["fit_samples"] == 120 < store.num_samples
    rows = torch.randperm(store.num_samples, generator=torch.Generator().manual_seed(0))[:120].sort().values
    x_fit = store.to_tensor(units=run.unit_names, rows=rows)
    x_hat = LinearDecoder.fit(run.levels[0].coarse_samples()[rows], x_fit, ridge=1e-3).decode(run.encode(x)[0])
    p = torch.log_softmax(torch.cat(spliced.outputs()), 1)
    q = torch.log_softmax(torch.cat(spliced.outputs(x_hat)), 1)
    kl = float((p.exp() * (p - q)).sum(1).mean())
    got = small["levels"][0]["methods"]["rsmi"]["kl"]
    assert got == pytest.approx(kl, rel=1e-4, abs=1e-8)
    assert got != pytest.approx(evaluation["levels"][0]["methods"]["rsmi"]["kl"], rel=1e-3)  # not all rows


def test_the_report_shows_the_evaluation(digits_run, evaluation):
    """Issue 14, deliverable 5: report.html carries "Does the model notice?" (its table and figure) once the run
    is evaluated."""
    from rsmi_nn.app.report import write_report

    page = write_report(digits_run).read_text(encoding="utf-8")
    assert page.count("<h2>Does the model notice?</h2>") == 1
    assert "block-pca" in page and (Path(digits_run) / "plots" / "evaluation.png").is_file()
