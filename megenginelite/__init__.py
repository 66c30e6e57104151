"""MegEngine Lite's Python API (``megenginelite``) on this engine: load a model `trace.dump`
wrote and run it for inference on the CPU.

Upstream ships ``megenginelite`` in the megengine wheel as ctypes bindings of its C++ Lite
runtime; deployment scripts use it after dumping a model::

    network = LiteNetwork()
    network.load("model.mge")
    inp = network.get_io_tensor("data")
    inp.set_data_by_copy(image)
    network.forward()
    network.wait()
    out = network.get_io_tensor(network.get_output_name(0)).to_numpy()

Here the network runs through `megengine.utils.comp_graph_tools.GraphInference` (the same
program loader the graph tools use) and tensors are numpy buffers. Only CPU devices exist here:
a config asking for another device raises. See `network` and `tensor` for what is supported.
"""
from .network import LiteConfig, LiteIO, LiteNetwork, LiteNetworkIO, LiteOptions
from .struct import (LiteAlgoSelectStrategy, LiteBackend, LiteDataType, LiteDeviceType,
                     LiteIOType, LiteLogLevel, LiteTensorPhase)
from .tensor import LiteLayout, LiteTensor, LiteTensorConcat, lite_dtype_2_numpy

__version__ = "1.13.0"

__all__ = ["LiteAlgoSelectStrategy", "LiteBackend", "LiteConfig", "LiteDataType",
           "LiteDeviceType", "LiteIO", "LiteIOType", "LiteLayout", "LiteLogLevel", "LiteNetwork",
           "LiteNetworkIO", "LiteOptions", "LiteTensor", "LiteTensorConcat", "LiteTensorPhase",
           "lite_dtype_2_numpy"]
