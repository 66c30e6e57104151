"""Upstream's `megengine.core.tensor.megbrain_graph`: a static computing graph built node by node
(`Graph`, `InputNode`, `OutputNode`, `apply_normal_varnode`, functional ops on its vars) or
loaded from a dumped program (`load_graph`), compiled into a function that runs it
(`Graph.compile`, ``execute``/``wait``), and written back (`dump_graph`).

A thin layer, not a second engine: the graph's vars and operators are
`megengine.utils.network_node`'s `VarNode` and `OpNode` (upstream wraps its C++ nodes in Python
views; here a node is its own view, so ``VarNode(var) is var`` and ``var._node is var``), an
operator runs its engine op through the one dispatcher, and files are `megengine.jit.dump`'s
format. (This module sits above `megengine.utils` although upstream files it under ``core``;
it is loaded only when a program imports it.)

Running a compiled graph: upstream runs it on a worker thread that waits on its inputs. Here a
run is pulled: ``execute()`` starts one, and the operators run, on the caller's thread, when a
value is asked for (``OutputNode.get_value()`` runs what that output needs) or at ``wait()``
(everything left, output callbacks included). Inputs therefore need their values
(``InputNode.set_value``) before the output that needs them is read, as with upstream's.
"""
import collections
import io

import numpy as np

from ..device import canonical_device
from ..jit._program import _host
from ..utils import network_node as _nn
from ._imperative_rt import CompNode
from .dtype_rules import ArgumentTypeError
from .tensor import Tensor, as_array

__all__ = ["Graph", "VarNode", "OpNode", "InputNode", "OutputNode", "ValueOutputNode",
           "AttrOutputNode", "VirtualDepNode", "TensorAttr", "DeviceTensorND",
           "input_callback", "output_callback", "apply_normal_varnode", "load_graph",
           "dump_graph", "optimize_for_inference", "deserialize_infer_option",
           "set_priority_to_id", "CompGraphLoadResult", "CompGraphDumpResult"]

VarNode = _nn.VarNode
OpNode = _nn.OpNode


class DeviceTensorND:
    """A value on a device (upstream's ``DeviceTensorND``, what ``Tensor._dev_tensor()``
    returns and what inputs and outputs of a compiled graph carry)."""

    __slots__ = ("_array", "_device")

    def __init__(self, array, device=None):
        if isinstance(array, Tensor):
            array, device = array._data, array._device
        self._array = array
        self._device = canonical_device(device)

    def numpy(self):
        return np.array(_host(self._array))

    @property
    def shape(self):
        return tuple(self._array.shape)

    @property
    def dtype(self):
        return self._array.dtype

    @property
    def comp_node(self):
        return CompNode(self._device)

    device = comp_node

    def __repr__(self):
        return f"DeviceTensorND(shape={self.shape}, dtype={self.dtype}, device={self._device})"


def _as_value(value, dtype, device, where):
    """An engine array from what an input receives (a DeviceTensorND, a Tensor, an array)."""
    if isinstance(value, DeviceTensorND):
        arr = value._array
    elif isinstance(value, Tensor):
        arr = value._data
    else:
        try:
            arr = as_array(value, None, device)
        except TypeError as e:
            raise TypeError(f"{where}: expected a DeviceTensorND (Tensor._dev_tensor()), a "
                            f"Tensor or an array, got {type(value).__name__}") from e
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    if device.startswith("gpu") != type(arr).__module__.startswith("cupy"):
        # a value from another kind of device is copied to the input's (upstream's input
        # callback copies to its comp node): numpy and CuPy arrays do not mix in one op
        from .ops import move_array

        arr = move_array(arr, device)
    return arr


class TensorAttr:
    """Shape, dtype and device of a value (what `AttrOutputNode.get_value` gives)."""

    def __init__(self, shape, dtype, device):
        self.shape = shape
        self.dtype = dtype
        self.device = device

    def __repr__(self):
        return f"TensorAttr(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class GraphOptions:
    """Upstream's compile options (``async_exec_level``, ``graph_opt_level``, ...): stored for
    programs that set them; the pulled runs here have no asynchrony or optimizer to tune."""

    def __init__(self):
        self.async_exec_level = 1
        self.graph_opt_level = 2
        self.seq_opt = None

    def __repr__(self):
        return f"GraphOptions({vars(self)})"


class Graph:
    """A computing graph: make its nodes (`make_const`, `make_input`, `make_h2d`, `InputNode`,
    ops on its vars), then ``compile(*output_vars)`` and run it (``execute()`` then ``wait()``,
    or a call)."""

    def __init__(self):
        self.options = GraphOptions()
        self._function = None

    # ----- making nodes -----
    def make_const(self, data, dtype=None, device=None, name=None):
        """A constant var; Python numbers and float64/int64 arrays take float32/int32."""
        if isinstance(data, DeviceTensorND):
            if dtype is not None or device is not None:
                raise ValueError("make_const: a DeviceTensorND keeps its dtype and device")
            data, device = data.numpy(), data._device
        data = np.asarray(_host(data._data) if isinstance(data, Tensor) else data, dtype=dtype)
        if data.dtype.kind not in "biufc":  # (upstream: "unsupported numpy dtype", RuntimeError)
            raise ArgumentTypeError(f"make_const: a constant holds numbers, got data of dtype "
                                    f"{data.dtype}")
        node = _nn.ImmutableTensor(data, name, _device_name(device))
        node._graph = self
        return node.outputs[0]

    def make_input(self, *args, device=None, dtype=None, shape=None):
        """The value var of a new `InputNode` (fed with ``set_value``)."""
        return InputNode(*args, device=device, dtype=dtype, shape=shape, graph=self).outputs[0]

    def make_h2d(self, *, dtype, device, shape=None, name=None):
        """A program input (upstream's Host2DeviceCopy) for a graph that is dumped: it has no
        value when the graph runs here (use `make_input` for that)."""
        node = _nn.Host2DeviceCopy(shape, dtype, name, _device_name(device))
        node._graph = self
        return node.outputs[0]

    # ----- running -----
    def compile(self, *output_vars):
        """Make the graph's function computing ``output_vars`` (the vars of `OutputNode`s,
        `output_callback` and other vars); returns the graph, which runs it."""
        outputs = []
        for v in output_vars:
            outputs.extend(v if isinstance(v, (list, tuple)) else [v])
        for v in outputs:
            if not isinstance(v, VarNode):
                raise TypeError(f"Graph.compile: expected vars of the graph, got "
                                f"{type(v).__name__}")
            if v.graph is not None and v.graph is not self:
                raise ValueError(f"Graph.compile: var {v.name!r} belongs to another graph")
        self._function = _Function(outputs)
        return self

    def execute(self, *args):
        """Start a run of the compiled function (see the module docstring: operators run when
        an output value is asked for, or at `wait`)."""
        if args:
            raise TypeError("Graph.execute() takes no arguments: feed inputs with "
                            "InputNode.set_value or input_callback")
        self._compiled("execute").start()

    def wait(self):
        """Finish the run: compute everything not computed yet (output callbacks included)."""
        self._compiled("wait").finish()

    def __call__(self, *args):
        self.execute(*args)
        return self.wait()

    def _compiled(self, what):
        if self._function is None:
            raise RuntimeError(f"Graph.{what}(): compile the graph first (graph.compile(vars))")
        return self._function

    def _pull(self, opr, what):
        if self._function is None:
            raise RuntimeError(f"{what}: the graph is not compiled; call graph.compile(...) and "
                               "graph.execute() first")
        self._function.pull(opr, what)


def _device_name(device):
    return canonical_device(None if device is None else str(device))


class _Function:
    """A compiled graph: its operators in dependency order and the state of the current run."""

    def __init__(self, outputs):
        self.oprs = _nn_seq(outputs)
        self.running = False
        self.done = set()
        self.values = {}
        self.error = None

    def start(self):
        if self.running and len(self.done) < len(self.oprs) and self.error is None:
            raise RuntimeError("Graph.execute(): the previous run is not finished; call "
                               "graph.wait() first")
        self.running, self.done, self.values, self.error = True, set(), {}, None

    def pull(self, target, what):
        if id(target) in self.done:  # computed in this run, or in the last one (after wait)
            return
        if not self.running:
            raise RuntimeError(f"{what}: no run of the graph is going on; call "
                               "graph.execute() first")
        if self.error is not None:
            raise self.error
        wanted = {id(o) for o in _nn_seq([v for v in target.outputs])}
        self._run([o for o in self.oprs if id(o) in wanted])

    def finish(self):
        if not self.running:
            raise RuntimeError("Graph.wait(): no run of the graph is going on; call "
                               "graph.execute() first")
        try:
            if self.error is not None:
                raise self.error
            self._run(self.oprs)
        finally:
            self.running = False

    def _run(self, oprs):
        values = self.values
        for opr in oprs:
            if id(opr) in self.done:
                continue
            try:
                ins = [values[id(v)] for v in opr.inputs]
                dyn = [values[id(v)] for v in opr._dyn_vars]
                outs = opr._execute(ins, dyn)
            except Exception as exc:  # noqa: BLE001 (kept: every later read raises it too)
                self.error = exc
                raise
            for v, a in zip(opr.outputs, outs):
                values[id(v)] = a
            self.done.add(id(opr))


def _nn_seq(outputs):
    from ..utils.network import get_oprs_seq

    return get_oprs_seq(list(outputs), False, False)


# --------------------------------------------------------------------------------------------
# operators that move values in and out of a running graph
# --------------------------------------------------------------------------------------------
def _dummy():
    return np.zeros((0,), np.int32)


class _IOOpr(OpNode):
    """An operator with no engine op: its `_execute` moves values in or out of a run."""

    def __init__(self, type_name, inputs, n_values, graph):
        OpNode.__init__(self, type_name)
        self.type = type_name
        self.inputs = list(inputs)
        self._graph = graph if graph is not None else next(
            (v.graph for v in self.inputs if v.graph is not None), None)
        device = self.inputs[0]._device if self.inputs else canonical_device(None)
        self.outputs = [VarNode(self, f"{type_name}:{i}", device) for i in range(n_values)]

    def _compute_samples(self):
        for v in self.outputs:
            v._sample = (_nn._generation[0], _dummy())


class InputNode(_IOOpr):
    """An input of a compiled graph (upstream's InputCallback operator): ``outputs[0]`` is the
    value, which ``set_value`` gives for the next run (or ``callback()`` computes, see
    `input_callback`); ``args``: vars it waits for. Without ``shape`` the graph's shape
    inference sees shape (1,) until a value arrives."""

    _provides_input = True

    def __init__(self, *args, device=None, dtype=None, shape=None, graph=None,
                 use_static_shape=False, callback=None):
        graph = graph if graph is not None else next(
            (v.graph for v in args if v.graph is not None), None)
        if graph is None:
            raise ValueError("InputNode: give the graph (graph=...) or vars of one (*args)")
        super().__init__("InputCallback", args, 2, graph)
        dev = _device_name(device)
        for v in self.outputs:
            v._device = dev
        self.outputs[0].name = "InputCallback"
        self._dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
        self._shape = None if shape is None else tuple(int(d) for d in shape)
        self._callback = callback
        self._pending = None

    @property
    def device(self):
        return self.outputs[0].device

    @property
    def dtype(self):
        return self._dtype

    def set_value(self, value):
        """The value of this input for the graph's run (a DeviceTensorND, a Tensor, an array)."""
        self._pending = _as_value(value, self._dtype, self.outputs[0]._device,
                                  "InputNode.set_value")

    def reset(self):
        self._pending = None

    def _compute_samples(self):
        self.outputs[0]._sample = (_nn._generation[0], _nn._zeros_on(
            self.outputs[0]._device, self._shape or (1,), self._dtype))
        self.outputs[1]._sample = (_nn._generation[0], _dummy())

    def _execute(self, in_arrays, dyn_arrays):
        if self._callback is not None:
            value = _as_value(self._callback(), self._dtype, self.outputs[0]._device,
                              "input_callback's callback")
        else:
            if self._pending is None:
                raise RuntimeError("InputNode: the graph needs this input's value before "
                                   "set_value() gave one; set the inputs before reading the "
                                   "outputs that depend on them")
            value, self._pending = self._pending, None
        if self._shape is not None and tuple(value.shape) != self._shape:
            raise ValueError(f"InputNode: a value of shape {tuple(value.shape)} for an input "
                             f"made with shape {self._shape}")
        return [value, _dummy()]


class OutputNode(_IOOpr):
    """An output of a compiled graph (upstream's OutputCallback operator): ``get_value()``
    gives ``var``'s value in the current run (a DeviceTensorND), computing what it needs;
    ``outputs[0]`` is the var to compile. ``args``: vars it waits for."""

    def __init__(self, var, *args):
        if not isinstance(var, VarNode):
            raise TypeError(f"{type(self).__name__}: expected a var of a graph, got "
                            f"{type(var).__name__}")
        super().__init__("OutputCallback", (var,) + args, 1, None)
        self._value = None

    def _received(self, array, device):
        self._value = DeviceTensorND(array, device)

    def _execute(self, in_arrays, dyn_arrays):
        self._received(in_arrays[0], self.inputs[0]._device)
        return [_dummy()]

    def get_value(self):
        if self.graph is None:
            raise RuntimeError(f"{type(self).__name__}.get_value: its var belongs to no Graph")
        self.graph._pull(self, f"{type(self).__name__}.get_value")
        return self._value

    def drop_value(self):
        self._value = None

    reset = drop_value


class ValueOutputNode(OutputNode):
    """An output whose ``get_value()`` is a numpy array (upstream's value on the host)."""

    def _received(self, array, device):
        self._value = np.array(_host(array))


class AttrOutputNode(OutputNode):
    """An output whose ``get_value()`` is the `TensorAttr` (shape, dtype, device) of the var."""

    def _received(self, array, device):
        self._value = TensorAttr(tuple(array.shape), array.dtype, CompNode(device))


class _CallbackOutput(OutputNode):
    def __init__(self, callback, var, *args):
        super().__init__(var, *args)
        self._callback = callback

    def _received(self, array, device):
        self._callback(DeviceTensorND(array, device))


class VirtualDepNode(_IOOpr):
    """A var that depends on all of ``vars`` (compile it to run them)."""

    def __init__(self, vars, device=""):
        super().__init__("VirtualDep", vars, 1, None)

    def _execute(self, in_arrays, dyn_arrays):
        return [_dummy()]


def input_callback(callback, *args, device=None, dtype=None, shape=None, graph=None):
    """(value var, dummy var) of an input whose value ``callback()`` returns in each run."""
    node = InputNode(*args, device=device, dtype=dtype, shape=shape, graph=graph,
                     callback=callback)
    return node.outputs[0], node.outputs[1]


def output_callback(callback, var, *args):
    """A var to compile; each run calls ``callback(value)`` with ``var``'s DeviceTensorND."""
    return _CallbackOutput(callback, var, *args).outputs[0]


def apply_normal_varnode(op, *args):
    """Apply op descriptor ``op`` (`megengine.core.ops.builtin`) to vars: a list of new vars."""
    from ._imperative_rt.core2 import apply

    for v in args:
        if not isinstance(v, VarNode):
            raise TypeError(f"apply_normal_varnode: expected vars of a graph, got "
                            f"{type(v).__name__}")
    return list(apply(op, *args))


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
CompGraphLoadResult = collections.namedtuple(
    "CompGraphLoadResult", ["graph", "output_vars_dict", "output_vars_list", "metadata"])

CompGraphDumpResult = collections.namedtuple(
    "CompGraphDumpResult", ["nr_opr", "tot_bytes", "tensor_value_bytes", "content_hash",
                            "inputs", "outputs", "params"])


def load_graph(fpath):
    """Load a program `trace.dump` (or `dump_graph`, `Network.dump`) wrote, from a path or a
    binary file object: ``(graph, output_vars_dict, output_vars_list, metadata)``."""
    from ..utils.network import Network

    net = Network.load(fpath)
    graph = Graph()
    for opr in net.all_oprs:
        opr._graph = graph
    outputs = list(net.output_vars)
    return CompGraphLoadResult(graph, {v.name: v for v in outputs}, outputs, net.metadata)


def dump_graph(output_vars, *, keep_var_name=1, keep_opr_name=False, keep_param_name=False,
               keep_opr_priority=False, no_change_graph=False, strip_info_file=None,
               append_json=False, metadata=None, dump_format=None, model_version=2):
    """The program computing ``output_vars`` (a list, or {name: var} to name them) as the bytes
    of a file, and its `CompGraphDumpResult`. All names are kept; ``keep_*``, ``dump_format``
    and ``model_version`` choose what upstream's binary format keeps and are accepted for its
    signature. ``metadata``: the ``user_info`` stored in the file."""
    from ..utils.network import Network

    if strip_info_file is not None:
        raise ValueError("dump_graph(strip_info_file=...): the operator list for stripping "
                         "MegEngine Lite builds has no meaning for this fork's files")
    if isinstance(output_vars, dict):
        seen = set()
        for name, var in output_vars.items():
            if id(var) in seen:
                raise ValueError(f"dump_graph: two names are given to one var ({name!r}); a "
                                 "var has one name")
            seen.add(id(var))
            var.name = name
        output_vars = list(output_vars.values())
    output_vars = list(output_vars)
    for var in output_vars:
        if not isinstance(var, VarNode):
            raise TypeError(f"dump_graph: bad output var {var!r}")
    net = Network()
    net.add_output(*output_vars)
    buf = io.BytesIO()
    info = net.dump(buf, user_info=metadata)
    return buf.getvalue(), CompGraphDumpResult(*info)


# --------------------------------------------------------------------------------------------
# graph options
# --------------------------------------------------------------------------------------------
def optimize_for_inference(dest_vars, **kwargs):
    """Upstream's inference optimizer: ``(vars, options)``, ``options`` the dict of options set.
    ``enable_io16xc32`` (float16 values between operators, float32 compute) and
    ``enable_ioc16`` (float16 compute) return new vars of a float16 graph whose outputs keep
    their dtypes (see `megengine.utils.network_optimize`); the layout and fusion options change
    how upstream's C++ backends run, not the values, and return the vars unchanged. An unknown
    option raises ValueError naming the valid ones. ``enable_fuse_grain`` is on unless set to
    False, as upstream's default."""
    from ..utils.network_optimize import check_options, optimize_vars

    kwargs.setdefault("enable_fuse_grain", True)
    for v in dest_vars:
        if not isinstance(v, VarNode):
            raise TypeError(f"optimize_for_inference: expected vars, got {type(v).__name__}")
    options = check_options(kwargs)
    out, _ = optimize_vars(list(dest_vars), options)
    return out, options


def deserialize_infer_option(x):
    """The options dict `optimize_for_inference` returned (upstream packs it in an int)."""
    if not isinstance(x, dict):
        raise TypeError("deserialize_infer_option: expected the options dict that "
                        "optimize_for_inference returned")
    return dict(x)


def set_priority_to_id(dest_vars):
    """Order the operators ``dest_vars`` depend on by their ids (creation order) where the
    dependencies leave a choice, as upstream's; edits (`Network.replace_oprs`) may have given
    operators other priorities."""
    from ..utils.network import get_oprs_seq

    for v in dest_vars:
        if not isinstance(v, VarNode):
            raise TypeError(f"set_priority_to_id: expected vars, got {type(v).__name__}")
    for opr in get_oprs_seq(list(dest_vars), False, False):
        opr._priority = opr.id
