"""Upstream's `megengine.core._imperative_rt.utils`, the submodule that defines its `Logger`
(``from megengine.core._imperative_rt.utils import Logger``, as programs silence the core's log)."""
from . import Logger

__all__ = ["Logger"]
