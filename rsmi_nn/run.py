"""A run directory read back as objects: :func:`load_run` → :class:`Run` with its :class:`Level` objects.

The files are those of :mod:`rsmi_nn.rundir` (``flow.json`` and one ``levels/NNN/`` folder per finished
level). Everything is read lazily; the feature maps are computed from the filters, so a run loads before,
or without, its export. Level ``l``'s filters act on standardised units,
``H_{j,c} = Σ_i filters[j,i,c] · (x[visible[j,i]] - mean) / std``, so its linear part is the sparse
``W_l [U_l, J_l·h]`` with ``W_l[visible[j, i], j*h + c] = filters[j, i, c] / std[visible[j, i]]``, and the
composed map from the original units is ``M_0 = W_0``, ``M_l = M_{l-1} @ W_l`` (``[U_0, J_l·h]``). A level
whose filters read the level-0 units (``filter_inputs = "units"``, :mod:`rsmi_nn.unit_inputs`) has
``W_l [U_0, J_l·h]`` and ``M_l = W_l``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from rsmi_nn.rundir import FLOW_CONFIG, FLOW_JSON, LEVEL_JSON, level_dir, load_tensors, read_flow, read_json

__all__ = ["Level", "Run", "load_run"]


@dataclass
class Level:
    """One finished level of a flow, read lazily from ``run_dir/levels/NNN``.

    Attributes
    ----------
    index : the level number (0 = the flow's first coarse-graining, on the original units).
    metrics : the level's record (``level.json``): ξ, locality, MI, sizes, fit details.
    """

    index: int
    path: Path
    metrics: dict
    _next_columns: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def graph(self):
        """The level's input graph (``ActivationGraph``), one node per unit of this level."""
        from graphs import ActivationGraph

        return ActivationGraph.load(self.path / "graph")

    @property
    def names(self) -> list[str]:
        """Names of this level's units (the graph's node names)."""
        return self.graph.names

    @cached_property
    def regions(self) -> dict[str, torch.Tensor]:
        """``blocks``, ``visible``, ``visible_mask``, ... as saved by the flow."""
        return load_tensors(self.path / "regions.safetensors")

    @property
    def blocks(self) -> torch.Tensor:
        """LongTensor ``[U_l]``: block id of every unit of this level."""
        return self.regions["blocks"].long()

    @cached_property
    def _filters(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.path / "filters.safetensors")

    @property
    def filters(self) -> torch.Tensor:
        """``[J, max_visible, hidden]`` filter weights on standardised inputs (zero where padded)."""
        return self._filters["filters"]

    @property
    def mean(self) -> torch.Tensor:
        return self._filters["mean"]

    @property
    def std(self) -> torch.Tensor:
        return self._filters["std"]

    @property
    def mi(self) -> torch.Tensor:
        """``[J]`` held-out I(H_j; E_j) per block, nats."""
        return self._filters["mi"]

    @property
    def num_blocks(self) -> int:
        return int(self.filters.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.filters.shape[2])

    @property
    def reads_units(self) -> bool:
        """Whether the filters read the level-0 units its blocks cover (``filter_inputs = "units"``, level >= 1)
        rather than this level's own units."""
        return self.metrics.get("filter_inputs") == "units"

    @property
    def num_units(self) -> int:
        """Number of this level's units (its graph's nodes)."""
        return int(self.metrics["num_nodes"]) if self.reads_units else int(self.std.shape[0])

    @property
    def num_coarse(self) -> int:
        """Number of coarse variables ``J * hidden`` (the next level's units)."""
        return self.num_blocks * self.hidden

    def coarse_samples(self) -> torch.Tensor:
        """``[N, J*h]``: the coarse variables on every sample (the next level's samples)."""
        return load_tensors(self.path / "coarse.safetensors")["samples"]

    @cached_property
    def feature_map_sparse(self):
        """``scipy.sparse.csr_matrix [U_in, J*h]``: the level-local linear map ``W_l`` on the filters' inputs
        (see module doc): this level's ``U_l`` units, or the ``U_0`` level-0 units when :attr:`reads_units`."""
        from scipy.sparse import coo_matrix

        filters, std = self.filters.double(), self.std.double()
        visible = self.regions["visible"].long()
        mask = self.regions["visible_mask"].bool()
        J, V, h = filters.shape
        if tuple(visible.shape) != (J, V):
            raise ValueError(
                f"{self.path}: regions 'visible' has shape {tuple(visible.shape)} but filters have {(J, V, h)}; "
                "the level directory is inconsistent (re-run the flow)"
            )
        j_idx, i_idx = mask.nonzero(as_tuple=True)
        units = visible[j_idx, i_idx]
        s = std[units]
        scale = torch.where(s > 0, 1.0 / s.clamp_min(1e-30), torch.zeros_like(s))
        rows = units.repeat_interleave(h)
        cols = (j_idx[:, None] * h + torch.arange(h)[None, :]).reshape(-1)
        vals = (filters[j_idx, i_idx, :] * scale[:, None]).reshape(-1)
        return coo_matrix(
            (vals.numpy(), (rows.numpy(), cols.numpy())), shape=(int(self.std.shape[0]), J * h)
        ).tocsr()

    @property
    def feature_map(self) -> torch.Tensor:
        """Dense ``[U_l, J*h]`` float32 tensor of the level-local map ``W_l``."""
        return torch.from_numpy(self.feature_map_sparse.toarray().astype(np.float32))

    def step_result(self):
        """The level's filters as a :class:`~rsmi_nn.coarse_graining.CoarseGrainResult` (its ``transform``
        maps this level's units ``[N, U_l]`` to its coarse variables ``[N, J*h]``), MLP filters included."""
        from rsmi_nn.coarse_graining import CoarseGrainResult
        from rsmi_nn.rundir import MODEL_PREFIX

        saved, regions = self._filters, self.regions
        binarize = self.metrics.get("binarize")
        state = {k[len(MODEL_PREFIX):]: v for k, v in saved.items() if k.startswith(MODEL_PREFIX)}
        model = _mlp_filter(state, regions["visible_mask"].bool(), self.hidden, binarize) if state else None
        nan = torch.full_like(self.mi, float("nan"))
        return CoarseGrainResult(
            filters=self.filters, mi=self.mi, mi_stderr=saved.get("mi_stderr", nan), mi_validation=nan,
            mi_ceiling=float(self.metrics.get("mi_ceiling", float("nan"))), mean=self.mean, std=self.std,
            visible=regions["visible"].long(), visible_mask=regions["visible_mask"].bool(), hidden=self.hidden,
            bound=str(self.metrics.get("bound", "")), binarize=binarize, filter="linear" if model is None else "mlp",
            model=model)

    def variable_mi(self) -> torch.Tensor:
        """``[J*h]``: each coarse variable's block MI (variable ``j*h + c`` belongs to block ``j``)."""
        return self.mi.double().repeat_interleave(self.hidden)


class Run:
    """A finished (or partially finished) flow read from disk; see :func:`load_run`.

    Attributes
    ----------
    path : the run directory.
    flow : list of dict, the records of ``flow.json`` (one per finished level).
    config : dict, what the flow was run with (``flow_config.json``: options, seed, data fingerprint),
        or ``{}``; the application's whole config of an ``rsmi run`` is ``config.toml`` beside it.
    levels : list of :class:`Level`.
    """

    def __init__(self, path: Path, flow: list[dict], levels: list[Level], config: dict):
        self.path = path
        self.flow = flow
        self.levels = levels
        self.config = config
        self._composed: dict[int, object] = {}
        self._csc: dict[int, object] = {}

    def __repr__(self) -> str:
        sizes = " -> ".join(str(lv.num_units) for lv in self.levels)
        if self.levels:
            sizes += f" -> {self.levels[-1].num_coarse}"
        return f"Run({str(self.path)!r}, levels={len(self.levels)}, units {sizes})"

    @property
    def unit_names(self) -> list[str]:
        """Names of the original (level-0) units."""
        return self.levels[0].names if self.levels else []

    @property
    def num_units(self) -> int:
        return self.levels[0].num_units if self.levels else 0

    def _check_level(self, level: int) -> int:
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
            raise TypeError(f"level must be an int, got {level!r}")
        n = len(self.levels)
        if not 0 <= level < n:
            last = f" (the last is level {n - 1}: use len(run.levels) - 1)" if level < 0 else ""
            raise ValueError(f"level={level} does not exist; this run has levels 0..{n - 1}{last}")
        return int(level)

    def feature_map_sparse(self, level: int):
        """``scipy.sparse.csr_matrix [U_0, J_l*h]``: composed weights from level-0 units to level ``level``."""
        level = self._check_level(level)
        if level not in self._composed:
            w = self.levels[level].feature_map_sparse
            if level == 0 or self.levels[level].reads_units:
                m = w
            else:
                prev = self.feature_map_sparse(level - 1)
                cols = _input_columns(self.levels[level - 1], self.levels[level])
                m = (prev[:, cols] @ w).tocsr()
            m.eliminate_zeros()
            self._composed[level] = m
        return self._composed[level]

    def feature_maps(self, level: int) -> torch.Tensor:
        """Dense ``[num_units_level0, num_coarse_variables]`` float32 tensor of the composed weights.

        Column ``j*h + c`` is component ``c`` of block ``j``'s coarse variable at ``level``; entry
        ``[u, v]`` is how strongly original unit ``u`` (in its raw units) feeds variable ``v``.
        """
        return torch.from_numpy(self.feature_map_sparse(level).toarray().astype(np.float32))

    def top_units(self, level: int, variable: int, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` level-0 units with the largest |weight| on ``variable`` at ``level``, with weights."""
        level = self._check_level(level)
        if level not in self._csc:
            self._csc[level] = self.feature_map_sparse(level).tocsc()
        csc = self._csc[level]
        if not 0 <= variable < csc.shape[1]:
            raise ValueError(f"variable={variable} does not exist; level {level} has {csc.shape[1]} coarse variables")
        lo, hi = csc.indptr[variable], csc.indptr[variable + 1]
        rows, data = csc.indices[lo:hi], csc.data[lo:hi]
        order = np.lexsort((rows, -np.abs(data)))[:k]  # largest |weight| first, ties by unit index
        names = self.unit_names
        return [(names[int(rows[i])], float(data[i])) for i in order]

    def encode(self, x) -> list[torch.Tensor]:
        """The coarse variables of every level, ``[N, J_l * h_l]`` each, for level-0 activations ``x [N, U_0]``.

        Applies each level's own filters (linear, binarised or MLP) to the previous level's output, exactly
        as the flow did: on the flow's own samples it returns each level's ``coarse_samples()``.
        """
        from estimators.validation import check_samples

        x = check_samples(x, name="x", min_samples=1, allow_constant=True)
        if x.shape[1] != self.num_units:
            raise ValueError(f"x has {x.shape[1]} units but level 0 of {str(self.path)!r} has {self.num_units}; "
                             "pass activations of the run's level-0 units, in the run's order (run.unit_names)")
        out, cur = [], x
        for i, lv in enumerate(self.levels):
            if lv.reads_units:
                cur = x
            elif i > 0:
                cur = cur[:, torch.from_numpy(_input_columns(self.levels[i - 1], lv))]
            cur = lv.step_result().transform(cur)
            out.append(cur)
        return out

    def unit_blocks(self, level: int) -> torch.Tensor:
        """LongTensor ``[U_0]``: the block at ``level`` of every level-0 unit (-1: in none).

        A level-0 unit belongs to its level-0 block ``b``; at level ``l + 1`` it follows the first of
        ``b``'s coarse variables that became a unit of level ``l + 1`` (-1 when none did).
        """
        from rsmi_nn.unit_inputs import cover_next  # the one rule, shared with the flow's units-reading levels

        level = self._check_level(level)
        cover = torch.arange(self.num_units)  # each level-0 unit's node at level i
        for i in range(1, level + 1):
            prev, cur = self.levels[i - 1], self.levels[i]
            node_blocks = torch.from_numpy(_input_columns(prev, cur)) // prev.hidden
            cover = cover_next(cover, prev.blocks, node_blocks)
        blocks = self.levels[level].blocks
        return torch.where(cover >= 0, blocks[cover.clamp_min(0)], -1)

    def pyg(self, level: int):
        """The level's graph as a ``torch_geometric.data.Data`` (with ``names`` and ``blocks``)."""
        lv = self.levels[self._check_level(level)]
        data = lv.graph.to_pyg()
        data.blocks = lv.blocks
        return data

    def examples(self, level: int) -> dict | None:
        """The exported top-activating inputs of ``level`` (``None`` when the run has none)."""
        level = self._check_level(level)
        p = self.path / "examples" / f"level_{level:03d}.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def _mlp_filter(state: dict[str, torch.Tensor], visible_mask: torch.Tensor, hidden: int, binarize: str | None):
    """An :class:`~rsmi_nn.filters.MLPFilter` rebuilt from its saved ``state_dict`` (sizes read off it)."""
    from rsmi_nn.filters import MLPFilter

    first = state["mlp.layers.0.weight"]
    layers = sum(1 for k in state if k.startswith("mlp.layers.") and k.endswith(".weight"))
    model = MLPFilter(first.shape[0], first.shape[1], hidden, visible_mask, width=first.shape[2], layers=layers,
                      binarize=binarize)
    model.load_state_dict(state)
    return model.eval()


def _input_columns(prev: Level, cur: Level) -> np.ndarray:
    """Which coarse columns of ``prev`` became the units of ``cur`` (in ``cur``'s order).

    All of them unless the graph of ``cur`` left constant ones out (``build_graph`` then records the
    kept columns as ``unit_index`` in its metadata).
    """
    n_prev, n_cur = prev.num_coarse, cur.num_units
    kept = (cur.graph.metadata or {}).get("unit_index")
    if kept is not None and len(kept) == n_cur:
        return np.asarray(kept, dtype=np.int64)
    if n_cur == n_prev:
        return np.arange(n_cur)
    raise ValueError(
        f"level {cur.index} has {n_cur} units but level {prev.index} produced {n_prev} coarse variables, and "
        "its graph metadata does not say which were kept; cannot compose the feature maps"
    )


def load_run(path: str | Path) -> Run:
    """Read a run directory written by ``run_flow`` / ``rsmi run`` / ``rsmi flow``.

    Returns
    -------
    Run with ``.levels`` (each with ``.metrics``, ``.graph``, ``.feature_map``, ``.blocks``),
    ``.feature_maps(level) -> Tensor [num_units_level0, num_coarse_variables]``, ``.flow`` and ``.config``.

    Raises
    ------
    FileNotFoundError when ``path`` is not a run directory or has no finished level.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"run directory {str(p)!r} does not exist; run `rsmi run --out {p}` first")
    flow = read_flow(p)
    levels = []
    for i, record in enumerate(flow):
        number = int(record.get("level", i)) if isinstance(record, dict) else i
        ldir = level_dir(p, number)
        if not (ldir / LEVEL_JSON).is_file():
            raise FileNotFoundError(
                f"level {number} is listed in {FLOW_JSON} but {str(ldir / LEVEL_JSON)!r} is missing; "
                "the run is incomplete (re-run the flow on the same directory to resume it)"
            )
        metrics = read_json(ldir / LEVEL_JSON, "level record")
        levels.append(Level(index=number, path=ldir, metrics=metrics))
    if not levels:
        raise FileNotFoundError(f"{str(p)!r} has no finished level yet; run or resume the flow first")
    config = read_json(p / FLOW_CONFIG, "flow config") if (p / FLOW_CONFIG).is_file() else {}
    return Run(p, flow, levels, config)
