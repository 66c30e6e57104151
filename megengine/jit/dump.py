"""Writing a traced program to a file (`trace.dump`) and reading it back (`load`), so that it runs
without the Python source that made it.

The file is an 8-byte mark (``_MAGIC``) and the archive's length (8 bytes, little-endian),
then a zip archive (so a loader reads exactly the program even where other bytes follow it, as
when a file object is overwritten by a shorter program; files without the mark, written
before it, are the bare archive):

- ``graph.json``: the format name and version, the inputs (name, slot, shape, dtype, device),
  the outputs (name, slot), the constants (slot, array entry, device), the steps and the
  user's metadata; devices are recorded by the name the program asked for (``xpux`` for the
  default device) and mapped where the file is loaded (`dump_devices`);
- ``arrays/<n>.npy``: every array (constants, captured parameters, arrays inside op state).

Optional keys (files without them load as before): ``name`` of a constant, ``opr_name`` and
``var_names`` of a step (the names `megengine.utils.network` shows and edits), ``metadata``
``null`` (dumped with ``enable_metadata=False``), and ``testcases``: inputs and the outputs the
program computed from them (``trace.dump(input_data=...)``, upstream's test cases for its
load_and_run tool), which `megengine.utils.comp_graph_tools.load_and_inference` runs and checks.

An op is written *by value*: its class as ``"module:QualName"`` and its constructor state (the
``__dict__`` the recording copied before ``forward`` ran), encoded as tagged JSON. Loading
imports the class, checks it is a `megengine.core.dispatch.Op`, and rebuilds the instance with
``cls.__new__`` and that state. Classes and module-level functions in op state are written by
name and imported on load (as pickle does); no other code comes from the file. State that is
not a value (a torch module inside a ``PyTorchModule`` call, a user ``Function`` object, any
other Python object) cannot be written: `dump` raises and names the op and the attribute.

Upstream's inference options (``enable_io16xc32``, ``enable_ioc16``, layouts, fusions) are
checked and applied by `megengine.utils.network_optimize` (the float16 ones rewrite the graph
through `megengine.utils.network.Network`); see "Inference options of dump" in docs/api/jit.rst.

What cannot be dumped, by design: programs with events (optimizer steps: calls on live Python
objects) and values read live. A ``GradManager.backward`` whose gradients the function returns
becomes op steps of the file (`dump_backward`). In-place writes into tensors the function made
(``out += identity``) are plain dataflow in the program (see `tracing`); writes into its
arguments and into captured Parameters and tensors become dataflow of the file as upstream
dumps them (`dump_writes`).
Dump an inference function traced with ``capture_as_const=True``.

The parts: `dump_format` (values as tagged JSON), `dump_names` (default names of inputs,
outputs and parameters), `dump_testcases` (``input_data``); their names are importable here.
`read_file` also reads upstream MegEngine's binary ``.mge`` files, translated by `upstream_mge`.
`program_json` builds a program's graph.json and arrays; `write_file` writes them as the file,
`in_memory` hands them over as `read_file` would give them back (no archive in between).
"""
import hashlib
import io
import json
import warnings
import zipfile
from collections import namedtuple

import numpy as np

from ..core.dispatch import Op
from ..core.ops import ArgumentTypeError, move_array
from ..core.tensor import Tensor
from ..utils.naming import COMMUTATIVE, default_output_names, program_names
from ..utils.network_node import engine_steps, upstream_steps
from .arith_opt import is_identity_step
from .dump_backward import with_backward
from .dump_devices import device_mapper, recorded_name
from ._program import (_AliasStep, _DimExpr, _OpStep, _Program, _Ref, _Struct, _TensorLeaf,  # noqa: F401
                       _holds, _host, _is_array, _made_by, _slots_used)
# the file's value encoding, dump's naming and its test cases (this file re-exports their names)
from .dump_format import (DumpError, LoadError, _class_path, _import,  # noqa: F401
                          _importable, _in_table, _qinfo, _read, _read_frozen, _Writer)
from .dump_names import (_input_defaults, _leaves, _names, _output_slots,  # noqa: F401
                         _param_names)
from .dump_testcases import (_RAND, _case_feeds, _repeat, _spec_data,  # noqa: F401
                             make_testcases)
from .dump_writes import refuse_training_batch_norm, with_writes

# version 2: devices recorded by name (xpux for the default device); version 1 recorded the
# device they resolved to (gpu0 on a GPU machine), read as explained in `dump_devices`.
# version 3: symbolic shapes (``symbolic_shape``, op state ``{"dim": tree}``, ``shape_guards``;
# see `shape_guards`); files of versions 1 and 2 run at their traced shapes only, as before
FORMAT, VERSION = "megengine-fork-traced-program", 3
_READABLE_VERSIONS = (1, 2, 3)
_MAGIC = b"MGEFORK\x01"

class DumpInfo(namedtuple("DumpInfo", ["nr_opr", "tot_bytes", "tensor_value_bytes",
                                         "content_hash", "inputs", "outputs", "params"])):
    """What `trace.dump` wrote, as upstream's ``CompGraphDumpResult``: the number of operators
    (inputs and constants included), the file's bytes, the bytes of constant values, a hash of
    the program, and the names of the inputs, outputs and named constants."""

    @property
    def params_size(self):  # this fork's earlier names of two fields
        return self.tensor_value_bytes

    @property
    def file_size(self):
        return self.tot_bytes


# upstream's dump options: those of its serialized graph (names, priorities, strip info) change
# nothing in this file format; the optimizer's float16 options rewrite the graph and the others
# are recorded (megengine.utils.network_optimize says what each does here); dump_format
# "FBS_V2" writes upstream's format instead (`dump_program`, `upstream_mge_write`)
_NO_EFFECT = frozenset({
    "append", "keep_var_name", "keep_opr_name", "keep_param_name", "keep_opr_priority",
    "no_change_graph", "strip_info_file", "append_json", "optimize_for_inference",
    "dump_format", "model_version", "enable_io16xc32", "enable_ioc16",
    "enable_hwcd4", "enable_nchw4", "enable_nchw88", "enable_nchw44", "enable_nchw44_dot",
    "enable_nchw32", "enable_chwn4", "enable_fuse_conv_bias_nonlinearity",
    "enable_fuse_conv_bias_with_z", "enable_fuse_preprocess", "enable_fuse_grain",
    "enable_weight_preprocess", "enable_nchw64"})
# upstream's graph optimizer options that metadata records when optimize_for_inference is on
_OPTIMIZE_OPTIONS = tuple(sorted(k for k in _NO_EFFECT if k.startswith("enable_")))


# --------------------------------------------------------------------------------------------
# dump
# --------------------------------------------------------------------------------------------
def _input_dependent(prog):
    """The slots whose value can change from one run of the file to the next: the inputs, live
    values (externals, gradients) and everything computed from them."""
    varying = {s for s, info in enumerate(prog.slots) if info.kind in ("arg", "ext", "grad")}
    for step in prog.steps:
        if any(s in varying for s in _slots_used(step)):
            varying.update(_made_by(step))
    return varying


def dump_program(prog, file, **options):
    """Write ``prog`` (a recorded `_Program`) to ``file``; see the module docstring and
    `program_json` for the options. Returns upstream's dump result (`DumpInfo`)."""
    upstream = writes_upstream(options, "trace.dump")
    graph, w = program_json(prog, **options)
    data = write_file(graph, w, file, upstream)
    steps, consts = graph["steps"], graph["consts"]
    # upstream counts its input and constant operators too; an alias is no operator
    n_oprs = len(graph["inputs"]) + len(consts) + sum("alias" not in st for st in steps)
    digest = hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).digest()
    return DumpInfo(n_oprs, len(data), sum(w.arrays[c["array"]].nbytes for c in consts),
                    int.from_bytes(digest[:8], "little"), [i["name"] for i in graph["inputs"]],
                    [o["name"] for o in graph["outputs"]],
                    [c["name"] for c in consts if "name" in c])


def program_json(prog, *, arg_names=None, output_names=None, user_info=None,
                 enable_metadata=True, input_data=None, repeat=1, silent=False, no_assert=False,
                 maxerr=1e-4, resize_input=False, input_transform=None, _function=None,
                 **options):
    """(graph.json as a dict, the `_Writer` holding its arrays) of ``prog``: what
    `write_file` writes and `in_memory` hands over as read back, without an archive.

    ``input_data`` (upstream's test cases): see `make_testcases`; the program is run on each
    case as it is written to the file, and the outputs are stored next to the inputs."""
    unknown = set(options) - _NO_EFFECT
    if unknown:  # (a ValueError, as upstream's optimize_for_inference raises for them)
        raise ValueError(f"dump() got unknown options {sorted(unknown)}; its "
                         f"options are arg_names, output_names, user_info, enable_metadata, "
                         f"input_data, repeat, silent, no_assert, maxerr, resize_input, "
                         f"input_transform and {sorted(_NO_EFFECT)}")
    optimize = bool(options.get("optimize_for_inference", True))
    if optimize:
        from ..utils.network_optimize import check_options
        check_options({k: v for k, v in options.items() if k.startswith("enable_")}, "dump")
    prog = with_writes(prog)  # writes into arguments and captured tensors: dataflow
    prog = with_backward(prog)  # a GradManager.backward inside: its ops join the program
    defaults = _input_defaults(prog.in_tree)
    own = getattr(prog, "arg_tensor_names", ())  # Tensor(..., name="data") names its input
    if len(own) == len(defaults):
        defaults = [o if o and own.count(o) == 1 and o not in defaults else d
                    for o, d in zip(own, defaults)]
    in_names = _names(arg_names, defaults, "arg_names")
    default_out, out_slots = _output_slots(prog.out)
    if output_names is not None and (type(prog.out) is dict or (
            type(prog.out) is _Struct and prog.out.keys is not None)):
        raise TypeError("cannot specify output_names when output is already in dict format")
    all_steps, n_slots, scopes, step_consts = upstream_steps(prog)
    op_steps = [st for st in all_steps if type(st) is _OpStep]
    named = dict(zip(map(id, op_steps), program_names(
        op_steps, scopes, getattr(prog, "var_names", {}))))
    if type(prog.out) is not dict and not (type(prog.out) is _Struct and prog.out.keys):
        default_out = default_output_names(out_slots, prog, all_steps, in_names, named,
                                           default_out)
    if output_names is None:
        # an output that is an argument unchanged (log(exp(x)) rewritten) is that input's
        # var in upstream's graph, named as it
        arg_of = dict(zip(prog.arg_slots, in_names))
        made_by = {st.outs[0]: st.ins[0] for st in op_steps if is_identity_step(st)}
        default_out = [arg_of.get(made_by.get(s), d) for s, d in zip(out_slots, default_out)]
    out_names = _names(output_names, default_out, "output_names")

    # a file has no Python to rerun on another value; a value no input reaches (MegFlow's
    # `F.concat([data.shape[0], M.shape])` given to broadcast_to) is the same on every run of
    # the file, so reading it is fine
    varying = _input_dependent(prog)
    guards = [g for g in prog.guards if g[1] in varying]
    if prog.arg_reads or guards:
        i = prog.arg_reads[0] if prog.arg_reads else None
        what = (f"the tensor argument {in_names[i]!r}" if i is not None else
                prog.describe(guards[0][1]))
        raise DumpError(f"dump: the traced function read the value of {what} to the host "
                        "(.numpy(), .item(), int(), a Tensor given as a shape...) and its ops "
                        "were built from that value; the file would keep it for every input. "
                        "Compute with ops instead, give the value as a Python number, or read "
                        "it inside exclude_from_trace() if it is only logged")
    w = _Writer()
    slots = prog.slots
    consts = []
    param_names = _param_names(_function, prog.in_tree)
    for s, info in enumerate(slots):
        if info.kind == "grad":
            raise DumpError(f"dump: the program reads {prog.describe(s)} live; gradients cannot "
                            "be dumped. Dump an inference function")
        if info.kind == "ext":
            raise DumpError(f"dump: {prog.describe(s)} is read live; trace with "
                            "capture_as_const=True to dump its value")
        if info.kind == "const":
            entry = {"slot": s, "array": w.array(info.const),
                     "device": recorded_name(info.device)}
            name = param_names.get(id(info.tensor)) or getattr(info.tensor, "_name", None)
            if name:  # a named Parameter or tensor keeps its name, as upstream's dump
                entry["name"] = name
            consts.append(entry)
    consts += [{"slot": s, "array": w.array(array), "device": recorded_name(device)}
               for s, (array, device) in step_consts.items()]
    steps = []
    for step in all_steps:
        t = type(step)
        if t is _AliasStep:
            steps.append({"alias": step.src, "out": step.out})
            continue
        if t is _OpStep and is_identity_step(step):
            # an opt_level rewrite's result that is its input unchanged (log(exp(x)) -> x):
            # upstream's graph forwards the input's var, so the file holds no operator for it
            steps.append({"alias": step.ins[0], "out": step.outs[0]})
            continue
        if t is not _OpStep:
            raise DumpError(f"dump: the program calls {step.name}() (a GradManager or "
                            "optimizer, run on live Python objects), which a file cannot hold. "
                            "Dump an inference function")
        refuse_training_batch_norm(step)
        ins = step.ins
        if type(step.template).__name__ in COMMUTATIVE and len(ins) == 2 and ins[0] > ins[1]:
            ins = ins[::-1]  # upstream's order: the older value first (slots grow with age)
        opr_name, var_names = named[id(step)]
        dyn = step.dyn
        if getattr(step, "sym", None):  # sizes computed from shapes: written as expressions
            dyn = tuple({**dict(dyn or ()), **dict(step.sym)}.items())
        steps.append(op_step_json(w, step.template, dyn, ins, step.outs, step.multi,
                                  step.name, f"op #{step.index} ({step.name})", opr_name,
                                  var_names))
    inputs = []
    for name, s, leaf in zip(in_names, prog.arg_slots, _leaves(prog.in_tree)):
        inputs.append({"name": name, "slot": s, "shape": list(leaf.shape),
                       "dtype": np.dtype(leaf.dtype).str,
                       "device": recorded_name(leaf.device)})
    graph = {"format": FORMAT, "version": VERSION, "n_slots": n_slots, "inputs": inputs,
             "outputs": [{"name": n, "slot": s} for n, s in zip(out_names, out_slots)],
             "consts": consts, "steps": steps,
             "metadata": (metadata_json(w, user_info, False, options) if enable_metadata
                          else None)}
    graph.update(shapes_json(prog.symbolic_shape, prog.shape_guards))
    if prog.dyn_read and not prog.dyn_sizes:
        # fixed sizes read from values whose shapes data decides: a run checks those shapes
        # (see `_Program._dyn_checks`), as a replay of the trace does
        graph["fixed_shapes"] = [[s, list(shape)] for s, shape in prog.dyn_read.items()]
    if optimize and any(options.get(k) for k in ("enable_io16xc32", "enable_ioc16")):
        # the float16 passes rewrite the graph (megengine.utils.network_optimize); they work
        # on the program as a loaded network knows it, with every var's dtype
        from ..utils.network import Network
        net = Network.load(io.BytesIO(write_file(graph, w, None)))
        graph, w = net._graph_json(options, user_info, enable_metadata, False)
    if input_data is not None:
        # the program as the file holds it computes the cases
        cases = make_testcases(program_of(*in_memory(graph, w)), input_data, repeat=repeat,
                               resize_input=resize_input, input_transform=input_transform)
        graph["testcases"] = {"cases": [{"inputs": {k: w.array(v) for k, v in ins.items()},
                                         "outputs": {k: w.array(v) for k, v in outs.items()}}
                                        for ins, outs in cases],
                              "maxerr": float(maxerr), "no_assert": bool(no_assert),
                              "silent": bool(silent)}
    elif (repeat, silent, no_assert, resize_input, input_transform) != (1, False, False, False,
                                                                         None):
        # upstream accepts them without test cases (programs pass no_assert=True habitually)
        warnings.warn("dump: repeat, silent, no_assert, resize_input and input_transform "
                      "describe the test cases of input_data=..., which was not given: "
                      "they are ignored", stacklevel=4)
    return graph, w


# ops without inputs that make their value on the device they name (F.zeros of a shape from
# shapes, F.arange of a size, random draws): the file records that device by name as it does
# for constants (`dump_devices`), and a loader places it as it places them
_PLACED = frozenset({("megengine.core.ops", "Full"), ("megengine.functional.tensor", "_Arange"),
                     ("megengine.functional.tensor", "_Linspace"),
                     ("megengine.functional.tensor", "_ArangeOf"),
                     ("megengine.functional.tensor", "_LinspaceOf"),
                     ("megengine.jit.shape_tensors", "Sizes"), ("megengine.random.rng", "_Draw")})


def placed(op):
    """Whether ``op``'s ``device`` attribute is a device to record by name and map on load."""
    cls = type(op)
    return (cls.__module__, cls.__qualname__) in _PLACED and isinstance(
        op.__dict__.get("device"), str)


def op_step_json(w, op, dyn, ins, outs, multi, name, where, opr_name=None, var_names=None):
    """One op step of graph.json: the op by value (see the module docstring). ``dyn``: the
    attributes that refer to traced values, in `_program._freeze` form (or None)."""
    cls = type(op)
    if not _importable(cls):
        raise DumpError(f"dump: {where}: its class {cls.__qualname__} is defined inside a "
                        "function or in __main__, so a loader cannot import it")
    dyn = dict(dyn or ())
    state = {k: w.value(v, f"{where}, attribute {k!r}") for k, v in op.__dict__.items()
             if k != "needs_input_grad" and k not in dyn}
    if placed(op):
        state["device"] = recorded_name(op.device)
    # (an op read back from a file has no attribute for its dyn state: only the frozen form)
    state.update((k, w.frozen(f, f"{where}, attribute {k!r}")) for k, f in dyn.items())
    step = {"op": _class_path(cls), "state": state, "dyn": sorted(dyn), "ins": list(ins),
            "outs": list(outs), "multi": multi, "name": name}
    if opr_name is not None:
        step["opr_name"] = opr_name
    if var_names is not None:
        step["var_names"] = list(var_names)
    return step


def shapes_json(symbolic, guards):
    """graph.json's symbolic-shape keys: whether the program runs at other input shapes, and
    its guards (see `shape_guards`)."""
    return {"symbolic_shape": bool(symbolic),
            "shape_guards": [{"expr": tree, "value": value, "kind": kind, "where": where}
                             for tree, value, kind, where in guards]}


def read_shapes(graph):
    """(symbolic_shape, guards) of a file's graph.json (files before version 3: fixed)."""
    from .shape_guards import tree_from_json
    guards = [(tree_from_json(g["expr"]), g["value"], g["kind"], g["where"])
              for g in graph.get("shape_guards", ())]
    return bool(graph.get("symbolic_shape", False)), guards


def metadata_json(w, user_info, graph_modified, options):
    """The metadata upstream's loaders show: the user's object, whether the graph was edited
    after tracing (`megengine.utils.network`), and the optimizer options asked for (see
    `megengine.utils.network_optimize`)."""
    optimized = bool(options.get("optimize_for_inference", True))
    meta = {"user_info": w.value(user_info, "user_info"), "graph_modified": graph_modified,
            "optimized_for_inference": optimized}
    if optimized:
        meta["optimize_options"] = w.value({k: True for k in _OPTIMIZE_OPTIONS
                                            if options.get(k)}, "optimize options")
    return meta


def writes_upstream(options, where):
    """Whether dump ``options`` ask for upstream's format (``dump_format="FBS_V2"``); None
    and "FBS" keep this fork's format, anything else is refused."""
    fmt = options.get("dump_format")
    if fmt not in (None, "FBS", "FBS_V2"):
        raise DumpError(f"{where}: dump_format must be None or 'FBS' (this fork's format) "
                        f"or 'FBS_V2' (upstream's mgv2), got {fmt!r}")
    if fmt == "FBS_V2" and options.get("model_version", 2) != 2:
        raise DumpError(f"{where}: dump_format='FBS_V2' writes model_version 2 (upstream's "
                        f"default), not {options['model_version']!r}; dump without "
                        "model_version (a runtime of upstream 1.13 reads version 2)")
    return fmt == "FBS_V2"


def write_file(graph, w, file, upstream=False):
    """Write graph.json and ``w``'s arrays as the zip archive (``upstream``: as upstream's
    ``.mge`` file instead, `upstream_mge_write`); ``file`` None: only return the bytes."""
    if not (file is None or isinstance(file, (str, bytes)) or hasattr(file, "__fspath__")
            or callable(getattr(file, "write", None))):  # (upstream: AttributeError, or
        # pybind's RuntimeError for Network.dump)
        raise ArgumentTypeError(f"dump: file must be a path or a binary file object, got "
                                f"{type(file).__name__} {file!r}")
    if upstream:
        from .upstream_mge_write import upstream_bytes

        data = upstream_bytes(graph, w)
    else:
        _note_quantized(graph, w)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("graph.json", json.dumps(graph))
            for i, a in enumerate(w.arrays):
                with z.open(f"arrays/{i}.npy", "w") as f:
                    np.save(f, a, allow_pickle=False)
        archive = buf.getvalue()
        data = _MAGIC + len(archive).to_bytes(8, "little") + archive
    if file is None:
        return data
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "wb") as f:
            f.write(data)
    else:
        file.write(data)
    return data


def _note_quantized(graph, w):
    if w.qdtypes:
        graph["quantized_arrays"] = w.qdtypes


def in_memory(graph, w):
    """What `read_file` gives for the file `write_file` writes of ``graph`` and ``w``'s arrays,
    without writing it: the zip's compression and reading back cost more than the rest of
    loading a large upstream ``.mge`` file (`upstream_mge`). The arrays are ``w``'s own."""
    _note_quantized(graph, w)
    graph = json.loads(json.dumps(graph))  # (as a file gives it: lists, a copy of its own)
    return graph, _with_qdtypes(graph, dict(enumerate(w.arrays)))


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------
class LoadedProgram:
    """A dumped program read back: ``inputs`` and ``outputs`` are lists of (name, shape, dtype)
    and names; `run` computes the outputs from input arrays. ``metadata``: upstream's dict (None
    when dumped with ``enable_metadata=False``); ``testcases``: [(inputs, expected outputs)] as
    {name: array} dicts, with ``testcase_options`` (maxerr, no_assert, silent)."""

    def __init__(self, graph, prog, device, metadata, testcases=(), testcase_options=None):
        self.graph, self.prog, self.device = graph, prog, device
        self._place = device_mapper(device, graph.get("version"))
        self.inputs = [(i["name"], tuple(i["shape"]), np.dtype(i["dtype"]))
                       for i in graph["inputs"]]
        self.outputs = [o["name"] for o in graph["outputs"]]
        self.metadata = metadata
        self.testcases = list(testcases)
        self.testcase_options = testcase_options or {}

    def run(self, feeds, strict_shape=True):
        """``feeds``: {input name: array}; returns {output name: Tensor}. ``strict_shape``
        False (test cases of another shape, as upstream's graphs accept): the recorded ops run
        at the given shape, with the parameters they were traced with."""
        from ..core.tensor import Tensor
        from .replay import replay
        missing = [n for n, _, _ in self.inputs if n not in feeds]
        if missing:
            raise ValueError(f"run: no value for the inputs {missing}; the program's inputs are "
                             f"{[n for n, _, _ in self.inputs]}")
        extra = sorted(set(feeds) - {n for n, _, _ in self.inputs})
        if extra:
            raise ValueError(f"run: the program has no inputs named {extra}; its inputs are "
                             f"{[n for n, _, _ in self.inputs]}")
        leaves = []
        for (name, shape, dtype), info in zip(self.inputs, self.graph["inputs"]):
            v = feeds[name]
            v = v.numpy() if isinstance(v, Tensor) else np.asarray(_host(v))  # CuPy too
            if (v.shape != shape and self.prog.symbolic_shape and v.ndim != len(shape)
                    and (strict_shape or _reads_shapes_of(self.prog))):
                # (a rank is no expression: Python code may have decided on x.ndim. Test cases
                # of another rank run a program that reads no shape, as upstream's graph would)
                raise ValueError(f"run: input {name!r} has {v.ndim} dims (shape {v.shape}), but "
                                 f"the program was traced with {len(shape)} (shape {shape}); "
                                 "its sizes may change, its number of dims may not")
            if v.shape != shape and strict_shape and not self.prog.symbolic_shape:
                raise ValueError(f"run: input {name!r} has shape {v.shape}, but the program was "
                                 f"traced with shape {shape}; trace and dump the new shape "
                                 "(this file records fixed shapes: dumped before symbolic "
                                 "shapes, or traced with symbolic_shape=False)")
            leaves.append(Tensor(v.astype(dtype, copy=False), dtype=dtype,
                                 device=self._place(info["device"])))
        values = replay(self.prog, leaves)
        return dict(zip(self.outputs, values))


def _reads_shapes_of(prog):
    """Whether a program computes anything from its values' shapes: guards, or op parameters
    kept as expressions of sizes (`_DimExpr`s in a loaded step's state; see `shape_guards`)."""
    return bool(prog.shape_guards) or any(
        any(_holds(f, _DimExpr) for _, f in step.dyn or ()) for step in prog.steps
        if type(step) is _OpStep)


def _on_device(a, device):
    """Host array ``a`` where device ``device`` (a canonical name) keeps its arrays."""
    return move_array(a, device) if device.startswith("gpu") else a


def read_file(file):
    """(graph.json as a dict, {array index: host array}) of a file `dump_program` wrote, or of
    an upstream MegEngine ``.mge`` file translated into that form (`upstream_mge`)."""
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "rb") as f:
            data = f.read()
    else:
        data = file.read()
    if data[:8] == _MAGIC:
        data = data[16:16 + int.from_bytes(data[8:16], "little")]
    elif data[:2] != b"PK":  # not this fork's archive: upstream's binary formats
        from .upstream_mge import is_upstream, read_upstream
        if is_upstream(data):
            return read_upstream(data)
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        graph = json.loads(z.read("graph.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise LoadError("load: not a program written by megengine.jit.trace.dump of this fork "
                        f"({e}), nor an upstream MegEngine .mge file of the mgv2 format (the "
                        "default of upstream 1.13's trace.dump): dump the model again with "
                        "this fork's trace.dump or upstream 1.13's") from e
    if graph.get("format") != FORMAT or graph.get("version") not in _READABLE_VERSIONS:
        raise LoadError(f"load: unsupported file format {graph.get('format')!r} version "
                        f"{graph.get('version')!r} (expected {FORMAT!r} version {VERSION})")
    arrays = {}
    for name in z.namelist():
        if name.startswith("arrays/"):
            with z.open(name) as f:
                arrays[int(name[7:-4])] = np.load(io.BytesIO(f.read()), allow_pickle=False)
    return graph, _with_qdtypes(graph, arrays)


def _with_qdtypes(graph, arrays):
    """``arrays`` with the quantized ones viewed in their dtypes (.npy drops dtype metadata)."""
    for i, info in graph.get("quantized_arrays", ()):
        arrays[i] = arrays[i].view(np.dtype(arrays[i].dtype, metadata={"mgb_dtype": _read(info,
                                                                                          arrays)}))
    return arrays


def read_op(s, arrays, k):
    """(op template, dyn) of step ``s`` (its dict in graph.json), the ``k``-th step."""
    cls = _import(s["op"])
    if not (isinstance(cls, type) and issubclass(cls, Op)):
        raise LoadError(f"load: step {k} names {s['op']!r}, which is not a megengine op")
    op = cls.__new__(cls)
    dyn = tuple((name, _read_frozen(s["state"][name], arrays)) for name in s["dyn"]) or None
    op.__dict__.update({name: _read(v, arrays) for name, v in s["state"].items()
                        if name not in s["dyn"]})
    start = op.__dict__.pop("start", None) if type(op).__name__ == "_Draw" else None
    if start is not None:
        # a random op: its own generator, from the state the traced draw started at (its
        # first run repeats the traced values, later runs go on, as upstream's RNG operator)
        bit_gen = getattr(np.random, start[0])()
        bit_gen.state = start[1]
        op.rng._generator = np.random.Generator(bit_gen)
    return op, dyn


def read_metadata(graph, arrays):
    meta = graph.get("metadata")
    if meta is None:
        return None
    meta = {k: _read(v, arrays) for k, v in meta.items()}
    meta.setdefault("graph_modified", False)  # (files of before these keys)
    meta.setdefault("optimized_for_inference", True)
    meta.update(meta.pop("optimize_options", None) or {})  # upstream lists them inline
    return meta


def load(file, device=None):
    """Read a file `dump_program` wrote. ``device``: where its values go instead of the devices
    it records (a name, a dict ``{recorded name: name}`` or a function, as upstream's
    ``map_location``; see `dump_devices.device_mapper`)."""
    return program_of(*read_file(file), device)


def program_of(graph, arrays, device=None):
    """The `LoadedProgram` of a file's graph.json and arrays (`read_file`, `in_memory`)."""
    place = device_mapper(device, graph["version"])
    prog = _Program()
    for _ in range(graph["n_slots"]):
        prog.new_slot("op")
    for c in graph["consts"]:
        info = prog.slots[c["slot"]]
        # the file holds host arrays: a constant of a program run on a GPU must be a CuPy array
        # there (a replay hands it to the ops as it is, next to CuPy inputs)
        where = place(c["device"])
        info.kind, info.const, info.device = "const", _on_device(arrays[c["array"]], where), where
    for i in graph["inputs"]:
        prog.slots[i["slot"]].kind = "arg"
    prog.arg_slots = tuple(i["slot"] for i in graph["inputs"])
    for k, s in enumerate(graph["steps"]):
        if "alias" in s:
            prog.steps.append(_AliasStep(s["alias"], s["out"]))
            prog.slots[s["out"]].kind = "alias"
            continue
        op, dyn = read_op(s, arrays, k)
        if placed(op):
            op.device = place(op.device)
        step = _OpStep(len(prog.steps), op, None, dyn, tuple(s["ins"]), None, tuple(s["outs"]),
                       s["multi"], s["name"])
        prog.steps.append(step)
    prog.out = [_Ref(o["slot"]) for o in graph["outputs"]]
    prog.symbolic_shape, prog.shape_guards = read_shapes(graph)
    prog.dyn_read = {s: tuple(shape) for s, shape in graph.get("fixed_shapes", ())}
    # the slots read from outside the steps: the outputs, and the values whose shapes the
    # guards and fixed-shape checks read (a reduction fused away would drop those values)
    from .shape_guards import _slots
    read = [o["slot"] for o in graph["outputs"]] + list(prog.dyn_read)
    read += [s for tree, _, _, _ in prog.shape_guards for s in sorted(_slots(tree))]
    prog.steps = engine_steps(prog.steps, read)
    prog.loaded = True  # (its checks' messages speak of a file, not of a replay)
    if prog.symbolic_shape:
        from .shape_guards import ShapeContext
        prog.check_shapes = ShapeContext(
            [(i["name"], i["slot"], tuple(i["shape"])) for i in graph["inputs"]], prog.steps)
    prog.compile()
    tc = graph.get("testcases") or {}
    cases = [({k: arrays[i] for k, i in c["inputs"].items()},
              {k: arrays[i] for k, i in c["outputs"].items()}) for c in tc.get("cases", ())]
    options = {k: tc[k] for k in ("maxerr", "no_assert", "silent") if k in tc}
    return LoadedProgram(graph, prog, device, read_metadata(graph, arrays), cases, options)
