"""The held-out planted hierarchies (:mod:`experiments.tmr_heldout`): their ground truth, and the issue's call on one."""

import numpy as np
import pytest
import torch

from experiments.tmr_heldout import FAMILY_VAR, SWEEP, main, meets_targets, run_construction, sample_heldout, sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


@pytest.mark.parametrize("latent,coupling,sibling", [("spin", 0.6, 0.36), ("family", 0.9, 0.81 + FAMILY_VAR),
                                                     ("family", 0.6, 0.36 + FAMILY_VAR)])
def test_latents_correlate_as_planted(latent, coupling, sibling):
    s = sample_heldout(40000, latent=latent, branching=3, coupling=coupling, seed=1, ceiling_rows=2000)
    z0, z1 = s.latents[0], s.latents[1]  # 9 groups, 3 parents
    assert z0.shape == (40000, 9) and z1.shape == (40000, 3) and s.latents[2].shape == (40000, 1)
    assert abs(_corr(z0[:, 0], z1[:, 0]) - coupling) < 0.02  # child 0's parent is parent 0
    assert abs(_corr(z0[:, 0], z0[:, 1]) - sibling) < 0.02
    assert abs(_corr(z0[:, 0], z0[:, 3]) - coupling ** 2 * sibling) < 0.02  # cousins: their parents are siblings
    if latent == "spin":
        assert set(z0.unique().tolist()) == {-1.0, 1.0}


def test_units_read_their_group_and_share_their_nuisance():
    s = sample_heldout(20000, branching=3, group_size=4, nuisance="triples", coupling=0.9, seed=2, ceiling_rows=5000)
    assert s.x.shape == (20000, 36) and s.nuisance_samples.shape == (20000, 18)  # a triple and a lone unit per group
    for level, groups in enumerate(s.groups[:2]):
        assert torch.bincount(groups).tolist() == [4 * 3 ** level] * (9 // 3 ** level)
    # a unit's |corr| with its own group's latent beats every other group's; the ceiling is at least as high
    c = torch.corrcoef(torch.cat([s.x, s.latents[0]], 1).T)[:36, 36:].abs()
    assert torch.equal(c.argmax(1), s.groups[0])
    assert all(s.ceiling[0][g] >= float(c[s.groups[0] == g, g].max()) - 0.01 for g in range(9))
    assert np.all((s.ceiling[0] > 0.3) & (s.ceiling[0] <= 1.0))


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match="nuisance"):
        sample_heldout(100, nuisance="quads")
    with pytest.raises(ValueError, match="coupling"):
        sample_heldout(100, latent="family", coupling=0.95)


def test_the_issues_call_meets_the_targets_on_a_weakly_coupled_spin_tree():
    res = run_construction({"latent": "spin", "branching": 3, "nuisance": "pairs", "coupling": 0.6},
                           n_fit=6000, n_test=2000)
    assert res["met"], res["levels"]
    assert len(res["levels"]) == 2 and all(lv["ari"] == 1.0 for lv in res["levels"])


def test_a_weak_nuisance_is_met_after_pareto_swaps(monkeypatch):
    """Nuisance pairs of strength 1 (random signs: a pair's nuisance can cancel its shared signal), spin coupling
    0.8: the partition puts two sibling groups' pairs into shared blocks (level-0 ARI 0.84); the Pareto swaps after
    it restore the planted groups and the issue's targets."""
    weak = {"latent": "spin", "branching": 3, "nuisance": "pairs", "coupling": 0.8, "amplitude": 1.0}
    res = run_construction(weak, n_fit=6000, n_test=2000)
    assert res["met"] and res["levels"][0]["ari"] == 1.0, res["levels"]
    import graphs.swaps

    monkeypatch.setattr(graphs.swaps, "pareto_swaps", lambda x, blocks, graph, **kw: blocks)
    assert run_construction(weak, n_fit=6000, n_test=2000)["levels"][0]["ari"] < 0.9


def test_a_binary_trees_level_one_pairs_are_kept_whole(monkeypatch):
    """Branching 2, groups of 4, ``block_size=4``: level 1's planted groups are pairs of coarse variables. At coupling
    0.6 their gap to the rest (c² = 0.36) is decisive; at 0.8 (0.64) it is only natural, and a pair (half a block)
    closes there too — by default as with ``coarse_partition="loading-gaps"``. Closing every cluster only at a
    decisive gap (the default before) joined two pairs at 0.8 (ARI 0.47)."""
    weak = {"latent": "spin", "branching": 2, "depth": 4, "nuisance": "pairs", "coupling": 0.6}
    res = run_construction(weak, n_fit=6000, n_test=2000)
    assert res["met"] and res["levels"][1]["ari"] == 1.0, res["levels"]
    strong = {**weak, "coupling": 0.8}
    default = run_construction(strong, n_fit=6000, n_test=2000)
    gaps = run_construction(strong, n_fit=6000, n_test=2000, coarse_partition="loading-gaps")
    for res in (default, gaps):
        assert res["met"] and res["levels"][1]["ari"] == 1.0, res["levels"]
    import graphs

    decisive_only = graphs.partition
    monkeypatch.setattr(graphs, "partition", lambda *args, **kw: decisive_only(*args, **{**kw, "half_block_ratio": None}))
    assert run_construction(strong, n_fit=6000, n_test=2000)["levels"][1]["ari"] < 0.6


def test_targets_are_issue_15s():
    good = [{"ari": 0.95, "corr_mean": 0.96, "corr_min": 0.5}, {"ari": 0.9, "corr_mean": 0.9, "corr_min": 0.7}]
    assert meets_targets(good)
    assert not meets_targets([{**good[0], "corr_mean": 0.94}, good[1]])
    assert not meets_targets([good[0], {**good[1], "corr_min": 0.69}])
    assert not meets_targets([good[0], {**good[1], "ari": 0.89}])


def test_the_sweep_at_another_coupling_and_its_bad_values():
    at = sweep((0.75,))
    assert len(at) == 12 and {p["coupling"] for p in at} == {0.75}
    assert {(p["latent"], p["branching"], p["nuisance"]) for p in at} == {
        (p["latent"], p["branching"], p["nuisance"]) for p in SWEEP}
    weak = sweep((0.6, 0.8), amplitude=1.0)
    assert len(weak) == 24 and {p["amplitude"] for p in weak} == {1.0}
    assert all(not k.startswith("amplitude") for p in SWEEP for k in p)  # the sweep's names and JSON as before
    for argv in (["--coupling", "0.95"], ["--coupling", "0"], ["--quick", "--coupling", "0.7"],
                 ["--quick", "--amplitude", "1"], ["--amplitude", "-1"], ["--amplitude", "nan"]):
        with pytest.raises(SystemExit):
            main(argv)


def test_loading_affinities_keep_a_branching_3_tree_whole_at_level_1():
    """Spin b3 pairs at coupling 0.85 (docs/planted-hierarchy.md): on the top-k |corr| graph the level-1 blocks span groups
    (two strong pairs of different groups outrank each pair's weak member); ``coarse_partition="loading"`` keeps
    every planted group whole."""
    from sklearn.metrics import adjusted_rand_score

    from graphs import build_graph
    from rsmi_nn import run_flow

    s = sample_heldout(8000, latent="spin", branching=3, nuisance="pairs", coupling=0.85, seed=0)
    ari = {}
    for affinity in ("corr", "loading"):
        res = run_flow(s.x, build_graph(s.x), levels=2, block_size=4, seed=0, coarse_partition=affinity,
                       progress=False)
        assert adjusted_rand_score(s.groups[0], res.blocks[0]) == 1.0
        ari[affinity] = adjusted_rand_score(s.groups[1], res.blocks[1][res.blocks[0]])
    assert ari["corr"] < 0.6 and ari["loading"] == 1.0, ari
