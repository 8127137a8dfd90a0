"""From model runs to activation graphs: capture, co-occurrence statistics, sparse graphs, regions.

Knows nothing of ``rsmi_nn``; uses ``estimators`` only for input validation.
Public names are imported lazily (PEP 562): ``import graphs`` does not pull in
torch_geometric or transformers until a name that needs them is used.
"""

from estimators.lazy import lazy_exports

_EXPORTS = {
    "ActivationGraph": "graphs.graph",
    "build_graph": "graphs.cooccurrence",
    "StreamingMoments": "graphs.moments",
    "lattice_graph": "graphs.lattice",
    "lattice_blocks": "graphs.lattice",
    "partition": "graphs.partitioning",
    "partition_report": "graphs.partitioning",
    "make_regions": "graphs.regions",
    "Regions": "graphs.regions",
    "capture": "graphs.hooks",
    "record_activations": "graphs.recording",
    "ActivationStore": "graphs.store",
    "load_source": "graphs.sources",
    "Source": "graphs.sources",
    "load_tensor": "graphs.tensor_files",
    "load_samples": "graphs.tensor_files",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
