"""The base of upstream's op descriptors (`OpDef`): named parameters, mode enums, value
equality, and the helpers the descriptors in `ops.py` and `rng_ops.py` share."""
import enum
import sys

import numpy as np

__all__ = ["OpDef"]

_REQUIRED = object()


class _Mode(enum.Enum):
    """A descriptor's mode: equal to its name as a string in any case (``op.mode == "ADD"``,
    as upstream's mode enums compare)."""

    def __eq__(self, other):
        if isinstance(other, str):
            return self.name.upper() == other.upper()
        return self is other

    __hash__ = enum.Enum.__hash__


def _modes(name, names):
    """A mode enum as upstream's: members by upper-case name, each valued by its lower-case
    name (what upstream's string form is).

    Called in a descriptor's class body, the enum is named as upstream's is
    (``Elemwise.Mode.__module__ == "megengine.core._imperative_rt.ops"``, ``__qualname__``
    ``"Elemwise.Mode"``), which also lets its members pickle by reference."""
    body = sys._getframe(1).f_locals  # the class body being executed, if any
    owner, module = body.get("__qualname__"), body.get("__module__")
    return _Mode(name, [(n, n.lower()) for n in names], module=module,
                 qualname=f"{owner}.{name}" if owner else name)


def _coerce(enum_cls, value, what):
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        member = enum_cls.__members__.get(value.upper())
        if member is None:  # upstream spells some members in mixed case (INT16x32x32x32)
            member = next((m for k, m in enum_cls.__members__.items()
                           if k.upper() == value.upper()), None)
        if member is not None:
            return member
    names = ", ".join(enum_cls.__members__)
    from ..ops import ArgumentError  # (upstream: pybind's RuntimeError "Unable to cast")

    raise ArgumentError(f"{what}: unknown mode {value!r}; expected one of {names} (any case)")


def _freeze(v):
    """A hashable form of a parameter value (lists become tuples, dtypes their names)."""
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(i) for i in v)
    if isinstance(v, np.dtype):
        return v.name
    if isinstance(v, np.ndarray):
        return tuple(v.ravel().tolist())
    return v


class OpDef:
    """An upstream op descriptor. Subclasses list ``_params`` ((name, default) pairs in
    upstream's order; `_REQUIRED` for parameters without a default), ``_enums`` (parameter name
    -> mode enum) and implement ``_lower(*tensors)`` returning a tuple of Tensors."""

    _params = ()
    _enums = {}

    def __init__(self, *args, **kwargs):
        cls = type(self).__name__
        names = [n for n, _ in self._params]
        if len(args) > len(names):
            raise TypeError(f"{cls}: takes at most {len(names)} parameters ({', '.join(names)}), "
                            f"got {len(args)}")
        values = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{cls}: unknown parameter {k!r}; its parameters are "
                                f"{', '.join(names) or 'none'}")
            if k in values:
                raise TypeError(f"{cls}: parameter {k!r} given twice")
            values[k] = v
        for name, default in self._params:
            if name not in values:
                if default is _REQUIRED:
                    raise TypeError(f"{cls}: missing parameter {name!r}")
                values[name] = default
            setattr(self, name, values[name])

    def __setattr__(self, name, value):
        enum_cls = self._enums.get(name)
        if enum_cls is not None:
            value = _coerce(enum_cls, value, f"{type(self).__name__}.{name}")
        object.__setattr__(self, name, value)

    def _key(self):
        return (type(self),) + tuple(_freeze(getattr(self, n)) for n, _ in self._params)

    def __eq__(self, other):
        if not isinstance(other, OpDef):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in self._params)
        return f"{type(self).__name__}({args})"

    def _lower(self, *inputs):
        raise NotImplementedError(type(self).__name__)  # every public subclass defines it

    def _arity(self, inputs, *counts):
        if len(inputs) not in counts:
            want = " or ".join(str(c) for c in counts)
            raise TypeError(f"apply({self!r}): takes {want} input tensors, got {len(inputs)}")


def _F():
    from ... import functional  # functional sits above core: loaded when an op is applied

    return functional


def _int_list(v):
    if v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return [int(v)]
    return [int(i) for i in v]


def _shape_of(shape_tensor):
    """The shape an int tensor input holds (a host read, as upstream's shape inference does)."""
    return tuple(int(s) for s in np.asarray(shape_tensor.numpy()).ravel())




def _scalar_int(t):
    return int(np.asarray(t.numpy()).ravel()[0])

