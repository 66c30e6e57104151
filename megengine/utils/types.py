"""Upstream keeps `get_ndtuple` and its shorthands under this name too
(``megengine.utils.types``); they are `megengine.utils.tuple_function`'s."""
from .tuple_function import (  # noqa: F401
    _pair,
    _pair_nonzero,
    _quadruple,
    _single,
    _triple,
    get_ndtuple,
)

__all__ = ["get_ndtuple"]
