"""Writing a traced program to a file (`trace.dump`) and reading it back (`load`), so that it runs
without the Python source that made it.

The file is an 8-byte mark (``_MAGIC``) and the archive's length (8 bytes, little-endian),
then a zip archive (so a loader reads exactly the program even where other bytes follow it, as
when a file object is overwritten by a shorter program; files without the mark, written
before it, are the bare archive):

- ``graph.json``: the format name and version, the inputs (name, slot, shape, dtype, device),
  the outputs (name, slot), the constants (slot, array entry, device), the steps and the
  user's metadata;
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

What cannot be dumped, by design: programs with events (``GradManager.backward``, optimizer
steps, in-place writes into arguments, externals or Parameters: calls on live Python objects)
and values read live (a ``.grad``). In-place writes into tensors the function made (``out +=
identity``) are plain dataflow in the program (see `tracing`) and are dumped.
Dump an inference function traced with ``capture_as_const=True``.
"""
import hashlib
import importlib
import io
import json
import re
import types
import zipfile
from collections import namedtuple

import numpy as np

from ..core.dispatch import Op
from ..core.ops import move_array
from ..core.tensor import Tensor
from ..device import canonical_device
from ..utils.naming import COMMUTATIVE, default_output_names, program_names
from ..utils.network_node import upstream_steps
from .arith_opt import is_identity_step
from ._program import (_AliasStep, _OpStep, _Program, _Ref, _Struct, _TensorLeaf, _host,
                       _is_array, _slots_used)

FORMAT, VERSION = "megengine-fork-traced-program", 1
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


# upstream's dump options that shape its graph optimizer or its serialized graph: there is no
# graph optimizer and no MegEngine Lite here, so they change nothing in this file format
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


class DumpError(ValueError, RuntimeError):
    """A traced program, or a part of it, cannot be written to a file.

    Also a RuntimeError: upstream raises one when a program cannot be dumped (e.g. batch norm
    traced in training mode, which updates its running statistics in place), and programs
    catch that.
    """


# --------------------------------------------------------------------------------------------
# Values <-> tagged JSON
# --------------------------------------------------------------------------------------------
class _Writer:
    def __init__(self):
        self.arrays = []
        self.qdtypes = []  # [index, scale info] of quantized arrays (.npy drops dtype metadata)

    def array(self, a):
        a = np.asarray(_host(a))  # (not ascontiguousarray: it makes a 0-d constant 1-d)
        info = _qinfo(a.dtype)
        if info is not None:
            self.qdtypes.append([len(self.arrays), self.value(info, "a quantized array")])
            a = a.view(np.dtype(a.dtype.str))
        self.arrays.append(a)
        return len(self.arrays) - 1

    def value(self, v, where):
        """``v`` as JSON; ``where`` names it in an error ("op #3 (Conv2d), attribute 'stride'")."""
        t = type(v)
        if v is None or t is bool or t is int or t is str:
            return v
        if t is float:
            return {"float": repr(v)}  # repr round-trips, and keeps nan/inf out of bare JSON
        if t is complex:
            return {"complex": [repr(v.real), repr(v.imag)]}
        if t is tuple or t is list:
            return {t.__name__: [self.value(x, where) for x in v]}
        if t is dict:
            return {"dict": [[self.value(k, where), self.value(x, where)] for k, x in v.items()]}
        if t is slice:
            return {"slice": [self.value(x, where) for x in (v.start, v.stop, v.step)]}
        if v is Ellipsis:
            return {"ellipsis": True}
        if t is _Ref:
            return {"ref": v.slot, "raw": v.raw}
        if isinstance(v, np.dtype):
            info = _qinfo(v)
            if info is not None:  # a quantized dtype: its scale (zero point) lives in metadata
                return {"qdtype": [v.str, self.value(info, where)]}
            return {"dtype": v.str}
        if isinstance(v, np.generic):
            return {"scalar": self.array(np.asarray(v))}
        if _is_array(v):
            return {"array": self.array(v)}
        if type(v).__name__ == "RNG" and type(v).__module__ == "megengine.random.rng":
            # a random op's source (a traced draw's op also has ``start``, the state it drew
            # from, which `read_op` makes the loaded op's own generator: see _Draw.__copy__)
            gen = v._generator
            return {"rng": [None if gen is None else [type(gen.bit_generator).__name__,
                                                      gen.bit_generator.state], v._device]}
        if isinstance(v, Tensor):  # (in user_info, as upstream pickles it)
            return {"tensor": [self.array(v._data), v._device]}
        if isinstance(v, (type, types.FunctionType, types.BuiltinFunctionType)) \
                and _importable(v):
            return {"type": _class_path(v)}  # a class or module-level function, by its name
        raise DumpError(
            f"dump: {where} holds a {type(v).__module__}.{type(v).__qualname__} object, not a "
            "value that a file can hold. Ops that call into Python objects (a PyTorchModule's "
            "torch module, a user-defined Function) cannot be dumped; keep them out of the "
            "dumped function, or replace them with megengine modules")

    def frozen(self, f, where):
        """A value in `_program._freeze`'s form (op state that refers to traced arrays)."""
        t = type(f)
        if t is _Ref:
            return self.value(f, where)
        if t is tuple and f and f[0] in (tuple, list):
            return {f[0].__name__: [self.frozen(x, where) for x in f[1]]}
        if t is tuple and f and f[0] is dict:
            return {"dict": [[self.value(k, where), self.frozen(x, where)] for k, x in f[1]]}
        if t is tuple and f and f[0] is slice:
            return {"slice": [self.frozen(x, where) for x in f[1:]]}
        return self.value(getattr(f, "array", getattr(f, "obj", f)), where)


def _qinfo(dtype):
    """The scale information of a quantized dtype (megengine.core.tensor.dtype), else None."""
    return (dtype.metadata or {}).get("mgb_dtype")


def _read(v, arrays):
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "float":
        return float(x)
    if tag == "complex":
        return complex(float(x[0]), float(x[1]))
    if tag == "tuple":
        return tuple(_read(e, arrays) for e in x)
    if tag == "list":
        return [_read(e, arrays) for e in x]
    if tag == "dict":
        return {_read(k, arrays): _read(e, arrays) for k, e in x}
    if tag == "slice":
        return slice(*(_read(e, arrays) for e in x))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "dtype":
        return np.dtype(x)
    if tag == "qdtype":
        return np.dtype(x[0], metadata={"mgb_dtype": _read(x[1], arrays)})
    if tag == "scalar":
        return arrays[x][()]
    if tag == "array":
        return arrays[x]
    if tag == "type":
        return _import(x)
    if tag == "rng":
        from ..random.rng import RNG
        rng = RNG(device=x[1])
        if x[0] is not None:
            bit_gen = getattr(np.random, x[0][0])()
            bit_gen.state = x[0][1]
            rng._generator = np.random.Generator(bit_gen)
        return rng
    if tag == "tensor":
        a, device = arrays[x[0]], x[1]
        return Tensor(a, dtype=a.dtype, device=device if device.startswith("cpu") else None)
    raise ValueError(f"load: unknown value tag {tag!r} in the file")


def _read_frozen(v, arrays):
    """Op state that refers to traced arrays, back in `_program._freeze`'s form for `_thaw`."""
    if isinstance(v, dict):
        if "ref" in v:  # (two keys: the slot and whether the op holds its raw array)
            return _Ref(v["ref"], v["raw"])
        (tag, x), = v.items()
        if tag in ("tuple", "list"):
            return (tuple if tag == "tuple" else list, tuple(_read_frozen(e, arrays) for e in x))
        if tag == "dict":
            return (dict, tuple((_read(k, arrays), _read_frozen(e, arrays)) for k, e in x))
        if tag == "slice":
            return (slice,) + tuple(_read_frozen(e, arrays) for e in x)
    return _read(v, arrays)


def _class_path(cls):
    return f"{cls.__module__}:{cls.__qualname__}"


def _importable(obj):
    """True when ``module:qualname`` names ``obj`` itself, so a loader can import it."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return False
    try:
        return _import(f"{module}:{qualname}") is obj
    except ValueError:
        return False


def _import(path):
    module, _, qualname = path.partition(":")
    try:
        mod = obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        obj = _in_table(mod, qualname)
        if obj is None:
            raise ValueError(f"load: the file names {path!r}, which cannot be imported here "
                             f"({e}); was it dumped by another version of megengine?") from e
    except ImportError as e:
        raise ValueError(f"load: the file names {path!r}, which cannot be imported here ({e}); "
                         "was it dumped by another version of megengine?") from e
    return obj


def _in_table(module, qualname):
    """A class a factory made and a module-level dict keeps (``megengine.core.ops.BINARY``
    holds ``Greater``, made by ``type()``): found by its name among the dict's values."""
    for table in list(vars(module).values()):
        if type(table) is dict:
            for v in table.values():
                if isinstance(v, type) and v.__qualname__ == qualname \
                        and v.__module__ == module.__name__:
                    return v
    return None


# --------------------------------------------------------------------------------------------
# dump
# --------------------------------------------------------------------------------------------
def _names(given, default, what):
    if given is None:
        return list(default)
    if isinstance(given, str):
        given = [given]
    given = list(given)
    if len(given) != len(default):
        raise ValueError(f"wrong number of {what}, should be {len(default)} values")
    if len(set(given)) != len(given):
        raise ValueError(f"dump: {what} must be distinct, got {given}")
    return given


def _input_defaults(in_tree):
    """Default input names, in `_flatten` order: ``arg_<i>`` (``arg_<i>_<j>`` nested), and
    ``kwarg_<name>`` for keyword arguments, as upstream names them."""
    names = []

    def walk(node, prefix):
        if type(node) is _TensorLeaf:
            names.append(prefix)
        elif type(node) is tuple and len(node) == 2:
            for i, x in enumerate(node[1]):
                walk(x, f"{prefix}_{i}")
        elif type(node) is tuple and len(node) == 3:
            for k, x in zip(node[1], node[2]):
                walk(x, f"{prefix}_{k}")

    (_, (args, kwargs)) = in_tree
    for i, x in enumerate(args[1]):
        walk(x, f"arg_{i}")
    for k, x in zip(kwargs[1], kwargs[2]):
        walk(x, f"kwarg_{k}")
    return names


def _output_slots(out):
    """(default names, slots) of the traced outputs; a dict output is named by its sorted keys."""
    if type(out) is _Ref:
        return ["output_0"], [out.slot]
    if type(out) is dict or (type(out) is _Struct and out.keys is not None):
        items = out.items() if type(out) is dict else zip(out.keys, out.items)
        items = sorted(items, key=lambda kv: str(kv[0]))
        if not all(type(v) is _Ref for _, v in items):
            raise DumpError("dump: every value of a dict output must be a tensor")
        return [str(k) for k, _ in items], [v.slot for _, v in items]
    leaves = []

    def walk(v):  # nested tuples/lists (a namedtuple too), flattened in order
        if type(v) is _Ref:
            leaves.append(v.slot)
        elif type(v) in (tuple, list) or (type(v) is _Struct and v.keys is None):
            for x in (v.items if type(v) is _Struct else v):
                walk(x)
        else:
            raise DumpError("dump: the traced function must return a tensor, or a tuple, list "
                            f"or dict of tensors; it returned a {type(v).__name__} among them")

    walk(out)
    return [f"output_{i}" for i in range(len(leaves))], leaves


def _input_dependent(prog):
    """The slots whose value can change from one run of the file to the next: the inputs, live
    values (externals, gradients) and everything computed from them."""
    varying = {s for s, info in enumerate(prog.slots) if info.kind in ("arg", "ext", "grad")}
    for step in prog.steps:
        if any(s in varying for s in _slots_used(step)):
            t = type(step)
            varying.update(step.outs if t is _OpStep else (step.out,) if t is _AliasStep
                           else (s for _, s in step.out_paths))
    return varying


def dump_program(prog, file, *, arg_names=None, output_names=None, user_info=None,
                 enable_metadata=True, input_data=None, repeat=1, silent=False, no_assert=False,
                 maxerr=1e-4, resize_input=False, input_transform=None, _function=None,
                 **options):
    """Write ``prog`` (a recorded `_Program`) to ``file``; see the module docstring.

    ``input_data`` (upstream's test cases): see `make_testcases`; the program is run on each
    case as it is written to the file, and the outputs are stored next to the inputs."""
    unknown = set(options) - _NO_EFFECT
    if unknown:
        raise TypeError(f"dump() got unexpected keyword arguments {sorted(unknown)}")
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
    all_steps, n_slots, scopes = upstream_steps(prog)
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
        i, _ = prog.arg_reads[0] if prog.arg_reads else (None, None)
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
            entry = {"slot": s, "array": w.array(info.const), "device": info.device}
            name = param_names.get(id(info.tensor)) or getattr(info.tensor, "_name", None)
            if name:  # a named Parameter or tensor keeps its name, as upstream's dump
                entry["name"] = name
            consts.append(entry)
    steps = []
    n_elided = 0
    for step in all_steps:
        t = type(step)
        if t is _AliasStep:
            steps.append({"alias": step.src, "out": step.out})
            continue
        if t is _OpStep and is_identity_step(step):
            # an opt_level rewrite's result that is its input unchanged (log(exp(x)) -> x):
            # upstream's graph forwards the input's var, so the file holds no operator for it
            steps.append({"alias": step.ins[0], "out": step.outs[0]})
            n_elided += 1
            continue
        if t is not _OpStep:
            raise DumpError(f"dump: the program calls {step.name}() (a GradManager, optimizer or "
                            "in-place write, run on live Python objects), which a file cannot "
                            "hold. Dump an inference function")
        ins = step.ins
        if type(step.template).__name__ in COMMUTATIVE and len(ins) == 2 and ins[0] > ins[1]:
            ins = ins[::-1]  # upstream's order: the older value first (slots grow with age)
        opr_name, var_names = named[id(step)]
        steps.append(op_step_json(w, step.template, step.dyn, ins, step.outs, step.multi,
                                  step.name, f"op #{step.index} ({step.name})", opr_name,
                                  var_names))
    inputs = []
    for name, s, leaf in zip(in_names, prog.arg_slots, _leaves(prog.in_tree)):
        inputs.append({"name": name, "slot": s, "shape": list(leaf.shape),
                       "dtype": np.dtype(leaf.dtype).str, "device": leaf.device})
    graph = {"format": FORMAT, "version": VERSION, "n_slots": n_slots, "inputs": inputs,
             "outputs": [{"name": n, "slot": s} for n, s in zip(out_names, out_slots)],
             "consts": consts, "steps": steps,
             "metadata": (metadata_json(w, user_info, False, options) if enable_metadata
                          else None)}
    if input_data is not None:
        data = write_file(graph, w, None)  # the program as the file holds it computes the cases
        cases = make_testcases(load(io.BytesIO(data)), input_data, repeat=repeat,
                               resize_input=resize_input, input_transform=input_transform)
        graph["testcases"] = {"cases": [{"inputs": {k: w.array(v) for k, v in ins.items()},
                                         "outputs": {k: w.array(v) for k, v in outs.items()}}
                                        for ins, outs in cases],
                              "maxerr": float(maxerr), "no_assert": bool(no_assert),
                              "silent": bool(silent)}
    elif (repeat, silent, no_assert, resize_input, input_transform) != (1, False, False, False,
                                                                         None):
        raise TypeError("dump: repeat, silent, no_assert, resize_input and input_transform "
                        "describe the test cases of input_data=..., which was not given")
    data = write_file(graph, w, file)
    n_oprs = len(inputs) + len(consts) + len(op_steps) - n_elided  # upstream counts its input and
    # constant operators too
    digest = hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).digest()
    return DumpInfo(n_oprs, len(data), sum(w.arrays[c["array"]].nbytes for c in consts),
                    int.from_bytes(digest[:8], "little"), in_names, out_names,
                    [c["name"] for c in consts if "name" in c])


def _param_names(function, in_tree):
    """{id(tensor): name} for the parameters and buffers of the Modules the traced function
    refers to (the function itself, its bound instance, its closure, its module-level names,
    and Modules passed as arguments), named by their path as upstream's auto-naming names
    them: ``conv1.bias``, prefixed by a top module's own name when it has one, and ending in a
    tensor's own name when it was given one (``simple.linear.user-weight``)."""
    from ..module import Module
    roots = []

    def add(obj):
        if isinstance(obj, Module) and all(obj is not r for r in roots):
            roots.append(obj)

    def walk_tree(node):
        if type(node) is tuple:
            for x in node:
                walk_tree(x)
        elif hasattr(node, "value") and not isinstance(node, type):
            add(getattr(node, "value", None))

    add(function)
    add(getattr(function, "__self__", None))
    walk_tree(in_tree)
    for cell in getattr(function, "__closure__", None) or ():
        try:
            add(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    for v in list(getattr(function, "__globals__", {}).values()):
        add(v)
    names = {}
    for root in roots:
        top = root.name if isinstance(getattr(root, "name", None), str) else None
        for path, module in root.named_modules():
            prefix = ".".join(p for p in (top, path) if p)
            for attr, t in module.named_tensors(recursive=False):
                own = getattr(t, "_name", None)
                names.setdefault(id(t), ".".join(p for p in (prefix, own or attr) if p))
    return names


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
    # (an op read back from a file has no attribute for its dyn state: only the frozen form)
    state.update((k, w.frozen(f, f"{where}, attribute {k!r}")) for k, f in dyn.items())
    step = {"op": _class_path(cls), "state": state, "dyn": sorted(dyn), "ins": list(ins),
            "outs": list(outs), "multi": multi, "name": name}
    if opr_name is not None:
        step["opr_name"] = opr_name
    if var_names is not None:
        step["var_names"] = list(var_names)
    return step


def metadata_json(w, user_info, graph_modified, options):
    """The metadata upstream's loaders show: the user's object, whether the graph was edited
    after tracing (`megengine.utils.network`), and the optimizer options asked for (recorded
    only: this engine has no graph optimizer, see ``_NO_EFFECT``)."""
    optimized = bool(options.get("optimize_for_inference", True))
    meta = {"user_info": w.value(user_info, "user_info"), "graph_modified": graph_modified,
            "optimized_for_inference": optimized}
    if optimized:
        meta["optimize_options"] = w.value({k: True for k in _OPTIMIZE_OPTIONS
                                            if options.get(k)}, "optimize options")
    return meta


def write_file(graph, w, file):
    """Write graph.json and ``w``'s arrays as the zip archive; ``file`` None: only return the
    bytes."""
    if w.qdtypes:
        graph["quantized_arrays"] = w.qdtypes
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


def _leaves(in_tree):
    out = []

    def walk(node):
        if type(node) is _TensorLeaf:
            out.append(node)
        elif type(node) is tuple and len(node) == 2 and isinstance(node[0], type):
            for x in node[1]:
                walk(x)
        elif type(node) is tuple and len(node) == 3:
            for x in node[2]:
                walk(x)

    walk(in_tree)
    return out


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
            if v.shape != shape and strict_shape:
                raise ValueError(f"run: input {name!r} has shape {v.shape}, but the program was "
                                 f"traced with shape {shape}; trace and dump the new shape")
            leaves.append(Tensor(v.astype(dtype, copy=False), dtype=dtype,
                                 device=self.device or info["device"]))
        values = replay(self.prog, leaves)
        return dict(zip(self.outputs, values))


def _on_device(a, device):
    """Host array ``a`` where device ``device`` (a canonical name) keeps its arrays."""
    return move_array(a, device) if device.startswith("gpu") else a


def read_file(file):
    """(graph.json as a dict, {array index: host array}) of a file `dump_program` wrote."""
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "rb") as f:
            data = f.read()
    else:
        data = file.read()
    if data[:8] == _MAGIC:
        data = data[16:16 + int.from_bytes(data[8:16], "little")]
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        graph = json.loads(z.read("graph.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ValueError("load: not a program written by megengine.jit.trace.dump of this fork "
                         f"({e}); upstream MegEngine's .mge graphs cannot be read here: dump the "
                         "model again with this fork's trace.dump") from e
    if graph.get("format") != FORMAT or graph.get("version") != VERSION:
        raise ValueError(f"load: unsupported file format {graph.get('format')!r} version "
                         f"{graph.get('version')!r} (expected {FORMAT!r} version {VERSION})")
    arrays = {}
    for name in z.namelist():
        if name.startswith("arrays/"):
            with z.open(name) as f:
                arrays[int(name[7:-4])] = np.load(io.BytesIO(f.read()), allow_pickle=False)
    for i, info in graph.get("quantized_arrays", ()):
        arrays[i] = arrays[i].view(np.dtype(arrays[i].dtype, metadata={"mgb_dtype": _read(info,
                                                                                          arrays)}))
    return graph, arrays


def read_op(s, arrays, k):
    """(op template, dyn) of step ``s`` (its dict in graph.json), the ``k``-th step."""
    cls = _import(s["op"])
    if not (isinstance(cls, type) and issubclass(cls, Op)):
        raise ValueError(f"load: step {k} names {s['op']!r}, which is not a megengine op")
    op = cls.__new__(cls)
    dyn = tuple((name, _read_frozen(s["state"][name], arrays)) for name in s["dyn"]) or None
    op.__dict__.update({name: _read(v, arrays) for name, v in s["state"].items()
                        if name not in s["dyn"]})
    start = op.__dict__.pop("start", None)
    if start is not None and type(op).__name__ == "_Draw":
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
    """Read a file `dump_program` wrote; ``device`` overrides the devices it was traced on."""
    graph, arrays = read_file(file)
    prog = _Program()
    for _ in range(graph["n_slots"]):
        prog.new_slot("op")
    for c in graph["consts"]:
        info = prog.slots[c["slot"]]
        # the file holds host arrays: a constant of a program run on a GPU must be a CuPy array
        # there (a replay hands it to the ops as it is, next to CuPy inputs)
        where = canonical_device(device or c["device"])
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
        step = _OpStep(len(prog.steps), op, None, dyn, tuple(s["ins"]), None, tuple(s["outs"]),
                       s["multi"], s["name"])
        prog.steps.append(step)
    prog.out = [_Ref(o["slot"]) for o in graph["outputs"]]
    prog.compile()
    tc = graph.get("testcases") or {}
    cases = [({k: arrays[i] for k, i in c["inputs"].items()},
              {k: arrays[i] for k, i in c["outputs"].items()}) for c in tc.get("cases", ())]
    options = {k: tc[k] for k in ("maxerr", "no_assert", "silent") if k in tc}
    return LoadedProgram(graph, prog, device, read_metadata(graph, arrays), cases, options)


# --------------------------------------------------------------------------------------------
# test cases (upstream's ``input_data``)
# --------------------------------------------------------------------------------------------
_RAND = re.compile(r"^#rand\(([^)]*)\)$")


def make_testcases(program, input_data, repeat=1, resize_input=False, input_transform=None):
    """[(inputs, outputs)] for ``input_data``, as upstream's ``trace.dump`` reads it: a list
    (or one item) of test cases, each a string ``"var0:spec0;var1:spec1"`` (the name may be
    left out for a one-input program), ``"@file"`` (one such string per line of ``file``), a
    numpy array (one-input programs), a list of arrays (one per input, in order) or a dict
    {input name: array}. A spec is ``#rand(min, max[, shape...])`` (uniform in [min, max); a
    shape ending in ``...`` keeps the rest of the traced shape; no shape: the traced shape), a
    ``.npy`` file, a pickled array, or an image file (read as (1, C, H, W), as upstream).
    ``repeat`` repeats file and array data along axis 0; ``input_transform``: a Python
    expression of ``data`` (and ``np``), applied to each input."""
    if resize_input:
        raise DumpError("dump(resize_input=True): resizing images to the input shape is not "
                        "supported here; resize them before giving them as input_data")
    if isinstance(input_data, (str, np.ndarray, dict)):
        input_data = [input_data]
    items = []
    for item in input_data:
        if isinstance(item, str) and item.startswith("@"):
            with open(item[1:]) as f:
                items.extend(line.strip() for line in f if line.strip())
        else:
            items.append(item)
    shapes = {n: (shape, dtype) for n, shape, dtype in program.inputs}
    names = [n for n, _, _ in program.inputs]
    cases = []
    for k, item in enumerate(items):
        feeds = _case_feeds(item, names, shapes, repeat, k)
        for n in feeds:
            if input_transform is not None:
                feeds[n] = np.asarray(eval(input_transform, {"np": np}, {"data": feeds[n]}))
            feeds[n] = np.asarray(feeds[n]).astype(shapes[n][1])
        try:
            outs = program.run(feeds, strict_shape=False)
        except Exception as e:
            raise DumpError(f"dump(input_data=...): test case {k} "
                            f"({ {n: v.shape for n, v in feeds.items()} }) cannot run through "
                            f"the traced ops: {e}") from e
        cases.append((feeds, {n: _host(v._data) for n, v in outs.items()}))
    return cases


def _case_feeds(item, names, shapes, repeat, k):
    if isinstance(item, dict):
        feeds = {n: _repeat(np.asarray(_host(getattr(v, "_data", v))), repeat)
                 for n, v in item.items()}
    elif isinstance(item, np.ndarray) or (isinstance(item, (list, tuple)) and all(
            isinstance(v, np.ndarray) or hasattr(v, "_data") for v in item)):
        values = [item] if isinstance(item, np.ndarray) else list(item)
        if len(values) != len(names):
            raise DumpError(f"dump(input_data=...): test case {k} gives {len(values)} arrays "
                            f"for the inputs {names}")
        feeds = {n: _repeat(np.asarray(_host(getattr(v, "_data", v))), repeat)
                 for n, v in zip(names, values)}
    elif isinstance(item, str):
        feeds = {}
        for part in item.split(";"):
            name, sep, spec = part.rpartition(":") if not part.startswith("#") else ("", "", part)
            if not sep and len(names) != 1:
                raise DumpError(f"dump(input_data=...): {part!r} names no input; the program "
                                f"has inputs {names}, give 'name:data' for each")
            name = name.strip() or names[0]
            if name not in shapes:
                raise DumpError(f"dump(input_data=...): no input named {name!r}; the program's "
                                f"inputs are {names}")
            feeds[name] = _spec_data(spec.strip(), shapes[name][0], repeat)
    else:
        raise DumpError(f"dump(input_data=...): test case {k} is a {type(item).__name__}; give "
                        "a string, an array, a list of arrays or a dict of arrays")
    missing = [n for n in names if n not in feeds]
    unknown = [n for n in feeds if n not in shapes]
    if missing or unknown:
        raise DumpError(f"dump(input_data=...): test case {k} lacks the inputs {missing} or "
                        f"names unknown ones {unknown}; the program's inputs are {names}")
    return feeds


def _spec_data(spec, shape, repeat):
    m = _RAND.match(spec.replace(" ", ""))
    if m:
        args = [a for a in m.group(1).split(",") if a]
        if len(args) < 2:
            raise DumpError(f"dump(input_data=...): {spec!r} needs at least min and max")
        lo, hi = float(args[0]), float(args[1])
        dims = args[2:]
        if dims and dims[-1] == "...":
            dims = [int(d) for d in dims[:-1]]
            shape = tuple(dims) + tuple(shape[len(dims):])
        elif dims:
            shape = tuple(int(d) for d in dims)
        return np.random.uniform(lo, hi, size=shape)  # random data is not repeated (upstream)
    if spec.endswith(".npy"):
        data = np.load(spec, allow_pickle=False)
    else:
        try:
            from ..data.dataset.vision.folder import imread
            data = imread(spec).transpose(2, 0, 1)[None]  # (1, C, H, W), as upstream
        except Exception:  # not an image: upstream also reads a pickled array
            import pickle
            with open(spec, "rb") as f:
                data = pickle.load(f)
    return _repeat(np.asarray(data), repeat)


def _repeat(a, repeat):
    return np.repeat(a, repeat, axis=0) if repeat > 1 else a
