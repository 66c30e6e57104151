"""Upstream's `megengine.core._wrap`: `Device` (a device name, ``Device("xpux").to_c()``) and
`as_device`, on this engine's device names (`megengine.core._imperative_rt.CompNode`)."""
from ._imperative_rt import CompNode

__all__ = ["Device", "as_device"]

#: a device by name; ``to_c()`` gives what ops take as ``device=`` (the name itself here)
Device = CompNode


def as_device(obj):
    """A `Device` from a device name, a Device or None (the default device, ``"xpux"``)."""
    return CompNode("xpux" if obj is None else str(obj))
