"""MegEngine 0.x names of `megengine.core` that 1.x removed (``Buffer``, ``Graph``, ``ones``, ...).

0.x's ``megengine.core`` held the whole user API; 0.x programs still import from it. Names that
live in higher layers (``load``/``save``, ``Function``, ``ones``/``zeros``) are looked up when
first used, so the core does not import the layers above it.
"""
from ._trace_option import is_int
from .tensor import Tensor

#: 0.x name -> (module, attribute) of its 1.x equivalent, resolved on first use
LAZY = {
    "Function": ("megengine.autodiff", "Function"),
    "load": ("megengine.serialization", "load"),
    "save": ("megengine.serialization", "save"),
    "ones": ("megengine.functional", "ones"),
    "zeros": ("megengine.functional", "zeros"),
    "Graph": ("megengine.core.legacy", "Graph"),
}


class Graph:
    """0.x ``Graph(*, check_env_var=True, eager_evaluation=True, **kwargs)``: a computing graph
    made the default for a ``with`` block (zhen8838/maml-megengine's initializers write
    parameters inside ``with Graph(eager_evaluation=True):``).

    ``eager_evaluation=True`` (0.x's default) evaluated each op as it was called: what this
    engine always does, so the block runs as it would without it and the object only holds the
    options. ``eager_evaluation=False`` built a static graph evaluated later, which 1.x spells
    ``megengine.jit.trace``; it is refused rather than silently run eagerly.
    """

    def __init__(self, *, check_env_var: bool = True, eager_evaluation: bool = True, **kwargs):
        if not eager_evaluation:
            raise ValueError(
                "megengine.core.Graph(eager_evaluation=False): 0.x's static graphs are not "
                "provided; this engine evaluates eagerly. Decorate the function with "
                "megengine.jit.trace(symbolic=True) to record and replay it as a graph")
        self.check_env_var = check_env_var
        self.eager_evaluation = eager_evaluation
        self.options = dict(kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class Buffer(Tensor):
    """0.x ``Buffer``: a Tensor that is module state but not a parameter (a running mean).

    1.x spells it a plain Tensor attribute of a Module; ``state_dict`` includes it, optimizers
    do not see it. ``requires_grad=True`` had no 1.x meaning and is refused.
    """

    def __init__(self, value, *, dtype=None, device=None, requires_grad=False):
        if requires_grad:
            raise ValueError("Buffer(requires_grad=True): a Buffer is never trained; use "
                             "megengine.Parameter, or GradManager().attach([tensor])")
        super().__init__(value, dtype=dtype, device=device)


def lazy(name):
    """The 1.x object behind the 0.x ``megengine.core.<name>``."""
    import importlib

    module, attr = LAZY[name]
    return getattr(importlib.import_module(module), attr)


# ----- 0.x Tensor methods that 1.x removed (1.x spellings in each docstring) -----
def _shapeof(self, axis=None):
    """0.x ``Tensor.shapeof(axis=None)``: the shape as an int32 Tensor (1.x: ``x.shape``)."""
    import numpy as np

    shape = np.asarray(self.shape, dtype=np.int32)
    return Tensor(shape if axis is None else shape[axis], dtype="int32", device=self.device)


def _broadcast(self, *shape):
    """0.x ``Tensor.broadcast(*shape)``: 1.x ``F.broadcast_to(x, shape)``."""
    from ..functional import broadcast_to

    if len(shape) == 1 and not is_int(shape[0]):  # (x.broadcast(x.shape[0]): a size)
        shape = tuple(shape[0])
    return broadcast_to(self, shape)


def _reset_zero(self):
    """0.x ``Tensor.reset_zero()``: set every element to zero in place (1.x:
    ``x[...] = 0``). Each call warns upstream 1.x's DeprecationWarning, in its words (written
    here: the core does not import `megengine.utils.deprecation`, a higher layer)."""
    import warnings

    from .dispatch import on_device, xp_of

    warnings.warn("Call to deprecated method reset_zero. (use ``*= 0`` instead) -- Deprecated "
                  "since version 1.0.", DeprecationWarning, stacklevel=2)
    with on_device(self._device):  # CuPy allocates on the current GPU
        self._reset(xp_of(self._data).zeros_like(self._data))  # not data * 0: NaN * 0 is NaN


for _name, _method in (("shapeof", _shapeof), ("broadcast", _broadcast),
                       ("reset_zero", _reset_zero)):
    if hasattr(Tensor, _name):  # a 1.x method of that name always wins
        raise RuntimeError(f"megengine.core.legacy: Tensor.{_name} exists; drop the 0.x one")
    setattr(Tensor, _name, _method)
