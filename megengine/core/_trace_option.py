"""Upstream's symbolic-shape switch (``set_symbolic_shape``) and `Shape`, what ``Tensor.shape``
gives while it is on."""
import os

import numpy as np

# off outside a trace unless MEGENGINE_USE_SYMBOLIC_SHAPE is set, as upstream; a traced call
# turns it to its trace's ``symbolic_shape`` (default True, as upstream) while the function runs
_use_symbolic_shape = bool(os.environ.get("MEGENGINE_USE_SYMBOLIC_SHAPE"))


def use_symbolic_shape() -> bool:
    return _use_symbolic_shape


def set_symbolic_shape(option: bool) -> bool:
    """Turn symbolic shapes on or off and return the previous setting.

    While on, ``Tensor.shape`` of a tensor with at least one dimension is a `Shape`: the tuple
    of ints it always is, which also answers what upstream's shape Tensor answers
    (``x.shape.numpy()``). Upstream turns it on for the duration of each traced call
    (``trace(symbolic_shape=True)``, the default); outside traces it is off unless set here.
    """
    global _use_symbolic_shape
    old, _use_symbolic_shape = _use_symbolic_shape, bool(option)
    return old


# upstream 1.0-1.1 names of the same switch (programs of that time import them)
use_tensor_shape = use_symbolic_shape
set_tensor_shape = set_symbolic_shape


class Shape(tuple):
    """A tensor's shape while symbolic shapes are on: a tuple of ints, and a shape Tensor's
    reads.

    Upstream makes ``x.shape`` an int32 Tensor there (the output of a ``GetVarShape`` op of its
    graph), so code written for its traces reads it with ``x.shape.numpy()``. This engine runs
    every traced call on concrete arrays (a new shape is a new traced signature), so the shape
    stays a tuple: ``x.shape[0]`` is an int, ``x.shape == (2, 3)`` is a bool, ``x.shape[1:] +
    (4,)`` concatenates, ``np.prod(x.shape)`` computes in int64, as ordinary programs expect.
    Where upstream's Tensor and a tuple disagree (``+``, ``*``, ``==``) the tuple's meaning
    wins: code that runs both eagerly (where upstream's shape is a tuple too) and traced can
    only rely on what both mean. What only a Tensor has is added: `numpy`, `tolist`, `item`,
    `astype`, ``dtype``, ``ndim``, ``size``, ``shape``.
    """

    __slots__ = ()

    def __getitem__(self, index):
        item = tuple.__getitem__(self, index)
        return Shape(item) if type(index) is slice else item  # x.shape[1:].numpy() works

    def __reduce__(self):
        return tuple, (tuple(self),)  # a pickled shape is a plain tuple (no megengine needed)

    def numpy(self):
        """The shape as an int32 array (upstream's shape Tensor's dtype)."""
        return np.array(self, dtype=np.int32).reshape(len(self))

    def tolist(self):
        return list(self)

    def item(self):
        if len(self) != 1:
            raise ValueError(f"item(): the shape {tuple(self)} has {len(self)} elements, not 1")
        return self[0]

    def astype(self, dtype):
        """The shape as a Tensor of ``dtype`` (upstream's ``shape.astype`` gives a Tensor)."""
        from .tensor import Tensor  # core.tensor imports this module

        return Tensor(self.numpy(), dtype=dtype)

    @property
    def dtype(self):
        return np.dtype(np.int32)

    @property
    def ndim(self):
        return 1

    @property
    def size(self):
        return len(self)

    @property
    def shape(self):
        return (len(self),)
