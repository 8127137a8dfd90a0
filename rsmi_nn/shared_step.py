"""The shared RSMI step: one filter and one critic for every block of a homogeneous system.

A shared filter sees every block's data at each step, so it needs a few blocks' worth per step, not all of
them. The critic is shared too, which needs the environments of different blocks to mean the same thing to
it; their sites come in no common order (a periodic lattice's blocks at the seam list theirs otherwise;
``max_env`` subsamples each block's own). So a block's environment ``E_j`` is first summarised by fixed
*keys*: each site's weight is a smooth function of its correlation with each of the block's visible units
(the correlation itself and radial bumps over it, rescaled to the block's own range), giving ``u = E_j Φ_j``
with ``Φ_j : [max_env, 5 · max_visible]``; one :class:`estimators.SeparableCritic` (P = 1) scores ``(u, H)``.
Keys are measured on training rows only; on a translation-invariant system they are the same function of a
site's position relative to the block for every block (the visible units' order is the filter's anyway).

Training (the one loop, :func:`estimators.training.train_problems`, P = 1): each step takes ``batch_size``
rows and :data:`BLOCKS_PER_STEP` blocks drawn at random, one InfoNCE per block over the rows, averaged;
validation on :data:`VALIDATION_BLOCKS` blocks spread over the system, every validation row.
"""

from __future__ import annotations

import torch
from torch import nn

from estimators.batched import narrow_baddbmm
from estimators.critics import SeparableCritic
from estimators.device import Scratch
from estimators.fused import infonce_separable
from estimators.training import TrainSettings, TrainState, train_problems
from rsmi_nn.training import UnitMajor, evaluate, gather, pick_rows

__all__ = ["BLOCKS_PER_STEP", "SHARED_TEST_COLUMNS", "KeyedCritic", "VALIDATION_BLOCKS", "environment_keys", "spread_blocks",
           "test_rows", "train_shared"]

BLOCKS_PER_STEP = 16
VALIDATION_BLOCKS = 16
# The held-out test of a shared step is bounded: each block's MI from its first ``test_rows`` test rows, each row
# scored against the 256 rows of its group (InfoNCE ceiling log 256 = 5.5 nats, finite-K bias ~ (e^I - 1) / 256,
# 2.4e-3 nats at 0.48): at most TEST_SCORES scores in all (J = 256 blocks: 1 024 rows each), at least 256 rows.
SHARED_TEST_COLUMNS = 256
TEST_SCORES = 1 << 26
KEY_ROWS = 2048  # training rows the keys' correlations are measured on (s.e. ~0.02 each)
_CENTRES = (0.0, 1 / 3, 2 / 3, 1.0)
_WIDTH = 0.25


def spread_blocks(n_blocks: int, device=None) -> torch.Tensor:
    """At most :data:`VALIDATION_BLOCKS` block indices spread evenly over ``0..n_blocks-1`` (the blocks a shared
    filter is validated on, its summaries scaled by and its canonical start measured on)."""
    return torch.linspace(0, n_blocks - 1, min(n_blocks, VALIDATION_BLOCKS)).round().long().to(device)


def test_rows(n_test: int, n_blocks: int) -> int:
    """Test rows each block of a shared step is scored on (see :data:`TEST_SCORES`)."""
    return min(n_test, max(256, TEST_SCORES // (n_blocks * SHARED_TEST_COLUMNS)))


@torch.no_grad()
def environment_keys(z: torch.Tensor, regions_dev, *, chunk: int = 32) -> torch.Tensor:
    """Keys ``Φ [J, max_env, 5 · max_visible]`` from standardised rows ``z [n, U]`` (see the module docstring).

    Column ``5 k`` weighs site ``s`` by ``ρ_k(s)``, its correlation with visible unit ``k``; column ``5 k + 1 + c``
    by ``exp(-((t_k(s) - c/3) / 0.25)²)``, ``t_k`` that correlation rescaled to ``[0, 1]`` over the block's sites
    (16-block Ising test at T_c, seeds 0-2: spread between the filter's weights 0.010/0.090/0.008 with the bumps
    alone, 0.001/0.015/0.010 with the correlation too; the per-block critics 0.017/0.007/0.009). Each column has
    unit norm; padded sites and units get 0. The correlations of ``chunk`` blocks' visible units with the units
    of their environments are one ``Z_Sᵀ V`` product (``S`` the union of those environments), read at each block's
    sites (the L = 32 Ising step's keys: 150 -> ~30 ms on this CPU, where gathering every block's environment rows
    copied 270 MB; a product with every unit instead grew as L⁴: 0.39 s at L = 64).
    """
    vis, vm, env, em = regions_dev
    n, units = z.shape[0], UnitMajor.from_rows(z, Scratch(small=True))  # written once, read by every chunk
    out, sites_rows = [], Scratch()  # each chunk's union rows in one reused buffer (L = 48: 18 x 5 MB, 85 -> ~5 ms)
    for a in range(0, vis.shape[0], chunk):
        v = gather(units, vis[a:a + chunk]).transpose(0, 1).flatten(1)  # [n, c · max_v], pads 0
        e = env[a:a + chunk]
        union = e[e >= 0].unique()  # sorted
        corr = torch.cat([pick_rows(units.t, union, sites_rows) @ v / n, v.new_zeros(1, v.shape[1])])  # last row: pads
        sites = torch.where(e >= 0, torch.searchsorted(union, e.clamp_min(0)), union.numel()).unsqueeze(-1)
        block = torch.arange(sites.shape[0], device=sites.device).view(-1, 1, 1)
        rho = corr.view(union.numel() + 1, -1, vis.shape[1])[sites, block,
                                                             torch.arange(vis.shape[1], device=sites.device)]
        site = em[a:a + chunk].unsqueeze(-1) > 0
        lo = torch.where(site, rho, torch.inf).amin(1, keepdim=True)
        hi = torch.where(site, rho, -torch.inf).amax(1, keepdim=True)
        t = (rho - lo) / (hi - lo).clamp_min(1e-6)
        bumps = torch.stack([rho, *(torch.exp(-((t - c) / _WIDTH) ** 2) for c in _CENTRES)], dim=-1)  # [c, m_e, m_v, 5]
        bumps = bumps * (site & (vm[a:a + chunk].unsqueeze(1) > 0)).unsqueeze(-1)
        phi = bumps.flatten(2)
        out.append(phi / phi.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return torch.cat(out)


class KeyedCritic(nn.Module):
    """One separable critic for all blocks, reading each block's environment through its keys.

    ``keys [J, max_env, q]`` (a buffer: cut with the blocks); ``scale [q]`` makes the summaries ``u = E Φ``
    of unit variance. ``embed_x`` / ``embed_y`` take ``[P, B, .]`` for the P blocks ``blocks`` (all by
    default), the interface :func:`estimators.heldout.heldout_bound` scores.
    """

    def __init__(self, keys: torch.Tensor, scale: torch.Tensor, hidden_dim: int, *, hidden: int, embed: int,
                 layers: int, x_layers: int, generator: torch.Generator):
        super().__init__()
        self.register_buffer("keys", keys)
        self.register_buffer("scale", scale)
        self.n_blocks = keys.shape[0]
        self.critic = SeparableCritic(1, keys.shape[2], hidden_dim, hidden=hidden, embed=embed, layers=layers,
                                      x_layers=x_layers, generator=generator).to(keys.device)

    def summary(self, e: torch.Tensor, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """``E [P, B, max_env] -> u [P, B, q]``."""
        keys = self.keys if blocks is None else self.keys[blocks]
        return torch.bmm(e, keys) * self.scale

    def _flat(self, mlp_embed, t: torch.Tensor) -> torch.Tensor:
        p, b = t.shape[0], t.shape[1]
        return mlp_embed(t.reshape(1, p * b, t.shape[2])).view(p, b, -1)

    def embed_x(self, e: torch.Tensor, mask=None, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """``E [P, B, max_env] -> [P, B, embed]``. An affine environment side (``critic_env_layers`` 1) is folded
        into each block's keys, ``g(E Φ s) = E (Φ s W) + b``: one product of E instead of two (2×2 Ising,
        16 blocks x 128 rows x 128 sites: 267 -> ~150 us a training step on this 2-core CPU)."""
        layers = self.critic.g.layers
        if len(layers) > 1:
            return self._flat(self.critic.embed_x, self.summary(e, blocks))
        keys = self.keys if blocks is None else self.keys[blocks]
        folded = torch.matmul(keys * self.scale, layers[0].weight[0])  # [P, max_env, embed]
        return narrow_baddbmm(layers[0].bias, e, folded) * self.critic._scale

    def embed_summary(self, u: torch.Tensor, mask=None) -> torch.Tensor:
        """``u [P, B, q]`` (:meth:`summary`'s) ``-> [P, B, embed]``: what :meth:`embed_x` gives for their E."""
        return self._flat(self.critic.embed_x, u)

    def embed_y(self, h: torch.Tensor, mask=None) -> torch.Tensor:
        return self._flat(self.critic.embed_y, h)


class _ReadingSummaries:
    """A :class:`KeyedCritic` taking summaries ``u = E Φ s`` where it takes environments: the validation rows'
    are measured once per training (keys never train; a validation of 16 blocks x 2 000 rows gathered 16 MB
    of environments and multiplied them by the keys each time)."""

    def __init__(self, crit: KeyedCritic):
        self.embed_x, self.embed_y = crit.embed_summary, crit.embed_y


def _columns(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``z [B, U]`` at the columns ``index [c, m]`` (no pads) -> ``[c, B, m]``, a view of one column gather
    (a minibatch's rows transposed for :func:`rsmi_nn.training.gather` cost ~180 us a step: 445 -> 360 us with the
    environment's product, 16 blocks x 128 rows of 1 024 units)."""
    return z.index_select(1, index.flatten()).view(z.shape[0], *index.shape).transpose(0, 1)


def _summary_scale(z: torch.Tensor, keys: torch.Tensor, regions_dev) -> torch.Tensor:
    """``1 / std`` of each summary column over a few rows and blocks (so the critic sees O(1) inputs)."""
    env = regions_dev[2]
    pick = spread_blocks(env.shape[0])
    u = torch.bmm(gather(z[:512], env[pick]), keys[pick]).flatten(0, 1)
    return u.std(dim=0).clamp_min(1e-6).reciprocal()


def train_shared(filt, opts, bound, z_train: torch.Tensor, z_val: torch.Tensor, regions_dev, settings: TrainSettings,
                 generator: torch.Generator, critic: KeyedCritic | None = None
                 ) -> tuple[KeyedCritic, TrainState]:
    """Train the shared ``filt`` with a :class:`KeyedCritic` (made here, seeded by ``generator``); returns it
    and the loop's state (one problem: the checkpoint with the best mean validation MI over the validation
    blocks). ``critic`` : the step's training critic, trained on from its checkpoint instead of a new one (the critic
    refit: its keys and scales are functions of the training rows alone, 6 % of a shared L = 32 Ising step to
    measure again)."""
    vis, _, env, _ = regions_dev
    n_blocks = vis.shape[0]
    crit = critic
    if crit is None:
        keys = environment_keys(z_train[:KEY_ROWS], regions_dev)
        crit = KeyedCritic(keys, _summary_scale(z_train, keys, regions_dev), filt.weight.shape[-1],
                           hidden=opts.critic_hidden, embed=opts.critic_embed, layers=opts.critic_layers,
                           x_layers=opts.critic_env_layers, generator=generator)
    per_step = min(n_blocks, BLOCKS_PER_STEP)
    # pads may read any unit: the filter's weights and the keys are zero there
    vis_any, env_any = vis.clamp_min(0), env.clamp_min(0)

    picked = Scratch()  # the minibatch's rows, read by the step's column gathers only

    def objective(rows: torch.Tensor) -> torch.Tensor:
        blocks = torch.randperm(n_blocks, generator=generator)[:per_step].to(vis.device)
        z = pick_rows(z_train, rows, picked)
        h = filt(_columns(z, vis_any[blocks]))
        a, b, codes = crit.embed_x(_columns(z, env_any[blocks]), blocks=blocks), crit.embed_y(h), filt.codes(h)
        return infonce_separable(a, b, codes=codes).mean().unsqueeze(0)  # a binary H: B x 2^h scores, not B x B

    pick = spread_blocks(n_blocks, vis.device)
    val_regions = tuple(t[pick] for t in regions_dev)
    u_val = crit.summary(gather(z_val, env[pick]), pick)
    summarised = _ReadingSummaries(crit)

    def validate():
        mi, stderr = evaluate(filt, summarised, bound, z_val, val_regions, environment=lambda a, b: u_val[:, a:b])
        return mi.mean().unsqueeze(0), (stderr.square().mean() / pick.numel()).sqrt().unsqueeze(0)

    params = list(filt.parameters()) + list(crit.parameters())
    state = train_problems(params, objective, validate, z_train.shape[0], generator, settings,
                           on_step=filt.anneal_step)
    return crit, state
