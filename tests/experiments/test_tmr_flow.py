"""The flow on a planted hierarchy: blocks and coarse variables level by level (build_graph + run_flow)."""

import json

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from experiments.tmr import sample_tmr
from experiments.tmr_scores import level_scores
from graphs import build_graph
from rsmi_nn import load_run, run_flow

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flow_finds_the_planted_levels_where_the_nuisance_dominates(tmp_path):
    """64 units, nuisance pairs dominating every group's variance; the level-0 graph (k = 8) splits into the
    four level-1 groups and the level-1 graph has 16 nodes: a one-hop buffer leaves the blocks no environment
    (issue 15), so the flow narrows the buffer of those blocks (min_env)."""
    s = sample_tmr(5000, seed=0)
    x_fit, rows = s.x[:4000], slice(4000, None)
    flow = run_flow(x_fit, build_graph(x_fit, k=8), levels=2, block_size=4, steps=600, out=tmp_path, progress=False)
    assert flow.stopped is None
    assert all(rec["environment_sizes"]["min"] >= 8 for rec in flow.records)
    run = load_run(tmp_path)
    coarse = run.encode(s.x[rows])
    for level in (0, 1):
        sc = level_scores(coarse[level], run.unit_blocks(level), 1, s, level, rows)
        assert sc["ari"] == 1.0
        assert sc["corr_mean"] >= 0.95 and sc["corr_min"] >= 0.8, sc
        assert sc["reads_latent"] == 1.0



def test_flow_finds_level_one_groups_larger_than_block_size():
    """Branching 5 with block_size 4 (issue 15's held-out sweep): the level-1 graph (25 coarse variables) holds
    planted groups of 5; a partition capped at block_size cut them (level-1 ARI 0.58-0.79), the natural merges
    past block_size keep them whole."""
    s = sample_tmr(4000, branching=5, group_size=4, seed=0)
    x_fit, rows = s.x[:3000], slice(3000, None)
    flow = run_flow(x_fit, build_graph(x_fit), levels=2, block_size=4, steps=300, progress=False)
    assert flow.stopped is None
    for level in (0, 1):
        blocks = flow.blocks[0] if level == 0 else flow.blocks[1][flow.blocks[0]]
        coarse = flow.results[0].transform(s.x[rows])
        if level == 1:
            coarse = flow.results[1].transform(coarse)
        sc = level_scores(coarse, blocks, 1, s, level, rows)
        assert sc["ari"] == 1.0, (level, sc)
        assert sc["corr_mean"] >= 0.9, (level, sc)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_level_one_groups_larger_than_block_size_stay_whole_from_few_rows(seed):
    """Branching 5 at coupling 0.6 from 1 000 rows: each level-1 group of 5 coarse variables held a weak pair whose
    loading affinity came out above its group's by noise, and the natural merge past block_size refused the rest
    of the group (level-1 ARI 0.54-0.75 on these seeds); it now compares the two within their standard errors."""
    s = sample_tmr(1000, branching=5, coupling=0.6, contrast=False, seed=seed)
    flow = run_flow(s.x, build_graph(s.x), levels=2, block_size=4, steps=300, progress=False)
    assert adjusted_rand_score(s.groups[0], flow.blocks[0]) == 1.0
    assert adjusted_rand_score(s.groups[1], flow.blocks[1][flow.blocks[0]]) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_binary_tree_of_depth_three_is_coarse_grained_at_both_levels(seed):
    """16 units in 4 groups under 2 level-1 latents: level 1 has 4 nodes, which the flow used to refuse (fewer than
    2 x block_size); it now cuts them into the planted pairs (closed off by their gap) and stops below block_size."""
    s = sample_tmr(4000, branching=2, depth=3, coupling=0.6, seed=seed)
    flow = run_flow(s.x, build_graph(s.x), levels=3, block_size=4, steps=300, progress=False)
    assert len(flow.records) == 2 and flow.stopped.startswith("level 2 has 2 nodes")
    assert adjusted_rand_score(s.groups[0], flow.blocks[0]) == 1.0
    assert adjusted_rand_score(s.groups[1], flow.blocks[1][flow.blocks[0]]) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_level_one_filters_start_at_the_common_factor_of_their_variables(seed):
    """Branching 5 at coupling 0.4 from 3 000 rows: the level-1 variables' correlations with their environment are
    a few standard errors, and filters started at the canonical directions fitted to them read their latents at
    0.87-0.88 of the reachable; started at the block's principal component (``init="auto"`` at level >= 1), >= 0.99."""
    s = sample_tmr(5000, branching=5, coupling=0.4, seed=seed)
    x_fit, rows = s.x[:3000], slice(3000, None)
    scores = {}
    for init in ("cca", "auto"):
        flow = run_flow(x_fit, build_graph(x_fit), levels=2, block_size=4, steps=300, progress=False, init=init)
        coarse = flow.results[1].transform(flow.results[0].transform(s.x[rows]))
        scores[init] = level_scores(coarse, flow.blocks[1][flow.blocks[0]], 1, s, 1, rows)
    assert scores["auto"]["ari"] == 1.0
    assert scores["auto"]["corr_mean"] >= 0.97 and scores["auto"]["corr_min"] >= 0.9, scores["auto"]
    assert scores["cca"]["corr_mean"] < 0.9  # the premise: the canonical start misses the target here


def test_lone_units_of_strongly_coupled_groups_rejoin_their_groups(monkeypatch):
    """Coupling 0.9, nuisance triples orthogonal to the signal: each group of 4 is a nuisance triple and one unit of
    pure signal, and the lone units of sibling groups (latents correlated 0.81) are bound more tightly to one another
    than to their own triples: the partition puts them into blocks of their own (level-0 ARI 0.81, seeds 3-5
    0.80-0.90; 0.86 here since two parts of a group may join as each other's decisive, dense partner — below the
    target of 0.9 either way). Each is predicted better by its own triple, which has room, so the Pareto dissolution
    after the partition places them there, and both levels meet issue 15's targets."""
    s = sample_tmr(6000, branching=4, coupling=0.9, nuisance_size=3, contrast=True, seed=5)
    x_fit, rows = s.x[:4000], slice(4000, None)
    flow = run_flow(x_fit, build_graph(x_fit), levels=2, block_size=4, steps=600, progress=False)
    coarse = flow.results[0].transform(s.x[rows])
    for level in (0, 1):
        blocks = flow.blocks[0] if level == 0 else flow.blocks[1][flow.blocks[0]]
        if level == 1:
            coarse = flow.results[1].transform(coarse)
        sc = level_scores(coarse, blocks, 1, s, level, rows)
        assert sc["ari"] == 1.0 and sc["corr_mean"] >= 0.95 and sc["corr_min"] >= 0.9, (level, sc)
    import graphs.swaps

    monkeypatch.setattr(graphs.swaps, "_dissolve_sweep", lambda *args, **kwargs: 0)
    without = run_flow(x_fit, build_graph(x_fit), levels=1, block_size=4, steps=10, progress=False)
    assert adjusted_rand_score(s.groups[0], without.blocks[0]) >= 0.9  # departures past block_size repair it too
    monkeypatch.setattr(graphs.swaps, "departure_sweep", lambda *args, **kwargs: 0)
    without = run_flow(x_fit, build_graph(x_fit), levels=1, block_size=4, steps=10, progress=False)
    assert adjusted_rand_score(s.groups[0], without.blocks[0]) < 0.9  # misses the target without either


def test_bound_buffer_keeps_the_sibling_groups_in_the_environment():
    """Weak coupling (0.6) and the default top-16 graph: one hop reaches every unit of the sibling groups,
    which carry all the block's long-range information, so a one-hop buffer left a few blocks only second
    cousins to learn from and their filters read the nuisance (``bond_ratio=None``, seeds 0-2: worst block
    0.01-0.07 of the ceiling, 63-88 % of blocks reading the latent). The bound buffer keeps only the
    neighbours bound to the block as tightly as its own units and hands the weaker ones to the environment
    (seeds 0-2: worst block 0.93-0.98)."""
    s = sample_tmr(6000, coupling=0.6, noise=1.0, seed=0)
    x_fit, rows = s.x[:4000], slice(4000, None)
    flow = run_flow(x_fit, build_graph(x_fit), levels=1, block_size=4, steps=1500, progress=False)
    sc = level_scores(flow.results[0].transform(s.x[rows]), flow.blocks[0], 1, s, 0, rows)
    assert sc["ari"] == 1.0
    assert sc["corr_mean"] >= 0.95 and sc["corr_min"] >= 0.85 and sc["reads_latent"] == 1.0, sc


def test_min_env_leaves_large_sparse_graphs_alone():
    """Where every block's shell beyond the buffer is big enough, the regions are make_regions' own."""
    from graphs import make_regions, partition
    from rsmi_nn.level_regions import level_regions
    from rsmi_nn.options import FlowOptions

    s = sample_tmr(2000, depth=4, seed=1)  # 256 units
    graph = build_graph(s.x, k=4)
    blocks = partition(graph, 4, seed=0)
    bond = FlowOptions().bond_ratio
    plain = make_regions(graph, blocks, buffer=1, env=1, max_env=64, seed=0, bond_ratio=bond)
    opts = FlowOptions(min_env=int(plain.environment_mask.sum(1).min()))
    same = level_regions(graph, blocks, opts, 0)
    for name in ("visible", "buffer", "environment", "environment_mask"):
        assert torch.equal(getattr(same, name), getattr(plain, name))
    narrowed = level_regions(graph, blocks, opts.replace(min_env=10**6), 0)  # no shell is that big: the largest one
    assert bool((narrowed.environment_mask.sum(1) >= plain.environment_mask.sum(1)).all())


@pytest.mark.slow
def test_tmr_study_quick(tmp_path):
    from experiments.tmr_study import run

    rec = run(tmp_path, quick=True)
    rows = {(r["regime"], r["level"], r["method"]): r for r in rec["table"]}
    for level in (0, 1):
        rs = rows[("nuisance", level, "rsmi")]
        assert rs["ari"] >= 0.9 and rs["corr_mean"] >= (0.95 if level == 0 else 0.9) and rs["corr_min"] >= 0.7
        assert rows[("no-nuisance", level, "block-pca")]["corr_mean"] >= 0.9  # everyone succeeds without nuisance
    assert rows[("nuisance", 0, "block-pca")]["corr_mean"] < 0.3  # block PCA reads the nuisance
    assert rec["relevance_spectrum"]["hidden_per_block"].count(1) >= 0.9 * len(rec["relevance_spectrum"]["hidden_per_block"])
    for name in ("tmr.json", "tmr_scores.png", "tmr_spectrum.png", "tmr_models.png"):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / "tmr.json").read_text())["quick"] is True
