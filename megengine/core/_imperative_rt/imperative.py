"""Upstream's `megengine.core._imperative_rt.imperative`: `sync`, and the names of its C++
backward-graph builder, which this engine does not have (its ops differentiate themselves)."""
from .core2 import sync

__all__ = ["sync", "make_backward_graph"]


def make_backward_graph(op, inputs, input_requires_grad, output_has_grad):
    """Upstream builds a C++ graph of an op's backward here. This engine has none: each op's
    backward is Python code on arrays (``Op.backward``), so there is no graph to return."""
    raise NotImplementedError(
        f"make_backward_graph({op!r}): this engine builds no C++ backward graphs; each op "
        "differentiates itself. To get gradients, apply the op under "
        "megengine.autodiff.GradManager (or megengine.core.autodiff.grad.Grad)"
    )
