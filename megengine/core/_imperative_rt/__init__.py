"""Upstream's `megengine.core._imperative_rt` names (its C++ runtime) on this engine: CompNode,
TensorAttr, Logger, and the submodules `core2` (apply, sync), `ops` (the op descriptors),
`imperative` and `utils` (Logger, where upstream defines it).

Upstream programs and tests import these below the public API. Here they are thin: a
descriptor's work is done by this engine's ops (see `ops.py`), `apply` is the one dispatcher.
"""
import enum
import importlib.util
import logging
import sys

import numpy as np

from ..tensor import CompNode as _DeviceName

__all__ = ["CompNode", "TensorAttr", "Logger", "OperatorNodeConfig", "core2", "ops",
           "imperative"]


class CompNode(_DeviceName):
    """A device, named as upstream names comp nodes (``CompNode("xpux")``, ``"cpu0"``,
    ``"gpu1"``). It holds the device the name resolves to on this machine (``"xpux"`` is
    ``"cpu0"`` without a GPU), which is what a Tensor's ``.device`` reports, so
    ``str(t.device) == str(CompNode("xpux"))`` holds for a tensor made on the default device."""

    def __new__(cls, name="xpux"):
        if isinstance(name, CompNode):
            return name
        if not isinstance(name, str):
            raise TypeError(f"CompNode: expected a device name such as 'xpux', 'cpu0' or 'gpu0', "
                            f"got {type(name).__name__}")
        from ...device import canonical_device

        return super().__new__(cls, canonical_device(name))

    def to_c(self):  # upstream's Device.to_c(): its C++ comp node; here the name is the device
        return self


class TensorAttr:
    """Shape, dtype and device of a tensor, without a value (upstream's ``TensorAttr``)."""

    def __init__(self, shape=(), dtype="float32", comp_node="xpux"):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.comp_node = CompNode(comp_node)

    def __setattr__(self, name, value):
        # upstream's fields are typed: a string dtype or device becomes the real thing
        if name == "dtype":
            value = np.dtype(value)
        elif name == "comp_node":
            value = CompNode(value)
        elif name == "shape":
            value = tuple(int(s) for s in value)
        object.__setattr__(self, name, value)

    def __repr__(self):
        return f"TensorAttr(shape={self.shape}, dtype={self.dtype}, comp_node={self.comp_node})"


class OperatorNodeConfig:
    """An op's name, dtype and devices as upstream's graph builder takes them (data only: this
    engine runs ops eagerly and names no graph nodes)."""

    def __init__(self, name=None, comp_node=None, dtype=None):
        self.name = name
        self.comp_node_arr = [] if comp_node is None else [comp_node]
        self.dtype = None if dtype is None else np.dtype(dtype)

    def __setattr__(self, name, value):
        if name == "dtype" and value is not None:
            value = np.dtype(value)
        if name == "comp_node":  # upstream: one device, stored as a one-element array
            name, value = "comp_node_arr", [] if value is None else [value]
        if name == "comp_node_arr":
            value = [CompNode(cn) for cn in value]
        object.__setattr__(self, name, value)

    @property
    def comp_node(self):
        """The op's one device (None if none was set); an error when several are set, as
        upstream's (an op with outputs on several devices has no single one)."""
        if len(self.comp_node_arr) > 1:
            raise ValueError(
                f"OperatorNodeConfig.comp_node: {len(self.comp_node_arr)} devices are set "
                f"({[str(cn) for cn in self.comp_node_arr]}); read comp_node_arr instead")
        return self.comp_node_arr[0] if self.comp_node_arr else None


class Logger:
    """Upstream's handle on its C++ core's log level. This engine's C++-core messages go to the
    ``megbrain`` logger (`megengine.logger.set_mgb_log_level`), so every Logger reads and sets
    that logger's level."""

    class LogLevel(enum.IntEnum):
        Debug = logging.DEBUG
        Info = logging.INFO
        Warn = logging.WARNING
        Error = logging.ERROR

    @staticmethod
    def set_log_level(level):
        """Set the level (a ``Logger.LogLevel``, or the `logging` level it stands for);
        returns the previous one. Static, as upstream's: programs call it on the class."""
        from ... import logger as _logger

        try:
            level = Logger.LogLevel(level)
        except ValueError:
            raise ValueError(f"Logger.set_log_level: expected a Logger.LogLevel (Debug, Info, "
                             f"Warn, Error), got {level!r}") from None
        previous = _logger.set_mgb_log_level(int(level))
        return _nearest_level(previous)


def _nearest_level(level):
    """The LogLevel of a logging level (NOTSET and levels between round up)."""
    for member in Logger.LogLevel:
        if level <= member:
            return member
    return Logger.LogLevel.Error


def lazy_module(target, *aliases):
    """Module ``target``, registered (also under ``aliases``) but run only when first used,
    so that `import megengine` does not pay for upstream's internal names (its op descriptors,
    `megengine.core.tensor.utils`) that only some programs import."""
    module = sys.modules.get(target)
    if module is None:
        spec = importlib.util.find_spec(target)
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[target] = module
        spec.loader.exec_module(module)
    for alias in aliases:
        sys.modules.setdefault(alias, module)
    return module


from . import core2, imperative  # noqa: E402  (they use the classes above)

ops = lazy_module(__name__ + ".ops")


def __getattr__(name):
    if name == "OpDef":  # upstream exports the descriptors' base class here too
        return ops.OpDef
    if name in ("VarNode", "OperatorNode"):
        # upstream's graph vars and operators (its C++ classes): what `load_graph` returns and
        # what tools such as mgeconvert test with isinstance. Here the graph layer's classes are
        # network_node's VarNode and OpNode (loaded on first use: `import megengine` stays light)
        from ...utils import network_node

        return network_node.VarNode if name == "VarNode" else network_node.OpNode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
