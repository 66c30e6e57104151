"""`megengine.tensor`: the module upstream code (and pickles) take Tensor and Parameter from."""
from .core.tensor import Parameter, Tensor

__all__ = ["Tensor", "Parameter", "tensor"]

# Upstream defines the classes in this module, so its pickles (mge.save files) name
# `megengine.tensor.Tensor` / `megengine.tensor.Parameter`, and so do reprs and docs. Giving the
# engine's classes this public home makes files written here load on upstream and back.
Tensor.__module__ = __name__
Parameter.__module__ = __name__
# Python 3.13+'s inspect reads a class's first line (__firstlineno__) in the file of its
# __module__, this one: without it, inspect says there is no source, as Python 3.11 does
Tensor.__firstlineno__ = Parameter.__firstlineno__ = None

#: the Tensor class under its lower-case name: ``megengine.tensor([1, 2])`` makes a Tensor and
#: ``isinstance(x, megengine.tensor)`` holds. ``megengine/__init__.py`` imports this name over
#: the submodule's attribute, as upstream does; ``from megengine.tensor import Tensor`` still
#: finds this module through ``sys.modules``.
tensor = Tensor
