"""The engine's options, declared once: name, type, default, constraint and help text of each.

Every options class is a frozen dataclass whose fields are made by :func:`option`. The engine's
functions take an instance or the same names as keywords (``coarse_grain(x, regions, hidden=2)``),
and the application generates its config schema, its CLI flags and ``docs/options.md`` from these
declarations (:mod:`rsmi_nn.app.config`, :mod:`rsmi_nn.app.cli_parser`), so an option is added in
one place. A value is checked when an instance is made; an error names the option, the value found
and what is allowed.

>>> StepOptions(hidden=2).replace(steps=500).steps
500
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rsmi_nn.option_specs import NONE_WORDS, Options, OptionSpec, option, parse_bytes, split_overrides

__all__ = [  # the declaration machinery (rsmi_nn.option_specs) re-exported: its home for users too
    "NONE_WORDS",
    "FlowOptions",
    "GraphOptions",
    "OptionSpec",
    "Options",
    "StepOptions",
    "option",
    "parse_bytes",
    "split_overrides",
]

BOUNDS = ("infonce", "nwj", "dv", "smile")  # estimators.bounds.BOUNDS, without importing torch here
BINARIZE_MODES = ("anneal", "straight-through")


@dataclass(frozen=True)
class GraphOptions(Options):
    """The level-0 activation graph (:func:`graphs.build_graph`), and the graphs a flow rebuilds."""

    section: ClassVar[str] = "graph"

    k: int = option(16, "strongest partners kept per unit (also for graphs rebuilt from coarse samples)",
                    kind=int, minimum=1)
    metric: str = option("corr", "edge weight: |Pearson correlation|, co-firing PMI, or Gaussian MI -1/2 log(1-rho^2)",
                         kind=str, choices=("corr", "pmi", "gaussian_mi"))
    threshold: float | None = option(None, "activation threshold of a unit 'firing' (metric pmi; default: its mean)",
                                     kind=float, optional=True)
    memory_budget: str | None = option(None, "memory budget of the tile-wise top-k pass, e.g. '2GiB' "
                                       "(default: 2 GiB on CPU, half the free GPU memory on CUDA)",
                                       kind=str, optional=True, check=parse_bytes)

    def build_kwargs(self) -> dict:
        """Keyword arguments of :func:`graphs.build_graph` (unset options keep its defaults)."""
        kwargs: dict[str, Any] = {"k": self.k, "metric": self.metric}
        if self.threshold is not None:
            kwargs["threshold"] = self.threshold
        if self.memory_budget is not None:
            kwargs["memory_budget"] = parse_bytes(self.memory_budget)
        return kwargs


def _binarize_shorthand(value: Any) -> Any:
    """``binarize=True`` means straight-through, ``False`` means real-valued."""
    if isinstance(value, bool):
        return "straight-through" if value else None
    return value


def _bond_fraction(value: float) -> None:
    if value > 1.0:
        raise ValueError(f"bond_ratio must be <= 1 (a fraction of a unit's strongest bond inside its block), got {value}")


def _positive(help: str, default: int, **kw) -> Any:
    return option(default, help, kind=int, minimum=kw.pop("minimum", 1), **kw)


@dataclass(frozen=True)
class StepOptions(Options):
    """One RSMI coarse-graining step (:func:`rsmi_nn.coarse_grain`): the coarse variable, its critic, training.

    Why some defaults are what they are (measured on this project's 2-core CPU machine):

    - ``binarize``: "straight-through" trains on a stochastic spin ``sign(pre + noise·logistic/2)`` with the
      gradient of ``tanh(pre / noise)``; "anneal" on ``tanh((pre + noise) / τ)`` with τ decayed from 1 to 0.05
      over ``anneal_steps`` inside the step. A binarised H is exactly ±1 at evaluation and in ``transform``.
    - ``binarize`` "auto": on two-valued inputs (spins, bits) a real-valued noiseless H is not identifiable —
      any ``w`` that makes ``w·v`` injective on a block's states carries all of V — and the shared 2×2 Ising
      filter at T_c ended on one seed as a single spin (``[-0.07, 0.99, -0.11, -0.07]``: binarised, 0.33 nats
      against the block spin's 0.41), on others near-uniform; with a binary H (RSMI's block spin, RSMI-NE's
      relaxed Bernoulli) the probe reads 0.402-0.410 on seeds 0-2 (the uniform filter 0.407-0.409).
      Continuous inputs keep a real-valued H, and so do two-valued units in a flow off a lattice (``run_flow``
      decides; a ±1 H reached 0.77-0.90 of a planted latent's linear ceiling there, docs/planted-hierarchy.md).
    - ``noise`` 2.0 for a binarised H (the relaxed Bernoulli of RSMI-NE, ``P(H = +1) = sigmoid(2 pre / noise)``)
      makes the objective smooth in the weights, so the learnt filter is identifiable (the uniform block spin
      on the Ising model at T_c); with 1.0 a 3-spin majority was found as a local optimum on some seeds.
      For a real-valued H, ``noise`` is the std of Gaussian noise added in training only (0 by default: on
      Gaussian fields the noiseless objective reaches the CCA optimum the tests check). On activations of trained
      models 1-2 aligned each block's filter with its principal component and kept the model's outputs far
      better when spliced (tiny-lm level 0: KL 1.5e-4 -> 4.6e-5; the shipped model configs set it). A critic
      trained on H + noise scores the noiseless H loosely (0.08 of its exact MI at noise 8 on a Gaussian field), so
      ``refit_critic`` goes on training it, from its best checkpoint, on the noiseless H with the filters frozen
      (1.01 of the exact MI). A binary H trained as a stochastic spin is scored the same way (2×2 Ising at T_c:
      0.346 nats reported by the training critic against 0.405 by the refitted one and 0.410 by an independent
      probe).
    - ``init`` "auto" (the canonical start for a linear filter): each block's filter starts at its top canonical
      directions against its environment, the exact optimum of I(H;E) when V and E are jointly Gaussian. Where the
      environment carries little of a block's signal the objective's gradient is weak, and from a random start a
      filter on a nuisance-dominated block kept reading the nuisance: a binary planted tree at coupling 0.6 (one
      sibling group per group) had 5 of 16 level-0 blocks at |corr| <= 0.01 of the reachable, all >= 0.97 from the
      canonical start. Gaussian field (quick study): filters 0.9991 of the CCA optimum on average, 0.9967 at worst
      (0.9985 / 0.991 from a random start); 2×2 Ising at T_c: the shared filter starts at the block spin (the
      step 1 200 -> 550-1 050 steps). The digits MLP's spliced KL was lower from a random start, so its config keeps
      it.
    - ``critic_env_layers`` 1 (affine environment side, an MLP on the narrow H): on Gaussian fields (120 nodes,
      6 000 samples) held-out MI / Gaussian plug-in on the same rows 0.977 ± 0.011, against 0.943 ± 0.03 with
      a 2-layer side, which overfits the environment; equal MI on Ising samples.
    - ``batch_size`` 128: a step costs ~B² per block (the critic scores); B = 128 gave the same filters and
      held-out MI as 256 on Gaussian fields (0.998 of the CCA optimum either way) and on Ising samples (2×2 at
      T_c: uniform, 0.368 vs 0.367 nats) at a third of the step time.
    """

    section: ClassVar[str] = "flow"

    hidden: int = _positive("components h of each block's coarse variable", 1)
    shared: bool = option(False, "one filter shared by all blocks (homogeneous lattices; needs equal block sizes)",
                          kind=bool)
    bound: str = option("infonce", "variational MI bound maximised and reported", kind=str, choices=BOUNDS)
    filter: str = option("linear", "coarse-graining map: bias-free linear (unit-norm columns) or a per-block MLP",
                         kind=str, choices=("linear", "mlp"))
    binarize: str | None = option("auto", "make the coarse variables binary (+-1): auto = straight-through when "
                                  "every unit takes at most two values (spins, bits; in a flow only on a lattice), "
                                  "real-valued otherwise; none = "
                                  "real-valued (in Python and TOML, true means straight-through, false none)",
                                  kind=str, optional=True, choices=("auto", *BINARIZE_MODES),
                                  convert=_binarize_shorthand)
    noise: float | None = option(None, "training noise of H: logistic for a binarised H (default 2.0, the relaxed "
                                 "Bernoulli of RSMI-NE), Gaussian of this std for a real-valued H (default 0; "
                                 "the shipped configs: 8 for language models, 1 for digits-mlp, see "
                                 "docs/faithfulness.md)", kind=float, optional=True, minimum=0)
    refit_critic: bool = option(True, "after training H with noise (a binary H's stochastic spin, or Gaussian), "
                                "go on training the critic on the noiseless H (filters frozen), so the reported MI is "
                                "the variables' own; false reports the training critic's looser bound (faster)",
                                kind=bool)
    init: str = option("auto", "starting filter: cca = each block's top `hidden` canonical directions against its "
                       "environment (the linear-Gaussian optimum of I(H;E)), pca = its principal components, random; "
                       "auto = cca for a linear filter (pca at a flow's level >= 1 reading coarse variables off a "
                       "lattice), random for an MLP", kind=str,
                       choices=("auto", "cca", "pca", "random"))
    anneal_steps: int = _positive("steps over which binarize='anneal' decays its temperature from 1 to 0.05", 1000)
    critic: str = option("separable", "critic: separable <g(E), k(H)> or an MLP of the concatenation",
                         kind=str, choices=("separable", "concat"))
    critic_hidden: int = _positive("critic width", 32)
    critic_embed: int = _positive("separable critic's embedding size", 8)
    critic_layers: int = _positive("critic depth", 2)
    critic_env_layers: int = _positive("depth of the separable critic's environment side (1 = affine: "
                                       "best on Gaussian fields; 2 gives a tighter bound on activations)", 1)
    steps: int = _positive("training steps per level (at most; blocks stop early on their validation MI)", 3000)
    batch_size: int = _positive("training batch size (InfoNCE's training ceiling is log batch_size)", 128,
                                minimum=2, flag="--train-batch-size")
    lr: float = option(3e-3, "learning rate of the filters and critics", kind=float, above=0)
    eval_every: int | None = option(None, "validation interval in steps (default 50; 25 for a shared filter, whose "
                                    "every step reads up to 16 blocks' rows)", kind=int, optional=True, minimum=1)
    patience: int | None = option(None, "evaluations without a gain larger than min_delta before a block stops "
                                  "(default 10; 2 for a shared filter, which starts at the canonical optimum)",
                                  kind=int, optional=True, minimum=1)
    min_delta: float | None = option(None, "validation gain (nats) that resets a block's patience (default 0.001; "
                                     "0.01 for a shared filter, whose validation wobbles with its critic)",
                                     kind=float, optional=True, minimum=0)
    test_fraction: float = option(0.2, "fraction of samples held out for the reported MI", kind=float,
                                  above=0, below=1)
    validation_fraction: float = option(0.1, "fraction of samples held out for early stopping", kind=float,
                                        above=0, below=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_fraction + self.validation_fraction >= 1:
            raise ValueError(f"test_fraction={self.test_fraction} and validation_fraction={self.validation_fraction} "
                             "must sum below 1; e.g. 0.2 and 0.1")
        if self.shared and self.filter != "linear":
            raise ValueError("shared=True is supported for filter='linear' only; use shared=False with 'mlp'")
        if self.init in ("pca", "cca") and self.filter != "linear":
            raise ValueError(f"init={self.init!r} starts a linear filter; use init='random' or 'auto' with "
                             "filter='mlp'")

    @property
    def start(self) -> str:
        """The starting filter: ``init``, with "auto" decided ("cca" for a linear filter, "random" for an MLP)."""
        if self.init != "auto":
            return self.init
        return "cca" if self.filter == "linear" else "random"

    @property
    def noise_scale(self) -> float:
        """The training noise of H: ``noise``, or 2.0 for a binarised H and 0 otherwise (``binarize="auto"``
        is decided from the samples first: :func:`rsmi_nn.filters.decide_binarize`)."""
        if self.noise is not None:
            return self.noise
        return 2.0 if self.binarize is not None else 0.0

    @property
    def validation_steps(self) -> int:
        """``eval_every``, the default decided: 50 steps, 25 for a shared filter, whose every step reads
        :data:`rsmi_nn.shared_step.BLOCKS_PER_STEP` blocks' rows and whose validation value is the mean over up to
        16 blocks. 2×2 Ising, L = 32 at T_c, seeds 0-4: the step 3.9 -> 2.3 s on average, the filters' independent
        probe 0.4057 -> 0.4047 nats (the uniform block spin's 0.4060); docs/benchmarks-log.md."""
        if self.eval_every is not None:
            return self.eval_every
        return 25 if self.shared else 50

    @property
    def stopping_delta(self) -> float:
        """``min_delta``, the default decided: 0.001 nats, 0.01 for a shared filter. A shared step's validation
        value (the mean over 16 blocks of the hard H's MI, scored by the critic trained on the noisy H) moves by
        ~0.01 nats between evaluations with the critic's calibration, and gains of 0.001-0.003 restarted the
        patience at random: 2×2 Ising, L = 32 at T_c, seeds 0-4, training steps 275-575 -> 275-450, the step
        2.10 -> 1.87 s on average, every probe and own MI the same; L = 24 at T 2.1 / 2.6, four seeds each, 12 of
        13 cases the same filter, one probe 0.5502 -> 0.5481 (docs/benchmarks-log.md)."""
        if self.min_delta is not None:
            return self.min_delta
        return 0.01 if self.shared else 1e-3

    @property
    def stopping_patience(self) -> int:
        """``patience``, the default decided: 10 evaluations, 2 for a shared filter. A shared filter starts at the
        canonical directions pooled over its validation blocks, the optimum for Gaussian data, and moves little
        from there; its validation value wobbles by ~0.01 nats with the critic, so evaluations after the first few
        without a gain of 0.01 mostly re-draw that noise. 2×2 Ising, seeds 0-4 at L = 32 T_c, L = 24 T 2.1 / 2.6,
        L = 48 T 2.5 and L = 64 T_c, patience 5 -> 3 (10 -> 5 before, 2026-12-02): the step 0.97-1.95 -> 0.84-1.70 s
        on average, 21 of 25 filters the same, mean probes 0.4063 -> 0.4062 (L = 32), 0.1940 -> 0.1933 (L = 48, seed
        1 0.1937 -> 0.1903), 0.3958 -> 0.3958 (L = 64). 3 -> 2 (2026-12-03; L = 32 T_c seeds 0-1, L = 24 T 2.1 / 2.6,
        L = 48 T 2.5 seeds 1-2, L = 64 T_c): 25 training steps fewer in each, every filter the same bytes and every probe
        the same (no gain of 0.01 came after two evaluations without one); docs/benchmarks-log.md."""
        if self.patience is not None:
            return self.patience
        return 2 if self.shared else 10

    def decided_defaults(self) -> dict:
        """What the options whose unset default is decided per mode (``eval_every``, ``min_delta``, ``patience``)
        decide here."""
        unset = self.replace(eval_every=None, min_delta=None, patience=None)
        return {"eval_every": unset.validation_steps, "min_delta": unset.stopping_delta,
                "patience": unset.stopping_patience}

    def step_options(self) -> StepOptions:
        """The step's own options (drops a flow's extra fields)."""
        return StepOptions(**{name: getattr(self, name) for name in StepOptions.specs()})


@dataclass(frozen=True)
class FlowOptions(StepOptions):
    """The decimation flow (:func:`rsmi_nn.run_flow`): levels, blocks and regions, plus every step option."""

    levels: int = _positive("number of RSMI coarse-graining levels", 2)
    block_size: int = _positive("units per block (for a lattice: b*b sites, so 4 = 2x2 squares)", 4, minimum=2)
    buffer: int = _positive("buffer width L_B in hops: nodes within L_B hops of a block are ignored", 1, minimum=0)
    env: int = _positive("environment shell width L_E in hops beyond the buffer", 1)
    max_env: int | None = option(64, "cap on environment nodes per block (a seeded choice keeps this many)",
                                 kind=int, optional=True, minimum=1)
    min_env: int = option(8, "fewest environment nodes a block should have: on a graph that is not a lattice, a block "
                          "whose shell beyond the buffer holds fewer (small, dense coarse graphs) gets a narrower "
                          "buffer, down to 0", kind=int, minimum=1)
    bond_ratio: float | None = option(0.9, "on a graph that is not a lattice, the first buffer hop keeps only the "
                                      "neighbours bound to the block: an edge to a member at >= this fraction of "
                                      "the member's strongest edge inside the block; weaker neighbours join the "
                                      "environment (none: every neighbour is buffer)", kind=float, optional=True,
                                      above=0.0, check=_bond_fraction)
    filter_inputs: str = option("variables", "what a level >= 1 filter reads: the previous level's coarse variables "
                                "in its block (the decimation), or units: the level-0 units they cover "
                                "(environment unchanged; see rsmi_nn.unit_inputs)", kind=str,
                                choices=("variables", "units"))
    coarse_partition: str = option("loading", "what a level >= 1 graph rebuilt from coarse samples is partitioned on: "
                                   "corr = its top-k |corr| edges; loading = every pair's |corr| / (r_i r_j), each "
                                   "variable's loading r from its two strongest partners (issue 15: keeps a weak "
                                   "variable with its own group; above 4 096 variables, corr), and a group closed "
                                   "off from all others by a gap beyond the standard errors is a block: at a natural "
                                   "gap (best outside affinity <= 0.9 of its own) if it fills half a block (a binary "
                                   "tree's pairs with block_size 4), else at a decisive one (<= 0.6); loading-gaps = "
                                   "any group at a natural gap (the default MiniLM run's level 1: 325 blocks instead "
                                   "of 212)", kind=str,
                                   choices=("corr", "loading", "loading-gaps"))
    rebuild: str = option("auto", "next level's graph: auto (quotient lattice for a lattice, else samples), "
                          "samples (top-k graph of the coarse samples) or quotient (blocks joined by edges)",
                          kind=str, choices=("auto", "samples", "quotient"))
    min_nodes: int | None = option(None, "stop when a level has fewer nodes (default: block_size; at least 3); a "
                                   "level also stops where its partition leaves one block, or (above level 0) a block no "
                                   "environment",
                                   kind=int, optional=True, minimum=1)
