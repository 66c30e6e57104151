"""Upstream's ``megengine.core._imperative_rt.common``: its ``CompNode``, which upstream's
TracedModule files hold for each tensor node's device (pickled as the class plus the device
name as its state)."""
from . import CompNode as _CompNode

__all__ = ["CompNode"]


class CompNode(_CompNode):
    """`megengine.core._imperative_rt.CompNode`; one unpickled keeps the device name it was
    pickled with (``_pickled_name``, e.g. ``"xpux:0"``)."""

    def __setstate__(self, state):
        self._pickled_name = state
