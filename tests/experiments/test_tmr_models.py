"""The trained model family on the planted hierarchy (experiments.tmr_models): deterministic training, the cache,
and probe scores of coarse variables of the hidden units against the planted levels."""

import math

import numpy as np
import pytest
import torch

from experiments.tmr_models import (
    hidden_activations,
    load_model,
    model_recipe,
    probe_r2,
    score_model,
    task_labels,
    train_model,
    unit_levels,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# 16 units (branching 2, depth 3, 4 units per level-0 group), no nuisance: an easy tree; 4 task classes
EASY = {"branching": 2, "depth": 3, "group_size": 4, "nuisance": 0.0}


def _tiny(name="mlp-x1", **kw):
    args = {"generator": EASY, "base_width": 16, "d_model": 4, "n_train": 2000, "n_val": 500, "n_probe": 1500,
            "epochs": 3, **kw}
    return model_recipe(name, **args)


def test_task_labels_are_the_sign_pattern():
    top = torch.tensor([[1.0, -1.0], [-0.5, 2.0], [3.0, 0.1], [-1.0, -1.0]])
    assert task_labels(top).tolist() == [1, 2, 3, 0]


def test_recipe_rejects_unknown_models_and_generator_rows():
    with pytest.raises(ValueError, match="unknown model 'cnn'"):
        model_recipe("cnn")
    with pytest.raises(ValueError, match="generator sets 'seed'"):
        model_recipe("mlp-x1", generator={**EASY, "seed": 3})
    assert model_recipe("mlp-x4", base_width=8)["arch"] == {"kind": "mlp", "width": 32}


@pytest.mark.parametrize("name", ["mlp-x1", "transformer"])
def test_training_is_deterministic(name):
    recipe = _tiny(name, epochs=1)
    (a, sa), (b, sb) = train_model(recipe), train_model(recipe)
    assert sa == sb
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    # above chance (4 classes) after one epoch: the sign of each top latent is readable from its 8 units
    assert sa["val_accuracy"] > 0.35 and sa["reference_accuracy"] > 0.6  # chance 0.25, s.e. 0.02 at 500 rows


def test_cache_returns_the_trained_model(tmp_path, monkeypatch):
    monkeypatch.setenv("RSMI_CACHE", str(tmp_path))
    recipe = _tiny()
    fresh, stats = load_model(recipe)
    assert not stats["cached"] and len(list(tmp_path.glob("tmr-mlp-x1-*.safetensors"))) == 1
    cached, again = load_model(recipe)
    assert again["cached"] and again["val_accuracy"] == stats["val_accuracy"]
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fresh(x), cached(x))
    other, third = load_model(_tiny(epochs=4))  # another recipe: another entry
    assert not third["cached"] and len(list(tmp_path.glob("tmr-mlp-x1-*.safetensors"))) == 2
    assert hidden_activations(cached, recipe, x).shape == (20, 16)


def test_probe_r2_matches_the_planted_fraction():
    """z = f·w + e with Var(f·w) = 0.8, Var(e) = 0.2: held-out R² ≈ 0.8 (s.e. ~0.01 at 4 000 rows); pure noise ≈ 0."""
    g = torch.Generator().manual_seed(1)
    f = torch.randn(8000, 5, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, -1.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    z = torch.stack([f @ w * math.sqrt(0.8 / 2.25) + math.sqrt(0.2) * torch.randn(8000, generator=g, dtype=torch.float64),
                     torch.randn(8000, generator=g, dtype=torch.float64)], 1)
    r2 = probe_r2(f[:4000], f[4000:], z[:4000], z[4000:])
    assert r2[0] == pytest.approx(0.8, abs=0.03)
    assert abs(r2[1]) < 0.01


def test_unit_levels_assigns_each_unit_its_latent_level():
    g = torch.Generator().manual_seed(2)
    top = torch.randn(3000, 1, generator=g)
    low = 0.6 * top + 0.8 * torch.randn(3000, 2, generator=g)
    h = torch.cat([low + 0.1 * torch.randn(3000, 2, generator=g), top, torch.zeros(3000, 1)], 1)
    res = unit_levels(h, [low, top])
    assert res["level"] == [0, 0, 1, -1] and res["count"] == [2, 1] and res["dead"] == 1


def test_probe_scores_are_finite_and_above_chance():
    """An easy tree, a 16-unit hidden layer, a one-level flow: every method's coarse variables predict every planted
    level far above chance (held-out R² 0), and the hidden layer keeps the task's latents."""
    recipe = _tiny()
    model, stats = load_model(recipe, cache=False)
    sc = score_model(model, recipe, levels=1, steps=300, sae_steps=200, k=6)
    assert sc["alive_units"] >= 8 and sc["num_latents"] == [sc["probe"]["rsmi"][0]["variables_per_level"][0]
                                                             + sum(sc["probe"]["rsmi"][0]["variables_per_level"][1:])]
    for method, per_level in sc["probe"].items():
        r2 = np.asarray(per_level[0]["r2"])
        assert np.isfinite(r2).all() and (r2 > 0.2).all(), (method, r2)
    assert (np.asarray(sc["hidden"]["r2"]) > 0.5).all()
    assert (np.asarray(sc["hidden"]["r2"]) <= np.asarray(sc["input_ceiling"]) + 0.05).all()  # no probe beats E[z|x]
    assert len(sc["unit_level"]) == sc["hidden_units"] == 16
    assert sum(sc["unit_level_count"]) == sum(level >= 0 for level in sc["unit_level"]) >= 8
    # no nuisance in this tree: its variables are unreadable (held-out R² of a null probe ≈ -features / fit rows,
    # -16 / 250 for the hidden layer); a readable one would be far above 0
    assert sc["hidden"]["nuisance_r2"] < 0.03 and sc["probe"]["rsmi"][0]["nuisance_r2"] < 0.03


@pytest.mark.slow
def test_model_family_study(tmp_path):
    """The family as in `python -m experiments.tmr --quick`: every model learns the task near the linear reference,
    its hidden layer keeps the task's level (most of its units carry it best), every method's level-0 variables
    carry it, and the wider the MLP, the more of the level-0 latents (which the task does not need) it keeps."""
    from experiments.tmr_study import _plot_models, run_models

    models = run_models(steps=1500, sae_steps=500)
    for name, m in models.items():
        assert m["stats"]["val_accuracy"] >= m["stats"]["reference_accuracy"] - 0.05, name
        task_level = len(m["input_ceiling"]) - 2
        assert m["hidden"]["r2"][task_level] >= 0.9 * m["input_ceiling"][task_level], name
        assert m["unit_level_count"][task_level] == max(m["unit_level_count"]), name
        for method, per_level in m["probe"].items():
            assert per_level[0]["r2"][task_level] >= 0.8 * m["input_ceiling"][task_level], (name, method)
    kept = [models[f"mlp-x{m}"]["hidden"]["r2"][0] for m in (1, 2, 4, 8)]
    assert kept == sorted(kept), kept
    _plot_models(tmp_path / "tmr_models.png", models)
    assert (tmp_path / "tmr_models.png").stat().st_size > 0
