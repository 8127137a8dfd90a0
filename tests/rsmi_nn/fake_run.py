"""A small two-level run directory in the on-disk format of ``run_flow``, built by hand.

Lets the export / report / load_run tests check exact values without training anything:
level 0 has 14 units on a ring in 4 blocks of unequal size (5, 4, 3, 2: padded visible rows),
one hidden component; level 1 has the 4 coarse units in 2 blocks with two components each.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from graphs import ActivationGraph


def _ring(n: int, prefix: str) -> ActivationGraph:
    src = torch.arange(n)
    ei = torch.stack([src, (src + 1) % n])
    w = torch.linspace(0.5, 1.0, n)
    return ActivationGraph([f"{prefix}:{i}" for i in range(n)], ei, w, {"metric": "corr"})


def _regions(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    J = int(blocks.max()) + 1
    members = [torch.nonzero(blocks == j).flatten() for j in range(J)]
    V = max(len(m) for m in members)
    visible = torch.full((J, V), -1, dtype=torch.long)
    mask = torch.zeros(J, V, dtype=torch.bool)
    for j, m in enumerate(members):
        visible[j, : len(m)] = m
        mask[j, : len(m)] = True
    empty = torch.full((J, 1), -1, dtype=torch.long)
    return {"blocks": blocks, "visible": visible, "visible_mask": mask, "buffer": empty.clone(),
            "buffer_mask": torch.zeros(J, 1, dtype=torch.bool), "environment": empty,
            "environment_mask": torch.zeros(J, 1, dtype=torch.bool)}


def make_fake_run(root: Path, *, x: torch.Tensor | None = None, n_samples: int = 50, seed: int = 0) -> dict:
    """Write the run under ``root`` (level-0 samples ``x [N, 14]``, random by default).

    Returns the tensors used, for hand computations.
    """
    g = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randn(n_samples, 14, generator=g)
    specs = [
        (_ring(14, "layer.0"), torch.tensor([0] * 5 + [1] * 4 + [2] * 3 + [3] * 2), 1),
        (None, torch.tensor([0, 0, 1, 1]), 2),
    ]
    flow, truth = [], {"levels": []}
    samples = x
    for level, (graph, blocks, h) in enumerate(specs):
        if graph is None:
            graph = _ring(samples.shape[1], f"L{level}")
        regions = _regions(blocks)
        J, V = regions["visible"].shape
        filters = torch.randn(J, V, h, generator=g) * regions["visible_mask"][..., None]
        mean, std = samples.mean(0), samples.std(0)
        mi = torch.rand(J, generator=g)
        z = (samples - mean) / std
        coarse = torch.zeros(samples.shape[0], J * h)
        for j in range(J):
            for i in range(V):
                if regions["visible_mask"][j, i]:
                    u = int(regions["visible"][j, i])
                    for c in range(h):
                        coarse[:, j * h + c] += filters[j, i, c] * z[:, u]
        ldir = root / "levels" / f"{level:03d}"
        ldir.mkdir(parents=True)
        graph.save(ldir / "graph")
        save_file(regions, str(ldir / "regions.safetensors"))
        save_file({"filters": filters, "mean": mean, "std": std, "mi": mi}, str(ldir / "filters.safetensors"))
        save_file({"samples": coarse.contiguous()}, str(ldir / "coarse.safetensors"))
        record = {"level": level, "num_nodes": graph.num_nodes, "num_blocks": J, "num_edges": graph.num_edges,
                  "correlation_length": 2.0 / (level + 1), "correlation_length_level0": 2.0,
                  "locality": 0.9, "mi_mean": float(mi.mean()), "mi_per_block": mi.tolist(),
                  "mi_ceiling": 3.9, "bound": "infonce", "hidden": h}
        (ldir / "level.json").write_text(json.dumps(record))
        flow.append(record)
        truth["levels"].append({"filters": filters, "std": std, "regions": regions, "coarse": coarse})
        samples = coarse
    (root / "flow.json").write_text(json.dumps(flow))
    (root / "flow_config.json").write_text(json.dumps({"levels": 2}))
    truth["x"] = x
    return truth
