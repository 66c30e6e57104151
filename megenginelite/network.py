"""LiteNetwork and its configuration: load a dumped model and run it, reading inputs from and
writing outputs to LiteTensors (upstream's MegEngine Lite network API)."""
import io
import numbers
import os

from .struct import (LiteAlgoSelectStrategy, LiteBackend, LiteDeviceType, LiteIOType,
                     LiteTensorPhase)
from .tensor import (LiteLayout, LiteTensor, _host_only, _LiteIndexError, _LiteKindError,
                     _LiteValueError)

__all__ = ["LiteOptions", "LiteConfig", "LiteIO", "LiteNetworkIO", "LiteNetwork"]


class LiteOptions:
    """Upstream's inference options (weight preprocessing, record level, graph optimization
    level, layout transforms...). They choose how its C++ runtime schedules and lays out the
    work, not the values computed; they are kept here for programs that set them."""

    def __init__(self):
        self.weight_preprocess = False
        self.fuse_preprocess = False
        self.fake_next_exec = False
        self.var_sanity_check_first_run = True
        self.const_shape = False
        self.force_dynamic_alloc = False
        self.force_output_dynamic_alloc = False
        self.force_output_use_user_specified_memory = False
        self.no_profiling_on_shape_change = False
        self.jit_level = 0
        self.comp_node_seq_record_level = 0
        self.graph_opt_level = 2
        self.async_exec_level = 1
        self.enable_nchw44 = self.enable_nchw44_dot = self.enable_nchw88 = False
        self.enable_nhwcd4 = self.enable_nchw4 = self.enable_nchw32 = False
        self.enable_nchw64 = False

    def __repr__(self):
        return repr(dict(vars(self)))


class LiteConfig:
    """How to load a network: the device (the CPU here), the backend and the `LiteOptions`."""

    def __init__(self, device_type=LiteDeviceType.LITE_CPU, option=None):
        self.device_type = device_type
        self.options = option if option is not None else LiteOptions()
        self.has_compression = False
        self.device_id = 0
        self.backend = LiteBackend.LITE_DEFAULT
        self.bare_model_cryption_name = ""
        self.auto_optimize_inference = False
        self.discrete_input_name = ""
        self.use_loader_dynamic_param = 0  # (upstream's loader option; kept, chooses nothing)

    @property
    def bare_model_cryption_name(self):
        return self._cryption

    @bare_model_cryption_name.setter
    def bare_model_cryption_name(self, name):
        name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        if name:
            raise ValueError(f"bare_model_cryption_name={name!r}: encrypted models are not "
                             "supported here; load the model as trace.dump wrote it")
        self._cryption = name

    def __repr__(self):
        return repr({"has_compression": self.has_compression, "device_id": self.device_id,
                     "device_type": LiteDeviceType(self.device_type), "backend": self.backend,
                     "options": self.options})


class LiteIO:
    """One input or output of a network: its ``name``, and for an input the ``layout`` its
    tensor starts with (default: the layout the model was dumped with)."""

    def __init__(self, name, is_host=True, io_type=LiteIOType.LITE_IO_VALUE, layout=None):
        self.name = name
        self.is_host = bool(is_host)
        self.io_type = LiteIOType(io_type)
        self.config_layout = layout if layout is not None else LiteLayout()

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, name):
        self._name = name.decode("utf-8") if isinstance(name, bytes) else str(name)

    def __repr__(self):
        return repr({"name": self.name, "is_host": self.is_host, "io_type": self.io_type,
                     "config_layout": self.config_layout})

    def __hash__(self):
        return hash(self.name)

    def __eq__(self, other):
        return isinstance(other, LiteIO) and other.name == self.name


class LiteNetworkIO:
    """The inputs and outputs a network is configured with (lists of `LiteIO`)."""

    def __init__(self, inputs=None, outputs=None):
        self.inputs, self.outputs = [], []
        for i in inputs or ():
            self.add_input(*i) if isinstance(i, list) else self.add_input(i)
        for o in outputs or ():
            self.add_output(*o) if isinstance(o, list) else self.add_output(o)

    def add_input(self, obj, is_host=True, io_type=LiteIOType.LITE_IO_VALUE, layout=None):
        self.inputs.append(obj if isinstance(obj, LiteIO) else LiteIO(obj, is_host, io_type,
                                                                       layout))

    def add_output(self, obj, is_host=True, io_type=LiteIOType.LITE_IO_VALUE, layout=None):
        self.outputs.append(obj if isinstance(obj, LiteIO) else LiteIO(obj, is_host, io_type,
                                                                        layout))

    def __repr__(self):
        return repr({"inputs": list(self.inputs), "outputs": list(self.outputs)})


class LiteNetwork:
    """A model to load (`load`) and run (`forward`), its inputs and outputs read and written
    through `get_io_tensor`. ``config``: a `LiteConfig` (CPU only here); ``io``: a
    `LiteNetworkIO` giving inputs their starting layouts."""

    def __init__(self, config=None, io=None):
        self.config = config if config is not None else LiteConfig()
        _host_only(self.config.device_type)
        self.network_io = io if io is not None else LiteNetworkIO()
        self._graph = None
        self._inputs, self._outputs = {}, {}
        self._device_id = int(self.config.device_id)
        self._threads = 1
        self._inplace = False
        self._stream_id = 0
        self._start_callback = self._finish_callback = self._async_callback = None
        self._model = None  # the loaded model's bytes

    def __repr__(self):
        return repr({"config": self.config, "IOs": self.network_io})

    # ---------------------------------------------------------------- loading and running
    def load(self, file):
        """Load the model a path or a binary file object holds (a file `trace.dump`,
        `dump_graph` or `Network.dump` wrote)."""
        from megengine.utils.comp_graph_tools import GraphInference

        if isinstance(file, (str, os.PathLike)):
            with open(file, "rb") as f:
                data = f.read()
        elif hasattr(file, "read"):
            data = file.read()
        else:
            raise _LiteKindError(f"load: expected a path or a binary file object, got "
                                 f"{type(file).__name__}")
        self._take(GraphInference(io.BytesIO(data)), data)

    def _take(self, graph, data):
        """Run ``graph`` (a GraphInference of the model ``data``) with this network's own input
        and output tensors."""
        self._graph, self._model = graph, data
        configured = {i.name: i for i in self.network_io.inputs}
        self._inputs = {}
        for name, shape, dtype in self._graph._program.inputs:
            io_cfg = configured.get(name)
            layout = (io_cfg.config_layout if io_cfg is not None and io_cfg.config_layout.ndim
                      else LiteLayout(shape, dtype))
            self._inputs[name] = LiteTensor(layout)
        self._outputs = {name: LiteTensor() for name in self._graph.output_names}

    def _loaded(self, what):
        if self._graph is None:
            raise RuntimeError(f"{what}: no model is loaded; call load(path) first")

    def forward(self):
        """Run the model on the input tensors' data; the output tensors receive the results."""
        self._loaded("forward")
        if self._start_callback is not None:
            self._start_callback(self._io_map(self._inputs, self.network_io.inputs))
        results = self._graph.run(inp_dict={n: t._array for n, t in self._inputs.items()})
        for name, value in results.items():
            self._outputs[name]._array = value
        if self._finish_callback is not None:
            self._finish_callback(self._io_map(self._outputs, self.network_io.outputs))
        if self._async_callback is not None:
            self._async_callback()

    def wait(self):
        """Wait for `forward` to finish: it runs synchronously here, so it has."""
        self._loaded("wait")

    def _io_map(self, tensors, configured):
        """{LiteIO: LiteTensor} as upstream's start and finish callbacks receive."""
        by_name = {i.name: i for i in configured}
        return {by_name.get(n, LiteIO(n)): t for n, t in tensors.items()}

    # ---------------------------------------------------------------- inputs and outputs
    def get_io_tensor(self, name, phase=LiteTensorPhase.LITE_IO):
        """The input or output tensor called ``name`` (``phase`` picks one when an input and an
        output share the name). The same tensor is returned on every call."""
        self._loaded("get_io_tensor")
        name = name.decode("utf-8") if isinstance(name, bytes) else name
        phase = LiteTensorPhase(phase)
        if phase != LiteTensorPhase.LITE_OUTPUT and name in self._inputs:
            return self._inputs[name]
        if phase != LiteTensorPhase.LITE_INPUT and name in self._outputs:
            return self._outputs[name]
        raise _LiteValueError(f"get_io_tensor: the network has no {phase.name} tensor {name!r}; "
                              f"its inputs are {list(self._inputs)} and its outputs "
                              f"{list(self._outputs)}")

    def get_input_name(self, index):
        return self._name_at(list(self._inputs), index, "input")

    def get_output_name(self, index):
        return self._name_at(list(self._outputs), index, "output")

    def _name_at(self, names, index, kind):
        self._loaded(f"get_{kind}_name")
        if not 0 <= index < len(names):
            raise _LiteIndexError(f"get_{kind}_name({index}): the network has {len(names)} "
                                  f"{kind}s {names}")
        return names[index]

    def get_all_input_name(self):
        self._loaded("get_all_input_name")
        return list(self._inputs)

    def get_all_output_name(self):
        self._loaded("get_all_output_name")
        return list(self._outputs)

    # ---------------------------------------------------------------- runtime settings
    # Upstream's device, stream, thread and in-place settings place and schedule its C++
    # runtime's work; the values computed do not depend on them. They are kept and read back.
    @property
    def device_id(self):
        return self._device_id

    @device_id.setter
    def device_id(self, device_id):
        self._device_id = int(device_id)

    @property
    def stream_id(self):
        return self._stream_id

    @stream_id.setter
    def stream_id(self, stream_id):
        self._stream_id = int(stream_id)

    @property
    def threads_number(self):
        return self._threads

    @threads_number.setter
    def threads_number(self, nr_threads):
        if not isinstance(nr_threads, numbers.Integral) or isinstance(nr_threads, bool):
            raise _LiteKindError(f"threads_number must be an int, got {nr_threads!r}")
        if nr_threads < 1:
            raise _LiteValueError(f"threads_number must be at least 1, got {nr_threads}")
        self._threads = int(nr_threads)

    def is_cpu_inplace_mode(self):
        return self._inplace

    def enable_cpu_inplace_mode(self):
        self._inplace = True

    # Upstream's algorithm search (fast-run), workspace limit, layout transform and runtime
    # memory sharing choose how its C++ runtime computes, not what: here they check their
    # arguments and change nothing, and the values computed are the same.
    def set_network_algo_policy(self, policy, shared_batch_size=0,
                                binary_equal_between_batch=False):
        """Upstream's algorithm search ``policy`` (`LiteAlgoSelectStrategy` flags combined
        with ``|``) and its fast-run settings; kernels are not searched here."""
        known = 0
        for flag in LiteAlgoSelectStrategy:
            known |= flag
        if isinstance(policy, bool) or not isinstance(policy, int) or policy <= 0 or \
                policy & ~known:
            raise ValueError(f"set_network_algo_policy: policy must be LiteAlgoSelectStrategy "
                             f"flags (combined with |), got {policy!r}")
        if isinstance(shared_batch_size, bool) or not isinstance(shared_batch_size, int) or \
                shared_batch_size < 0:
            raise ValueError(f"set_network_algo_policy: shared_batch_size must be an int >= 0, "
                             f"got {shared_batch_size!r}")

    def set_network_algo_workspace_limit(self, size_limit):
        """Upstream's limit in bytes of its kernels' scratch memory."""
        if isinstance(size_limit, bool) or not isinstance(size_limit, int) or size_limit < 0:
            raise ValueError(f"set_network_algo_workspace_limit: size_limit must be a number of "
                             f"bytes >= 0, got {size_limit!r}")

    def enable_global_layout_transform(self):
        """Upstream's request to pick each operator's layout by profiling."""

    def dump_layout_transform_model(self, model_file):
        """Write the model to the path ``model_file``: as loaded, since no layout is
        transformed here (upstream writes the transformed graph; both compute the same)."""
        self._loaded("dump_layout_transform_model")
        with open(model_file, "wb") as f:
            f.write(self._model)

    def share_weights_with(self, src_network):
        """Run the model ``src_network`` loaded, sharing its weights, with this network's own
        input and output tensors (as upstream's, in place of a `load`)."""
        if not isinstance(src_network, LiteNetwork):
            raise TypeError(f"share_weights_with: expected a LiteNetwork, got "
                            f"{type(src_network).__name__}")
        src_network._loaded("share_weights_with (the source network)")
        self._take(src_network._graph, src_network._model)

    def share_runtime_memroy(self, src_network):
        """Upstream lets two networks that never run at once share scratch memory; each run
        allocates its own here. (Upstream's spelling.)"""
        if not isinstance(src_network, LiteNetwork):
            raise TypeError(f"share_runtime_memroy: expected a LiteNetwork, got "
                            f"{type(src_network).__name__}")

    def use_tensorrt(self):
        raise RuntimeError("use_tensorrt: TensorRT is not available in this engine; the "
                           "network runs on the CPU")

    # ---------------------------------------------------------------- callbacks
    def set_start_callback(self, start_callback):
        """Call ``start_callback({LiteIO: LiteTensor})`` with the inputs before each forward."""
        self._start_callback = start_callback

    def set_finish_callback(self, finish_callback):
        """Call ``finish_callback({LiteIO: LiteTensor})`` with the outputs after each
        forward."""
        self._finish_callback = finish_callback

    def async_with_callback(self, async_callback):
        """Call ``async_callback()`` when a forward has finished."""
        self._async_callback = async_callback
