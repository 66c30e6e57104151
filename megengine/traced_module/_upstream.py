"""Upstream MegEngine's layout of a pickled `TracedModule` (``.tm`` files), both ways: reading
the files upstream 1.6+ writes, and writing this fork's modules so that upstream 1.13 loads them.

Upstream pickles its graphs under the class names this fork uses (``...traced_module.expr
.CallFunction``, ``...node.TensorNode``, ``...pytree.TreeDef``, ``...traced_module
.InternalGraph``), but with states of its own: an expr's arguments are its input nodes plus
``const_val`` (the constants, by position among the leaves of ``arg_def``), a TreeDef is
``(type, aux_data, children_defs)`` and every leaf a ``LeafDef`` (a constant keeps its value as
``const_val``), a builtin layer is wrapped in a ``_ModuleState``, an ``Apply`` keeps its op
descriptor's parameters (``opdef_state``) and a tensor node's device is a ``CompNode``.

Pickle builds those objects with this fork's classes, whose ``__setstate__`` keep upstream's
state as it is (a TreeDef marks it, ``kind == "upstream"``). A `TracedModule` whose state is
upstream's (it carries upstream's ``dump_info``) then converts its graphs here, in its own
``__setstate__``, when pickle has built every object they reach: this fork's TreeDefs,
arguments, op descriptors, devices, links and graph keys. What cannot be converted (a function
or a container type this engine lacks) raises ``pickle.UnpicklingError`` naming it.

Writing (`module_state`, which ``TracedModule.__reduce_ex__`` pickles): each graph object
becomes a `_Pickled` stand-in, an instance of its class (upstream's name for it) with the state
upstream's ``__getstate__`` gives, plus what this fork keeps besides under keys upstream sets
as unused attributes (the reading above keeps them). A module upstream cannot hold raises
`NotExpressible`, and pickles in this fork's own layout instead.
"""
import copyreg
import importlib
import inspect
import pickle
from collections import OrderedDict, defaultdict

from ..core._imperative_rt.ops import NO_AXIS as _NO_AXIS  # (None in this fork's op)
from ..module.module import Module
from .expr import (Apply, CallFunction, CallMethod, Constant, GetAttr, Input, ShapeOf, _is_node,
                   no_args_def)
from .graph import TAKEN, order_users_as
from .node import ModuleNode, Node, TensorNode
from .pytree import SUPPORTED_TYPE, TreeDef, tree_flatten

UPSTREAM = "upstream"  # the kind of a TreeDef that holds upstream's pickled state


def is_upstream_state(state):
    """Whether a TracedModule's pickled state is upstream's (it records its dump info)."""
    return isinstance(state, dict) and "dump_info" in state


class _ModuleState:
    """Upstream's wrapper of a builtin layer inside a pickled TracedModule: the layer's class
    as ``(module, name)`` and its ``__dict__``."""

    def __setstate__(self, state):
        self.__dict__.update(state)

    def to_module(self):
        if "obj" not in self.__dict__:
            cls = _resolve(self.module, "module class")
            obj = cls.__new__(cls)
            obj.__setstate__(dict(self.state))
            self.obj = obj
        return self.obj


def _unpickling_error(what):
    return pickle.UnpicklingError(
        f"load: this TracedModule file (written by upstream MegEngine) uses {what}, which this "
        "engine does not provide; load it in upstream, save the module's state_dict, and trace "
        "the module here (megengine.traced_module.trace_module)")


def _resolve(ref, what):
    """The object ``(module, dotted name)`` names, or UnpicklingError naming it."""
    try:
        obj = importlib.import_module(ref[0])
        for part in ref[1].split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, TypeError, IndexError):
        raise _unpickling_error(f"the {what} {ref[0]}.{ref[1]}") from None
    return obj


# ----- TreeDefs -----

def treedef_state(tdef, state):
    """Keep upstream's pickled TreeDef/LeafDef state on ``tdef`` until its graph converts it."""
    leaf = not state["children_defs"] and "const_val" in state
    const = leaf and (state["const_val"] is not None or type(None) in tuple(state["type"]))
    for k, v in (("kind", UPSTREAM), ("type", state["type"] if not leaf else None),
                 ("aux", ("const", state["const_val"]) if const else
                  ("leaf", None) if leaf else ("node", state["aux_data"])),
                 ("children", tuple(state["children_defs"])),
                 ("num_leaves", state.get("num_leaves", 1 if leaf else 0))):
        object.__setattr__(tdef, k, v)


def _build(tdef, take):
    """The value upstream's ``tdef`` describes; ``take(is_const, const)`` gives each leaf."""
    if not isinstance(tdef, TreeDef) or tdef.kind != UPSTREAM:
        raise pickle.UnpicklingError(f"load: a malformed upstream TracedModule file: expected "
                                     f"upstream's TreeDef, got {tdef!r}")
    role, aux = tdef.aux
    if role != "node":
        return take(role == "const", aux)
    children = [_build(c, take) for c in tdef.children]
    t = tdef.type
    if t in (tuple, list):
        return t(children)
    if t is slice:
        return slice(*children)
    if isinstance(t, type) and issubclass(t, dict):
        out = t() if t is not defaultdict else defaultdict()
        out.update(zip(aux, children))
        return out
    if getattr(t, "__slots__", None) and tuple(aux or ()) == tuple(t.__slots__):  # QParams
        obj = t.__new__(t)
        for k, v in zip(aux, children):
            setattr(obj, k, v)
        return obj
    if t in SUPPORTED_TYPE:
        return SUPPORTED_TYPE[t].unflatten(children, aux)
    raise _unpickling_error(f"the container type {getattr(t, '__qualname__', t)!r} (register "
                            "it with megengine.traced_module.register_supported_type)")


def _from_leaves(tdef, leaves):
    """The value of ``tdef`` with ``leaves`` for its non-constant leaves, in order."""
    it = iter(leaves)
    return _build(tdef, lambda is_const, const: const if is_const else next(it))


def _node_tree(value, nodes, what):
    """This fork's TreeDef of ``value`` (nodes are its leaves), checking they are ``nodes``."""
    leaves, tdef = tree_flatten(value, _is_node)
    if len(leaves) != len(nodes) or any(a is not b for a, b in zip(leaves, nodes)):
        raise pickle.UnpicklingError(f"load: a malformed upstream TracedModule file: the {what} "
                                     "of an expr do not match its nodes")
    return tdef


# ----- exprs, nodes and graphs -----

def _device(dev):
    from ..device import canonical_device

    name = getattr(dev, "_pickled_name", dev)
    if name is None:
        return None
    try:
        return canonical_device(str(name))
    except (RuntimeError, ValueError):  # a GPU name on a machine without one: info only
        return str(name)


def _convert_node(node, graph):
    d = node.__dict__
    d.pop("_orig_name", None)
    d["_top_graph"] = graph
    d["users"] = []
    if isinstance(node, TensorNode):
        d["value"] = None
        d["_device"] = _device(d.get("_device"))
        if d.get("_shape") is not None:
            d["_shape"] = tuple(d["_shape"])
    elif isinstance(node, ModuleNode):
        mtype = d.pop("_module_type", None) or d.get("module_type")  # (this fork's own)
        if isinstance(mtype, tuple):
            try:
                mtype = _resolve(mtype, "module class")
            except pickle.UnpicklingError:
                mtype = None  # a user class of the program that saved it: set from the owner
        d["module_type"] = mtype
        d["_owner"] = None


def _convert_expr(expr, graph):
    d = expr.__dict__
    d["_top_graph"] = graph
    d.setdefault("_disable_remove", False)
    d.pop("version", None)
    const_val = d.pop("const_val", None) or []
    if isinstance(expr, (CallFunction, CallMethod)):
        if isinstance(expr, CallFunction) and isinstance(expr.func, tuple):
            expr.func = _resolve(expr.func, "function")
        leaves = list(expr.inputs)
        for idx, val in sorted(const_val, key=lambda p: p[0]):
            leaves.insert(idx, val)
        it = iter(leaves)
        args = _build(d["arg_def"], lambda is_const, const: next(it))
        if d.pop("_args_by_name", False):  # (a pickle of this fork: its own form again)
            from .tracer import _with_defaults

            args = _with_defaults(expr.func, *args)
            expr.inputs = tree_flatten(args, _is_node)[0]
        d["arg_def"] = _node_tree(args, expr.inputs, "arguments")
        d["out_def"] = _node_tree(_from_leaves(d["out_def"], expr.outputs), expr.outputs,
                                  "results")
        return
    d["arg_def"] = d["out_def"] = None
    if isinstance(expr, GetAttr):
        d["arg_def"] = tree_flatten(((expr.inputs[0],), {}), _is_node)[1]
    elif isinstance(expr, Constant):
        if isinstance(expr.value, _ModuleState):
            expr.value = expr.value.to_module()
        d["arg_def"] = no_args_def()
    elif isinstance(expr, Apply):
        state = dict(d.pop("opdef_state"))
        op_type = state.pop("opdef_type")
        if op_type.__name__ == "GetVarShape" and state.get("axis") == _NO_AXIS:
            state["axis"] = None
        try:
            expr.op = op_type(**state)
        except (TypeError, ValueError) as e:
            raise _unpickling_error(f"the op {op_type.__name__}{state} ({e})") from None
        if op_type.__name__ == "GetVarShape" and state["axis"] is None:
            expr.__class__ = ShapeOf  # ``x.shape``, as this fork records it
    elif not isinstance(expr, Input):
        raise _unpickling_error(f"the expr kind {type(expr).__name__}")


def _convert_graph(graph):
    d = graph.__dict__
    for k in ("_watch_point", "_end_point", "_rst"):
        d.pop(k, None)
    d["_top_graph"] = None
    d.setdefault("_total_ids", None)
    ns = graph._namespace.__dict__
    if "_used_names" in ns:
        # a name upstream's namespace gives a graph (a submodule's, ``Net_b0``) stays taken,
        # without the graph: it is no node of this graph, and writing it again would write
        # that graph unconverted (a second pickle of a loaded file raised AttributeError)
        ns["used_names"] = {k: v if v is None or isinstance(v, Node) else TAKEN
                            for k, v in ns.pop("_used_names").items()}
    # each node's users in the order the file keeps: upstream's in the node, this fork's in
    # the graph (`_Writer._graph`)
    pickled_users = d.pop("_users", None) or [
        (n, list(n.__dict__.get("users") or ())) for n in graph._nodes_read()]
    for node in graph._inputs:
        _convert_node(node, graph)
        node.expr._top_graph = graph
        node.expr.__dict__.pop("version", None)
        node.expr.__dict__.setdefault("arg_def", None)
        node.expr.__dict__.setdefault("out_def", None)
    for expr in graph._exprs:
        for node in expr.outputs:
            _convert_node(node, graph)
    for expr in graph._exprs:
        _convert_expr(expr, graph)
        for node in expr.outputs:
            node.expr = expr
        for node in expr.inputs:
            node.users.append(expr)
    for node, order in pickled_users:
        order_users_as(node, order)
    if not any(order for _, order in pickled_users):  # (a file of an earlier version of this
        graph._order_self_users()  # fork: the order upstream's tracer makes)


def convert_module_state(state):
    """This fork's TracedModule state from upstream's ``state`` (graphs converted in place)."""
    from .traced_module import _graph_key, _normalize_args

    state = dict(state)
    for k in ("dump_info", "watch_points", "watch_node_value", "end_points"):
        state.pop(k, None)
    for k, v in state.items():
        if isinstance(v, _ModuleState):
            state[k] = v.to_module()
    if "_spec" not in state:  # (a pickle of this fork keeps its own)
        spec = state.get("argspec")
        state["_spec"] = spec if spec is not None and (len(spec.args) > 1 or spec.kwonlyargs) \
            else None
    state.setdefault("is_qat", False)
    state.setdefault("_is_top", False)
    graphs, outdefs = {}, {}
    for key, graph in state.get("argdef_graph_map", {}).items():
        _convert_graph(graph)
        inputs = list(graph._inputs)
        args, kwargs = _from_leaves(key, inputs)
        # (self is no key leaf here; keyword arguments in forward's order, not sorted)
        fork_key = _graph_key(*_normalize_args(state["_spec"], args[1:], kwargs))[1]
        graphs[fork_key] = graph
        out_value = _from_leaves(state["argdef_outdef_map"][key], graph._outputs)
        orders = graph.__dict__.pop("_dict_orders", None)  # (a pickle of this fork)
        if orders:
            out_value = _dicts_in_order(out_value, iter(orders))
            graph._outputs = tree_flatten(out_value, _is_node)[0]
        outdefs[fork_key] = _node_tree(out_value, graph._outputs, "results")
    state["argdef_graph_map"], state["argdef_outdef_map"] = graphs, outdefs
    state["_modules"] = [k for k in state.get("_modules", []) if k in state and
                         isinstance(state[k], (Module, list, tuple, dict))]
    return state


_DICTS = (dict, OrderedDict, defaultdict)


def _dict_orders(value):
    """The key order of each dict in ``value`` (depth first), which upstream's TreeDefs sort."""
    if type(value) in _DICTS:
        return [tuple(value)] + [o for v in value.values() for o in _dict_orders(v)]
    if type(value) in (tuple, list):
        return [o for v in value for o in _dict_orders(v)]
    return []


def _dicts_in_order(value, orders):
    """``value`` with its dicts' keys in ``orders`` again (`_dict_orders`)."""
    if type(value) in _DICTS:
        out = type(value)() if type(value) is not defaultdict else defaultdict()
        for k in next(orders):
            out[k] = _dicts_in_order(value[k], orders)
        return out
    if type(value) in (tuple, list):
        return type(value)(_dicts_in_order(v, orders) for v in value)
    return value


def link_module(module):
    """After an upstream TracedModule's state is set: point its ModuleNodes at their modules,
    the graphs of its traced submodules at the graph calling them, and number ids."""
    from .traced_module import TracedModule, _update_ref

    _update_ref(module)
    for sub in Module.modules(module):
        if not isinstance(sub, TracedModule):
            continue
        for graph in sub.argdef_graph_map.values():
            for node in graph.nodes(False):
                if isinstance(node, ModuleNode) and node.module_type is None:
                    node.module_type = type(node.owner)
            for expr in graph._exprs:
                if isinstance(expr, Constant) and isinstance(expr.value, Module):
                    expr.outputs[0]._owner = expr.value
                callee = expr.graph if isinstance(expr, CallMethod) else None
                if callee is not None:
                    callee._top_graph = graph
    for graph in module.argdef_graph_map.values():
        if graph._total_ids is None:
            ids = [n._id for n in graph.nodes()], [e._id for e in graph.exprs()]
            graph._total_ids = tuple(max(i, default=-1) + 1 for i in ids)


# ----- writing: a TracedModule pickled in upstream's layout -----

# the version the exprs carry: 1.13's layout, and no version of upstream's own (upstream brings
# a call of a pickle of another version to its own signature, as it must for this fork's calls)
WRITTEN_VERSION = "1.13.1"
_UPSTREAM_OPS = "megengine.core._imperative_rt.ops"  # where upstream's op descriptors live
_NODE_EXTRAS = ("_made_as",)  # kept beyond upstream's state (upstream sets them, unused)
_SHAPE_EXTRAS = ("fixed_ndim", "read_in_call")


class NotExpressible(Exception):
    """What a graph holds that upstream's layout cannot (the module pickles in this fork's
    own layout instead)."""


class _Pickled:
    """An object of a graph as the pickle holds it: an instance of ``cls`` with ``state``,
    which is what upstream's own ``__getstate__`` gives (plus this fork's extra keys)."""

    __slots__ = ("cls", "state")

    def __init__(self, cls, state=None):
        self.cls, self.state = cls, state

    @property
    def __class__(self):  # pickle writes ``cls.__new__(cls)`` (NEWOBJ) only for an instance
        return self.cls

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (self.cls,), self.state


def _leaf_def(value):
    """Upstream's LeafDef of ``value``: its types as upstream names them, and its value
    when it is a constant (no tensor, node or module)."""
    from ..tensor import Tensor
    from .node import NodeMixin
    from .pytree import ArgsIndex, LeafDef

    if isinstance(value, (Tensor, TensorNode)):
        types, const = (Tensor, TensorNode, ArgsIndex), None
    elif isinstance(value, (Module, ModuleNode)):
        types, const = (Module, ModuleNode, NodeMixin, ArgsIndex), None
    else:
        types, const = (type(value), ArgsIndex), value
    return _Pickled(LeafDef, {"type": types, "aux_data": None, "children_defs": [],
                              "num_leaves": 1, "const_val": const})


def upstream_tree(value):
    """(leaves, upstream's TreeDef of ``value``) as upstream's ``tree_flatten`` makes them:
    dict items sorted by key, slices and QParams looked into, any other value a leaf."""
    from ..core.tensor import QParams

    leaves = []

    def walk(v):
        t = type(v)
        if t in (tuple, list, slice, dict, defaultdict, OrderedDict) or isinstance(v, QParams):
            if t is slice:
                aux, children = None, [v.start, v.stop, v.step]
            elif isinstance(v, QParams):
                aux = tuple(t.__slots__)
                children = [getattr(v, k) for k in aux]
            elif t is OrderedDict:
                aux, children = tuple(v), list(v.values())
            elif isinstance(v, dict):
                aux = tuple(sorted(v))
                children = [v[k] for k in aux]
            else:
                aux, children = None, list(v)
            defs = [walk(c) for c in children]
            return _Pickled(TreeDef, {"type": t, "aux_data": aux, "children_defs": defs,
                                      "num_leaves": sum(d.state["num_leaves"] for d in defs)})
        if (isinstance(v, tuple) or t in SUPPORTED_TYPE) and tree_flatten(v, _is_node)[0]:
            raise NotExpressible(f"a {t.__qualname__} holding traced tensors")
        leaves.append(v)
        return _leaf_def(v)

    return leaves, walk(value)


def _nodes(leaves):
    return [v for v in leaves if _is_node(v)]


def _function_ref(func):
    """(module, name) upstream finds ``func`` under: megengine.functional's own functions by
    their public name (their homes differ), others where this engine has them."""
    from .. import functional as F
    from .expr import _function_ref as found_at

    name = getattr(func, "__name__", None)
    if name and getattr(F, name, None) is func:
        return "megengine.functional", name
    if (getattr(func, "__module__", None) or "").startswith("megengine.random"):
        # upstream 1.13 measured: it loads such a step but its call fails ("RNG.uniform()
        # takes from 1 to 4 positional arguments but 5 were given": it counts the default
        # RNG's self among the arguments when it brings the call to its own signature)
        raise NotExpressible(f"megengine.random.{name}, whose recorded call upstream cannot run")
    ref = found_at(func)
    if ref is None:
        raise NotExpressible(f"the function {func!r}, which pickle cannot find by name")
    return ref


# megengine.functional's parameters upstream 1.13 lacks (measured: its signatures against
# these), which a call here may leave at their defaults, and its functions whose parameters
# upstream names otherwise (a call of them is written as recorded: all arguments positional)
_UPSTREAM_LACKS = {"batch_norm": ("compute_mode", "param_dim"), "matmul": ("format",),
                   "pad": ("pad_witdth",), "sort": ("axis",)}
_NAMED_OTHERWISE = ("prelu",)


def _args_by_name(func, args, kwargs):
    """``((), kwargs)``: a megengine.functional call with every argument by name, or None
    (not such a call). This fork records calls in its own functions' signatures, which
    differ from upstream's in places (``F.eye``'s dtype is keyword-only there); upstream
    brings a call of a pickle from another version to its own signature by name, as the
    reading here does (`_convert_expr`). A parameter upstream lacks is left out at its
    default; set otherwise, the call is NotExpressible."""
    name = getattr(func, "__name__", None)
    if not (getattr(func, "__module__", None) or "").startswith("megengine.functional") \
            or name in _NAMED_OTHERWISE:
        return None
    try:
        sig = inspect.signature(func)
        bound = sig.bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return None
    if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
           for p in sig.parameters.values()):
        return None
    named = dict(bound)
    for param in _UPSTREAM_LACKS.get(name, ()):
        value, default = named.pop(param, None), sig.parameters[param].default
        if value is not None and not (value is default or (
                type(value) is type(default) and value == default)):
            raise NotExpressible(f"{name}({param}={value!r}), a parameter upstream's {name} "
                                 "lacks")
    return (), named


class _Writer:
    """Upstream's state of every graph object a TracedModule reaches, each object once (its
    links stay shared) and filled from a queue (a deep graph needs no deep recursion)."""

    def __init__(self):
        self._made = {}
        self._todo = []

    def ref(self, obj):
        from .graph import InternalGraph, NameSpace
        from .node import Node
        from .expr import Expr

        if not isinstance(obj, (Node, Expr, InternalGraph, NameSpace)):
            return obj
        made = self._made.get(id(obj))
        if made is None:
            cls = Apply if isinstance(obj, Apply) else type(obj)  # (ShapeOf: upstream's Apply)
            made = self._made[id(obj)] = _Pickled(cls)
            self._todo.append((obj, made))
        return made

    def finish(self):
        while self._todo:
            obj, made = self._todo.pop()
            made.state = self._state(obj)

    def refs(self, objs):
        return [self.ref(o) for o in objs]

    def _state(self, obj):
        from .graph import InternalGraph, NameSpace

        if isinstance(obj, InternalGraph):
            return self._graph(obj)
        if isinstance(obj, NameSpace):
            return {"name": obj.name, "qualname": obj.qualname,
                    "_used_names": {k: self.ref(v) for k, v in obj.used_names.items()}}
        if isinstance(obj, (TensorNode, ModuleNode)):
            return self._node(obj)
        return self._expr(obj)

    def _graph(self, graph):
        # (the exprs first: pickled in order, each reaches only nodes pickled before it)
        state = {"_exprs": self.refs(graph._exprs), "_inputs": self.refs(graph._inputs),
                 "_outputs": self.refs(graph._outputs), "_watch_point": [], "_end_point": [],
                 "_namespace": self.ref(graph._namespace), "_rst": defaultdict(list),
                 "_name": graph._name, "_qualname": graph._qualname}
        if graph._total_ids:
            state["_total_ids"] = graph._total_ids
        # the users lists, last (written in the nodes they would chain the whole graph into
        # one deep recursion): this fork's reading keeps their order; upstream's ignores the
        # key and recounts the users in graph order
        present = {id(e) for e in graph._exprs}
        state["_users"] = [(self.ref(n), self.refs([e for e in n.users if id(e) in present]))
                           for n in graph._nodes_read()]
        return state

    def _node(self, node):
        from ..core._imperative_rt.common import CompNode
        from .node import _findable

        state = {"expr": self.ref(node.expr), "users": [], "_id": node._id}
        if isinstance(node, TensorNode):
            dev = node._device
            state.update(_qparams=node._qparams, _shape=node._shape, _dtype=node._dtype,
                         _device=None if dev is None else _Pickled(CompNode, str(dev)))
        state.update(_name=node._name, _qualname=node._qualname)
        if isinstance(node, ModuleNode):
            # upstream names a module it traced into a TracedModule (a class of the program
            # that saved it) as Module, which it finds anywhere; the class itself is kept
            mtype = node.module_type
            if not _findable(mtype) and _findable(type(node.owner)):
                mtype = type(node.owner)
            ref = (mtype.__module__, mtype.__qualname__) if isinstance(mtype, type) else None
            if ref is not None and ref[0].startswith("megengine."):
                state["module_type"] = ref
            else:
                state.update(module_type=("megengine.module.module", "Module"), _module_type=ref)
        state.update((k, node.__dict__[k]) for k in _NODE_EXTRAS if k in node.__dict__)
        return state

    def _expr(self, expr):
        from .serialization import _opdef_state

        state = {"_id": expr._id, "_disable_remove": expr._disable_remove}
        if isinstance(expr, (Input, GetAttr, Constant)):
            state.update(inputs=self.refs(expr.inputs), outputs=self.refs(expr.outputs),
                         name=expr.name)
            if isinstance(expr, Constant):
                state["value"] = expr.value
            return state
        if isinstance(expr, (CallFunction, CallMethod)):
            call = expr.arg_def.unflatten(expr.inputs)
            if isinstance(expr, CallFunction):
                by_name = _args_by_name(expr.func, *call)
                if by_name is not None:
                    call, state["_args_by_name"] = by_name, True
            leaves, arg_def = upstream_tree(call)
            out_leaves, out_def = upstream_tree(expr.out_def.unflatten(expr.outputs)
                                                if expr.out_def else list(expr.outputs))
            state.update(
                inputs=self.refs(_nodes(leaves)),
                const_val=[(i, v) for i, v in enumerate(leaves) if not _is_node(v)],
                arg_def=arg_def, out_def=out_def, outputs=self.refs(_nodes(out_leaves)),
                version=WRITTEN_VERSION)
            if isinstance(expr, CallMethod):
                state["method"] = expr.method
            else:
                state["func"] = _function_ref(expr.func)
            return state
        op_type = type(expr.op)
        if not hasattr(op_type, "_params") or op_type.__module__ != _UPSTREAM_OPS:
            raise NotExpressible(f"the engine op {op_type.__name__}, which upstream lacks")
        opdef_state = _opdef_state(expr.op)
        if op_type.__name__ == "GetVarShape" and opdef_state.get("axis") is None:
            opdef_state["axis"] = _NO_AXIS
        state.update(opdef_state=opdef_state, inputs=self.refs(expr.inputs),
                     outputs=self.refs(expr.outputs), version=WRITTEN_VERSION)
        state.update((k, expr.__dict__[k]) for k in _SHAPE_EXTRAS if k in expr.__dict__)
        return state


def _upstream_only_modules(module):
    """The first submodule upstream lacks (a PyTorchModule), or None."""
    for sub in Module.modules(module):
        if type(sub).__module__.startswith("megengine.module.pytorch"):
            return sub
    return None


def module_state(module):
    """Upstream's pickled state of the TracedModule ``module`` (its graphs as `_Pickled`
    objects, this fork's extra keys besides); NotExpressible when upstream cannot hold it."""
    sub = _upstream_only_modules(module)
    if sub is not None:
        raise NotExpressible(f"a {type(sub).__name__}")
    writer = _Writer()
    state = dict(Module.__getstate__(module))
    state["_modules"] = list(state.get("_modules", []))
    graphs, outdefs = {}, {}
    for key, graph in module.argdef_graph_map.items():
        args, kwargs = key.unflatten(graph._inputs[1:])
        inputs, up_key = upstream_tree(((graph._inputs[0], *args), kwargs))
        out_value = module.argdef_outdef_map[key].unflatten(graph._outputs)
        out_leaves, outdefs_key = upstream_tree(out_value)
        written = writer.ref(graph)
        writer.finish()
        # the graph's inputs and outputs in the order of upstream's TreeDefs' leaves
        written.state.update(_inputs=writer.refs(_nodes(inputs)),
                             _outputs=writer.refs(_nodes(out_leaves)))
        orders = _dict_orders(out_value)
        if any(list(o) != sorted(o) for o in orders):  # results come back in their order
            written.state["_dict_orders"] = orders
        graphs[up_key], outdefs[up_key] = written, outdefs_key
    state.update(argdef_graph_map=graphs, argdef_outdef_map=outdefs, watch_points=[],
                 watch_node_value={}, end_points=[])
    state["dump_info"] = {"version": WRITTEN_VERSION, "register_type": [],
                          "register_container_type": [], "register_mdule": [],
                          "register_function": []}
    return state
