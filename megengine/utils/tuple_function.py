"""`get_ndtuple` and its shorthands (`_pair`, `_triple`, ...): a size argument given as one int
or as n ints, made an n-tuple of ints (upstream's ``megengine.utils.tuple_function``)."""
import collections.abc
import functools

from ..core.ops import ArgumentError

__all__ = ["get_ndtuple"]


def get_ndtuple(value, *, n, allow_zero=True):
    """``value`` as an ``n``-tuple of ints: an int is repeated, an iterable must have ``n``
    items; every item must be >= 0 (>= 1 when ``allow_zero`` is False). A wrong length or
    value raises `ArgumentError` (upstream asserts)."""
    if not isinstance(value, collections.abc.Iterable):
        value = (int(value),) * n
    else:
        value = tuple(int(v) for v in value)
        if len(value) != n:
            raise ArgumentError(f"expected one int or {n} ints, got {len(value)}: {value}")
    least = 0 if allow_zero else 1
    if n and min(value) < least:
        raise ArgumentError(f"every value must be >= {least}, got {value}")
    return value


_single = functools.partial(get_ndtuple, n=1, allow_zero=True)
_pair = functools.partial(get_ndtuple, n=2, allow_zero=True)
_pair_nonzero = functools.partial(get_ndtuple, n=2, allow_zero=False)
_triple = functools.partial(get_ndtuple, n=3, allow_zero=True)
_triple_nonzero = functools.partial(get_ndtuple, n=3, allow_zero=False)
_quadruple = functools.partial(get_ndtuple, n=4, allow_zero=True)
