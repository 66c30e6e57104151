"""Upstream's `megengine.functional.external`: operators that run a model compiled by a vendor's
runtime (TensorRT, Cambricon, Atlas, MagicMind, a loaded extern-op subgraph) inside a graph.

This engine does not link those runtimes, so each function refuses with the reason and what
to do instead; the module exists so that programs importing it (upstream's tests do) load and
run their other parts.
"""

__all__ = ["tensorrt_runtime_opr", "cambricon_runtime_opr", "atlas_runtime_opr",
           "magicmind_runtime_opr", "extern_opr_subgraph"]


def _refuse(what, runtime):
    raise RuntimeError(f"megengine.functional.external.{what}: running a serialized {runtime} "
                       "model needs that vendor runtime inside MegEngine's C++ core, which this "
                       "fork does not have; run the model with the vendor's own Python API, or "
                       "wrap it as a torch module in megengine.module.pytorch.PyTorchModule")


def tensorrt_runtime_opr(inputs, *, data: bytes = None):
    """Upstream: the outputs of a serialized TensorRT engine ``data`` on ``inputs``."""
    _refuse("tensorrt_runtime_opr", "TensorRT")


def cambricon_runtime_opr(inputs, data, symbol, tensor_dim_mutable):
    """Upstream: the outputs of a Cambricon offline model on ``inputs``."""
    _refuse("cambricon_runtime_opr", "Cambricon")


def atlas_runtime_opr(inputs, data):
    """Upstream: the outputs of an Atlas (Ascend) offline model on ``inputs``."""
    _refuse("atlas_runtime_opr", "Atlas")


def magicmind_runtime_opr(inputs, data):
    """Upstream: the outputs of a MagicMind model on ``inputs``."""
    _refuse("magicmind_runtime_opr", "MagicMind")


def extern_opr_subgraph(inputs, output_shapes, dump_name, dump_data, output_dtypes=None):
    """Upstream: the outputs of a loader-provided extern operator on ``inputs``."""
    _refuse("extern_opr_subgraph", "extern-op loader")
