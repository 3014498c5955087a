"""edge_sparse: structured-sparse, int8, latency-budgeted image classifiers for edge CPUs.

    import edge_sparse as es
    res = es.prune(model, example_input, sparsity=0.5, criterion="bn_scale", round_to=8)
    res.model, res.params, res.macs, res.record

Importing this package is cheap and has no side effects: torch, TensorFlow and the converters are
imported by the stage that needs them.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["prune", "replay", "build", "load_target", "BuildConfig", "TrainConfig", "EdgeSparseError", "PruneResult",
           "predict_latency", "measure_latency", "export", "BuildResult"]

from edge_sparse.errors import EdgeSparseError


def __getattr__(name: str):
    if name in ("prune", "replay", "PruneResult"):
        from edge_sparse import pruning as _p
        return getattr(_p, name)
    if name == "export":  # the sub-package edge_sparse.export is callable: es.export(model, ...) -> api.export
        import importlib
        return importlib.import_module("edge_sparse.export")
    if name in ("build", "BuildResult"):
        from edge_sparse import api
        return getattr(api, name)
    if name in ("predict_latency", "measure_latency"):
        from edge_sparse.latency import predict as _lp
        return getattr(_lp, name)
    if name == "load_target":
        from edge_sparse.targets import load_target
        return load_target
    if name in ("BuildConfig", "TrainConfig"):
        from edge_sparse import config
        return getattr(config, name)
    raise AttributeError(f"module 'edge_sparse' has no attribute {name!r}")
