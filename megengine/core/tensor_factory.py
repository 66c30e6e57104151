"""0.x ``megengine.core.tensor_factory``: ``zeros``, ``ones`` and ``scalar`` with 0.x's dtype rule.

0.x programs (MegEngine/Models' GAN losses) import ``zeros`` from here. 0.x built these by
broadcasting a Python scalar, so with ``dtype=None`` the result takes the scalar's dtype: int32
for ``zeros``/``ones`` (float32 for a float ``scalar``), unlike 1.x ``F.zeros`` (float32). 0.x's
``comp_graph`` argument named a static graph; this engine has none, so only ``None`` is taken.
"""

from ._trace_option import is_dim, is_int

__all__ = ["zeros", "ones", "scalar"]


def _check_graph(comp_graph, name):
    if comp_graph is not None:
        raise ValueError(f"{name}(comp_graph=...): this engine has no 0.x computing graphs; "
                         "leave comp_graph out (use megengine.jit.trace for a compiled step)")


def _as_shape(shape):
    from .tensor import Tensor

    if isinstance(shape, Tensor):  # 0.x passed a shape tensor, e.g. x.shapeof()
        return tuple(int(v) for v in shape.numpy().reshape(-1))
    if is_int(shape):  # (sizes from x.shape in a dumpable trace stay sizes: full makes an op)
        return (shape if is_dim(shape) else int(shape),)
    return tuple(v if is_dim(v) else int(v) for v in shape)


def scalar(value, dtype=None, device=None, comp_graph=None):
    """A 0-dim tensor holding ``value``; dtype None: int32, float32 or bool by value."""
    from ..functional.tensor import full

    _check_graph(comp_graph, "scalar")
    return full((), value, dtype=dtype, device=device)


def zeros(shape, dtype=None, device=None, comp_graph=None):
    """A tensor of ``shape`` filled with 0; int32 unless ``dtype`` is given, as in 0.x."""
    from ..functional.tensor import full

    _check_graph(comp_graph, "zeros")
    return full(_as_shape(shape), 0, dtype="int32" if dtype is None else dtype, device=device)


def ones(shape, dtype=None, device=None, comp_graph=None):
    """A tensor of ``shape`` filled with 1; int32 unless ``dtype`` is given, as in 0.x."""
    from ..functional.tensor import full

    _check_graph(comp_graph, "ones")
    return full(_as_shape(shape), 1, dtype="int32" if dtype is None else dtype, device=device)
