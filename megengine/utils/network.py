"""Editing a dumped program: `Network.load` reads a file `trace.dump` wrote into `VarNode` and
`OpNode` objects (`megengine.utils.network_node`), which can be searched (`opr_filter`,
`var_filter`, ...), rewired (`replace_vars`, `replace_oprs`), extended with functional ops
applied to VarNodes (``F.relu(var)``), given new inputs, constants and outputs, and written
back with `Network.dump`, in upstream MegEngine's API. The file format is this fork's own (see
`megengine.jit.dump`); upstream's ``.mge`` graphs cannot be read.
"""
import collections
import collections.abc
import fnmatch
import hashlib
import heapq
import itertools
import json
import re
import weakref
from typing import Dict

from ..core import ops as _ops
from ..core._trace_option import is_int
from ..core._trace_option import set_symbolic_shape as _set_symbolic_shape
from ..core.ops import ArgumentError, ArgumentKindError, ArgumentTypeError
from ..jit._program import _DimExpr, _Ref
from ..jit.dump import (_NO_EFFECT, DumpError, DumpInfo, LoadError, _Writer, metadata_json,
                        op_step_json, placed, read_file, read_metadata, read_op, read_shapes,
                        shapes_json, write_file, writes_upstream, FORMAT, VERSION)
from ..jit.dump_devices import device_mapper, recorded_name
from ..logger import get_logger
from .network_node import (Host2DeviceCopy, ImmutableTensor, NetworkNode, OpNode, VarNode,
                           at_first_use, make_opnode, renumber)

__all__ = ["Network", "NodeFilter", "as_varnode", "as_oprnode", "set_symbolic_shape"]

logger = get_logger(__name__)


def _dump_info(graph, w, data):
    """Upstream's dump result of a file whose graph.json is ``graph`` and bytes ``data``."""
    inputs, consts, steps = graph["inputs"], graph["consts"], graph["steps"]
    digest = hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).digest()
    return DumpInfo(len(inputs) + len(consts) + len(steps), len(data),
                    sum(w.arrays[c["array"]].nbytes for c in consts),
                    int.from_bytes(digest[:8], "little"), [i["name"] for i in inputs],
                    [o["name"] for o in graph["outputs"]],
                    [c["name"] for c in consts if "name" in c])


class Network:
    """A program as a graph of `OpNode`s and `VarNode`s, loaded from a dumped file (`load`) or
    built from nodes; `dump` writes it for `megengine.utils.comp_graph_tools.GraphInference`.

    ``output_vars`` lists the outputs; ``input_vars``, ``all_oprs`` and ``all_vars`` are computed
    from them (what the outputs depend on), in the order the operators were made (the order
    they were traced, then the order of edits), as upstream's priority order.
    """

    def __init__(self):
        self.output_vars = []
        self._metadata = None
        self._symbolic_shape = False  # made by ops at fixed shapes, unless loaded from a file
        self._shape_guards = []  # that says otherwise (with these guards, on VarNodes)
        self._fixed_file = False  # loaded from a file that records fixed shapes
        self._fixed_shapes = []  # (VarNode, shape): a fixed file's data-decided shapes it read
        self.all_oprs_map = collections.OrderedDict()
        self.all_vars_map = collections.OrderedDict()
        self._graph = None

    @property
    def graph(self):
        """The `megengine.core.tensor.megbrain_graph.Graph` of the nodes `make_const` and
        `make_input_node` make, as upstream's ``Network.graph``: a program may compile and run
        them (``graph.compile(G.OutputNode(var).outputs).execute()``). Made on first use (that
        module sits above this one)."""
        if self._graph is None:
            from ..core.tensor_megbrain_graph import Graph

            self._graph = Graph()
        return self._graph

    @property
    def metadata(self):
        """Upstream's metadata dict (``user_info``, ``graph_modified``,
        ``optimized_for_inference`` and the optimizer options asked for), or None when the
        file was dumped with ``enable_metadata=False``."""
        return self._metadata

    # ----- loading -----
    @classmethod
    def load(cls, model_path, outspec=None):
        """Load a program dumped by ``trace.dump`` (or `Network.dump`) from a path or a binary
        file object. ``outspec``: names of vars to take as the outputs instead of the file's."""
        return cls._of_program(*read_file(model_path), outspec)

    @classmethod
    def _of_program(cls, graph, arrays, outspec=None):
        """The network of a program as `read_file` gives it (graph.json as a dict, {array
        index: host array}), or as `megengine.jit.dump.in_memory` hands one over unwritten."""
        self = cls()
        place = device_mapper(None, graph["version"])  # xpux: a GPU if there is one, else cpu0
        slot_var = {}
        unnamed_consts = []  # constants the file gives no name: named here, see below
        for i in graph["inputs"]:
            node = Host2DeviceCopy(i["shape"], i["dtype"], i["name"], place(i["device"]))
            slot_var[i["slot"]] = node.outputs[0]
        consts = {c["slot"]: c for c in graph["consts"]}

        def var_of(s):
            v = slot_var.get(s)
            if v is None and s in consts:  # a constant appears where it is first used
                c = consts[s]
                v = ImmutableTensor(arrays[c["array"]], c.get("name"),
                                    place(c["device"])).outputs[0]
                if v.name is None:
                    v.name = v.owner.name = f"const{tuple(v.owner.shape)}"
                    unnamed_consts.append(v)
                slot_var[s] = v
            if v is None:
                raise LoadError(f"load: the file's step reads slot {s} before any step makes "
                                "it; the file is damaged")
            return v

        for k, s in enumerate(graph["steps"]):
            if "alias" in s:  # a detach(): the same value for inference
                slot_var[s["out"]] = var_of(s["alias"])
                continue
            op, dyn = read_op(s, arrays, k)
            if placed(op):  # (an op that makes a value on a device it names)
                op.device = place(op.device)
            inputs = [var_of(x) for x in s["ins"]]
            dyn_vars = []
            if dyn is not None:
                dyn = tuple((name, _map_refs(f, lambda r: _dyn_ref(var_of(r.slot), r, dyn_vars)))
                            for name, f in dyn)
            device = (inputs[0]._device if inputs else getattr(op, "device", None)) or "cpu0"
            device = getattr(op, "out_device", None) or device
            node = make_opnode(op, dyn, inputs, dyn_vars, len(s["outs"]), device,
                               s.get("opr_name"), s.get("var_names"))
            node._multi = s["multi"]
            for slot, v in zip(s["outs"], node.outputs):
                slot_var[slot] = v
        outputs = []
        for o in graph["outputs"]:
            v = var_of(o["slot"])
            if (v.owner._provides_input and v.name != o["name"]) or any(v is u for u in outputs):
                # an input or an output given twice: a var has one name, so the output is a
                # copy of it (upstream's Copy operator) carrying the output's name
                v = make_opnode(_ops.Copy(v._device), None, [v], [], 1, v._device).outputs[0]
            v.name = o["name"]
            outputs.append(v)
        if outspec is not None:
            by_name = {}
            for v in get_dep_vars(outputs):
                by_name.setdefault(v.name, v)
            missing = [n for n in outspec if n not in by_name]
            if missing:
                raise ValueError(f"Network.load: can not find {missing} in this model")
            outputs = [by_name[n] for n in outspec]
        # a var's name tells it apart, as upstream's graph names do (tools such as converters
        # name their tensors by it): constants of one shape take "[k]" as operators' outputs do
        for name, group in itertools.groupby(sorted(unnamed_consts, key=lambda v: v.name),
                                             key=lambda v: v.name):
            group = list(group)
            if len(group) > 1:
                for k, v in enumerate(group):
                    v.name = v.owner.name = f"{name}[{k}]"
        self.output_vars = outputs
        self._metadata = read_metadata(graph, arrays)
        # symbolic shapes (see megengine.jit.shape_guards): the guards read VarNodes' shapes
        self._symbolic_shape, guards = read_shapes(graph)
        self._fixed_file = not self._symbolic_shape  # (reset_batch_size warns about it)
        self._shape_guards = [(_map_dim_leaves(tree, slot_var.get), value, kind, where)
                              for tree, value, kind, where in guards]
        self._fixed_shapes = [(slot_var[s], shape) for s, shape in graph.get("fixed_shapes", ())
                              if s in slot_var]
        renumber(at_first_use(self.all_oprs))
        self._compile()
        return self

    def _compile(self):
        """Refresh the id maps (upstream keeps them; they are views here), and tell the vars
        which network their ``users`` are read from."""
        self.all_oprs_map = collections.OrderedDict((o.id, o) for o in self.all_oprs)
        self.all_vars_map = collections.OrderedDict((v.id, v) for v in self.all_vars)
        mine = weakref.ref(self)
        for v in self.all_vars_map.values():
            v._network = mine

    # ----- writing -----
    def dump(self, file, *, keep_var_name=1, keep_opr_name=False, keep_param_name=False,
             keep_opr_priority=False, strip_info_file=None, append_json=False,
             optimize_for_inference=True, append=False, user_info=None, enable_metadata=True,
             **kwargs):
        """Write the program to ``file`` (a path or a binary file object) in `megengine.jit.dump`'s
        format. Names of all inputs, constants, operators and vars are kept (upstream's
        ``keep_*`` options only choose which names its binary format keeps). With
        ``optimize_for_inference`` the float16 options (``enable_io16xc32``, ``enable_ioc16``)
        rewrite the written graph (`megengine.utils.network_optimize`; the network itself is
        left unchanged); the other optimizer options are recorded in the metadata. Returns
        upstream's dump result (`megengine.jit.dump.DumpInfo`)."""
        for k in ("arg_names", "output_names"):
            if kwargs.pop(k, None):
                logger.warning(f'"{k}" is not supported in Network.dump, rename the vars '
                               "directly")
        unknown = set(kwargs) - _NO_EFFECT
        if unknown:
            raise TypeError(f"Network.dump() got unexpected keyword arguments {sorted(unknown)}; "
                            f"its options are {sorted(_NO_EFFECT)}")
        if append:
            raise ValueError("Network.dump(append=True): a file holds one program in this "
                             "fork's format; dump each program to its own file")
        if not self.output_vars:
            raise ValueError("Network.dump: the network has no outputs; add_output() first")
        upstream = writes_upstream(kwargs, "Network.dump")
        options = dict(kwargs, optimize_for_inference=optimize_for_inference)
        graph, w = self._graph_json(options, user_info, enable_metadata, True)
        data = write_file(graph, w, file, upstream)
        return _dump_info(graph, w, data)

    def _graph_json(self, options, user_info, enable_metadata, graph_modified):
        """(graph.json as a dict, its `_Writer`) of the program, after the float16 passes
        ``options`` ask for (see `dump`)."""
        out_vars, var_map = list(self.output_vars), {}
        if options.get("optimize_for_inference", True):
            from .network_optimize import check_options, optimize_vars

            opt = {k: v for k, v in options.items() if k.startswith("enable_")}
            out_vars, var_map = optimize_vars(out_vars, check_options(opt, "dump"))
        w = _Writer()
        slot_of = {}
        inputs, consts, steps = [], [], []

        def new_slot(v):
            slot_of[id(v)] = len(slot_of)
            return slot_of[id(v)]

        # (with the vars that guards and fixed-shape checks read: a Python decision made from
        # a var the outputs do not read still shaped the ops they do read)
        def mapped(v):  # (a var the passes rebuilt has the same shape)
            return var_map.get(id(v), v)

        shape_guards = [(_map_dim_leaves(tree, mapped), value, kind, where)
                        for tree, value, kind, where in self._shape_guards]
        fixed_shapes = [(mapped(v), shape) for v, shape in self._fixed_shapes]
        checked = [v for v, _ in fixed_shapes]
        for tree, _, _, _ in shape_guards:
            _map_dim_leaves(tree, lambda v: checked.append(v) or v)
        for opr in get_oprs_seq(out_vars + checked, False, False):
            if isinstance(opr, Host2DeviceCopy):
                v = opr.outputs[0]
                name = opr.name or v.name
                if not name:
                    raise DumpError("Network.dump: an input has no name; name it "
                                    "(make_input_node(..., name=...))")
                if any(i["name"] == name for i in inputs):
                    raise DumpError(f"Network.dump: two inputs are named {name!r}; rename one "
                                    "(its Host2DeviceCopy's name) before dumping")
                inputs.append({"name": name, "slot": new_slot(v), "shape": list(opr.shape),
                               "dtype": opr.dtype.str, "device": recorded_name(opr.device)})
            elif isinstance(opr, ImmutableTensor):
                entry = {"slot": new_slot(opr.outputs[0]), "array": w.array(opr._value),
                         "device": recorded_name(opr.device)}
                if opr.name or opr.outputs[0].name:
                    entry["name"] = opr.name or opr.outputs[0].name
                consts.append(entry)
            elif opr._op is None:
                raise DumpError(f"Network.dump: operator {opr.name!r} ({opr.type}) moves values "
                                "in or out of a running megbrain_graph.Graph and cannot be "
                                "written to a file; dump the vars it reads instead")
            else:
                ins = [slot_of[id(v)] for v in opr.inputs]
                dyn = None
                if opr._dyn is not None:
                    dyn = tuple((a, _map_refs(f, lambda r: _Ref(slot_of[id(opr._dyn_vars[r.slot])],
                                                                r.raw)))
                                for a, f in opr._dyn)
                outs = [new_slot(v) for v in opr.outputs]
                multi = getattr(opr, "_multi", len(outs) != 1)
                steps.append(op_step_json(w, opr._op, dyn, ins, outs, multi,
                                          type(opr._op).__name__, f"operator {opr.name!r}",
                                          opr.name, [v.name for v in opr.outputs]))
        outputs = []
        for i, v in enumerate(out_vars):
            name = v.name or f"output_{i}"
            if any(o["name"] == name for o in outputs):
                raise DumpError(f"Network.dump: two outputs are named {name!r}; rename one "
                                "(var.name = ...) before dumping")
            outputs.append({"name": name, "slot": slot_of[id(v)]})
        graph = {"format": FORMAT, "version": VERSION, "n_slots": len(slot_of),
                 "inputs": inputs, "outputs": outputs, "consts": consts, "steps": steps,
                 "metadata": (metadata_json(w, user_info, graph_modified, options)
                              if enable_metadata else None)}
        guards = []
        for tree, value, kind, where in shape_guards:
            mapped = _map_dim_leaves(tree, lambda v: slot_of.get(id(v)))
            if mapped is None:  # it reads a var the outputs no longer depend on
                logger.warning("Network.dump: a shape guard (%s) reads a var that the outputs no "
                               "longer need; it is left out", where)
                continue
            guards.append((mapped, value, kind, where))
        graph.update(shapes_json(self._symbolic_shape, guards))
        if fixed_shapes:
            graph["fixed_shapes"] = [[slot_of[id(v)], list(shape)]
                                     for v, shape in fixed_shapes if id(v) in slot_of]
        return graph, w

    def optimize_for_inference(self, dest_vars, **kwargs):
        """Upstream's inference optimizer on vars of this network: new vars computing
        ``dest_vars`` (a var or a list) after the passes the options ask for (the float16 ones
        of `megengine.utils.network_optimize`; layouts and fusions leave the vars as they are).
        The network is left unchanged; ``add_output`` or ``replace_vars`` use the new vars."""
        from ..core.tensor_megbrain_graph import optimize_for_inference

        if isinstance(dest_vars, VarNode):
            dest_vars = [dest_vars]
        out, _ = optimize_for_inference(list(dest_vars), **kwargs)
        return out

    # ----- making nodes -----
    def make_const(self, data, name=None, device=None):
        """A constant (an `ImmutableTensor` operator) for the network; returns its VarNode."""
        node = ImmutableTensor(data, name, device)
        node._graph = self.graph
        return node.outputs[0]

    def make_input_node(self, shape, dtype, name=None, device=None):
        """A new program input (a `Host2DeviceCopy` operator); returns its VarNode."""
        node = Host2DeviceCopy(shape, dtype, name, device)
        node._graph = self.graph
        return node.outputs[0]

    def add_output(self, *vars):
        """Add ``vars`` to the outputs (each once)."""
        for var in vars:
            _check_var(var, "add_output")
            if not any(var is o for o in self.output_vars):  # `is`: == is elementwise
                self.output_vars.append(var)
        self._compile()

    def remove_output(self, *vars):
        """Remove ``vars`` from the outputs; one that is not an output is named in a logged
        warning, as upstream's."""
        for var in vars:
            kept = [o for o in self.output_vars if o is not var]
            if len(kept) == len(self.output_vars):
                logger.warning("Failed to remove %s(%d). Please check whether this node is in "
                               "the output list.", getattr(var, "name", var), id(var))
            self.output_vars = kept
        self._compile()

    def add_dep_oprs(self, *vars):
        """Upstream adds the operators ``vars`` depend on to its maps; VarNodes made by ops here
        are connected already, so this only returns ``vars`` (the outputs when none given)."""
        vars = vars or tuple(self.output_vars)
        for v in vars:
            _check_var(v, "add_dep_oprs")
        return list(vars)

    # ----- editing -----
    def modify_opr_names(self, modifier):
        """Rename every operator: ``modifier`` is a prefix (``"net"`` makes ``"net.<name>"``) or
        a function from the old name to the new one."""
        if isinstance(modifier, str):
            prefix = modifier
            modifier = lambda name: f"{prefix}.{name}"  # noqa: E731
        if not callable(modifier):  # (upstream asserts)
            raise ArgumentKindError("modify_opr_names: give a string prefix or a function of the "
                                    "name")
        for opr in self.all_oprs:
            new = modifier(opr.name)
            if not isinstance(new, str):
                raise TypeError(f"modify_opr_names: the modifier returned {new!r} for "
                                f"{opr.name!r}, not a string")
            opr.name = new

    def reset_batch_size(self, batchsize, *, blacklist=()):
        """Set the first dimension of every input not in ``blacklist`` to ``batchsize`` (the
        inputs must agree on their batch size).

        Sizes a program computed from traced shapes follow (see `megengine.jit.shape_guards`);
        a file that records fixed shapes (traced with ``symbolic_shape=False``, or written
        before format version 3) keeps its traced sizes in its operators' parameters, so a
        warning says to trace and dump the model at the new batch instead."""
        if not is_int(batchsize) or batchsize < 1:  # (upstream: pybind's RuntimeError)
            raise ArgumentTypeError(f"reset_batch_size: batchsize must be a positive int, got "
                                    f"{type(batchsize).__name__} {batchsize!r}")
        if self._fixed_file:
            logger.warning("reset_batch_size: this program was dumped with fixed shapes (traced "
                           "with symbolic_shape=False, or by a version before dump format 3): "
                           "sizes its code took from shapes (a reshape to (batch, -1)) keep the "
                           "traced batch and may fail or compute wrongly at %s; trace and dump "
                           "the model at that batch instead", batchsize)
        blacklist = set(blacklist)
        prev = None
        for dp in self.data_providers_filter:
            if dp.name in blacklist:
                blacklist.remove(dp.name)
                continue
            shape = list(dp.shape)
            if not shape:
                raise ValueError(f"reset_batch_size: input {dp.name!r} is a scalar; blacklist it")
            if prev is None:
                prev = shape[0]
            elif prev != shape[0]:
                raise ValueError(f"reset_batch_size: batch sizes differ: {prev} and {shape} "
                                 f"of {dp.name!r}; blacklist the inputs without a batch axis")
            shape[0] = batchsize
            dp.shape = tuple(shape)
        if prev is None:
            raise ValueError("reset_batch_size: no input found")
        if blacklist:
            raise ValueError(f"reset_batch_size: unused items in blacklist: {sorted(blacklist)}")
        self._compile()

    def replace_vars(self, repl_dict: Dict[VarNode, VarNode]):
        """Make every operator of the network that reads an ``old`` var of ``repl_dict`` read its
        ``new`` var instead (outputs too). Operators that ``new`` is itself computed from keep
        reading ``old``, so ``{x: F.relu(x)}`` inserts a relu after ``x``."""
        for old, new in repl_dict.items():
            _check_var(old, "replace_vars")
            _check_var(new, "replace_vars")
        keep = {id(o) for o in get_oprs_seq(list(repl_dict.values()), False, False)}
        lookup = {id(k): v for k, v in repl_dict.items()}
        for opr in self.all_oprs:
            if id(opr) in keep:
                continue
            opr.inputs = [lookup.get(id(v), v) for v in opr.inputs]
            opr._dyn_vars = [lookup.get(id(v), v) for v in opr._dyn_vars]
        self.output_vars = [_renamed(lookup.get(id(v), v), v) for v in self.output_vars]
        # the shape guards and fixed-shape checks read the vars the operators now read (a new
        # input node takes over the checks of the one it replaces)
        def now(v):
            return lookup.get(id(v), v)

        self._shape_guards = [(_map_dim_leaves(tree, now), value, kind, where)
                              for tree, value, kind, where in self._shape_guards]
        self._fixed_shapes = [(now(v), shape) for v, shape in self._fixed_shapes]
        self._compile()

    def replace_oprs(self, repl_dict: Dict[OpNode, OpNode]):
        """Replace operators: the output VarNodes of each ``old`` operator are computed by
        ``new`` from then on (``new`` must have as many outputs); the VarNodes stay the same
        objects, so their readers need no change."""
        for old, new in repl_dict.items():
            _check_opr(old, "replace_oprs")
            _check_opr(new, "replace_oprs")
            if len(old.outputs) != len(new.outputs):  # (upstream asserts)
                raise ArgumentError(f"replace_oprs: can not replace {old!r} ({len(old.outputs)} "
                                    f"outputs) with {new!r} ({len(new.outputs)} outputs)")
        for old, new in repl_dict.items():
            for i, var in enumerate(old.outputs):
                made = new.outputs[i]
                for opr in get_oprs_seq(self.output_vars, False, False):
                    opr.inputs = [var if v is made else v for v in opr.inputs]
                var.owner = new
                var._sample = made._sample
                new.outputs[i] = var
        self._compile()

    # ----- queries -----
    def get_opr_by_type(self, oprcls, unique=True):
        if not (isinstance(oprcls, type) and issubclass(oprcls, OpNode)):
            raise TypeError(f"get_opr_by_type: {oprcls!r} is not an OpNode class")
        return _unique(self.opr_filter.type(oprcls).as_list(), unique, f"of type {oprcls}")

    def get_opr_by_name(self, name, unique=True):
        return _unique(self.opr_filter.name(name).as_list(), unique, f"named {name!r}")

    def get_var_by_name(self, name, unique=True):
        return _unique(self.var_filter.name(name).as_list(), unique, f"named {name!r}", "vars")

    def get_var_receive_oprs(self, var):
        """The operators that read ``var``."""
        return self.opr_filter.has_input(var).as_list()

    def get_dep_oprs(self, var):
        """The operators ``var`` is computed from (its owner last)."""
        return get_oprs_seq(var, False, False)

    @property
    def opr_filter(self):
        return NodeFilter(self.all_oprs)

    @property
    def var_filter(self):
        return NodeFilter(self.all_vars)

    @property
    def params_filter(self):
        """The constants (`ImmutableTensor` operators)."""
        return self.opr_filter.param_provider()

    @property
    def data_providers_filter(self):
        """The inputs (`Host2DeviceCopy` operators)."""
        return self.opr_filter.data_provider()

    @property
    def input_vars(self):
        return [o.outputs[0] for o in self.all_oprs if isinstance(o, Host2DeviceCopy)]

    @property
    def dest_vars(self):
        return self.output_vars

    @property
    def all_oprs(self):
        return get_oprs_seq(self.output_vars, False, False)

    @property
    def all_vars(self):
        return get_dep_vars(self.output_vars)

    @property
    def all_vars_dict(self):
        return self.var_filter.as_dict()

    @property
    def all_oprs_dict(self):
        return self.opr_filter.as_dict()


def _check_var(v, where):
    if not isinstance(v, VarNode):  # (upstream asserts, or fails reading v.owner)
        raise ArgumentKindError(f"{where}: expected a VarNode of a network, got "
                                f"{type(v).__name__} (ops applied to VarNodes give VarNodes; "
                                "make constants with Network.make_const)")


def _check_opr(o, where):
    if not isinstance(o, OpNode):  # (upstream ignores a key that is no operator of the network)
        raise ArgumentKindError(f"{where}: expected an OpNode of a network, got "
                                f"{type(o).__name__} (an operator: var.owner, "
                                "Network.get_opr_by_name)")


def _renamed(new, old):
    """An output replaced keeps its output name (the program's outputs are found by name)."""
    if new is not old and old.name:
        new.name = old.name
    return new


def _unique(found, unique, what, kind="operators"):
    if not unique:
        return found
    if len(found) != 1:  # (upstream asserts)
        raise ArgumentError(f"{len(found)} {kind} {what} found, expected one")
    return found[0]


def _map_dim_leaves(tree, fn):
    """Expression ``tree`` (see megengine.core._trace_option) with each leaf's value ``v``
    replaced by ``fn(v)`` (slots to VarNodes and back); None where ``fn`` gives None."""
    if type(tree) is not tuple:
        return tree
    if tree[0] == "dim":
        v = fn(tree[1])
        return None if v is None else ("dim", v, tree[2])
    parts = [_map_dim_leaves(x, fn) for x in tree[1:]]
    return None if any(p is None for p in parts) else (tree[0], *parts)


def _dyn_ref(var, ref, dyn_vars):
    dyn_vars.append(var)
    return _Ref(len(dyn_vars) - 1, ref.raw)


def _map_refs(frozen, fn):
    """``frozen`` (`jit._program._freeze` form) with each `_Ref` replaced by ``fn(ref)``."""
    if type(frozen) is _Ref:
        return fn(frozen)
    if type(frozen) is _DimExpr:  # a size computed from shapes: its leaves name values too
        return frozen.map_slots(lambda s: fn(_Ref(s)).slot)
    if type(frozen) is tuple:
        return tuple(_map_refs(x, fn) for x in frozen)
    return frozen


# --------------------------------------------------------------------------------------------
# traversal (shared with megengine.utils.comp_graph_tools)
# --------------------------------------------------------------------------------------------
def _as_var_list(var):
    if isinstance(var, VarNode):
        return [var]
    return list(var)


def get_dep_vars(var, var_type=None):
    """The VarNodes ``var`` (one or a list) depends on, itself included, breadth first;
    ``var_type``: only those whose owner's ``type`` is that upstream type name (or one of a
    list of them)."""
    if isinstance(var_type, str):
        var_type = (var_type,)
    # each var is queued once, when first met: the order of first visits is the same as
    # queueing every mention, whose copies made a graph of wide ops (F.split into 512 parts and
    # their uses) take quadratic time (jit fuzz program 91507 hung here)
    queue, seen, out = collections.deque(), set(), []

    def meet(vs):
        for v in vs:
            if id(v) not in seen:
                seen.add(id(v))
                queue.append(v)

    meet(_as_var_list(var))
    while queue:
        v = queue.popleft()
        if var_type is None or (v.owner is not None and v.owner.type in var_type):
            out.append(v)
        if v.owner is not None:
            meet(v.owner.inputs)
            meet(v.owner._dyn_vars)
    return out


def get_oprs_seq(outputs, prune_reshape=False, prune_immtensor=True):
    """The operators ``outputs`` depend on, in dependency order, ties broken by the order they
    were made (upstream's priority order). ``prune_immtensor`` drops constants;
    ``prune_reshape`` has nothing to drop here (a reshape's target shape is a parameter of the
    op, not a subgraph) and is accepted for upstream's signature."""
    oprs = {}
    for v in get_dep_vars(outputs):
        if v.owner is not None:
            oprs[id(v.owner)] = v.owner
    deps = {k: {id(v.owner) for v in itertools.chain(o.inputs, o._dyn_vars)
                if v.owner is not None} for k, o in oprs.items()}
    users = collections.defaultdict(list)
    for k, ds in deps.items():
        for d in ds:
            users[d].append(k)
    left = {k: len(ds) for k, ds in deps.items()}
    ready = [(oprs[k]._priority, k) for k, n in left.items() if n == 0]
    heapq.heapify(ready)
    seq = []
    while ready:
        _, k = heapq.heappop(ready)
        seq.append(oprs[k])
        for u in users[k]:
            left[u] -= 1
            if left[u] == 0:
                heapq.heappush(ready, (oprs[u]._priority, u))
    if len(seq) != len(oprs):
        raise ValueError("the network has a cycle: an operator reads a var computed from its "
                         "own output (check the last replace_vars/replace_oprs)")
    if prune_immtensor:
        seq = [o for o in seq if not isinstance(o, ImmutableTensor)]
    return seq


def set_symbolic_shape(option: bool):
    """Make ``VarNode.shape`` a VarNode computing the shape (True) or a tuple (False); returns
    the previous setting (the same switch as ``megengine.core._trace_option``)."""
    return _set_symbolic_shape(option)


def as_varnode(obj):
    """A VarNode from a VarNode, an OpNode with one output, or an iterable of one of them."""
    if isinstance(obj, VarNode):
        return obj
    if isinstance(obj, OpNode):
        if len(obj.outputs) != 1:
            raise ValueError(f"operator {obj!r} must have one output to be converted to a "
                             f"VarNode; it has {len(obj.outputs)}")
        return obj.outputs[0]
    if not isinstance(obj, collections.abc.Iterable):
        raise TypeError(f"{obj!r} is not compatible with VarNode")
    val = list(obj)
    if len(val) != 1:
        raise ValueError(f"can not convert a sequence of length {len(val)} to a VarNode")
    return as_varnode(val[0])


def as_oprnode(obj):
    """An OpNode from an OpNode, a VarNode (its owner), or an iterable of one of them."""
    if isinstance(obj, VarNode):
        return obj.owner
    if isinstance(obj, OpNode):
        return obj
    if not isinstance(obj, collections.abc.Iterable):
        raise TypeError(f"{obj!r} is not compatible with OpNode")
    val = list(obj)
    if len(val) != 1:
        raise ValueError(f"can not convert a sequence of length {len(val)} to an OpNode")
    return as_oprnode(val[0])


class NodeFilter:
    """An iterable of network nodes with chainable filters: ``.type(cls)``, ``.not_type(cls)``,
    ``.check_type(cls)``, ``.name(glob)``, ``.has_input(var)``, ``.param_provider()``,
    ``.data_provider()``; and ``as_list``/``as_unique``/``as_dict``/``as_count``."""

    def __init__(self, node_iter):
        if isinstance(node_iter, VarNode):  # its dependencies, without its own owner
            node_iter = get_oprs_seq(node_iter, False, False)[:-1]
        elif isinstance(node_iter, OpNode):
            node_iter = get_oprs_seq(node_iter.inputs, False, False)
        if not isinstance(node_iter, collections.abc.Iterable):
            raise TypeError(f"NodeFilter: {node_iter!r} is not iterable")
        self._iter = node_iter

    @classmethod
    def make_all_deps(cls, *dest_vars):
        return cls(get_oprs_seq(list(dest_vars), False, False))

    def __iter__(self):
        for i in self._iter:
            if not isinstance(i, NetworkNode):
                raise TypeError(f"all nodes should be network nodes; got {i!r}")
            yield i

    def type(self, node_type):
        return _Where(self, lambda i: isinstance(i, node_type), _node_cls(node_type))

    def not_type(self, node_type):
        return _Where(self, lambda i: not isinstance(i, node_type), _node_cls(node_type))

    def check_type(self, node_type):
        _node_cls(node_type)

        def check(i):
            if not isinstance(i, node_type):
                raise TypeError(f"all nodes should be {node_type}; got {i!r}")
            return True

        return _Where(self, check)

    def param_provider(self):
        return self.type(ImmutableTensor)

    def data_provider(self):
        return self.type(Host2DeviceCopy)

    def name(self, pattern, ignorecase=True):
        """Nodes whose name matches the glob ``pattern`` (``?``, ``*``)."""
        if not isinstance(pattern, str):  # (upstream asserts)
            raise ArgumentKindError(f"NodeFilter.name: bad pattern {pattern!r}")
        regex = re.compile(fnmatch.translate(pattern), re.IGNORECASE if ignorecase else 0)
        return _Where(self, lambda i: pattern == i.name or bool(regex.match(i.name or "")))

    def has_input(self, var):
        var = as_varnode(var)

        def reads(i):
            if not isinstance(i, OpNode):
                raise TypeError(f"has_input() must be used with OpNode; got {i!r}")
            return any(var is v for v in i.inputs)

        return _Where(self, reads)

    def as_list(self):
        return list(self)

    def as_unique(self):
        found = list(self)
        if len(found) != 1:
            raise ValueError(f"{len(found)} nodes found, expected exactly one: {found[:5]}")
        return found[0]

    def as_dict(self):
        return collections.OrderedDict((i.name, i) for i in self)

    def as_count(self):
        return sum(1 for _ in self)


def _node_cls(node_type):
    if not (isinstance(node_type, type) and issubclass(node_type, NetworkNode)):
        raise TypeError(f"bad node type: {node_type!r}")
    return node_type


class _Where(NodeFilter):
    def __init__(self, source, keep, _checked=None):
        self._iter, self._keep = source, keep

    def __iter__(self):
        for i in self._iter:
            if self._keep(i):
                yield i
