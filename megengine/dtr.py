"""`megengine.dtr`: upstream's switches for DTR (dynamic tensor rematerialisation), as runtime options.

Upstream's DTR frees tensors when device memory passes ``eviction_threshold`` and recomputes
them when they are read again; values never change. This engine keeps every value resident
(it has no recomputation), so a program that turns DTR on runs unchanged with the same
results and the memory use it has without DTR. The switches are checked and kept in the
runtime options that ``megengine.core.get_option`` reads (``dtr_eviction_threshold``,
``dtr_evictee_minimum_size``, ``enable_dtr_sqrt_sampling``, and the four that ``enable``
sets), exactly where upstream keeps them.

Usage as upstream: ``mge.dtr.eviction_threshold = "2GB"; mge.dtr.enable()``.
"""
import re
import sys

from .core._config import PropertyModule, get_option, set_option
from .core.dtype_rules import ArgumentTypeError

__all__ = ["eviction_threshold", "evictee_minimum_size", "enable_sqrt_sampling", "enable",
           "disable"]

_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}


def _to_bytes(name, value):
    """An int number of bytes from an int or a string such as ``"2GB"`` / ``"1.5 mb"``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"megengine.dtr.{name} takes an int (bytes) or a string such as '2GB', "
                        f"got {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:  # (upstream's C++ setter raises TypeError: the error is both)
            raise ArgumentTypeError(f"megengine.dtr.{name} must be >= 0, got {value}")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?b)\s*", value, re.IGNORECASE)
    if match is None:
        raise ValueError(f"megengine.dtr.{name}: cannot read {value!r}; write a number with a "
                         "unit B, KB, MB or GB, e.g. '2GB'")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def enable():
    """Turn DTR on (upstream: record how tensors were computed and evict above the threshold)."""
    set_option("enable_dtr_auto_drop", 1)
    set_option("enable_drop", 1)
    set_option("buffer_length", 0)
    set_option("record_computing_path", 1)


def disable():
    """Turn DTR off."""
    set_option("enable_dtr_auto_drop", 0)
    set_option("enable_drop", 0)
    set_option("record_computing_path", 0)


class _DTRModule(PropertyModule):
    """The switches are module properties, as upstream makes them."""

    @property
    def eviction_threshold(self) -> int:
        """Bytes of device memory above which tensors are evicted (0: no threshold)."""
        return get_option("dtr_eviction_threshold")

    @eviction_threshold.setter
    def eviction_threshold(self, value):
        set_option("dtr_eviction_threshold", _to_bytes("eviction_threshold", value))

    @property
    def evictee_minimum_size(self) -> int:
        """Bytes below which a tensor is never evicted (default 1 MB)."""
        return get_option("dtr_evictee_minimum_size")

    @evictee_minimum_size.setter
    def evictee_minimum_size(self, value):
        set_option("dtr_evictee_minimum_size", _to_bytes("evictee_minimum_size", value))

    @property
    def enable_sqrt_sampling(self) -> bool:
        """Look at only sqrt(N) of the N candidates when choosing what to evict."""
        return bool(get_option("enable_dtr_sqrt_sampling"))

    @enable_sqrt_sampling.setter
    def enable_sqrt_sampling(self, value):
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise TypeError(f"megengine.dtr.enable_sqrt_sampling must be True or False, "
                            f"got {value!r}")
        set_option("enable_dtr_sqrt_sampling", int(value))


sys.modules[__name__].__class__ = _DTRModule
