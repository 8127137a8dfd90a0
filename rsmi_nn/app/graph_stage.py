"""The pipeline's graph stage: the level-0 graph built (or loaded when its fingerprint matches), and the level-0
samples in its node order."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from graphs.distributed import on_writer
from rsmi_nn.app.config import Config
from rsmi_nn.app.provenance import check_stage, file_digest, files_digest, record_stage_fingerprint, store_digest

__all__ = ["graph_stage", "load_level0"]

log = logging.getLogger(__name__)


def graph_stage(config: Config, out: Path, x, *, given=None, progress: bool):
    """Build (or load) the level-0 graph ``out/graph``; ``x`` is a store or a ``[N, U]`` tensor.

    Skipped when the saved graph is readable and its fingerprint (graph options, the digest of the
    samples or store it was built from, the given graph file) matches.
    """
    from graphs import build_graph

    inputs = on_writer("fingerprinting the graph's inputs", _graph_inputs, config, out)
    saved = on_writer("checking the saved graph", _saved_graph, out, inputs)  # rank 0 reads, every rank gets it
    if saved is not None:
        return saved, True
    if given is not None:
        graph = given
    else:  # every rank: the bands are shared out (graphs.distributed)
        graph = build_graph(x, **config.graph.build_kwargs(), device=config.run.device, progress=progress)
    on_writer("saving the graph", _save_graph, graph, out, inputs)
    return graph, False


def _saved_graph(out: Path, inputs: dict):
    """The finished graph stage's graph when its fingerprint matches and it is readable, else None."""
    from graphs import ActivationGraph

    path = out / "graph"
    if check_stage(out, "graph", inputs, remove=f"{str(path)!r}.safetensors/.json"):
        try:
            return ActivationGraph.load(path)
        except (OSError, ValueError) as err:
            log.warning("the saved graph %s is damaged (%s); building it again", path, err)
    return None


def _save_graph(graph, out: Path, inputs: dict) -> None:
    graph.save(out / "graph")
    record_stage_fingerprint(out, "graph", inputs)


def _graph_inputs(config: Config, out: Path) -> dict:
    """What the graph stage reads: graph options (but the memory budget) and the digests of its inputs."""
    from graphs.graph import graph_paths

    graph = config.stage_key("graph")["graph"]
    graph.pop("memory_budget")
    name, opts = config.source.name, config.source.options
    if name.startswith("samples:"):
        data = {"samples": file_digest(name[len("samples:"):]), "key": opts.get("key"),
                "max_samples": config.source.max_samples}
    elif name.startswith("store:"):
        data = {"store": store_digest(name[len("store:"):])}
    else:
        data = {"store": store_digest(out / "activations")}
    given = None
    if "graph" in opts:
        given = files_digest(graph_paths(opts["graph"]))
    elif "lattice" in opts:
        given = f"lattice {opts['lattice']} periodic={bool(opts.get('periodic', True))}"
    return {"graph": graph, "input": data, "given_graph": given}


def load_level0(x, graph) -> torch.Tensor:
    """The level-0 samples ``[N, U]`` in the graph's node order (units the graph dropped are left out)."""
    if isinstance(x, torch.Tensor):
        unit_index = graph.metadata.get("unit_index")
        if unit_index is not None and x.shape[1] == graph.metadata.get("num_input_units", -1):
            # build_graph left constant units out: keep the columns that became nodes
            return x[:, torch.as_tensor(unit_index, dtype=torch.long)]
        if x.shape[1] != graph.num_nodes:
            raise ValueError(
                f"the samples have {x.shape[1]} units but the graph has {graph.num_nodes} nodes; "
                "pass samples with one column per graph node"
            )
        return x
    if list(x.names) == list(graph.names):
        return x.to_tensor()
    return x.to_tensor(units=graph.names)
