"""MegEngine 0.x names of `megengine.core` that 1.x removed (``Buffer``, ``ones``, ``load``, ...).

0.x's ``megengine.core`` held the whole user API; 0.x programs still import from it. Names that
live in higher layers (``load``/``save``, ``Function``, ``ones``/``zeros``) are looked up when
first used, so the core does not import the layers above it.
"""
from .tensor import Tensor

#: 0.x name -> (module, attribute) of its 1.x equivalent, resolved on first use
LAZY = {
    "Function": ("megengine.autodiff", "Function"),
    "load": ("megengine.serialization", "load"),
    "save": ("megengine.serialization", "save"),
    "ones": ("megengine.functional", "ones"),
    "zeros": ("megengine.functional", "zeros"),
}


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
