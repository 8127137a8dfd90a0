"""From model runs to activation graphs: capture, co-occurrence statistics, sparse graphs, regions.

No module here imports ``rsmi_nn``; ``estimators`` is used only for input validation.
Public names are imported lazily (PEP 562): ``import graphs`` does not pull in
torch_geometric or transformers until a name that needs them is used. ``load_source`` and
``Source`` (the built-in model sources) belong to the application, :mod:`rsmi_nn.app.sources`;
they are offered here, loaded only when used, because ``from graphs import load_source`` is the
documented way to get a model to record.
"""

from estimators.lazy import lazy_exports

_EXPORTS = {
    "ActivationGraph": "graphs.graph",
    "build_graph": "graphs.cooccurrence",
    "StreamingMoments": "graphs.moments",
    "lattice_graph": "graphs.lattice",
    "lattice_blocks": "graphs.lattice",
    "partition": "graphs.partitioning",
    "partition_report": "graphs.partition_quality",
    "make_regions": "graphs.regions",
    "Regions": "graphs.regions",
    "capture": "graphs.hooks",
    "record_activations": "graphs.recording",
    "ActivationStore": "graphs.store",
    "load_source": "rsmi_nn.app.sources",  # the application's; lazy, for the documented API
    "Source": "rsmi_nn.app.sources",
    "load_tensor": "graphs.tensor_files",
    "load_samples": "graphs.tensor_files",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
