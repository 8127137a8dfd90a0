"""The RSMI step against ground truths: Ising block spin, Gaussian CCA optimum, batching, bad inputs."""

import logging
import math

import numpy as np
import pytest
import torch

from estimators import cca_mi
from experiments.gaussian_field import block_optima, filter_mi, gaussian_field
from experiments.ising2d import T_CRITICAL, sample_ising
from graphs import lattice_blocks, lattice_graph, make_regions, partition
from graphs.regions import Regions
from rsmi_nn import CoarseGrainer, coarse_grain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ising_tc():
    L = 16
    x = sample_ising(L, T_CRITICAL, 3000, seed=0)
    regions = make_regions(lattice_graph(L), lattice_blocks(L, 2), buffer=1, env=1)
    return x, regions


def test_ising_block_spin_at_tc(ising_tc):
    """A shared filter on 2×2 blocks at T_c is the block spin: four same-sign, near-equal weights. On spins the
    default (``binarize="auto"``) is a binary H, scored by a critic refitted on the noiseless spin."""
    from estimators import estimate_mi

    x, regions = ising_tc
    sub = regions.select(list(range(0, 64, 4)))  # 16 blocks spread over the lattice share one filter
    res = coarse_grain(x, sub, shared=True, batch_size=128, seed=0)
    assert res.binarize == "straight-through" and res.info["critic_refit_steps"] > 0
    w = res.filters[0, :, 0]
    assert bool((w > 0).all()), w
    # unit-norm uniform weights are 0.5 each; the local optima seen (3-spin majority, single spin) put
    # < 0.2 on some site. Seeds 0 and 2 gave a spread < 0.01.
    assert float(w.max() - w.min()) < 0.1, w
    assert float(w.norm()) == pytest.approx(1.0, abs=1e-5)
    # one binary H carries at most ln 2; the reference reaches ~0.40 nats at L = 32 (0.36 seen here)
    assert 0.25 < float(res.mi.mean()) <= math.log(2) + 0.05
    h = res.transform(x)
    assert h.shape == (x.shape[0], 16) and set(torch.unique(h).tolist()) == {-1.0, 1.0}
    # the reported MI is the spin's own: an independent estimate of I(H; E) on the same samples agrees (the
    # training critic, fitted to the stochastic spin, read ~15 % low at L = 32)
    env = torch.stack([x[:, sub.environment[j][sub.environment_mask[j]]] for j in range(4)])
    probe = estimate_mi(env, h[:, :4].T.unsqueeze(-1), seed=0, device="cpu")
    assert float(res.mi[:4].mean()) == pytest.approx(float(probe.mi.mean()), abs=0.03)  # measured 0.431 vs 0.436


def test_a_shared_step_validates_twice_as_often_by_default(ising_tc):
    """``eval_every`` left unset: every 25 steps for a shared filter (its steps read 16 blocks' rows), 50 per block;
    a value given is kept."""
    x, regions = ising_tc
    sub = regions.select(list(range(0, 64, 4)))
    fast = {"steps": 50, "patience": 100, "refit_critic": False, "seed": 0}
    assert coarse_grain(x, sub, shared=True, **fast).info["history"]["step"] == [25, 50]
    assert coarse_grain(x, sub, shared=False, **fast).info["history"]["step"] == [50]
    assert coarse_grain(x, sub, shared=True, eval_every=50, **fast).info["history"]["step"] == [50]


def test_a_shared_step_needs_a_larger_gain_to_go_on_by_default(ising_tc, monkeypatch):
    """``min_delta`` left unset: 0.01 nats for a shared filter (its validation wobbles with its critic), 0.001 per
    block; ``patience`` 2 evaluations for a shared filter, 10 per block; a value given is kept. Read where the
    step hands its settings to the training loop."""
    import rsmi_nn.shared_step as shared_step
    import rsmi_nn.training as training

    seen = []
    for module in (shared_step, training):
        loop = module.train_problems
        monkeypatch.setattr(module, "train_problems",
                            lambda *a, _loop=loop, **k: seen.append((a[5].min_delta, a[5].patience)) or _loop(*a, **k))
    x, regions = ising_tc
    sub = regions.select(list(range(0, 64, 4)))
    fast = {"steps": 25, "refit_critic": False, "seed": 0}
    coarse_grain(x, sub, shared=True, **fast)
    coarse_grain(x, sub, shared=False, **fast)
    coarse_grain(x, sub, shared=True, min_delta=0.002, patience=7, **fast)
    assert seen == [(0.01, 2), (1e-3, 10), (0.002, 7)]


@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_straight_through_spin_is_exactly_binary_with_the_gradient_of_its_mean(noise):
    # forward: the sampled spin, exactly +-1 (so a binarised H's columns take 2^h values: estimators.infonce_separable's codes);
    # backward: the gradient of tanh(pre / noise), or of tanh(pre / tau) without noise
    from rsmi_nn.filters import LinearFilter, spin_codes

    gen = torch.Generator().manual_seed(0)
    filt = LinearFilter(3, 4, 2, torch.ones(3, 4, dtype=torch.bool), binarize="straight-through", noise=noise,
                        generator=gen)
    v = torch.randn(3, 50, 4, generator=gen)
    h = filt(v)
    assert filt.spins and bool((h.abs() == 1).all())
    assert torch.equal(spin_codes(h), (h[..., 0] > 0).long() + 2 * (h[..., 1] > 0).long())
    up = torch.randn(h.shape, generator=gen)
    (grad,) = torch.autograd.grad((h * up).sum(), filt.weight)
    pre = filt.preactivation(v)
    soft = torch.tanh(pre / (noise if noise > 0 else filt.tau))
    (expected,) = torch.autograd.grad((soft * up).sum(), filt.weight)
    torch.testing.assert_close(grad, expected)
    filt.binarize = "anneal"
    assert not filt.spins  # tanh(pre / tau): real-valued in training


def test_binarize_auto_reads_the_inputs():
    """``binarize="auto"``: straight-through when every unit takes at most two values, real-valued otherwise."""
    from rsmi_nn.filters import decide_binarize
    from rsmi_nn.options import StepOptions

    gen = torch.Generator().manual_seed(0)
    spins = torch.randint(0, 2, (5000, 6), generator=gen).float() * 2 - 1
    auto = StepOptions()
    assert auto.binarize == "auto"
    assert decide_binarize(auto, spins).binarize == "straight-through"
    assert decide_binarize(auto, (spins + 1) / 2).binarize == "straight-through"  # bits
    spins[:, 2] = 1.0  # a constant unit is still two-valued
    assert decide_binarize(auto, spins).binarize == "straight-through"
    late = spins.clone()
    late[4999, 0] = 0.0  # a third value after the first rows
    assert decide_binarize(auto, late).binarize is None
    assert decide_binarize(auto, torch.randn(5000, 6, generator=gen)).binarize is None
    assert decide_binarize(StepOptions(binarize=None), spins).binarize is None
    assert decide_binarize(StepOptions(binarize=False), spins).binarize is None
    assert decide_binarize(StepOptions(binarize="anneal"), spins).binarize == "anneal"
    from rsmi_nn.filters import _two_valued

    shifted = (spins + 1) / 2  # each chunk of 1 000 rows two-valued, the whole three-valued: {0, 1} then {1, 2}
    shifted[3000:, 4] += 1.0
    assert _two_valued(spins, chunk_elements=6000) and not _two_valued(shifted, chunk_elements=6000)
    assert not _two_valued(late, chunk_elements=6000)
    from estimators.validation import check_samples

    for x in (spins, shifted, late, torch.randn(5000, 6, generator=gen)):  # the extremes check_samples measured
        t, extremes = check_samples(x, allow_constant=True, return_range=True)
        assert _two_valued(t, extremes, chunk_elements=6000) == _two_valued(x, chunk_elements=6000)
    near = spins.clone()  # a third value one float from an extreme, or one denormal above 0, still counts
    near[2500, 1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert not _two_valued(near) and not _two_valued(near, (near.amin(0), near.amax(0)))
    tiny = (spins + 1) / 2
    tiny[10, 3] = torch.finfo(torch.float32).tiny / 4  # a denormal between 0 and 1
    assert not _two_valued(tiny, (tiny.amin(0), tiny.amax(0)))


def test_two_valued_check_allocates_nothing_per_chunk_and_refuses_nan():
    """The pass of ``binarize="auto"`` writes its differences into two buffers made once: the allocations it makes
    (above a few bytes; the reductions' scalars are 4 bytes) do not grow with the number of chunks. A NaN is no
    extreme."""
    from torch.profiler import ProfilerActivity, profile

    from rsmi_nn.filters import _two_valued

    spins = torch.where(torch.rand(4000, 16, generator=torch.Generator().manual_seed(3)) < 0.5, -1.0, 1.0)
    extremes = (spins.amin(0), spins.amax(0))

    def allocations(chunk_elements: int) -> list[int]:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            assert _two_valued(spins, extremes, chunk_elements=chunk_elements)
        return [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 64]

    few, many = allocations(16 * 400), allocations(16 * 40)  # 10 and 100 chunks
    assert len(few) == len(many) == 2, (few, many)
    nan = spins.clone()
    nan[3000, 5] = float("nan")  # past the head rows, so the whole-matrix extremes are measured (and are NaN)
    assert not _two_valued(nan) and not _two_valued(nan, chunk_elements=16 * 40)


def _two_problem_regions():
    """Two blocks with disjoint units: block 0 strongly tied to its environment, block 1 weakly."""
    visible = torch.tensor([[0, 1], [4, 5]])
    env = torch.tensor([[2, 3], [6, 7]])
    true = torch.ones(2, 2, dtype=torch.bool)
    return Regions(visible=visible, visible_mask=true, buffer=torch.full((2, 0), -1),
                   buffer_mask=torch.zeros(2, 0, dtype=torch.bool),
                   environment=env, environment_mask=true, blocks=torch.tensor([0, 0, 1, 1, 1, 1, 0, 0]),
                   block_ids=torch.arange(2), empty_environment=torch.empty(0, dtype=torch.long))


def _two_problem_samples(n, seed):
    """Units 0..3: corr(0+1, 2+3) strong; units 4..7: weak. Covariance returned for the exact optimum."""
    rng = np.random.default_rng(seed)
    cov = np.eye(8)
    for (v, e, rho) in (((0, 1), (2, 3), 0.8), ((4, 5), (6, 7), 0.35)):
        for a in v:
            for b in e:
                cov[a, b] = cov[b, a] = rho / 2
    x = rng.multivariate_normal(np.zeros(8), cov, size=n)
    return torch.from_numpy(x.astype(np.float32)), cov


def test_transform_is_the_filters_on_standardised_units_whatever_the_chunks(monkeypatch):
    """``transform`` = each block's filter applied to its standardised units, column ``j * hidden + c``, summed in
    float64 and rounded once; the chunk of rows (``chunk_size``, or the byte cap on gathered blocks) and the rows
    transformed with it change no bit (float32 products did, on an AVX-512 CPU); binarised filters give ±1."""
    import rsmi_nn.coarse_graining as cg

    x, _ = _two_problem_samples(1000, seed=3)
    regions = _two_problem_regions()
    res = coarse_grain(x, regions, hidden=2, seed=0, steps=20, eval_every=10)
    h = res.transform(x)
    z = ((x - res.mean) / res.std).double()
    for j, units in enumerate(([0, 1], [4, 5])):
        assert torch.equal(h[:, 2 * j:2 * j + 2], (z[:, units] @ res.filters[j].double()).float())
    assert res.transform(x, chunk_size=7).numpy().tobytes() == h.numpy().tobytes()
    assert res.transform(x[13:20]).numpy().tobytes() == h[13:20].numpy().tobytes()
    monkeypatch.setattr(cg, "TRANSFORM_CHUNK_BYTES", 1)  # one row a chunk
    assert res.transform(x).numpy().tobytes() == h.numpy().tobytes()
    signs = cg.CoarseGrainResult(**{**res.__dict__, "binarize": "straight-through"}).transform(x)
    assert torch.equal(signs, torch.where(h >= 0, 1.0, -1.0))
    with pytest.raises(ValueError, match="chunk_size"):
        res.transform(x, chunk_size=0)


def test_an_mlp_filter_transform_is_its_float32_forward_whatever_the_chunks():
    """An MLP filter's coarse variables: its forward in float64, rounded once — within float32 rounding of the float32
    forward, and the same bits whatever the chunk of rows and whichever rows are transformed with them."""
    from rsmi_nn.training import UnitMajor, gather

    x, _ = _two_problem_samples(1000, seed=3)
    res = coarse_grain(x, _two_problem_regions(), hidden=2, filter="mlp", seed=0, steps=20, eval_every=10)
    h = res.transform(x)
    v = gather(UnitMajor.from_rows((x - res.mean) / res.std), res.visible)
    with torch.no_grad():
        ref = res.model(v, hard=True).transpose(0, 1).reshape(x.shape[0], -1)
    assert ref.std() > 0.1
    torch.testing.assert_close(h, ref, rtol=1e-5, atol=1e-5)
    assert res.transform(x, chunk_size=7).numpy().tobytes() == h.numpy().tobytes()
    assert res.transform(x[13:20]).numpy().tobytes() == h[13:20].numpy().tobytes()


def test_batched_blocks_train_independently():
    """Two different problems in one batch each reach their own optimum, as when trained alone."""
    x, cov = _two_problem_samples(5000, seed=0)
    regions = _two_problem_regions()
    both = coarse_grain(x, regions, seed=0)
    alone = coarse_grain(x, regions.select([1]), seed=0)
    opt = [cca_mi(cov, [0, 1], [2, 3]), cca_mi(cov, [4, 5], [6, 7])]
    # held-out InfoNCE on 1000 test rows: sd ≈ 0.025 nats at these MIs; 0.08 is 3 sd
    assert float(both.mi[0]) == pytest.approx(opt[0], abs=0.08)
    assert float(both.mi[1]) == pytest.approx(opt[1], abs=0.08)
    assert float(alone.mi[0]) == pytest.approx(float(both.mi[1]), abs=0.08)
    # the filters are the CCA directions (here the uniform ones), signs fixed positive; MI depends on the
    # angle θ to the optimum as cos²θ, so cos θ > 0.97 keeps > 94% of ρ² (the weak block's is flat)
    cos = both.filters[:, :, 0] @ torch.full((2,), 2**-0.5)
    assert float(cos[0]) > 0.97 and float(cos[1]) > 0.95, both.filters


def _gaussian_field_check(n_nodes, n_samples, **options):
    """Fit a Gaussian field's blocks; check the filters against the CCA optimum and the estimate against them."""
    graph, cov, x = gaussian_field(n_nodes, n_samples, seed=3, mass=0.25)
    regions = make_regions(graph, partition(graph, 4, seed=0), buffer=1, env=1)
    optimum = block_optima(cov, regions)
    res = coarse_grain(x, regions, seed=0, **options)
    exact = filter_mi(cov, regions, res)
    # the learnt filters, measured exactly (no sampling noise): within 2% of the optimum in every block
    assert (exact / optimum).min() >= 0.98, exact / optimum
    # the held-out estimate: within 4 standard errors (its own, calibrated on these fields: the
    # deviations have sd ≈ 1 s.e.) plus 3% of the filter's exact MI in every block
    est, se = res.mi.double().numpy(), res.mi_stderr.double().numpy()
    assert (np.abs(est - exact) <= 4 * se + 0.03 * exact).all(), (est, exact, se)
    # InfoNCE's ceiling: log of the columns each test row is scored against (all test rows up to TEST_COLUMNS,
    # then the smallest of the groups they are split into)
    from rsmi_nn.coarse_graining import _scored_columns

    assert res.mi.max() < res.mi_ceiling == pytest.approx(math.log(_scored_columns(res.info["n_test"])))


def test_gaussian_field_blocks_reach_cca_optimum_fast():
    """Small field, smaller batches: the learnt filters reach the CCA optimum, the estimate tracks them."""
    _gaussian_field_check(24, 5000, batch_size=128)


@pytest.mark.slow
def test_gaussian_field_blocks_reach_cca_optimum():
    """Defaults, no tuning, a larger field."""
    _gaussian_field_check(48, 8000)


def test_seeded_and_sklearn_api():
    x, _ = _two_problem_samples(2000, seed=1)
    regions = _two_problem_regions()
    a = CoarseGrainer(seed=5, steps=60, eval_every=20).fit(x, regions)
    b = coarse_grain(x, regions, seed=5, steps=60, eval_every=20)
    assert a.filters_.numpy().tobytes() == b.filters.numpy().tobytes()
    assert a.mi_.numpy().tobytes() == b.mi.numpy().tobytes()
    assert a.transform(x).shape == (2000, 2)
    from estimators.bounds import InfoNCEBound
    from rsmi_nn.options import StepOptions

    c = CoarseGrainer(StepOptions(steps=60), bound=InfoNCEBound(), seed=5, eval_every=20).fit(x, regions)
    assert c.filters_.numpy().tobytes() == b.filters.numpy().tobytes()  # an options object, a Bound instance
    # early stopping starts from -inf: the first evaluation always improves, training continues
    assert b.info["steps_run"] >= 40
    h2 = coarse_grain(x, regions, hidden=2, seed=0, steps=40, eval_every=20)
    assert h2.filters.shape == (2, 2, 2) and h2.transform(x).shape == (2000, 4)
    assert torch.allclose(h2.filters.norm(dim=1), torch.ones(2, 2), atol=1e-5)


def test_nan_objective_keeps_best_checkpoint(caplog):
    from estimators.bounds import InfoNCEBound

    class Breaks(InfoNCEBound):
        calls = 0

        def objective(self, scores):
            Breaks.calls += 1
            out = super().objective(scores)
            if Breaks.calls > 60 and out.shape[0] == 2:  # block 1 blows up after 60 steps (then leaves the batch)
                out = out * torch.tensor([1.0, float("nan")])
            return out

    x, _ = _two_problem_samples(2000, seed=2)
    with caplog.at_level(logging.WARNING):
        res = coarse_grain(x, _two_problem_regions(), bound=Breaks(), seed=0, steps=120, eval_every=20)
    assert torch.isfinite(res.filters).all() and torch.isfinite(res.mi).all()
    assert res.info["collapsed_blocks"] == [1]
    assert "non-finite" in caplog.text


def test_bad_inputs(ising_tc):
    x, regions = ising_tc
    with pytest.raises(ValueError, match="units but regions"):
        coarse_grain(x[:, :100], regions)
    with pytest.raises(ValueError, match="samples"):
        coarse_grain(x[:100], regions)
    g = lattice_graph(4)
    empty = make_regions(g, lattice_blocks(4, 2), buffer=2, env=1)
    assert empty.empty_environment.numel()
    with pytest.raises(ValueError, match="empty environment.*smaller buffer"):
        coarse_grain(torch.randn(500, 16), empty)
    with pytest.raises(ValueError, match="binarize"):
        coarse_grain(x, regions, binarize="gumbel")


@pytest.mark.parametrize("options", [{"filter": "mlp"}, {"filter": "mlp", "binarize": True}, {"bound": "smile"},
                                     {"bound": "dv", "critic": "concat", "batch_size": 64},
                                     {"binarize": "anneal", "anneal_steps": 20}])
def test_other_filters_bounds_and_critics_run(options):
    x, _ = _two_problem_samples(1500, seed=3)
    res = coarse_grain(x, _two_problem_regions(), seed=0, steps=60, eval_every=20, **options)
    assert torch.isfinite(res.mi).all() and torch.isfinite(res.filters).all()
    assert float(res.mi[0]) > float(res.mi[1]) - 0.1  # the strong block is not worse than the weak one
    h = res.transform(x)
    assert h.shape == (1500, 2)
    if options.get("binarize"):
        assert set(torch.unique(h).tolist()) <= {-1.0, 1.0}


def test_standardise_in_row_chunks_equals_the_float64_formula():
    from rsmi_nn.standardising import standardise

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(103, 7, generator=g) * 3 + 500).float()  # an offset: a float32 centring would lose digits
    x[:, 2] = 1.5  # constant: std 1 by convention, standardised to 0
    mean, std, z = standardise(x, chunk_elements=40)  # 5 rows a chunk
    x64 = x.double()
    ref_std = x64.std(0)
    ref_std[2] = 1.0
    torch.testing.assert_close(mean, x64.mean(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(std, ref_std, rtol=1e-12, atol=0)
    torch.testing.assert_close(z, ((x64 - x64.mean(0)) / ref_std).float(), rtol=0, atol=1e-6)
    assert z.dtype == torch.float32 and bool((z[:, 2] == 0).all())


def _variance_versus_predictability(n: int = 6000):
    """Block units 0-3 = 2 f α + 0.3 g β (+ a little noise), α ⟂ β; environment units 4, 5 copy f loosely (R² 0.5)
    and g tightly (R² 0.99). The noiseless objective prefers β (g: small variance, nearly determined by E); a
    noisy H prefers α (f: the block's principal component, more predictable variance in absolute terms)."""
    gen = torch.Generator().manual_seed(3)
    f, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    alpha, beta = torch.tensor([1.0, 1, 1, 1]) / 2, torch.tensor([1.0, -1, 1, -1]) / 2
    block = 2 * f[:, None] * alpha + 0.3 * g[:, None] * beta + 0.05 * torch.randn(n, 4, generator=gen)
    env = torch.stack([f + torch.randn(n, generator=gen), g + 0.1 * torch.randn(n, generator=gen)], 1)
    edges = torch.tensor([[i, j] for i in range(4) for j in (4, 5)]).T
    from graphs import ActivationGraph

    graph = ActivationGraph([str(i) for i in range(6)], edges)
    regions = make_regions(graph, torch.tensor([0, 0, 0, 0, 1, 1]), buffer=0, env=1)
    return torch.cat([block, env], 1), regions, alpha


def test_noise_of_a_real_valued_h_favours_the_principal_component():
    x, regions, alpha = _variance_versus_predictability()
    common = {"steps": 400, "eval_every": 50, "seed": 0, "lr": 0.01}
    plain = coarse_grain(x, regions, **common)
    noisy = coarse_grain(x, regions, noise=2.0, **common)
    cos = lambda res: abs(float(res.filters[0, :4, 0] @ alpha))  # noqa: E731  (unit-norm columns)
    assert cos(plain) < 0.5 and cos(noisy) > 0.95, (cos(plain), cos(noisy))
    again = coarse_grain(x, regions, noise=2.0, **common)
    assert noisy.filters.numpy().tobytes() == again.filters.numpy().tobytes()  # seeded noise, same bytes
    # the noise is training-only: transform is the plain linear map
    z = (x - noisy.mean) / noisy.std
    torch.testing.assert_close(noisy.transform(x)[:, 0], z[:, :4] @ noisy.filters[0, :4, 0], rtol=0, atol=1e-4)


def test_refit_critic_reports_the_noiseless_variables_mi():
    """With large training noise the training critic scores H + noise: its bound on the variables' own MI is loose
    (measured 0.08 of the exact value). The refitted critic, trained on the noiseless H with the filters frozen,
    reports the exact Gaussian MI of the learnt filters (measured mean ratio 1.01) and leaves the filters alone."""
    graph, cov, x = gaussian_field(80, 6000, seed=2)
    regions = make_regions(graph, partition(graph, 4, seed=0), buffer=1, env=1)
    common = {"noise": 8.0, "seed": 0, "steps": 600, "lr": 0.01}
    loose = coarse_grain(x, regions, refit_critic=False, **common)
    refit = coarse_grain(x, regions, **common)
    assert refit.filters.numpy().tobytes() == loose.filters.numpy().tobytes()
    exact = filter_mi(cov, regions, refit)
    assert 0.9 < float(np.mean(refit.mi.numpy() / exact)) < 1.1
    assert float(np.mean(loose.mi.numpy() / exact)) < 0.3
    assert refit.info["critic_refit_steps"] > 0 and loose.info["critic_refit_steps"] == 0


def test_refit_stops_by_the_estimators_rule_never_later_than_the_step():
    """The refit estimates a fixed variable's MI: estimate_mi's gain and patience (a shared filter's shorter), no
    warm-up; a stricter step rule is kept."""
    from dataclasses import replace

    from estimators.estimate import ESTIMATE_MIN_DELTA, ESTIMATE_PATIENCE
    from estimators.training import TrainSettings
    from rsmi_nn.training import SHARED_REFIT_PATIENCE, refit_settings

    step = TrainSettings(patience=10, min_delta=1e-3, warmup_steps=1000, lr=0.01, max_steps=300)
    refit = refit_settings(step)
    assert (refit.patience, refit.min_delta, refit.warmup_steps) == (ESTIMATE_PATIENCE, ESTIMATE_MIN_DELTA, 0)
    assert (refit.lr, refit.max_steps) == (0.01, 300)
    assert refit_settings(step, shared=True).patience == SHARED_REFIT_PATIENCE < ESTIMATE_PATIENCE
    strict = refit_settings(replace(step, patience=1, min_delta=0.1))
    assert (strict.patience, strict.min_delta) == (1, 0.1)
    assert refit_settings(replace(step, patience=1), shared=True).patience == 1


@pytest.mark.parametrize("shared", [False, True])
def test_refit_goes_on_from_the_training_critics_checkpoint(ising_tc, monkeypatch, shared):
    """The refit starts from the filter and critic the training kept (each block's best checkpoint), not from a fresh
    critic: a fresh one, stopped by the refit's rule, read a lower held-out MI for the same filters."""
    import rsmi_nn.filters
    import rsmi_nn.shared_step
    import rsmi_nn.training

    module = rsmi_nn.shared_step if shared else rsmi_nn.training
    real, calls = module.train_problems, []

    def spy(params, *args, **kwargs):
        before = [t.detach().clone() for t in params]
        state = real(params, *args, **kwargs)
        calls.append((before, [t.detach().clone() for t in params]))
        return state

    monkeypatch.setattr(module, "train_problems", spy)
    # between the two, a near-uniform binarised filter is made exactly uniform (tests/rsmi_nn/test_tie_rule.py)
    monkeypatch.setattr(rsmi_nn.filters.LinearFilter, "snap_near_uniform", lambda self: None)
    x, regions = ising_tc
    res = coarse_grain(x, regions, shared=shared, seed=0, steps=200)
    assert res.info["critic_refit_steps"] > 0 and len(calls) == 2
    (_, trained), (refit_start, _) = calls
    assert len(trained) == len(refit_start)
    assert all(torch.equal(a, b) for a, b in zip(trained, refit_start))


def test_shared_critic_reads_environments_in_any_order(ising_tc):
    """The shared step's keyed critic summarises a block's environment through per-site keys, so the order its
    sites are listed in (which differs between blocks at a periodic lattice's seam) changes nothing."""
    from rsmi_nn.shared_step import environment_keys
    from rsmi_nn.training import gather

    x, regions = ising_tc
    z = (x - x.mean(0)) / x.std(0)
    dev = (regions.visible, regions.visible_mask.float(), regions.environment, regions.environment_mask.float())
    keys = environment_keys(z, dev)
    perm = torch.randperm(regions.environment.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = (dev[0], dev[1], dev[2][:, perm], dev[3][:, perm])
    keys_shuffled = environment_keys(z, shuffled)
    u = torch.bmm(gather(z[:64], dev[2]), keys)
    u_shuffled = torch.bmm(gather(z[:64], shuffled[2]), keys_shuffled)
    assert keys.shape == (regions.num_blocks, regions.environment.shape[1], 5 * regions.visible.shape[1])
    assert torch.allclose(u, u_shuffled, atol=1e-4)
    assert not torch.allclose(keys, keys_shuffled)  # the keys did move with the sites


def test_keys_read_each_blocks_own_correlations_whatever_the_chunk():
    """The keys of a chunk of blocks come from one product over the union of their environments: on an irregular
    graph with padded environments, any chunking gives the same keys, and a block's correlation column is its
    visible unit's correlation with each of its environment sites."""
    from graphs import build_graph, make_regions, partition
    from rsmi_nn.shared_step import environment_keys

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(600, 5, generator=gen) @ torch.randn(5, 40, generator=gen) + torch.randn(600, 40, generator=gen)
    z = (x - x.mean(0)) / x.std(0)
    graph = build_graph(x, k=6)
    regions = make_regions(graph, partition(graph, 4), buffer=1, env=1)
    dev = (regions.visible, regions.visible_mask.float(), regions.environment, regions.environment_mask.float())
    assert bool((regions.environment < 0).any())  # padded sites
    keys = environment_keys(z, dev, chunk=1)
    for chunk in (3, regions.num_blocks):
        assert torch.allclose(environment_keys(z, dev, chunk=chunk), keys, atol=1e-6)
    j, env, k = 0, regions.environment[0], regions.visible[0, 0]
    sites = env[env >= 0]
    rho = (z[:, sites] * z[:, k:k + 1]).mean(0)
    column = keys[j, : sites.numel(), 0]  # unit k's correlation column, normalised over the block's sites
    assert torch.allclose(column, rho / rho.norm(), atol=1e-5)


def test_keyed_critic_reads_environments_through_its_keys_whatever_the_pads_hold():
    """The keyed critic's environment embedding, with an affine environment side folded into the keys or an MLP
    after them, is its critic on the summaries E Φ s; a padded site contributes nothing whatever unit it reads (the
    shared step's minibatch points pads at unit 0); the validation's summaries give the same embedding."""
    from graphs import build_graph, make_regions, partition
    from rsmi_nn.shared_step import KeyedCritic, _columns, environment_keys

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 4, generator=gen) @ torch.randn(4, 30, generator=gen) + torch.randn(300, 30, generator=gen)
    z = (x - x.mean(0)) / x.std(0)
    graph = build_graph(x, k=5)
    regions = make_regions(graph, partition(graph, 3), buffer=1, env=1)
    env = regions.environment
    assert bool((env < 0).any())
    dev = (regions.visible, regions.visible_mask.float(), env, regions.environment_mask.float())
    keys = environment_keys(z, dev)
    blocks = torch.tensor([2, 0])
    e_zero = _columns(torch.cat([z[:64], torch.zeros(64, 1)], 1), torch.where(env >= 0, env, z.shape[1])[blocks])
    e_any = _columns(z[:64], env.clamp_min(0)[blocks])  # pads read unit 0
    assert not torch.equal(e_zero, e_any)
    for layers in (1, 2):
        crit = KeyedCritic(keys, torch.rand(keys.shape[2], generator=gen) + 0.5, 1, hidden=8, embed=4, layers=2,
                           x_layers=layers, generator=gen)
        u = torch.bmm(e_zero, keys[blocks]) * crit.scale
        expected = crit.critic.embed_x(u.reshape(1, -1, u.shape[2])).view(2, 64, -1)
        assert torch.allclose(crit.embed_x(e_any, blocks=blocks), expected, atol=1e-5)
        assert torch.allclose(crit.embed_summary(crit.summary(e_zero, blocks)), expected, atol=1e-5)


def test_shared_step_bounds_its_test():
    """A shared step scores each block on at most TEST_SCORES / (J * 256) test rows (>= 256), against 256 columns."""
    from rsmi_nn.shared_step import SHARED_TEST_COLUMNS, TEST_SCORES, test_rows

    assert test_rows(4000, 256) == TEST_SCORES // (256 * SHARED_TEST_COLUMNS) == 1024
    assert test_rows(4000, 16) == 4000 and test_rows(4000, 100_000) == 256
